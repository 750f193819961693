"""Which transaction a message belongs to (RFC 3261 §17.1.3, §17.2.3, §9.2).

A request whose top Via branch starts with the magic cookie ``z9hG4bK`` is matched
by branch, sent-by and method (ACK counting as INVITE). Requests from RFC 2543
elements carry no such branch and are matched by their Request-URI, tags, Call-ID,
CSeq and top Via instead. Responses are matched to client transactions by the top
Via branch (which we generated) and the CSeq method.

Keys are hashable values, so the layer finds a transaction with one dict lookup.
"""

from __future__ import annotations

from dataclasses import dataclass

from sipproxy.sip.errors import ParseError
from sipproxy.sip.message import Request, Response
from sipproxy.sip.uri import SipURI, parse_uri
from sipproxy.sip.via import BRANCH_COOKIE, Via

__all__ = [
    "BranchKey",
    "ClientKey",
    "LegacyKey",
    "ServerKey",
    "ack_keys",
    "cancelled_invite_key",
    "client_key",
    "has_rfc3261_branch",
    "server_key",
]

#: Via parameters this server's own transport adds; a retransmission gets the same
#: ones, but ``matching_invite`` may be asked with a CANCEL before they were added.
_STAMPED = frozenset({"received", "rport"})


@dataclass(slots=True, unsafe_hash=True)  # immutable by convention (sip/headers.py)
class BranchKey:
    """An RFC 3261 server transaction: branch, sent-by and method (§17.2.3)."""

    branch: str
    host: str
    port: int | None
    method: str


@dataclass(slots=True, unsafe_hash=True)  # immutable by convention (sip/headers.py)
class LegacyKey:
    """An RFC 2543 server transaction, matched field by field (§17.2.3).

    ``request_uri`` and ``via`` are normalised so that equal values (§19.1.4,
    §20.42) compare equal; retransmissions and ACKs copy them, so the stricter
    treatment of other URI parameters than §19.1.4 does not matter.
    """

    request_uri: tuple[object, ...]
    to_tag: str | None
    from_tag: str | None
    call_id: str
    cseq: int
    method: str
    via: tuple[object, ...]


#: The key of a server transaction.
ServerKey = BranchKey | LegacyKey


@dataclass(slots=True, unsafe_hash=True)  # immutable by convention (sip/headers.py)
class ClientKey:
    """A client transaction: the branch we generated and the method (§17.1.3)."""

    branch: str
    method: str


def has_rfc3261_branch(via: Via) -> bool:
    """Whether ``via`` carries an RFC 3261 branch (RFC 3261 §8.1.1.7).

    "The branch ID inserted by an element compliant with this specification MUST
    always begin with the characters "z9hG4bK"."
    """
    branch = via.branch
    return branch is not None and branch.startswith(BRANCH_COOKIE)


def server_key(request: Request) -> ServerKey:
    """The key of the server transaction ``request`` creates or belongs to.

    For an ACK this is the key of the INVITE transaction it would acknowledge over
    RFC 3261 branches (§17.2.3: "the method of the request matches the one that
    created the transaction, except for ACK, where the method of the request that
    created the transaction is INVITE"); use :func:`ack_keys` for ACKs, which also
    handles RFC 2543 peers.

    :raises ParseError: when a field matching needs does not parse.
    """
    method = "INVITE" if request.method == "ACK" else request.method
    return _key(request, method, request.to_addr.tag)


def ack_keys(ack: Request) -> tuple[ServerKey, ...]:
    """Keys of the INVITE server transactions ``ack`` might acknowledge (§17.2.3).

    One key for an RFC 3261 branch. For RFC 2543 the INVITE's To tag is not known
    from the ACK, which carries the tag of the response: "the To tag of the ACK
    matches the To tag of the response sent by the server transaction". The INVITE
    had either no To tag (a new dialog) or the same one (a re-INVITE), so both keys
    are candidates; the transaction then checks the response's tag.
    """
    tag = ack.to_addr.tag
    key = _key(ack, "INVITE", tag)
    if isinstance(key, BranchKey) or tag is None:
        return (key,)
    return (key, _key(ack, "INVITE", None))


def cancelled_invite_key(cancel: Request) -> ServerKey:
    """The key of the INVITE server transaction ``cancel`` cancels (RFC 3261 §9.2).

    "The TU determines the transaction to be cancelled by taking the CANCEL
    request, and then assuming that the request method is anything but CANCEL or
    ACK and applying the transaction matching procedures of Section 17.2.3."
    """
    return _key(cancel, "INVITE", cancel.to_addr.tag)


def client_key(message: Request | Response) -> ClientKey:
    """The client transaction key of a request we send or a response to it.

    "If the response has the same value of the branch parameter in the top Via
    header field as the branch parameter in the top Via header field of the
    request that created the transaction" and "the method parameter in the CSeq
    header field matches the method of the request that created the transaction"
    (RFC 3261 §17.1.3).

    :raises ParseError: when the top Via has no branch or Via or CSeq is bad.
    """
    branch = message.top_via.branch
    if not branch:
        raise ParseError("top Via has no branch")
    return ClientKey(branch, message.cseq.method)


def _key(request: Request, method: str, to_tag: str | None) -> ServerKey:
    via = request.top_via
    if has_rfc3261_branch(via):
        assert via.branch is not None
        return BranchKey(via.branch, via.host.lower(), via.port, method)
    return LegacyKey(
        request_uri=_uri_form(request.uri),
        to_tag=to_tag,
        from_tag=request.from_addr.tag,
        call_id=request.call_id,
        cseq=request.cseq.number,
        method=method,
        via=_via_form(via),
    )


def _uri_form(text: str) -> tuple[object, ...]:
    try:
        uri = parse_uri(text)
    except ParseError:
        return ("raw", text)
    if not isinstance(uri, SipURI):
        return (uri.scheme.lower(), uri.opaque)
    params = frozenset(
        (name.lower(), None if value is None else value.lower())
        for name, value in uri.params
    )
    return (
        uri.scheme.lower(),
        uri.unescaped_user,
        uri.password,
        uri.host.lower(),
        uri.port,
        params,
        frozenset(uri.headers),
    )


def _via_form(via: Via) -> tuple[object, ...]:
    params = frozenset(
        (name.lower(), value)
        for name, value in via.params
        if name.lower() not in _STAMPED
    )
    return (
        via.protocol.upper(),
        via.transport.upper(),
        via.host.lower(),
        via.port,
        params,
    )
