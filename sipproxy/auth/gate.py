"""Who must prove who they are, and whether they may do what they ask.

Pure decisions over a request and what the core already knows about it; the
digest arithmetic lives in :mod:`sipproxy.auth.digest`.

- REGISTER for our domains authenticates with ``Authorization`` (401,
  RFC 3261 §22.1); the authenticated user must own the AOR (the To user) and
  the From.
- Any other request from one of our domains (its From) that is not inside a
  dialog we record-routed authenticates with ``Proxy-Authorization`` (407,
  §22.3), and the authenticated user must be the From user.
- ACK and CANCEL are never challenged: neither can be answered with a challenge
  the UA could act on (§22.1: "ACK and CANCEL [...] MUST NOT be challenged").
- In-dialog requests that followed our Record-Route are not challenged: their
  dialog was authorised when it was created.
- OPTIONS to the server itself is a health check and is never challenged.
- Not a relay: a request for a domain that is not ours is routed only for an
  authenticated local user; anyone else gets 403.
- Our credentials stop here: what we forward carries no credentials for our
  realm (:func:`without_our_credentials`, RFC 3261 §22.3).
- What a verification leads to (:func:`decide`): let the user through, refuse,
  or challenge again, and whether the attempt counts towards a ban. The proxy
  carries the decision out (clock, ban list, log, response).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from sipproxy.auth.digest import AuthResult, Outcome, parse_credentials
from sipproxy.sip.errors import ParseError
from sipproxy.sip.headers import Headers
from sipproxy.sip.message import Request
from sipproxy.sip.uri import SipURI

NEVER_CHALLENGED = frozenset({"ACK", "CANCEL"})
_CREDENTIALS = frozenset({"authorization", "proxy-authorization"})


def _user_and_host(request: Request, field: str) -> tuple[str | None, str | None]:
    try:
        address = request.from_addr if field == "from" else request.to_addr
    except ParseError:
        return None, None
    uri = address.uri
    if not isinstance(uri, SipURI):
        return None, None
    user = uri.unescaped_user if uri.user is not None else None
    return user, uri.host.lower().strip("[]")


def credentials_header(
    request: Request,
    *,
    domains: Collection[str],
    registering_here: bool,
    options_to_us: bool,
    in_our_dialog: bool,
) -> str | None:
    """The header that must carry credentials, or None if none are needed."""
    if request.method in NEVER_CHALLENGED or options_to_us or in_our_dialog:
        return None
    if request.method == "REGISTER":
        return "Authorization" if registering_here else None
    _, from_host = _user_and_host(request, "from")
    if from_host is not None and from_host in domains:
        return "Proxy-Authorization"
    return None


def may_act(request: Request, user: str) -> bool:
    """Whether authenticated ``user`` owns what the request claims.

    REGISTER: the AOR registered (To) and the From; anything else: the From.
    """
    from_user, _ = _user_and_host(request, "from")
    if from_user != user:
        return False
    if request.method == "REGISTER":
        to_user, _ = _user_and_host(request, "to")
        return to_user == user
    return True


def _for_realm(value: str, realm: str) -> bool:
    try:
        _, params = parse_credentials(value)
    except ParseError:
        # Unreadable: nobody can tell whose it is; if it names our realm, it may
        # hold our user's answer, which must not leave either.
        return f'"{realm}"' in value or f"={realm}" in value
    return params.get("realm") == realm


def without_our_credentials(request: Request, realm: str | None) -> Request:
    """The request without the credentials for ``realm``, ours (RFC 3261 §22.3).

    A proxy consumes the credentials meant for it: Proxy-Authorization (and
    Authorization) values whose realm is ours go, or the callee or a trunk
    could crack our user's password offline from the digest. Those
    for other realms are for the servers down the path and stay untouched
    (§22.3: a proxy "MUST NOT modify" them); Authorization is end to end, so
    only ours is taken. ``realm`` None (no authentication here): unchanged.
    """
    if realm is None:
        return request
    fields = request.headers.fields
    kept = tuple(
        h for h in fields if h.key not in _CREDENTIALS or not _for_realm(h.value, realm)
    )
    if len(kept) == len(fields):
        return request
    return request.with_headers(Headers(kept))


@dataclass(frozen=True, slots=True)
class Admit:
    """Good credentials, and ``user`` may do what the request asks."""

    user: str


@dataclass(frozen=True, slots=True)
class Deny:
    """Answer ``status`` with ``reason`` and no challenge: asking again won't help."""

    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class Challenge:
    """Answer ``status`` (401 or 407) with a fresh challenge in ``header``.

    ``stale``: the password was right but the nonce expired (RFC 7616 §3.3).
    ``counted``: a wrong answer to a nonce issued to this very source, which
    counts towards its ban; nothing else does, since only this one proves the
    sender received our challenge there (see :mod:`sipproxy.auth.digest`).
    """

    status: int
    header: str
    stale: bool = False
    counted: bool = False


#: What to do with a request whose credentials were verified.
Decision = Admit | Deny | Challenge


def decide(request: Request, result: AuthResult, header: str) -> Decision:
    """What the verification ``result`` of ``header`` in ``request`` leads to.

    A missing, wrong, unknown-user or stale credential all get the same
    challenge (only the nonce differs), so nobody learns which users exist.
    Good credentials of a user who does not own the request's From (or, for
    REGISTER, its To) get 403. A digest uri that is not the Request-URI gets
    400: "the server SHOULD return a 400 Bad Request error" (RFC 2617
    §3.2.2.5).

    :param header: where the credentials were looked for: "Authorization"
        (challenged with 401 and WWW-Authenticate, RFC 3261 §22.1) or
        "Proxy-Authorization" (407 and Proxy-Authenticate, §22.3).
    """
    if result.outcome is Outcome.OK and result.user is not None:
        if not may_act(request, result.user):
            return Deny(403, "Not Your Address")
        return Admit(result.user)
    if result.outcome is Outcome.URI_MISMATCH:
        return Deny(400, "Digest URI Does Not Match Request-URI")
    if header == "Authorization":
        status, challenge_header = 401, "WWW-Authenticate"
    else:
        status, challenge_header = 407, "Proxy-Authenticate"
    return Challenge(
        status,
        challenge_header,
        stale=result.outcome is Outcome.STALE,
        counted=result.outcome is Outcome.FAILED,
    )
