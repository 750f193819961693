"""Opening and reusing TLS connections (RFC 5922 §4, RFC 5923 spirit), on fakes."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from sipproxy.config import build_config
from sipproxy.server import sendable_transports, tls_client
from sipproxy.sip.addressing import Channel, Peer
from sipproxy.testing import UDPMemoryReactor
from sipproxy.transport.sender import HANDSHAKE_TIMEOUT, Transports
from sipproxy.transport.stream import SIPStreamFactory, SIPStreamProtocol
from sipproxy.transport.tls import ClientConnector, TLSClient, TLSConfigError
from tests.tlsutil import TestCA

TRUNK = Peer("tls", "192.0.2.7", 5061)


class Sink:
    def message_received(self, message: object, peer: Peer, channel: Channel) -> None:
        pass

    def message_invalid(self, error: Exception, peer: Peer, channel: Channel) -> None:
        pass


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


def transports(ca: TestCA | None) -> tuple[Transports, UDPMemoryReactor]:
    reactor = UDPMemoryReactor()
    tls = TLSClient(ca_file=str(ca.cert_path)) if ca is not None else None
    sender = Transports(reactor, tls=tls)
    factory = SIPStreamFactory(Sink(), reactor, transport_name="tls")
    sender.add_stream("tls", factory, "127.0.0.1", 5061)
    return sender, reactor


def connection(
    reactor: UDPMemoryReactor, index: int = 0
) -> tuple[SIPStreamProtocol, StringTransport, ClientConnector]:
    """Let the index-th connectSSL connect: the protocol, its transport, connector."""
    host, port, factory, connector, *_ = reactor.sslClients[index]
    protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
    transport = StringTransport(
        hostAddress=IPv4Address("TCP", "127.0.0.1", 40000),
        peerAddress=IPv4Address("TCP", host, port),
    )
    protocol.makeConnection(transport)
    return protocol, transport, connector


def test_messages_wait_for_the_handshake_then_go(ca: TestCA) -> None:
    sender, reactor = transports(ca)
    assert sender.send(b"one", TRUNK, server_name="trunk.example.test")
    assert sender.send(b"two", TRUNK, server_name="trunk.example.test")
    assert len(reactor.sslClients) == 1, "one connection for both"
    protocol, transport, connector = connection(reactor)
    assert connector.server_name == "trunk.example.test"
    assert transport.value() == b"", "nothing before the certificate is checked"
    protocol.handshakeCompleted()
    assert transport.value() == b"onetwo"
    sender.send(b"three", TRUNK, server_name="trunk.example.test")
    assert transport.value() == b"onetwothree"
    assert len(reactor.sslClients) == 1, "the verified connection is reused"


def test_a_refused_certificate_fails_every_waiting_message_with_the_reason(
    ca: TestCA,
) -> None:
    sender, reactor = transports(ca)
    errors: list[str] = []
    sender.send(b"one", TRUNK, server_name="trunk.example.test", on_error=errors.append)
    sender.send(b"two", TRUNK, server_name="trunk.example.test", on_error=errors.append)
    protocol, transport, connector = connection(reactor)
    connector.failure = "certificate is for wrong.example.test, not trunk.example.test"
    protocol.connectionLost(Failure(ConnectionLost()))
    assert errors == [connector.failure] * 2
    assert transport.value() == b""
    sender.send(b"again", TRUNK, server_name="trunk.example.test")
    assert len(reactor.sslClients) == 2, "a later request tries afresh"


def test_a_handshake_that_never_ends_fails_the_waiting_messages(
    ca: TestCA,
) -> None:
    sender, reactor = transports(ca)
    errors: list[str] = []
    sender.send(b"one", TRUNK, server_name="trunk.example.test", on_error=errors.append)
    protocol, transport, _ = connection(reactor)
    reactor.advance(HANDSHAKE_TIMEOUT - 1)
    assert errors == []
    reactor.advance(1)
    assert transport.disconnecting
    protocol.connectionLost(Failure(ConnectionLost()))
    assert errors == ["TLS handshake timed out"]


def test_a_connection_verified_for_one_name_is_not_used_for_another(
    ca: TestCA,
) -> None:
    """RFC 5922 §4: the certificate proved one name; another needs its own check."""
    sender, reactor = transports(ca)
    sender.send(b"one", TRUNK, server_name="trunk.example.test")
    protocol, transport, _ = connection(reactor)
    protocol.handshakeCompleted()
    sender.send(b"two", TRUNK, server_name="other.example.test")
    assert len(reactor.sslClients) == 2
    assert reactor.sslClients[1][3].server_name == "other.example.test"
    # A request for the bare address (an in-dialog Contact) may use it.
    sender.send(b"three", TRUNK, server_name="192.0.2.7")
    assert transport.value() == b"onethree"


def test_an_address_target_is_verified_against_the_address(ca: TestCA) -> None:
    sender, reactor = transports(ca)
    sender.send(b"one", TRUNK)
    assert reactor.sslClients[0][3].server_name == "192.0.2.7"


def test_without_a_tls_client_nothing_is_opened() -> None:
    sender, reactor = transports(None)
    errors: list[str] = []
    assert sender.send(b"x", TRUNK, on_error=errors.append) is True
    assert errors == ["no TLS client configured"]
    assert reactor.sslClients == []


def test_tls_client_of_the_first_listener(tmp_path: Path, ca: TestCA) -> None:
    """Our listener's certificate is also shown to servers that ask (mutual TLS)."""
    issued = ca.issue("proxy", dns=("proxy.example.test",))
    config = build_config(
        {},
        {
            "listen": [
                "udp:5060",
                f"tls:5061:privateKey={issued.key}:certKey={issued.cert}",
            ],
            "tls-verify": "no",
        },
    )
    client = tls_client(config)
    assert client is not None
    assert client.verify is False
    assert client.credentials is not None
    assert client.credentials.certificate == issued.certificate
    assert tls_client(build_config({}, {"listen": ["udp:5060"]})) is None


def test_wss_listeners_are_checked_but_make_no_tls_client(
    tmp_path: Path, ca: TestCA
) -> None:
    """wss: accepts TLS; only a tls: listener lets us open TLS (and pick it in DNS)."""
    issued = ca.issue("proxy", dns=("proxy.example.test",))
    wss = f"wss:8443:privateKey={issued.key}:certKey={issued.cert}"
    config = build_config({}, {"listen": ["udp:5060", "ws:8080", wss]})
    assert tls_client(config) is None
    assert sendable_transports(config) == ("udp", "tcp")
    broken = build_config(
        {}, {"listen": ["udp:5060", f"wss:8443:privateKey={tmp_path / 'none.pem'}"]}
    )
    with pytest.raises(TLSConfigError, match="privateKey"):
        tls_client(broken)
