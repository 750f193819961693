"""SIPS Request-URIs travel over TLS hops only (RFC 3261 §26.2.2, §16.6 step 4).

TLS and WebSocket over TLS (wss) are such hops; plain WebSocket is not.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from wsproto import ConnectionType, WSConnection
from wsproto.events import Request as Request_
from wsproto.events import TextMessage

from sipproxy.location import Binding, Flow
from sipproxy.sip.addressing import Channel, Peer
from sipproxy.sip.message import Request, Response
from sipproxy.sip.parser import parse_message
from sipproxy.transport.stream import SIPStreamFactory, SIPStreamProtocol
from sipproxy.transport.ws import WebSocketFactory, WebSocketProtocol
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


def with_websocket(
    h: Harness, transport: str
) -> tuple[WebSocketProtocol, StringTransport, WSConnection]:
    """A ws or wss listener on 127.0.0.1:8443 and one browser upgraded on it."""
    factory = WebSocketFactory(Sink(), h.clock, transport_name=transport)
    h.transports.add_stream(transport, factory, "127.0.0.1", 8443)
    protocol = factory.buildProtocol(IPv4Address("TCP", *PHONE))
    assert isinstance(protocol, WebSocketProtocol)
    transport_ = StringTransport(
        hostAddress=IPv4Address("TCP", "127.0.0.1", 8443),
        peerAddress=IPv4Address("TCP", *PHONE),
    )
    protocol.makeConnection(transport_)
    browser = WSConnection(ConnectionType.CLIENT)
    protocol.dataReceived(
        browser.send(Request_(host="example.test", target="/", subprotocols=["sip"]))
    )
    assert protocol.upgraded
    browser.receive_data(transport_.value())
    list(browser.events())  # the 101
    transport_.clear()
    return protocol, transport_, browser


def bind_browser(h: Harness, transport: str, connection_id: str | None) -> None:
    binding = Binding(
        aor="sip:bob@example.test",
        contact=f"sip:bob@df7jal23ls0d.invalid;transport={transport}",
        expires_at=3600,
        registered_at=0,
        call_id="reg-bob-ws",
        cseq=1,
        flow=Flow(transport, "127.0.0.1", 8443, *PHONE, connection_id),
    )
    run(h.location.update(binding.aor, save=[binding], now=0))


def test_sips_reaches_a_wss_browser_with_a_sips_record_route_saying_wss() -> None:
    """RFC 7118 §5.2.2: the entry facing the browser keeps transport=wss."""
    h = Harness()
    protocol, transport, browser = with_websocket(h, "wss")
    bind_browser(h, "wss", protocol.connection_id)
    h.receive(sips_invite(), ALICE)
    assert statuses(h) == [100]
    browser.receive_data(transport.value())
    (message,) = browser.events()
    assert isinstance(message, TextMessage)  # one SIP message, one WS message
    forwarded = parse_message(message.data.encode())
    assert isinstance(forwarded, Request)
    assert forwarded.top_via.transport.upper() == "WSS"
    record_route = forwarded.headers.get_all("record-route")
    assert record_route[0].startswith("<sips:")
    assert "127.0.0.1:8443;transport=wss;lr>" in record_route[0]


def test_sips_to_a_ws_browser_gets_480() -> None:
    """Ws is no TLS path (§26.2.2): never downgraded."""
    h = Harness()
    protocol, transport, _ = with_websocket(h, "ws")
    with_tls(h)
    bind_browser(h, "ws", protocol.connection_id)
    h.receive(sips_invite(), ALICE)
    assert statuses(h) == [100, 480]
    assert transport.value() == b""


def test_a_browser_whose_connection_is_gone_gets_480() -> None:
    """Its .invalid Contact is never tried, and nothing is sent anywhere."""
    h = Harness()
    protocol, _, _ = with_websocket(h, "ws")
    bind_browser(h, "ws", protocol.connection_id)
    protocol.connectionLost()
    h.receive(invite(), ALICE)
    assert statuses(h) == [100, 480]
