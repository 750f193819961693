"""Flow tokens: how a later in-dialog request finds the way back to a phone behind NAT.

A phone behind NAT puts a private address in its Contact; only the flow its own
requests came on (source address and port, or its TCP connection) reaches it
(RFC 3581, RFC 5626 §5.3). When the proxy record-routes a dialog it writes two
Record-Route entries, one facing each side, and each carries in its user part a
token naming the flow of that side. A request inside the dialog arrives with those
entries as Route values; the last of our own entries it carries faces the next
hop, and its token says which flow to send on.

Tokens are signed (HMAC-SHA256, truncated) so nobody can make the proxy send to
an address of their choosing by forging a Route.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from sipproxy.transport.peer import Peer

_SIG = 10  # bytes of HMAC kept: 80 bits against forgery, short Route headers


def encode_flow(peer: Peer, connection_id: str | None, secret: bytes) -> str:
    """A token for ``peer`` (and its connection), safe in a SIP URI user part."""
    text = f"{peer.transport}|{peer.host}|{peer.port}|{connection_id or ''}".encode()
    signature = hmac.new(secret, text, hashlib.sha256).digest()[:_SIG]
    return base64.urlsafe_b64encode(signature + text).rstrip(b"=").decode("ascii")


def decode_flow(token: str, secret: bytes) -> tuple[Peer, str | None] | None:
    """The flow a token names, or None if it is not one of ours or was altered."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (ValueError, UnicodeEncodeError):
        return None
    signature, text = raw[:_SIG], raw[_SIG:]
    expected = hmac.new(secret, text, hashlib.sha256).digest()[:_SIG]
    if len(signature) != _SIG or not hmac.compare_digest(signature, expected):
        return None
    try:
        transport, host, port, connection = text.decode().split("|")
        return Peer(transport, host, int(port)), connection or None
    except ValueError:
        return None
