"""Several processes sharing one store: who holds a phone's connection.

A phone registered over TCP, TLS or WebSocket is reachable only on its connection,
and only the process holding that connection can use it. That process records
itself in the binding as the flow's owner (Path-like: its URI with a token naming
the connection in the user part). Another process that finds the binding sends the
request to that URI as a Route; the owner reads the token back and delivers on the
connection. Owner tokens are keyed apart from Record-Route tokens, so a token a
phone saw in a Record-Route never passes for one.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Callable
from dataclasses import replace

from sipproxy.location import Flow
from sipproxy.proxy.flows import Pinned, decode_flow, encode_flow
from sipproxy.sip.addressing import Peer
from sipproxy.sip.errors import ParseError
from sipproxy.sip.message import Request, first_address
from sipproxy.sip.transports import is_reliable
from sipproxy.sip.uri import SipURI
from sipproxy.transport.sender import Transports


class Owners:
    """Owner tokens: writing them into our bindings, reading them from Routes."""

    def __init__(
        self,
        *,
        transports: Transports,
        secret: bytes,
        is_our_uri: Callable[[SipURI], bool],
    ) -> None:
        """Take collaborators.

        :param secret: the server's secret; owner tokens use a key derived from it.
        """
        self._transports = transports
        self._secret = hmac.new(secret, b"owner", "sha256").digest()
        self._is_our_uri = is_our_uri
        #: This process's own SIP URI (--advertise), recorded as the owner of the
        #: connections it holds; None: bindings record no owner.
        self.instance: str | None = None

    @property
    def secret(self) -> bytes:
        """The key of owner tokens (tests forge tokens with it)."""
        return self._secret

    def with_owner(self, flow: Flow, peer: Peer) -> Flow:
        """Record who holds a connection flow, for the other processes."""
        if self.instance is None or not is_reliable(flow.transport):
            return flow
        where = owner_address(self.instance)
        if where is None:
            return flow
        token = encode_flow(peer, flow.connection_id, self._secret)
        return replace(flow, owner=f"sip:{token}@{where};lr")

    def owner_flow(self, request: Request) -> Pinned | None:
        """The connection an owner token in our first Route names."""
        try:
            first = first_address(request.headers, "route")
        except ParseError:
            return None
        if first is None:
            return None
        uri = first.uri
        if not (isinstance(uri, SipURI) and uri.user and self._is_our_uri(uri)):
            return None
        return decode_flow(uri.user, self._secret)

    def if_connected(self, flow: Pinned | None) -> Pinned | None:
        """An owner token's flow, or None when its connection is gone.

        Then the Request-URI (the phone's Contact) is the only address left, as
        for a binding of our own whose connection closed (proxy/targets.py).
        """
        if flow is None or not flow.peer.reliable:
            return flow
        if self._transports.connection(flow.connection_id) is None:
            return None
        return flow


@functools.lru_cache(maxsize=4)
def owner_address(instance: str) -> str | None:
    """``host:port;transport=x`` of an --advertise URI, parsed once."""
    try:
        base = SipURI.parse(instance)
    except ParseError:
        return None
    host = f"[{base.host}]" if ":" in base.host else base.host
    port = f":{base.port}" if base.port else ""
    param = f";transport={base.transport}" if base.transport else ""
    return f"{host}{port}{param}"


__all__ = ["Owners", "owner_address"]
