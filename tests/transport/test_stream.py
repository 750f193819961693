"""Stream framing and datagram intake on fakes (RFC 3261 §18.3, RFC 5626 §4.4.1)."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from sipproxy.testing import FakeDatagramTransport
from sipproxy.transport.peer import Channel, Peer
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
    idle: float = 30.0,
) -> tuple[SIPStreamProtocol, StringTransport, Recorder, Clock, SIPStreamFactory]:
    clock, recorder = Clock(), Recorder()
    factory = SIPStreamFactory(recorder, clock, idle_timeout=idle)
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
