"""Sending requests out: which socket, which connection, and what to call ourselves.

Theory of operation: every listening socket registers here. To reach a peer over
UDP the message leaves from a listening socket of the same address family, so the
peer's answers come back to a port we read (RFC 3261 §18.1.1). Over TCP an open
connection to the peer is reused (a registered phone's flow first: RFC 5626 §5.3,
the phone is reachable only through the connection it opened); otherwise a new one
is opened and the message waits in a short queue until it connects. A failure to
connect is reported to ``on_error`` so the proxy can try the next target.

``advertised(transport, peer)`` gives the address that goes into our Via and
Record-Route: the listening interface, or for a wildcard listener the local
address the kernel would use to reach the peer (found with an unsent UDP connect).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import ClientFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override

from sipproxy.transport.peer import Peer
from sipproxy.transport.stream import SIPStreamFactory, SIPStreamProtocol
from sipproxy.transport.udp import SIPDatagramProtocol

ErrorCallback = Callable[[str], None]


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


@dataclass
class _Pending:
    """A connection being opened and the messages waiting for it."""

    queue: list[bytes] = field(default_factory=list)
    errors: list[ErrorCallback] = field(default_factory=list)


class _OutboundFactory(ClientFactory):
    """Opens one connection for Transports and hands it the queued messages."""

    noisy = False

    def __init__(self, owner: Transports, stream: SIPStreamFactory, key: Peer) -> None:
        self._owner = owner
        self._stream = stream
        self._key = key

    @override
    def buildProtocol(self, addr: IAddress | None) -> SIPStreamProtocol:
        protocol = self._stream.build_outbound()
        protocol.on_connected = lambda: self._owner._connected(self._key, protocol)
        return protocol

    @override
    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self._owner._failed(self._key, reason.getErrorMessage())


class Transports:
    """Every socket we listen on, and the way out to any peer."""

    log = Logger()

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._udp: list[SIPDatagramProtocol] = []
        self._stream: dict[str, SIPStreamFactory] = {}
        #: listening (transport, family) -> (interface, port)
        self._listening: dict[tuple[str, int], tuple[str, int]] = {}
        self._pending: dict[Peer, _Pending] = {}
        self._route_cache: dict[str, str] = {}

    def add_udp(self, protocol: SIPDatagramProtocol) -> None:
        """Register a bound UDP socket."""
        self._udp.append(protocol)
        local = protocol.local
        self._listening.setdefault(
            ("udp", _family(local.host or "0.0.0.0")), (local.host, local.port)
        )

    def add_stream(
        self, transport: str, factory: SIPStreamFactory, host: str, port: int
    ) -> None:
        """Register a listening TCP/TLS port and its factory."""
        self._stream[transport] = factory
        self._listening.setdefault(
            (transport, _family(host or "0.0.0.0")), (host, port)
        )

    def supports(self, transport: str) -> bool:
        """Whether we can send over ``transport`` at all."""
        if transport == "udp":
            return bool(self._udp)
        return transport in self._stream

    def can_reach(self, peer: Peer) -> bool:
        """Whether we have a socket of the peer's transport and address family."""
        return (peer.transport, _family(peer.host)) in self._listening

    def advertised(self, transport: str, peer_host: str) -> Peer | None:
        """Our address for Via sent-by and Record-Route toward ``peer_host``."""
        family = _family(peer_host)
        where = self._listening.get((transport, family))
        if where is None:
            return None
        host, port = where
        if host in ("", "0.0.0.0", "::"):
            host = self._local_address_toward(peer_host)
        return Peer(transport, host, port)

    def _local_address_toward(self, peer_host: str) -> str:
        cached = self._route_cache.get(peer_host)
        if cached is not None:
            return cached
        family = _family(peer_host)
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                # connect() on UDP sends nothing; it only asks the routing table.
                probe.connect((peer_host, 9))
                host = str(probe.getsockname()[0])
        except OSError:
            host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
        if len(self._route_cache) > 4096:
            self._route_cache.clear()
        self._route_cache[peer_host] = host
        return host

    def connection(self, connection_id: str | None) -> SIPStreamProtocol | None:
        """A live connection by id (a registered flow), or None if it is gone."""
        if connection_id is None:
            return None
        for factory in self._stream.values():
            found = factory.connections.get(connection_id)
            if found is not None:
                return found
        return None

    def send(
        self,
        data: bytes,
        peer: Peer,
        *,
        connection_id: str | None = None,
        on_error: ErrorCallback | None = None,
    ) -> bool:
        """Send one message to ``peer``; False (and ``on_error``) if it cannot go.

        :param connection_id: the flow's connection to use first (RFC 5626 §5.3).
        """
        if peer.transport == "udp":
            return self._send_udp(data, peer, on_error)
        flow = self.connection(connection_id)
        if flow is not None:
            flow.send(data, peer)
            return True
        factory = self._stream.get(peer.transport)
        if factory is None:
            return self._fail(on_error, f"no {peer.transport} transport configured")
        for connection in factory.connections.values():
            if connection.peer == peer:
                connection.send(data, peer)
                return True
        self._connect(factory, data, peer, on_error)
        return True

    def _send_udp(
        self, data: bytes, peer: Peer, on_error: ErrorCallback | None
    ) -> bool:
        family = _family(peer.host)
        for protocol in self._udp:
            if _family(protocol.local.host or "0.0.0.0") == family:
                protocol.send(data, peer)
                return True
        return self._fail(on_error, f"no UDP socket for {peer.host}")

    def _connect(
        self,
        factory: SIPStreamFactory,
        data: bytes,
        peer: Peer,
        on_error: ErrorCallback | None,
    ) -> None:
        pending = self._pending.get(peer)
        if pending is None:
            pending = self._pending[peer] = _Pending()
            if peer.transport != "tcp":
                del self._pending[peer]
                self._fail(on_error, f"cannot open {peer.transport} connections yet")
                return
            self._reactor.connectTCP(
                peer.host, peer.port, _OutboundFactory(self, factory, peer), timeout=10
            )
        pending.queue.append(data)
        if on_error is not None:
            pending.errors.append(on_error)

    def _connected(self, key: Peer, protocol: SIPStreamProtocol) -> None:
        pending = self._pending.pop(key, None)
        if pending is None:
            return
        for data in pending.queue:
            protocol.send(data, key)

    def _failed(self, key: Peer, why: str) -> None:
        pending = self._pending.pop(key, None)
        self.log.info(
            "cannot connect to {transport} {host}:{port}: {why}",
            transport=key.transport,
            host=key.host,
            port=key.port,
            why=why,
        )
        if pending is not None:
            for callback in pending.errors:
                callback(why)

    def _fail(self, on_error: ErrorCallback | None, why: str) -> bool:
        if on_error is not None:
            on_error(why)
        return False
