"""The WebSocket edge on fakes (RFC 7118, RFC 6455): upgrade, frames, keepalive.

The browser's side is wsproto's client, so what the server writes is read back
as a browser would read it.
"""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason

from sipproxy.guard import ConnectionLimiter
from sipproxy.sip.addressing import Peer
from sipproxy.sip.message import Request as SIPRequest
from sipproxy.transport.sender import Transports
from sipproxy.transport.ws import WebSocketFactory, WebSocketProtocol
from tests.transport.test_stream import Recorder

OPTIONS = (
    "OPTIONS sip:example.test SIP/2.0\r\n"
    "Via: SIP/2.0/WS df7jal23ls0d.invalid;branch=z9hG4bK1\r\n"
    "Max-Forwards: 70\r\nFrom: <sip:a@example.test>;tag=1\r\n"
    "To: <sip:example.test>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n"
)


class Browser:
    """The client end: a wsproto client reading what the server wrote."""

    def __init__(
        self,
        *,
        origins: frozenset[str] = frozenset(),
        max_message_size: int = 65536,
        admit: object = None,
        limit: ConnectionLimiter | None = None,
        secure: bool = False,
    ) -> None:
        self.clock = MemoryReactorClock()
        self.recorder = Recorder()
        self.factory = WebSocketFactory(
            self.recorder,
            self.clock,
            transport_name="wss" if secure else "ws",
            origins=origins,
            idle_timeout=600.0,
            message_timeout=10.0,
            max_message_size=max_message_size,
            ping_interval=30.0,
        )
        self.factory.admit = admit  # type: ignore[assignment]
        self.factory.limit = limit
        protocol = self.factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 40000))
        assert isinstance(protocol, WebSocketProtocol)
        self.protocol = protocol
        self.transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8080),
            peerAddress=IPv4Address("TCP", "192.0.2.1", 40000),
        )
        protocol.makeConnection(self.transport)
        self.ws = WSConnection(ConnectionType.CLIENT)

    def upgrade(
        self, subprotocols: tuple[str, ...] = ("sip",), origin: str | None = None
    ) -> list[Event]:
        extra = [(b"Origin", origin.encode())] if origin else []
        self.feed(
            self.ws.send(
                Request(
                    host="example.test",
                    target="/",
                    subprotocols=list(subprotocols),
                    extra_headers=extra,
                )
            )
        )
        return self.events()

    def feed(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def send(self, event: Event) -> None:
        self.feed(self.ws.send(event))

    def events(self) -> list[Event]:
        """What the server wrote since the last call, as the browser sees it."""
        data = self.transport.value()
        self.transport.clear()
        self.ws.receive_data(data)
        return list(self.ws.events())

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)


def open_browser(**settings: object) -> Browser:
    browser = Browser(**settings)  # type: ignore[arg-type]
    events = browser.upgrade()
    assert isinstance(events[0], AcceptConnection), events
    return browser


def test_upgrade_selects_the_sip_subprotocol() -> None:
    browser = Browser()
    events = browser.upgrade(subprotocols=("chat", "sip"))
    assert len(events) == 1
    accepted = events[0]
    assert isinstance(accepted, AcceptConnection)
    # RFC 7118 §4.1: a browser drops an answer that does not select "sip".
    assert accepted.subprotocol == "sip"
    assert browser.protocol.upgraded
    assert not browser.closed


def test_upgrade_without_the_sip_subprotocol_is_refused() -> None:
    browser = Browser()
    events = browser.upgrade(subprotocols=("chat",))
    assert isinstance(events[0], RejectConnection)
    assert events[0].status_code == 400
    assert browser.closed
    assert not browser.protocol.upgraded


def test_a_plain_http_request_is_refused() -> None:
    browser = Browser()
    browser.feed(b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n")
    assert browser.transport.value().startswith(b"HTTP/1.1 400 ")
    assert browser.closed


@pytest.mark.parametrize(
    ("origin", "accepted"),
    [
        ("https://phone.example.test", True),
        ("HTTPS://Phone.Example.Test", True),
        ("https://evil.example", False),
        (None, False),  # with an allow-list, an upgrade must name its page
    ],
)
def test_origin_allow_list(origin: str | None, accepted: bool) -> None:
    browser = Browser(origins=frozenset({"https://phone.example.test"}))
    events = browser.upgrade(origin=origin)
    if accepted:
        assert isinstance(events[0], AcceptConnection)
        assert not browser.closed
    else:
        assert isinstance(events[0], RejectConnection)
        assert events[0].status_code == 403
        assert browser.closed


def test_any_origin_without_an_allow_list() -> None:
    browser = Browser()
    events = browser.upgrade(origin="https://any.example")
    assert isinstance(events[0], AcceptConnection)


def test_text_and_binary_messages_are_both_parsed() -> None:
    browser = open_browser()
    browser.send(TextMessage(data=OPTIONS))
    browser.send(BytesMessage(data=OPTIONS.encode()))
    messages = browser.recorder.messages
    assert len(messages) == 2
    assert all(isinstance(m, SIPRequest) for m in messages)
    assert not browser.recorder.invalid


def test_a_message_in_several_frames_is_one_message() -> None:
    browser = open_browser()
    data = OPTIONS.encode()
    browser.send(BytesMessage(data=data[:20], message_finished=False))
    assert browser.recorder.messages == []
    browser.send(BytesMessage(data=data[20:], message_finished=True))
    assert len(browser.recorder.messages) == 1


def test_the_peer_is_the_connection_and_a_flow() -> None:
    browser = open_browser()
    assert browser.protocol.peer == Peer("ws", "192.0.2.1", 40000)
    assert browser.protocol.connection_id is not None
    assert browser.protocol.connection_id.startswith("ws-")
    assert browser.factory.connections[browser.protocol.connection_id] is (
        browser.protocol
    )


def test_an_unparsable_sip_message_is_reported_and_the_connection_stays() -> None:
    browser = open_browser()
    browser.send(TextMessage(data="NOT SIP AT ALL\r\n\r\n"))
    assert len(browser.recorder.invalid) == 1
    assert not browser.closed


def test_an_oversize_message_closes_with_1009() -> None:
    browser = open_browser(max_message_size=1024)
    browser.send(BytesMessage(data=b"x" * 1025))
    events = browser.events()
    assert isinstance(events[-1], CloseConnection)
    assert events[-1].code == CloseReason.MESSAGE_TOO_BIG
    assert browser.closed
    assert browser.recorder.messages == browser.recorder.invalid == []


def test_an_oversize_message_in_small_frames_closes_too() -> None:
    browser = open_browser(max_message_size=1024)
    for _ in range(3):
        browser.send(BytesMessage(data=b"x" * 500, message_finished=False))
    assert browser.closed


def test_an_unmasked_frame_closes_with_1002() -> None:
    browser = open_browser()
    browser.feed(b"\x81\x05hello")  # RFC 6455 §5.1: clients must mask
    events = browser.events()
    assert isinstance(events[-1], CloseConnection)
    assert events[-1].code == CloseReason.PROTOCOL_ERROR
    assert browser.closed


def test_bad_utf8_in_a_text_message_closes_with_1007() -> None:
    browser = open_browser()
    frame = bytearray(browser.ws.send(BytesMessage(data=b"\xff\xfe")))
    frame[0] = (frame[0] & 0xF0) | 0x1  # the same payload as a text frame
    browser.feed(bytes(frame))
    events = browser.events()
    assert isinstance(events[-1], CloseConnection)
    assert events[-1].code == CloseReason.INVALID_FRAME_PAYLOAD_DATA
    assert browser.closed


def test_ping_is_answered_with_pong() -> None:
    browser = open_browser()
    browser.send(Ping(payload=b"still there?"))
    events = browser.events()
    assert events == [Pong(payload=b"still there?")]
    assert not browser.closed


def test_crlf_keepalive_is_answered_with_crlf() -> None:
    browser = open_browser()
    browser.send(TextMessage(data="\r\n\r\n"))
    events = browser.events()
    assert len(events) == 1
    assert isinstance(events[0], TextMessage)
    assert events[0].data == "\r\n"
    assert browser.recorder.messages == []


def test_close_from_the_browser_is_answered_and_closes() -> None:
    browser = open_browser()
    browser.send(CloseConnection(code=CloseReason.NORMAL_CLOSURE))
    events = browser.events()
    assert isinstance(events[0], CloseConnection)
    assert browser.closed


def test_send_writes_one_text_message_or_binary_if_not_utf8() -> None:
    browser = open_browser()
    peer = browser.protocol.peer
    browser.protocol.send(OPTIONS.encode(), peer)
    browser.protocol.send(b"SIP/2.0 200 OK\r\n\r\n\xff", peer)
    events = browser.events()
    assert isinstance(events[0], TextMessage)
    assert events[0].data == OPTIONS
    assert isinstance(events[1], BytesMessage)


def test_nothing_is_sent_before_the_upgrade() -> None:
    browser = Browser()
    browser.protocol.send(OPTIONS.encode(), browser.protocol.peer)
    assert browser.transport.value() == b""


def test_a_slow_upgrade_is_closed_at_the_deadline() -> None:
    browser = Browser()
    browser.feed(b"GET / HTTP/1.1\r\nHost: exa")  # a byte now and then
    browser.clock.advance(9)
    browser.feed(b"m")
    assert not browser.closed
    browser.clock.advance(1.5)
    assert browser.closed


def test_the_upgrade_deadline_ends_with_the_upgrade() -> None:
    browser = open_browser()
    browser.clock.advance(20)
    assert not browser.closed


def test_a_message_begun_must_be_finished_in_time() -> None:
    browser = open_browser()
    frame = browser.ws.send(TextMessage(data=OPTIONS))
    browser.feed(frame[:10])
    browser.clock.advance(5)
    browser.feed(frame[10:20])
    browser.clock.advance(5.5)
    assert browser.closed


def test_a_message_finished_in_time_cancels_the_deadline() -> None:
    browser = open_browser()
    frame = browser.ws.send(TextMessage(data=OPTIONS))
    browser.feed(frame[:10])
    browser.clock.advance(5)
    browser.feed(frame[10:])
    browser.clock.advance(20)
    assert not browser.closed
    assert len(browser.recorder.messages) == 1


def test_a_silent_connection_is_pinged_and_closed_if_it_stays_silent() -> None:
    browser = open_browser()
    browser.clock.advance(30)
    events = browser.events()
    assert len(events) == 1
    assert isinstance(events[0], Ping)
    # The browser answers the ping: the connection lives on.
    browser.send(events[0].response())
    browser.clock.advance(590)
    assert not browser.closed
    # Nothing heard for the idle timeout (pings unanswered): closed.
    browser.clock.advance(600)
    assert browser.closed


def test_a_banned_source_gets_no_upgrade() -> None:
    browser = Browser(admit=lambda host: False)
    browser.feed(browser.ws.send(Request(host="example.test", target="/")))
    assert browser.transport.value() == b""  # unanswered, like a message
    assert browser.closed


def test_each_message_is_admitted() -> None:
    allowed = [True, True, False]  # the upgrade, one message, then banned
    browser = Browser(admit=lambda host: allowed.pop(0))
    assert isinstance(browser.upgrade()[0], AcceptConnection)
    browser.send(TextMessage(data=OPTIONS))
    browser.send(TextMessage(data=OPTIONS))
    assert len(browser.recorder.messages) == 1
    assert browser.closed


def test_the_per_source_connection_cap_applies() -> None:
    limit = ConnectionLimiter(max_per_source=1, max_total=10)
    first = Browser(limit=limit)
    assert first.protocol.counted
    again = first.factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 40001))
    assert again is None
    first.protocol.connectionLost()
    assert limit.total == 0


def test_the_sender_never_opens_a_websocket_connection() -> None:
    """A browser is reached over its own connection or not at all (RFC 7118 §5.3)."""
    browser = open_browser()
    transports = Transports(browser.clock)
    transports.add_stream("ws", browser.factory, "127.0.0.1", 8080)
    errors: list[str] = []
    # Its own connection, by flow or by address: the message goes out on it.
    assert transports.send(
        OPTIONS.encode(), Peer("ws", "192.0.2.1", 40000), on_error=errors.append
    )
    assert isinstance(browser.events()[0], TextMessage)
    # Anyone else over ws: refused at once (on_error), nothing dialled.
    transports.send(
        OPTIONS.encode(), Peer("ws", "192.0.2.99", 80), on_error=errors.append
    )
    assert errors == ["cannot open ws connections"]
    assert browser.clock.tcpClients == []
