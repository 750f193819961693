"""SIPS Request-URIs travel over TLS hops only (RFC 3261 §26.2.2, §16.6 step 4)."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from sipproxy.location import Binding, Flow
from sipproxy.sip.addressing import Channel, Peer
from sipproxy.sip.message import Request, Response
from sipproxy.sip.parser import parse_message
from sipproxy.transport.stream import SIPStreamFactory, SIPStreamProtocol
from tests.proxy.harness import ALICE, BOB, Harness, invite, run

PHONE = ("192.0.2.30", 40123)


class Sink:
    def message_received(self, message: object, peer: Peer, channel: Channel) -> None:
        pass

    def message_invalid(self, error: Exception, peer: Peer, channel: Channel) -> None:
        pass


def sips_invite() -> bytes:
    return invite().replace(b"INVITE sip:bob@", b"INVITE sips:bob@")


def statuses(h: Harness) -> list[int]:
    return [m.status for m in h.sent_to(ALICE) if isinstance(m, Response)]


def with_tls(h: Harness) -> tuple[SIPStreamProtocol, StringTransport]:
    """A TLS listener on 127.0.0.1:5061 and one phone connected to it."""
    factory = SIPStreamFactory(Sink(), h.clock, transport_name="tls")
    h.transports.add_stream("tls", factory, "127.0.0.1", 5061)
    protocol = factory.buildProtocol(IPv4Address("TCP", *PHONE))
    assert protocol is not None
    transport = StringTransport(
        hostAddress=IPv4Address("TCP", "127.0.0.1", 5061),
        peerAddress=IPv4Address("TCP", *PHONE),
    )
    protocol.makeConnection(transport)
    return protocol, transport


def test_sips_without_any_tls_transport_gets_416() -> None:
    """A server with no TLS cannot route SIPS at all: Unsupported URI Scheme."""
    h = Harness()
    h.register("bob", BOB)
    h.receive(sips_invite(), ALICE)
    assert statuses(h) == [100, 416]
    assert not h.sent_to(BOB), "never downgraded to UDP"


def test_sips_to_a_phone_registered_over_udp_gets_480() -> None:
    h = Harness()
    with_tls(h)
    h.register("bob", BOB)
    h.receive(sips_invite(), ALICE)
    assert statuses(h) == [100, 480]
    assert not h.sent_to(BOB), "never downgraded to UDP"


def test_sips_reaches_a_tls_flow_with_sips_record_route() -> None:
    """§16.6 step 4: for a SIPS Request-URI our Record-Route is a SIPS URI."""
    h = Harness()
    protocol, transport = with_tls(h)
    binding = Binding(
        aor="sip:bob@example.test",
        contact="sips:bob@10.0.0.5:5061",
        expires_at=3600,
        registered_at=0,
        call_id="reg-bob-tls",
        cseq=1,
        flow=Flow("tls", "127.0.0.1", 5061, *PHONE, protocol.connection_id),
    )
    run(h.location.update(binding.aor, save=[binding], now=0))
    h.receive(sips_invite(), ALICE)
    assert statuses(h) == [100]
    forwarded = parse_message(transport.value(), stream=True)
    assert isinstance(forwarded, Request)
    assert forwarded.uri == "sips:bob@10.0.0.5:5061"
    assert forwarded.top_via.transport.upper() == "TLS"
    record_route = forwarded.headers.get_all("record-route")
    assert record_route[0].startswith("<sips:")
    assert "127.0.0.1:5061;lr>" in record_route[0]
