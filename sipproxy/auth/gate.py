"""Who must prove who they are, and whether they may do what they ask (issue 5).

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
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace

from sipproxy.auth.digest import parse_credentials
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
    could crack our user's password offline from the digest (issue 13). Those
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
    return replace(request, headers=Headers(kept))
