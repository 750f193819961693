"""Flow tokens: how a later in-dialog request finds the way back to a phone behind NAT.

A phone behind NAT puts a private address in its Contact; only the flow its own
requests came on (source address and port, or its TCP connection) reaches it
(RFC 3581, RFC 5626 §5.3). When the proxy record-routes a dialog it writes two
Record-Route entries, one facing each side, and each carries in its user part a
token naming the flow of that side. A request inside the dialog arrives with those
entries as Route values; the last of our own entries it carries faces the next
hop, and its token says which flow to send on.

Tokens are signed (HMAC-SHA256, truncated) so nobody can make the proxy send to
an address of their choosing by forging a Route. A Record-Route token is also
bound to its dialog (Call-ID and the tag of the request that created it): it is
the proof that a later request belongs to a dialog this proxy authorised, so a
token copied out of one call does not open a door into another.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import NamedTuple

from sipproxy.sip.addressing import Peer

_SIG = 10  # bytes of HMAC kept: 80 bits against forgery, short Route headers


class Pinned(NamedTuple):
    """What a token names: the flow a request must take to reach its peer."""

    peer: Peer
    #: the connection (TCP, TLS, WebSocket) to send on; None: any socket
    connection_id: str | None
    #: for TLS, the host name the certificate was checked for (RFC 5922 §4), so
    #: a later request is checked alike
    server_name: str | None


def dialog_binding(call_id: str, tag: str | None) -> bytes:
    """What a Record-Route token is bound to: the dialog's Call-ID and one tag."""
    return f"{call_id}\x00{tag or ''}".encode("utf-8", "surrogateescape")


def encode_flow(
    peer: Peer,
    connection_id: str | None,
    secret: bytes,
    *,
    dialog: bytes = b"",
    server_name: str | None = None,
) -> str:
    """A token for ``peer`` (and its connection), safe in a SIP URI user part.

    :param dialog: :func:`dialog_binding` of the dialog it is written for; signed
        but not carried (the request that brings the token back carries it).
    """
    text = f"{peer.transport}|{peer.host}|{peer.port}|{connection_id or ''}".encode()
    if server_name:
        text += f"|{server_name}".encode()
    signature = hmac.new(secret, dialog + b"\x01" + text, hashlib.sha256).digest()
    raw = signature[:_SIG] + text
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_flow(
    token: str, secret: bytes, *, dialogs: tuple[bytes, ...] = (b"",)
) -> Pinned | None:
    """The flow a token names, or None if it is not one of ours or was altered.

    :param dialogs: the bindings the token may have been written for (a request
        inside a dialog carries the creating request's tag as From or To tag).
    """
    if len(token) > 400:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (ValueError, UnicodeEncodeError):
        return None
    signature, text = raw[:_SIG], raw[_SIG:]
    if len(signature) != _SIG or not any(
        hmac.compare_digest(
            signature,
            hmac.new(secret, dialog + b"\x01" + text, hashlib.sha256).digest()[:_SIG],
        )
        for dialog in dialogs
    ):
        return None
    try:
        transport, host, port, connection, *name = text.decode().split("|")
        peer = Peer(transport, host, int(port))
    except ValueError:
        return None
    return Pinned(peer, connection or None, "".join(name) or None)
