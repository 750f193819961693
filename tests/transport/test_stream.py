"""Stream framing and datagram intake on fakes (RFC 3261 §18.3, RFC 5626 §4.4.1)."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent

from sipproxy.guard import BanList, ConnectionLimiter, RateLimiter
from sipproxy.sip.addressing import Channel, Peer
from sipproxy.testing import FakeDatagramTransport
from sipproxy.transport.stream import SIPStreamFactory, SIPStreamProtocol
from sipproxy.transport.udp import SIPDatagramProtocol

OPTIONS = (
    b"OPTIONS sip:example.test SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bK1\r\n"
    b"Max-Forwards: 70\r\nFrom: <sip:a@example.test>;tag=1\r\n"
    b"To: <sip:example.test>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n"
    b"Content-Length: 0\r\n\r\n"
)


class Recorder:
    def __init__(self) -> None:
        self.messages: list[object] = []
        self.invalid: list[Exception] = []

    def message_received(self, message: object, peer: Peer, channel: Channel) -> None:
        self.messages.append(message)

    def message_invalid(self, error: Exception, peer: Peer, channel: Channel) -> None:
        self.invalid.append(error)


def connect(
    idle: float = 30.0, message_timeout: float = 10.0
) -> tuple[SIPStreamProtocol, StringTransport, Recorder, Clock, SIPStreamFactory]:
    clock, recorder = Clock(), Recorder()
    factory = SIPStreamFactory(
        recorder, clock, idle_timeout=idle, message_timeout=message_timeout
    )
    protocol = factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 40000))
    assert protocol is not None
    transport = StringTransport(
        hostAddress=IPv4Address("TCP", "127.0.0.1", 5060),
        peerAddress=IPv4Address("TCP", "192.0.2.1", 40000),
    )
    protocol.makeConnection(transport)
    return protocol, transport, recorder, clock, factory


def test_messages_split_and_joined_are_framed() -> None:
    protocol, _, recorder, _, _ = connect()
    for byte in range(len(OPTIONS)):
        protocol.dataReceived(OPTIONS[byte : byte + 1])
    protocol.dataReceived(OPTIONS + OPTIONS)
    assert len(recorder.messages) == 3


def test_keepalive_is_answered_with_crlf() -> None:
    protocol, transport, recorder, _, _ = connect()
    protocol.dataReceived(b"\r\n\r\n")
    assert transport.value() == b"\r\n"
    assert recorder.messages == []


def test_missing_content_length_is_reported_and_closes() -> None:
    protocol, transport, recorder, _, _ = connect()
    protocol.dataReceived(OPTIONS.replace(b"Content-Length: 0\r\n", b""))
    assert len(recorder.invalid) == 1
    assert transport.disconnecting


def test_idle_connection_is_closed_and_traffic_keeps_it_open() -> None:
    protocol, transport, _, clock, factory = connect(idle=30)
    clock.advance(20)
    protocol.dataReceived(b"\r\n\r\n")  # a keepalive counts as traffic
    clock.advance(20)
    assert not transport.disconnecting
    clock.advance(11)
    assert transport.disconnecting
    protocol.connectionLost()
    assert factory.connections == {}


def test_datagram_garbage_is_reported_not_raised() -> None:
    recorder = Recorder()
    protocol = SIPDatagramProtocol(recorder)
    protocol.makeConnection(FakeDatagramTransport())
    protocol.datagramReceived(b"\x00\xff\xfe", ("192.0.2.1", 5060))
    protocol.datagramReceived(b"\r\n", ("192.0.2.1", 5060))  # a keepalive: silence
    assert recorder.messages == []
    assert len(recorder.invalid) == 1


def test_connections_beyond_the_per_source_cap_are_refused() -> None:
    """Limits on what an attacker controls: TCP connections per source (issue 5)."""
    from sipproxy.guard import ConnectionLimiter

    _, _, _, _, factory = connect()
    factory.limit = ConnectionLimiter(max_per_source=2)
    address = IPv4Address("TCP", "192.0.2.9", 1)
    first = factory.buildProtocol(address)
    second = factory.buildProtocol(address)
    assert first is not None
    assert second is not None
    assert factory.buildProtocol(address) is None
    assert factory.buildProtocol(IPv4Address("TCP", "192.0.2.10", 1)) is not None
    first.makeConnection(StringTransport(peerAddress=address))
    first.connectionLost()
    assert factory.buildProtocol(address) is not None
    assert factory.build_outbound() is not None  # ours are never refused


# Issue 13: the guard per framed message, the message deadline, the total cap


def test_a_pipelined_batch_is_admitted_message_by_message() -> None:
    """3,000 OPTIONS in one write get the burst, not 3,000 answers.

    Then the connection goes, the rest of the batch unread (issue 13).
    """
    protocol, transport, recorder, clock, factory = connect()
    limiter = RateLimiter(rate=100, burst=600)
    factory.admit = lambda host: limiter.allow(host, clock.seconds())
    protocol.dataReceived(OPTIONS * 3000)
    assert len(recorder.messages) == 600
    assert transport.disconnecting
    protocol.dataReceived(OPTIONS)  # still arriving before the close: ignored
    assert len(recorder.messages) == 600


def test_a_ban_earned_midway_stops_the_batch() -> None:
    """A source banned by message k gets nothing after it read.

    Issue 13: one read must not serve every guess.
    """
    clock = Clock()
    bans = BanList(max_failures=3)

    class FailingRecorder(Recorder):
        def message_received(
            self, message: object, peer: Peer, channel: Channel
        ) -> None:
            super().message_received(message, peer, channel)
            bans.failed(peer.host, clock.seconds())  # every guess is wrong

    recorder = FailingRecorder()
    factory = SIPStreamFactory(recorder, clock)
    factory.admit = lambda host: not bans.is_banned(host, clock.seconds())
    protocol = factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 40000))
    assert protocol is not None
    transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.1", 40000))
    protocol.makeConnection(transport)
    protocol.dataReceived(OPTIONS * 100)
    assert len(recorder.messages) == 3
    assert transport.disconnecting


def test_a_trickled_message_is_cut_off_at_the_deadline() -> None:
    """Slowloris: a byte a second keeps the idle timer fresh, not the deadline."""
    protocol, transport, recorder, clock, _ = connect(idle=30, message_timeout=5)
    for byte in OPTIONS[:5]:
        protocol.dataReceived(bytes([byte]))
        clock.advance(0.9)
    assert not transport.disconnecting
    clock.advance(0.6)  # 5 s after the first byte
    assert transport.disconnecting
    assert recorder.messages == []


def test_a_finished_message_clears_the_deadline() -> None:
    protocol, transport, recorder, clock, _ = connect(idle=30, message_timeout=5)
    protocol.dataReceived(OPTIONS[:10])
    clock.advance(4)
    protocol.dataReceived(OPTIONS[10:])
    clock.advance(20)
    assert not transport.disconnecting
    assert len(recorder.messages) == 1
    assert clock.getDelayedCalls() != []  # only the idle timer
    assert len(clock.getDelayedCalls()) == 1


def test_each_message_gets_its_own_deadline() -> None:
    """The deadline restarts with the next message begun in the same read."""
    protocol, transport, recorder, clock, _ = connect(idle=30, message_timeout=5)
    protocol.dataReceived(OPTIONS[:10])
    clock.advance(4)
    protocol.dataReceived(OPTIONS[10:] + OPTIONS[:10])
    clock.advance(4)
    assert not transport.disconnecting
    clock.advance(1)
    assert transport.disconnecting
    assert len(recorder.messages) == 1


def test_a_keepalive_starts_no_deadline() -> None:
    protocol, transport, _, clock, _ = connect(idle=30, message_timeout=5)
    protocol.dataReceived(b"\r\n")
    protocol.dataReceived(b"\r\n\r")
    clock.advance(20)
    assert not transport.disconnecting


def test_connections_beyond_the_total_cap_are_refused_with_one_log_line() -> None:
    """max-connections: all sources together; refusals logged once a minute."""
    _, _, _, clock, factory = connect()
    factory.limit = ConnectionLimiter(max_per_source=10, max_total=2)
    hosts = [IPv4Address("TCP", f"192.0.2.{i}", 1) for i in range(1, 3)]
    assert all(factory.buildProtocol(host) is not None for host in hosts)
    with capturedLogs() as events:
        refused = [
            factory.buildProtocol(IPv4Address("TCP", f"198.51.100.{i}", 1))
            for i in range(50)
        ]
        clock.advance(61)
        factory.buildProtocol(IPv4Address("TCP", "198.51.100.99", 1))
    assert refused == [None] * 50
    texts = [t for e in events if (t := formatEvent(e)).startswith("refused")]
    assert len(texts) == 2, texts
    assert "max-connections" in texts[0]
    assert texts[1].startswith("refused 50 tcp connection(s)")


def tls_connection() -> tuple[SIPStreamProtocol, StringTransport, Clock]:
    clock = Clock()
    factory = SIPStreamFactory(
        Recorder(), clock, transport_name="tls", message_timeout=5
    )
    protocol = factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 40000))
    assert protocol is not None
    transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.1", 40000))
    protocol.makeConnection(transport)
    return protocol, transport, clock


def test_a_tls_handshake_not_finished_in_time_closes_the_connection() -> None:
    """A handshake trickled byte by byte gets the message deadline too."""
    _, transport, clock = tls_connection()
    clock.advance(4.9)
    assert not transport.disconnecting
    clock.advance(0.1)
    assert transport.disconnecting


def test_a_finished_tls_handshake_clears_its_deadline() -> None:
    protocol, transport, clock = tls_connection()
    clock.advance(4)
    protocol.handshakeCompleted()
    clock.advance(20)
    assert not transport.disconnecting
    assert protocol.secure


def test_our_own_tls_connections_have_no_handshake_deadline() -> None:
    """Outbound handshakes are bounded by the sender's own timers."""
    clock = Clock()
    factory = SIPStreamFactory(Recorder(), clock, transport_name="tls")
    protocol = factory.build_outbound()
    transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.1", 5061))
    protocol.makeConnection(transport)
    clock.advance(60)
    assert not transport.disconnecting
