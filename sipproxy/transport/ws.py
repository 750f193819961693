"""SIP over WebSocket (RFC 7118): browser phones, over ws: and wss: listeners.

Theory of operation. The WebSocket protocol itself is wsproto's (sans-IO, h11
beneath it for the HTTP upgrade); this module is the thin Twisted edge that
feeds it the bytes a connection reads, acts on the events it gives back, and
hands each complete SIP message to the receiver, as stream.py does for TCP.
Everything else a connection is comes from :class:`SIPStreamProtocol`: its
connection id (a flow, RFC 5626: a browser is reachable only over the
connection it opened), the per-source and total connection caps, the deadlines
and the TLS handshake of ``wss:``.

- **The upgrade** (RFC 6455 §4.2, RFC 7118 §4.1). Admitted like a message (bans,
  rate limit); it must offer the ``sip`` subprotocol, which the answer selects
  (a browser drops a connection whose answer lacks it), else 400 and close; with
  ``--ws-origin`` the browser's Origin must be one of them (RFC 6455 §10.2: the
  defence against another site's page using the browser), else 403 and close.
  Until the upgrade is complete the connection has ``message_timeout`` seconds
  (after the TLS handshake, which has its own), like a message begun on TCP.
- **Messages** (RFC 7118 §4.2): one SIP message per WebSocket message, in a text
  or a binary frame (or several continuation frames); each is admitted, then
  parsed as a datagram is, the WebSocket message being its boundary. A message
  larger than ``max_message_size`` closes the connection (1009), as does any
  frame wsproto refuses (unmasked, reserved bits, bad UTF-8 in a text message:
  1002, 1007): after it, nothing that follows can be trusted to be framed. A SIP
  message that does not parse gets its 400 and the connection stays.
- **Keepalive** (RFC 7118 §6). A ping is answered with a pong; a connection
  silent for ``ping_interval`` is pinged (browsers answer by themselves, so a
  phone's flow stays open through NATs and proxies that close idle
  connections), and one silent for ``idle_timeout`` is closed. A double-CRLF
  message (RFC 5626 §4.4.1, which some SIP libraries send over WebSocket) gets a
  CRLF message back.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from typing_extensions import override
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from sipproxy.sip.addressing import Peer
from sipproxy.sip.transports import WS
from sipproxy.transport.receiver import MessageReceiver
from sipproxy.transport.stream import SIPStreamFactory, SIPStreamProtocol

#: RFC 7118 §4.1: the WebSocket subprotocol SIP is carried in.
SUBPROTOCOL = "sip"
#: seconds of silence after which we ping (RFC 7118 §6); well below the idle
#: timeouts of NATs and HTTP proxies (nginx's proxy_read_timeout is 60 s)
PING_INTERVAL = 30.0


class WebSocketProtocol(SIPStreamProtocol):
    """One WebSocket connection carrying SIP messages both ways."""

    def __init__(self, factory: WebSocketFactory) -> None:
        super().__init__(factory)
        self._ws_factory = factory
        self._ws = WSConnection(ConnectionType.SERVER)
        #: the upgrade was accepted: SIP messages may flow
        self.upgraded = False
        #: the frames of a message not yet complete, and their size
        self._parts: list[bytes] = []
        self._size = 0
        #: reactor time anything was last read (pongs included)
        self._heard = 0.0

    @override
    def connectionMade(self) -> None:
        factory = self._ws_factory
        super().connectionMade()
        # The stream's idle timer is replaced by a tick that pings first.
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._heard = factory.clock.seconds()
        self._idle = factory.clock.callLater(self._tick_interval(), self._tick)
        if self.inbound and self._deadline is None:
            # ws: the upgrade has the deadline a message has (a slowloris
            # upgrade holds a connection as well as a slow message does).
            self._deadline = factory.clock.callLater(
                factory.message_timeout, self._too_slow
            )

    @override
    def handshakeCompleted(self) -> None:
        super().handshakeCompleted()
        # wss: TLS is up (its deadline is over); now the upgrade has its own.
        if self.inbound and not self.upgraded and self._deadline is None:
            self._deadline = self._ws_factory.clock.callLater(
                self._ws_factory.message_timeout, self._too_slow
            )

    @override
    def dataReceived(self, data: bytes) -> None:
        if self._closing or not data:
            # Empty bytes would tell h11 the peer closed its side (EOF).
            return
        self._heard = self._ws_factory.clock.seconds()
        try:
            self._ws.receive_data(data)
        except RemoteProtocolError as error:
            # Not an HTTP upgrade we can read (h11 also caps its size).
            hint = error.event_hint
            self._refuse_upgrade(
                hint.status_code if isinstance(hint, RejectConnection) else 400,
                str(error),
            )
            return
        completed = False
        while not self._closing:
            # Accepting the upgrade hands wsproto any bytes read after it:
            # their events come with the next round.
            events = list(self._ws.events())
            if not events:
                break
            for event in events:
                completed = self._handle(event) or completed
                if self._closing:
                    return
        if not self._closing:
            self._watch(completed=completed)

    def _handle(self, event: Event) -> bool:
        """Act on one event; whether it completed something (message, control)."""
        if isinstance(event, TextMessage | BytesMessage):
            return self._frame(event)
        if isinstance(event, Request):
            self._upgrade(event)
        elif isinstance(event, Ping):
            self._write(event.response())
        elif isinstance(event, CloseConnection):
            self._closed_by_peer(event)
        return True  # an upgrade, a ping, a pong or a close: nothing pending

    def _upgrade(self, request: Request) -> None:
        factory = self._ws_factory
        admit = factory.admit
        if admit is not None and not admit(self.peer.host):
            self._refuse()  # banned or flooding: unanswered, like a message
            return
        offered = [p.strip().lower() for p in request.subprotocols]
        if SUBPROTOCOL not in offered:
            # RFC 7118 §4.1: SIP is spoken only inside the "sip" subprotocol.
            self._refuse_upgrade(400, "the upgrade does not offer subprotocol sip")
            return
        origin = _header(request, b"origin")
        if factory.origins and (origin or "").lower() not in factory.origins:
            self._refuse_upgrade(403, f"origin {origin or '(none)'} is not allowed")
            return
        self._write(AcceptConnection(subprotocol=SUBPROTOCOL))
        self.upgraded = True
        self._parts, self._size = [], 0

    def _frame(self, event: TextMessage | BytesMessage) -> bool:
        data = event.data
        part = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        self._size += len(part)
        if self._size > self._ws_factory.max_message_size:
            self._close_with(
                CloseReason.MESSAGE_TOO_BIG,
                f"a message larger than {self._ws_factory.max_message_size} bytes",
            )
            return False
        self._parts.append(part)
        if not event.message_finished:
            return False
        message = b"".join(self._parts)
        self._parts, self._size = [], 0
        admit = self._ws_factory.admit
        # Per message, as on TCP: a ban earned by one stops the next.
        if admit is not None and not admit(self.peer.host):
            self._refuse()
            return True
        if not message.strip(b"\r\n"):
            if message == b"\r\n\r\n":
                self.send(b"\r\n", self.peer)  # RFC 5626 §4.4.1 keepalive
            return True
        # RFC 7118 §4.2: the WebSocket message is the SIP message's boundary,
        # so it parses as a datagram does (Content-Length may be left out).
        self._deliver(message, stream=False)
        return True

    def _closed_by_peer(self, event: CloseConnection) -> None:
        if self._ws.state is ConnectionState.REMOTE_CLOSING:
            # RFC 6455 §5.5.1: answer the close, then the TCP connection goes.
            self._write(event.response())
            self._close()
            return
        # wsproto reports a frame it cannot accept as a close of its own making.
        self._close_with(event.code, event.reason or "malformed frame")

    def _close_with(self, code: int, why: str) -> None:
        self.log.info(
            "closing {transport} connection from {host}:{port}: {why}",
            transport=self.peer.transport,
            host=self.peer.host,
            port=self.peer.port,
            why=why,
        )
        if self._ws.state is ConnectionState.OPEN:
            self._write(CloseConnection(code=code))
        self._close()

    def _refuse_upgrade(self, status: int, why: str) -> None:
        self.log.info(
            "refused {transport} upgrade from {host}:{port} with {status}: {why}",
            transport=self.peer.transport,
            host=self.peer.host,
            port=self.peer.port,
            status=status,
            why=why,
        )
        if self._ws.state is ConnectionState.CONNECTING:
            self._write(RejectConnection(status_code=status))
        self._close()

    def _write(self, event: Event) -> None:
        try:
            data = self._ws.send(event)
        except LocalProtocolError:
            # Nothing can be said in this state (h11 after a request it could
            # not read, a close already sent): the connection just goes.
            return
        self.transport.write(data)  # type: ignore[union-attr]

    def _watch(self, *, completed: bool) -> None:
        """Give a message begun, or an upgrade not done, its deadline.

        Whatever was read without completing anything is a message (or frame
        header) begun; the deadline then runs until something completes.
        """
        deadline = self._deadline
        if not self.upgraded:
            return  # the upgrade's deadline runs from the connection's start
        if completed and not self._parts and deadline is not None:
            if deadline.active():
                deadline.cancel()
            self._deadline = deadline = None
        if deadline is None and (self._parts or not completed):
            self._deadline = self._ws_factory.clock.callLater(
                self._ws_factory.message_timeout, self._too_slow
            )

    @override
    def _too_slow(self) -> None:
        self._deadline = None
        if not self.secure and self._awaiting_handshake:
            what = "the TLS handshake"
        elif not self.upgraded:
            what = "the WebSocket upgrade"
        else:
            what = "a message"
        self.log.info(
            "closing {transport} connection from {host}:{port}: {what} not "
            "finished within {seconds} s",
            what=what,
            transport=self.peer.transport,
            host=self.peer.host,
            port=self.peer.port,
            seconds=self._ws_factory.message_timeout,
        )
        self._close()

    def _tick_interval(self) -> float:
        factory = self._ws_factory
        return min(factory.ping_interval, factory.idle_timeout)

    def _tick(self) -> None:
        factory = self._ws_factory
        self._idle = None
        silent = factory.clock.seconds() - self._heard
        if silent >= factory.idle_timeout:
            self.log.debug(
                "closing idle connection from {host}:{port}",
                host=self.peer.host,
                port=self.peer.port,
            )
            self._close()
            return
        if self.upgraded and silent >= factory.ping_interval:
            self._write(Ping(b"sipproxy"))
        self._idle = factory.clock.callLater(self._tick_interval(), self._tick)

    @override
    def send(self, data: bytes, peer: Peer) -> None:
        """Write one SIP message as one WebSocket message (text if it is UTF-8)."""
        if not self.upgraded or self._ws.state is not ConnectionState.OPEN:
            return
        event: Message[Any]
        try:
            # Text frames suit the browser's JavaScript; SIP is UTF-8 text
            # unless a body says otherwise (RFC 7118 §4.2 allows both).
            event = TextMessage(data=data.decode("utf-8"))
        except UnicodeDecodeError:
            event = BytesMessage(data=data)
        self._write(event)

    @override
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._parts = []
        super().connectionLost(reason)


class WebSocketFactory(SIPStreamFactory):
    """Builds a WebSocketProtocol per connection (``ws:`` and ``wss:`` listeners).

    :param origins: the Origins an upgrade may come from, lower case; empty:
        any (a browser's page from any site may then use the server).
    """

    def __init__(
        self,
        receiver: MessageReceiver,
        clock: Any,
        *,
        transport_name: str = WS.name,
        origins: frozenset[str] = frozenset(),
        ping_interval: float = PING_INTERVAL,
        **settings: Any,
    ) -> None:
        super().__init__(receiver, clock, transport_name=transport_name, **settings)
        self.origins = origins
        self.ping_interval = ping_interval

    @override
    def new_protocol(self) -> WebSocketProtocol:
        return WebSocketProtocol(self)


def _header(request: Request, name: bytes) -> str | None:
    for key, value in request.extra_headers:
        key_bytes = key if isinstance(key, bytes) else key.encode()
        if key_bytes.lower() == name:
            return value.decode("latin-1") if isinstance(value, bytes) else value
    return None
