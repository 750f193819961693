"""The transport registry is the one place a kind is described."""

from __future__ import annotations

import pytest

from sipproxy.config import ListenSpec
from sipproxy.sip.addressing import Peer, response_destination
from sipproxy.sip.transports import (
    DEFAULT_PORTS,
    KINDS,
    TLS,
    UDP,
    WS,
    WSS,
    by_uri_param,
    by_via_token,
    is_dialable,
    is_reliable,
    is_secure,
    kind_of,
)
from sipproxy.sip.via import Via


def test_rfc_3261_and_rfc_7118_defaults() -> None:
    assert DEFAULT_PORTS == {
        "udp": 5060,
        "tcp": 5060,
        "tls": 5061,
        "ws": 80,
        "wss": 443,
    }
    reliable = [k.name for k in KINDS.values() if k.reliable]
    assert reliable == ["tcp", "tls", "ws", "wss"]
    assert [k.name for k in KINDS.values() if k.secure] == ["tls", "wss"]


def test_websocket_is_never_dialled_nor_looked_up() -> None:
    """RFC 7118 §5.3: a browser is reached over the connection it opened."""
    assert [k.name for k in KINDS.values() if not k.dialable] == ["ws", "wss"]
    assert not is_dialable("ws")
    assert is_dialable("udp")
    assert not is_dialable("sctp")
    assert WS.srv_prefix == WSS.srv_prefix == ""
    assert WS.naptr_service == WSS.naptr_service == ""
    assert by_via_token("WSS") is WSS
    assert by_uri_param("ws") is WS


@pytest.mark.parametrize("name", list(KINDS))
def test_every_name_is_found_back_from_the_wire(name: str) -> None:
    kind = kind_of(name)
    assert by_via_token(kind.via_token.lower()) is kind
    assert by_uri_param(kind.uri_param.upper()) is kind
    assert Peer(name, "192.0.2.1", 1).reliable is kind.reliable
    assert is_secure(name) is kind.secure


def test_kinds_we_do_not_carry_are_neither_reliable_nor_secure() -> None:
    assert by_via_token("SCTP") is None
    assert by_uri_param("sctp") is None
    assert not is_reliable("sctp")
    assert not is_secure("sctp")
    with pytest.raises(KeyError):
        kind_of("sctp")


def test_a_response_without_a_port_goes_to_the_kinds_default() -> None:
    via = Via.parse("SIP/2.0/TLS phone.example.test;branch=z9hG4bK1")
    assert response_destination(via, Peer(TLS.name, "192.0.2.9", 40000)) == Peer(
        "tls", "phone.example.test", 5061
    )
    via = Via.parse("SIP/2.0/UDP phone.example.test;branch=z9hG4bK1")
    assert response_destination(via, Peer(UDP.name, "192.0.2.9", 40000)).port == 5060


@pytest.mark.parametrize("name", list(KINDS))
def test_every_kind_can_be_listened_on(name: str) -> None:
    text = f"{name}:5070" + (":privateKey=key.pem" if is_secure(name) else "")
    spec = ListenSpec.parse(text)
    assert spec.transport == name
    assert spec.reliable is kind_of(name).reliable
