"""received/rport stamping (RFC 3261 §18.2.1, RFC 3581) and response addressing."""

from __future__ import annotations

import pytest

from sipproxy.sip.addressing import Peer, response_destination, stamp_received
from sipproxy.sip.headers import Headers
from sipproxy.sip.message import parse_via
from sipproxy.sip.via import Via

UDP_PEER = Peer("udp", "192.0.2.7", 40123)


def top_via(headers: Headers) -> Via:
    return Via.parse(headers.get_all("via")[0])


def headers_with_via(*values: str) -> Headers:
    headers = Headers(())
    for value in values:
        headers = headers.append("Via", value)
    return headers.append("Call-ID", "x")


def test_same_address_without_rport_is_left_alone() -> None:
    headers = headers_with_via("SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bKa")
    assert stamp_received(headers, UDP_PEER) is headers


def test_different_address_gets_received() -> None:
    headers = stamp_received(
        headers_with_via("SIP/2.0/UDP 10.0.0.5;branch=z9hG4bKa"), UDP_PEER
    )
    assert top_via(headers).received == "192.0.2.7"


def test_host_name_gets_received() -> None:
    headers = stamp_received(
        headers_with_via("SIP/2.0/UDP phone.example.com;branch=z9hG4bKa"), UDP_PEER
    )
    assert top_via(headers).received == "192.0.2.7"


def test_empty_rport_is_filled_and_received_added() -> None:
    """RFC 3581 §4: rport gets the source port, and received is always added."""
    headers = stamp_received(
        headers_with_via("SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bKa;rport"), UDP_PEER
    )
    via = top_via(headers)
    assert via.rport == "40123"
    assert via.received == "192.0.2.7"
    assert response_destination(via, UDP_PEER) == Peer("udp", "192.0.2.7", 40123)


def test_forged_received_is_replaced() -> None:
    """A received the sender wrote itself would let it aim our answers anywhere."""
    headers = stamp_received(
        headers_with_via(
            "SIP/2.0/UDP 192.0.2.7:5060;received=198.51.100.1;branch=z9hG4bKa"
        ),
        UDP_PEER,
    )
    assert top_via(headers).received == "192.0.2.7"


def test_only_the_top_via_changes_and_others_stay_byte_for_byte() -> None:
    headers = headers_with_via(
        "SIP/2.0/UDP 10.0.0.5;branch=z9hG4bKa, "
        "SIP/2.0/TCP  proxy.example.com ;branch=z9hG4bKb",
        "SIP/2.0/UDP last.example.com;branch=z9hG4bKc",
    )
    stamped = stamp_received(headers, UDP_PEER)
    vias = stamped.get_all("via")
    assert len(vias) == 3
    assert vias[1:] == headers.get_all("via")[1:]


@pytest.mark.parametrize(
    ("via", "expected"),
    [
        ("SIP/2.0/UDP 10.0.0.5;received=192.0.2.7", Peer("udp", "192.0.2.7", 5060)),
        (
            "SIP/2.0/UDP 10.0.0.5:5070;received=192.0.2.7",
            Peer("udp", "192.0.2.7", 5070),
        ),
        ("SIP/2.0/UDP 192.0.2.7:5080", Peer("udp", "192.0.2.7", 5080)),
        (
            "SIP/2.0/UDP 10.0.0.5;received=192.0.2.7;rport=999",
            Peer("udp", "192.0.2.7", 999),
        ),
        # maddr is deliberately not honoured: answers go to the source.
        (
            "SIP/2.0/UDP 10.0.0.5;maddr=239.1.1.1;received=192.0.2.7",
            Peer("udp", "192.0.2.7", 5060),
        ),
        (
            "SIP/2.0/UDP [2001:db8::9];received=2001:db8::9",
            Peer("udp", "2001:db8::9", 5060),
        ),
    ],
)
def test_response_destination(via: str, expected: Peer) -> None:
    assert response_destination(Via.parse(via), UDP_PEER) == expected


@pytest.mark.parametrize("rport", ["5060", "1", "abc", "99999"])
def test_an_rport_with_a_value_is_taken_as_the_flag(rport: str) -> None:
    """RFC 3581 §3: a request's rport has no value; one given picks no port.

    Whatever was written, the answer goes back to the source port, so neither a
    chosen port nor a malformed one steers responses (issue 13 item 12).
    """
    headers = stamp_received(
        headers_with_via(f"SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bKa;rport={rport}"),
        UDP_PEER,
    )
    via = top_via(headers)
    assert via.rport == "40123"
    assert via.received == "192.0.2.7"
    assert response_destination(via, UDP_PEER) == Peer("udp", "192.0.2.7", 40123)


@pytest.mark.parametrize("rport", ["=abc", "=99999", ""])
def test_response_destination_never_raises_on_a_bad_rport(rport: str) -> None:
    """An rport that is no port falls back to the source port, never raises."""
    via = Via.parse(f"SIP/2.0/UDP 10.0.0.5;received=192.0.2.7;rport{rport}")
    assert response_destination(via, UDP_PEER) == Peer("udp", "192.0.2.7", 40123)


def test_ip_of_takes_one_pair_of_brackets() -> None:
    from sipproxy.sip.addressing import ip_of

    assert str(ip_of("[::1]")) == "::1"
    assert str(ip_of("192.0.2.1")) == "192.0.2.1"
    assert ip_of("[[::1]]") is None
    assert ip_of("[::1") is None
    assert ip_of("example.test") is None


@pytest.mark.parametrize(
    ("via", "peer"),
    [
        ("SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bKs1;rport", UDP_PEER),
        ("SIP/2.0/UDP phone.example;branch=z9hG4bKs2", UDP_PEER),
        (
            "SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bKs3;rport",
            Peer("udp", "2001:db8::2", 5062),
        ),
        (
            "SIP/2.0/TCP [2001:db8::1];branch=z9hG4bKs4;received=1.2.3.4",
            Peer("tcp", "2001:db8::2", 40000),
        ),
    ],
)
def test_the_stamped_via_is_known_as_what_its_text_parses_to(
    via: str, peer: Peer
) -> None:
    """The stamped Via is noted for responses (message.via_field).

    It must be exactly what its text parses to; a response's lower Via then
    finds it.
    """
    stamped = stamp_received(headers_with_via(via), peer)
    field = stamped.first_field("via")
    assert field is not None
    assert field.view == Via.parse(field.value)
    assert parse_via(field.value) is field.view
