"""SIP over TCP and TLS: framing by Content-Length (RFC 3261 §18.3).

Theory of operation: each connection owns a StreamFramer. Whole messages go to the
receiver; a CRLFCRLF keepalive is answered with CRLF (RFC 5626 §4.4.1); input that
cannot be framed (no or bad Content-Length, oversized) gets a 400 when it can be
addressed and then the connection is closed, since nothing after it can be framed
reliably. A connection silent for ``idle_timeout`` seconds is closed, and one that
started a message and has not finished it ``message_timeout`` seconds later is
closed too (a slowloris sender keeps a connection busy with a byte now and then).

Every framed message (keepalives included) is admitted on its own, before it is
parsed: a source that is banned or out of tokens midway through a batch of
pipelined messages loses the rest of the batch and its connection. The factory
refuses a connection beyond the per-source or the total cap (ConnectionLimiter),
logging at most one line per ``refusal_log_interval`` seconds. Over TLS
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
from sipproxy.sip.addressing import Peer
from sipproxy.sip.errors import ParseError
from sipproxy.sip.parser import Keepalive, StreamFramer, parse_message
from sipproxy.sip.transports import TCP, kind_of
from sipproxy.transport.receiver import MessageReceiver

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
        #: the deadline of a message begun and not yet complete
        self._deadline: IDelayedCall | None = None
        #: set once we close: whatever still arrives is ignored
        self._closing = False
        self.connection_id = f"{factory.transport_name}-{next(_ids)}"
        self.peer = Peer(factory.transport_name, "", 0)
        self._local = Peer(factory.transport_name, "", 0)
        #: called once connected; outbound connections flush their queue here
        self.on_connected: Callable[[], None] | None = None
        #: counted against the per-source connection limit (inbound only)
        self.counted = False
        #: a connection a client opened to us (buildProtocol), not one we opened
        self.inbound = False
        #: inbound TLS: the handshake has its deadline too (see connectionMade)
        self._awaiting_handshake = False
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
        if self.inbound and kind_of(name).secure:
            # A TLS handshake trickled a byte at a time holds a connection as
            # well as a trickled message does: it gets the same deadline.
            self._awaiting_handshake = True
            self._deadline = self._factory.clock.callLater(
                self._factory.message_timeout, self._too_slow
            )
        if self.on_connected is not None:
            self.on_connected()

    def handshakeCompleted(self) -> None:  # noqa: N802 - Twisted's name
        """TLS is up (called by Twisted's TLS wrapper only)."""
        if self._awaiting_handshake:
            self._awaiting_handshake = False
            if self._deadline is not None and self._deadline.active():
                self._deadline.cancel()
            self._deadline = None
        self.secure = True
        if self.on_handshake is not None:
            self.on_handshake()

    @override
    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        if self._idle is not None and self._idle.active():
            self._idle.reset(self._factory.idle_timeout)
        admit = self._factory.admit
        items = self._framer.feed(data)
        for item in items:
            # Per message, not per read: one write can carry thousands
            # of pipelined requests, and a ban earned by one of them must stop
            # the next.
            if admit is not None and not admit(self.peer.host):
                self._refuse()
                return
            if isinstance(item, Keepalive):
                self.transport.write(b"\r\n")  # type: ignore[union-attr]
            elif isinstance(item, ParseError):
                self._unframeable(item)
                return
            else:
                self._deliver(item)
            if self._closing:  # a message's handling closed the connection
                return
        self._watch_message(completed=bool(items))

    def _watch_message(self, *, completed: bool) -> None:
        """Give a started message its deadline; a finished one needs none."""
        deadline = self._deadline
        if deadline is not None and (completed or not self._framer.in_message):
            if deadline.active():
                deadline.cancel()
            self._deadline = deadline = None
        if deadline is None and self._framer.in_message:
            self._deadline = self._factory.clock.callLater(
                self._factory.message_timeout, self._too_slow
            )

    def _too_slow(self) -> None:
        self._deadline = None
        self.log.info(
            "closing {transport} connection from {host}:{port}: {what} not "
            "finished within {seconds} s",
            what="the TLS handshake" if self._awaiting_handshake else "a message",
            transport=self.peer.transport,
            host=self.peer.host,
            port=self.peer.port,
            seconds=self._factory.message_timeout,
        )
        self._close()

    def _refuse(self) -> None:
        # A banned or flooding source: the rest of its batch goes unread, and its
        # connection with it (the transport counted the drop).
        self._close()

    def _close(self) -> None:
        self._closing = True
        self.transport.loseConnection()  # type: ignore[union-attr]

    def _deliver(self, frame: bytes, *, stream: bool = True) -> None:
        """Parse one framed message and hand it on; ``stream``: as parse_message."""
        receiver = self._factory.receiver
        try:
            try:
                message = parse_message(frame, stream=stream)
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
        self._close()

    def _timed_out(self) -> None:
        self._idle = None
        self.log.debug(
            "closing idle connection from {host}:{port}",
            host=self.peer.host,
            port=self.peer.port,
        )
        self._close()

    def send(self, data: bytes, peer: Peer) -> None:
        """Write one message on this connection; ``peer`` is implied by it."""
        self.transport.write(data)  # type: ignore[union-attr]

    @override
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._closing = True
        for timer in (self._idle, self._deadline):
            if timer is not None and timer.active():
                timer.cancel()
        self._idle = self._deadline = None
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
        transport_name: str = TCP.name,
        idle_timeout: float = 600.0,
        message_timeout: float = 10.0,
        max_message_size: int = 65536,
        refusal_log_interval: float = 60.0,
    ) -> None:
        self.receiver = receiver
        self.clock = clock
        self.transport_name = transport_name
        self.idle_timeout = idle_timeout
        self.message_timeout = message_timeout
        self.max_message_size = max_message_size
        self.refusal_log_interval = refusal_log_interval
        #: connections refused since the last log line about refusals
        self.refused = 0
        self._refusal_logged_at: float | None = None
        #: live connections by id: a flow names one of these (RFC 5626)
        self.connections: dict[str, SIPStreamProtocol] = {}
        #: asked with the source IP per framed message before parsing (bans, rate
        #: limits); False drops the rest of what was read and closes the connection
        self.admit: Callable[[str], bool] | None = None
        #: caps inbound connections per source address (None: no cap)
        self.limit: ConnectionLimiter | None = None

    @override
    def buildProtocol(self, addr: IAddress | None) -> SIPStreamProtocol | None:
        """An inbound connection; None (Twisted closes it) beyond the source's cap."""
        host = getattr(addr, "host", "")
        limit = self.limit
        if limit is not None and not limit.opened(host):
            self._refused(host, limit)
            return None
        protocol = self.new_protocol()
        protocol.counted = limit is not None
        protocol.inbound = True
        return protocol

    def _refused(self, host: str, limit: ConnectionLimiter) -> None:
        """Log a refusal; at most one line per interval, whoever is refused.

        A flood of connections must not become a flood of log lines (disk, and
        the fail2ban reader behind them).
        """
        self.refused += 1
        now = self.clock.seconds()
        last = self._refusal_logged_at
        if last is not None and now - last < self.refusal_log_interval:
            return
        self._refusal_logged_at = now
        why = (
            f"{limit.total} connections open, the max-connections cap"
            if limit.full
            else f"{limit.count(host)} connections from this source already"
        )
        self.log.warn(
            "refused {refused} {transport} connection(s), the last from {host}: {why}",
            refused=self.refused,
            transport=self.transport_name,
            host=host,
            why=why,
        )
        self.refused = 0

    def new_protocol(self) -> SIPStreamProtocol:
        """One connection's protocol (WebSocket's factory makes its own kind)."""
        return SIPStreamProtocol(self)

    def build_outbound(self) -> SIPStreamProtocol:
        """A connection we open ourselves: never counted against a source's cap."""
        return self.new_protocol()
