"""A small blocking WebSocket client for SIP (RFC 7118), on wsproto and a socket.

For the integration tests and bench/: it upgrades with the ``sip`` subprotocol
(or whatever a test asks for), sends each SIP message as one text message and
gives back each message received. ``wss`` wraps the socket with ``ssl`` first.
No dependency beyond the server's own (wsproto).
"""

from __future__ import annotations

import socket
import ssl
import time
from collections import deque

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)


class RefusedError(Exception):
    """The server answered the upgrade with ``status`` (or closed: 0)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"upgrade refused with {status}")
        self.status = status


class WSClient:
    """One WebSocket connection to the proxy; a browser phone's, by hand.

    :param subprotocols: offered in the upgrade (RFC 7118 §4.1 wants ``sip``).
    :param origin: the Origin header a browser would send; None: none.
    :param context: TLS (wss) with this context; None: plain ws.
    """

    def __init__(
        self,
        port: int,
        *,
        host: str = "127.0.0.1",
        subprotocols: tuple[str, ...] = ("sip",),
        origin: str | None = "http://127.0.0.1",
        context: ssl.SSLContext | None = None,
        server_hostname: str = "example.test",
        timeout: float = 10.0,
        upgrade: bool = True,
    ) -> None:
        raw = socket.create_connection((host, port), timeout=timeout)
        self.sock: socket.socket = (
            context.wrap_socket(raw, server_hostname=server_hostname)
            if context is not None
            else raw
        )
        self.sock.settimeout(timeout)
        self.local_port = self.sock.getsockname()[1]
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.subprotocol: str | None = None
        self.pongs: list[bytes] = []
        self.closed_with: int | None = None
        self._events: deque[Event] = deque()
        self._host = host
        self._origin = origin
        self._subprotocols = subprotocols
        if upgrade:
            self.upgrade()

    def upgrade(self) -> None:
        """Send the HTTP upgrade and wait for the answer; Refused if not 101."""
        extra = [(b"Origin", self._origin.encode())] if self._origin is not None else []
        self.sock.sendall(
            self.ws.send(
                Request(
                    host=self._host,
                    target="/",
                    subprotocols=list(self._subprotocols),
                    extra_headers=extra,
                )
            )
        )
        while True:
            event = self._next_event()
            if event is None:
                raise RefusedError(0)
            if isinstance(event, AcceptConnection):
                self.subprotocol = event.subprotocol
                return
            if isinstance(event, RejectConnection):
                raise RefusedError(event.status_code)
            if isinstance(event, RejectData):
                continue

    def send(self, data: bytes | str) -> None:
        """Send one SIP message as one text (str) or binary (bytes) message."""
        event: Event = (
            TextMessage(data=data) if isinstance(data, str) else BytesMessage(data=data)
        )
        self.sock.sendall(self.ws.send(event))

    def send_raw(self, data: bytes) -> None:
        """Bytes as they are (a malformed frame, a trickled upgrade)."""
        self.sock.sendall(data)

    def ping(self, payload: bytes = b"hi") -> None:
        self.sock.sendall(self.ws.send(Ping(payload)))

    def receive(self, timeout: float | None = None) -> bytes | None:
        """The next whole message (pings answered, pongs kept); None once closed."""
        parts: list[bytes] = []
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no message")
                self.sock.settimeout(left)
            event = self._next_event()
            if event is None:
                return None
            if isinstance(event, TextMessage | BytesMessage):
                data = event.data
                parts.append(data.encode() if isinstance(data, str) else bytes(data))
                if event.message_finished:
                    return b"".join(parts)
            elif isinstance(event, Ping):
                self.sock.sendall(self.ws.send(event.response()))
            elif isinstance(event, Pong):
                self.pongs.append(bytes(event.payload))
            elif isinstance(event, CloseConnection):
                self.closed_with = event.code
                if self.ws.state is ConnectionState.REMOTE_CLOSING:
                    self.sock.sendall(self.ws.send(event.response()))
                return None

    def receive_until(self, predicate: object, timeout: float = 10.0) -> bytes:
        """The first message for which ``predicate(message)`` holds."""
        assert callable(predicate)
        deadline = time.monotonic() + timeout
        while True:
            message = self.receive(max(0.01, deadline - time.monotonic()))
            if message is None:
                raise ConnectionError("closed")
            if predicate(message):
                return message

    def _next_event(self) -> Event | None:
        while not self._events:
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                data = b""
            if not data:
                return None
            self.ws.receive_data(data)
            self._events.extend(self.ws.events())
        return self._events.popleft()

    def closed(self, timeout: float = 5.0) -> bool:
        """Whether the server closes the connection within ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return False
            except (ConnectionResetError, ssl.SSLError, OSError):
                return True
            if not data:
                return True
        return False

    def close(self) -> None:
        self.sock.close()
