"""SIP over TCP and TLS: framing by Content-Length (RFC 3261 §18.3).

Theory of operation: each connection owns a StreamFramer. Whole messages go to the
receiver; a CRLFCRLF keepalive is answered with CRLF (RFC 5626 §4.4.1); input that
cannot be framed (no or bad Content-Length, oversized) gets a 400 when it can be
addressed and then the connection is closed, since nothing after it can be framed
reliably. A connection silent for ``idle_timeout`` seconds is closed. Over TLS
the same protocol runs inside Twisted's TLS wrapper, which tells it when the
handshake is done (IHandshakeListener): a connection we open is used only then.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer

from sipproxy.guard import ConnectionLimiter
from sipproxy.sip.errors import ParseError
from sipproxy.sip.parser import Keepalive, StreamFramer, parse_message
from sipproxy.transport.peer import MessageReceiver, Peer

_ids = itertools.count(1)


def _peer(transport: str, address: IAddress) -> Peer:
    return Peer(transport, getattr(address, "host", ""), getattr(address, "port", 0))


@implementer(IHandshakeListener)
class SIPStreamProtocol(Protocol):
    """One TCP or TLS connection carrying SIP messages both ways."""

    log = Logger()

    def __init__(self, factory: SIPStreamFactory) -> None:
        self._factory = factory
        self._framer = StreamFramer(factory.max_message_size)
        self._idle: IDelayedCall | None = None
        self.connection_id = f"{factory.transport_name}-{next(_ids)}"
        self.peer = Peer(factory.transport_name, "", 0)
        self._local = Peer(factory.transport_name, "", 0)
        #: called once connected; outbound connections flush their queue here
        self.on_connected: Callable[[], None] | None = None
        #: counted against the per-source connection limit (inbound only)
        self.counted = False
        #: TLS: called once the handshake succeeded (outbound connections wait)
        self.on_handshake: Callable[[], None] | None = None
        #: called with the reason when the connection goes (outbound TLS)
        self.on_lost: Callable[[Failure], None] | None = None
        #: TLS we opened: the host name its certificate was verified for
        self.server_name: str | None = None
        #: TLS: the handshake completed
        self.secure = False

    @property
    def local(self) -> Peer:
        """Our end of the connection."""
        return self._local

    @override
    def connectionMade(self) -> None:
        name = self._factory.transport_name
        self.peer = _peer(name, self.transport.getPeer())  # type: ignore[union-attr]
        self._local = _peer(name, self.transport.getHost())  # type: ignore[union-attr]
        self._factory.connections[self.connection_id] = self
        self._idle = self._factory.clock.callLater(
            self._factory.idle_timeout, self._timed_out
        )
        if self.on_connected is not None:
            self.on_connected()

    def handshakeCompleted(self) -> None:  # noqa: N802 - Twisted's name
        """TLS is up (called by Twisted's TLS wrapper only)."""
        self.secure = True
        if self.on_handshake is not None:
            self.on_handshake()

    @override
    def dataReceived(self, data: bytes) -> None:
        admit = self._factory.admit
        if admit is not None and not admit(self.peer.host):
            # A banned or flooding source: its connection goes, unanswered.
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        if self._idle is not None and self._idle.active():
            self._idle.reset(self._factory.idle_timeout)
        for item in self._framer.feed(data):
            if isinstance(item, Keepalive):
                self.transport.write(b"\r\n")  # type: ignore[union-attr]
            elif isinstance(item, ParseError):
                self._unframeable(item)
                return
            else:
                self._deliver(item)

    def _deliver(self, frame: bytes) -> None:
        receiver = self._factory.receiver
        try:
            try:
                message = parse_message(frame, stream=True)
            except ParseError as error:
                # Framing held, so the next message starts at a known offset:
                # answer this one (if it can be addressed) and keep the connection.
                receiver.message_invalid(error, self.peer, self)
                return
            receiver.message_received(message, self.peer, self)
        except Exception:
            # A bug for one message must not cost the phone its connection.
            self.log.failure(
                "internal error on a message from {host}:{port}",
                host=self.peer.host,
                port=self.peer.port,
            )

    def _unframeable(self, error: ParseError) -> None:
        self._factory.receiver.message_invalid(error, self.peer, self)
        self.log.info(
            "closing {transport} connection from {host}:{port}: {reason}",
            transport=self.peer.transport,
            host=self.peer.host,
            port=self.peer.port,
            reason=error.reason,
        )
        self.transport.loseConnection()  # type: ignore[union-attr]

    def _timed_out(self) -> None:
        self._idle = None
        self.log.debug(
            "closing idle connection from {host}:{port}",
            host=self.peer.host,
            port=self.peer.port,
        )
        self.transport.loseConnection()  # type: ignore[union-attr]

    def send(self, data: bytes, peer: Peer) -> None:
        """Write one message on this connection; ``peer`` is implied by it."""
        self.transport.write(data)  # type: ignore[union-attr]

    @override
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None
        self._factory.connections.pop(self.connection_id, None)
        if self.counted and self._factory.limit is not None:
            self._factory.limit.closed(self.peer.host)
            self.counted = False
        if self.on_lost is not None:
            self.on_lost(reason)


class SIPStreamFactory(Factory):
    """Builds a SIPStreamProtocol per connection and knows which are alive."""

    noisy = False  # the service logs one line listing every listener
    log = Logger()

    def __init__(
        self,
        receiver: MessageReceiver,
        clock: IReactorTime,
        *,
        transport_name: str = "tcp",
        idle_timeout: float = 600.0,
        max_message_size: int = 65536,
    ) -> None:
        self.receiver = receiver
        self.clock = clock
        self.transport_name = transport_name
        self.idle_timeout = idle_timeout
        self.max_message_size = max_message_size
        #: live connections by id: a flow names one of these (RFC 5626)
        self.connections: dict[str, SIPStreamProtocol] = {}
        #: asked with the source IP per read before parsing (bans, rate limits)
        self.admit: Callable[[str], bool] | None = None
        #: caps inbound connections per source address (None: no cap)
        self.limit: ConnectionLimiter | None = None

    @override
    def buildProtocol(self, addr: IAddress | None) -> SIPStreamProtocol | None:
        """An inbound connection; None (Twisted closes it) beyond the source's cap."""
        host = getattr(addr, "host", "")
        if self.limit is not None and not self.limit.opened(host):
            self.log.info("refused a connection from {host}: too many", host=host)
            return None
        protocol = SIPStreamProtocol(self)
        protocol.counted = self.limit is not None
        return protocol

    def build_outbound(self) -> SIPStreamProtocol:
        """A connection we open ourselves: never counted against a source's cap."""
        return SIPStreamProtocol(self)
