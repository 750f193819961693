"""Sending requests out: which socket, which connection, and what to call ourselves.

Theory of operation: every listening socket registers here. To reach a peer over
UDP the message leaves from a listening socket of the same address family, so the
peer's answers come back to a port we read (RFC 3261 §18.1.1). Over TCP an open
connection to the peer is reused (a registered phone's flow first: RFC 5626 §5.3,
the phone is reachable only through the connection it opened); otherwise a new one
is opened and the message waits in a short queue until it connects. A failure to
connect is reported to ``on_error`` so the proxy can try the next target.

TLS works like TCP, with the host name we meant to reach (``server_name``) as
part of the key: a connection we opened is reused only for the name its
certificate was verified for (or for an IP literal target, for any name), and
queued messages wait for the handshake, so a refused certificate fails the
branch at once, with the reason, rather than after a timeout.

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

from sipproxy.sip.addressing import Peer, ip_of
from sipproxy.sip.transports import KINDS, TCP, UDP
from sipproxy.transport.stream import SIPStreamFactory, SIPStreamProtocol
from sipproxy.transport.tls import ClientConnector, TLSClient
from sipproxy.transport.udp import SIPDatagramProtocol

ErrorCallback = Callable[[str], None]
#: seconds a TLS handshake may take before the connection counts as failed
HANDSHAKE_TIMEOUT = 10.0
#: a connection being opened: to whom, and (TLS) for which verified name
_Key = tuple[Peer, str | None]


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

    def __init__(
        self,
        owner: Transports,
        stream: SIPStreamFactory,
        key: _Key,
        connector: ClientConnector | None = None,
    ) -> None:
        self._owner = owner
        self._stream = stream
        self._key = key
        self._connector = connector

    @override
    def buildProtocol(self, addr: IAddress | None) -> SIPStreamProtocol:
        protocol = self._stream.build_outbound()
        connector = self._connector
        if connector is None:
            protocol.on_connected = lambda: self._owner._connected(self._key, protocol)
            return protocol
        protocol.server_name = connector.server_name

        def secured() -> None:
            protocol.on_lost = None
            self._owner._connected(self._key, protocol)

        def lost(reason: Failure) -> None:
            # Lost before the handshake finished: refused, or it refused us.
            why = connector.failure or f"TLS handshake failed: {_tls_error(reason)}"
            self._owner._failed(self._key, why)

        def too_slow() -> None:
            # A server that accepts TCP but never finishes TLS would otherwise
            # hold every queued request until the idle timeout.
            if not protocol.secure and protocol.transport is not None:
                connector.failure = "TLS handshake timed out"
                protocol.transport.abortConnection()  # type: ignore[attr-defined]

        protocol.on_handshake = secured
        protocol.on_lost = lost
        self._owner._reactor.callLater(HANDSHAKE_TIMEOUT, too_slow)
        return protocol

    @override
    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self._owner._failed(self._key, reason.getErrorMessage())


class Transports:
    """Every socket we listen on, and the way out to any peer."""

    log = Logger()

    def __init__(self, reactor: Any, *, tls: TLSClient | None = None) -> None:
        """Nothing is sent until sockets are added.

        :param tls: how TLS connections are opened; None: no outbound TLS.
        """
        self._reactor = reactor
        self._udp: list[SIPDatagramProtocol] = []
        self._stream: dict[str, SIPStreamFactory] = {}
        #: listening (transport, family) -> (interface, port)
        self._listening: dict[tuple[str, int], tuple[str, int]] = {}
        self._pending: dict[_Key, _Pending] = {}
        self._route_cache: dict[str, str] = {}
        self.tls = tls

    def add_udp(self, protocol: SIPDatagramProtocol) -> None:
        """Register a bound UDP socket."""
        self._udp.append(protocol)
        local = protocol.local
        self._listening.setdefault(
            (UDP.name, _family(local.host or "0.0.0.0")), (local.host, local.port)
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
        if transport == UDP.name:
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
        server_name: str | None = None,
    ) -> bool:
        """Send one message to ``peer``; False (and ``on_error``) if it cannot go.

        :param connection_id: the flow's connection to use first (RFC 5626 §5.3).
        :param server_name: TLS: the host the certificate must name (RFC 5922
            §4: the host of the URI we resolved); default: the peer's address.
        """
        if peer.transport == UDP.name:
            return self._send_udp(data, peer, on_error)
        flow = self.connection(connection_id)
        if flow is not None:
            flow.send(data, peer)
            return True
        factory = self._stream.get(peer.transport)
        if factory is None:
            return self._fail(on_error, f"no {peer.transport} transport configured")
        name = server_name if _secure(peer.transport) else None
        if name is not None and ip_of(name) is not None:
            name = None
        key = (peer, name)
        pending = self._pending.get(key)
        if pending is not None:
            # Still connecting (or in the TLS handshake): wait with the others.
            self._queue(pending, data, on_error)
            return True
        for connection in factory.connections.values():
            if connection.peer == peer and _serves(connection, name):
                connection.send(data, peer)
                return True
        self._connect(factory, data, key, on_error)
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
        key: _Key,
        on_error: ErrorCallback | None,
    ) -> None:
        peer, name = key
        if _secure(peer.transport):
            if self.tls is None:
                self._fail(on_error, "no TLS client configured")
                return
            connector = self.tls.connector(name or peer.host)
            pending = self._pending[key] = _Pending()
            self._reactor.connectSSL(
                peer.host,
                peer.port,
                _OutboundFactory(self, factory, key, connector),
                connector,
                timeout=10,
            )
        elif peer.transport == TCP.name:
            pending = self._pending[key] = _Pending()
            self._reactor.connectTCP(
                peer.host, peer.port, _OutboundFactory(self, factory, key), timeout=10
            )
        else:
            self._fail(on_error, f"cannot open {peer.transport} connections")
            return
        self._queue(pending, data, on_error)

    @staticmethod
    def _queue(pending: _Pending, data: bytes, on_error: ErrorCallback | None) -> None:
        pending.queue.append(data)
        if on_error is not None:
            pending.errors.append(on_error)

    def _connected(self, key: _Key, protocol: SIPStreamProtocol) -> None:
        pending = self._pending.pop(key, None)
        if pending is None:
            return
        for data in pending.queue:
            protocol.send(data, key[0])

    def _failed(self, key: _Key, why: str) -> None:
        pending = self._pending.pop(key, None)
        peer, name = key
        self.log.info(
            "cannot connect to {transport} {host}:{port}{name}: {why}",
            transport=peer.transport,
            host=peer.host,
            port=peer.port,
            name=f" ({name})" if name else "",
            why=why,
        )
        if pending is not None:
            for callback in pending.errors:
                callback(why)

    def _fail(self, on_error: ErrorCallback | None, why: str) -> bool:
        if on_error is not None:
            on_error(why)
        return False


def _serves(connection: SIPStreamProtocol, name: str | None) -> bool:
    """Whether a connection may carry a request meant for ``name`` (TLS).

    A connection we opened was verified for one name only (RFC 5922 §4); one a
    phone opened, or a request for an address rather than a name, any will do.
    """
    return name is None or connection.server_name in (None, name)


def _tls_error(reason: Failure) -> str:
    """An OpenSSL failure in a few words rather than its nested tuple."""
    value = reason.value
    errors = getattr(value, "args", ())
    if errors and isinstance(errors[0], list) and errors[0]:
        last = errors[0][-1]
        if isinstance(last, tuple) and len(last) == 3:
            return str(last[2])
    return reason.getErrorMessage()


def _secure(transport: str) -> bool:
    kind = KINDS.get(transport)
    return kind is not None and kind.secure
