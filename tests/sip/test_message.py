from __future__ import annotations

import pytest

from sipproxy.sip import message as message_module
from sipproxy.sip.errors import ParseError
from sipproxy.sip.headers import Headers
from sipproxy.sip.message import CSeq, Request, Response, response_from_headers
from sipproxy.sip.parser import parse_message
from sipproxy.sip.status import METHODS, REASON_PHRASES, reason_phrase
from sipproxy.sip.uri import NameAddress, parse_uri

INVITE = (
    b"INVITE sip:bob@biloxi.com SIP/2.0\r\n"
    b"v: SIP/2.0/UDP p.example.com;branch=z9hG4bKp, SIP/2.0/UDP pc33.atlanta.com\r\n"
    b"  ;branch=z9hG4bK776\r\n"
    b"Via: SIP/2.0/TCP c.example.com;branch=z9hG4bKc\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@biloxi.com>\r\n"
    b"From: Alice <sip:alice@atlanta.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.atlanta.com>\r\n"
    b"Route: <sip:p1;lr>, <sip:p2;lr>\r\n"
    b"Record-Route: <sip:p3;lr>\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)


def test_typed_views() -> None:
    """Typed views parse the header values they are asked for."""
    request = parse_message(INVITE)
    assert isinstance(request, Request)
    assert [v.host for v in request.vias] == [
        "p.example.com",
        "pc33.atlanta.com",
        "c.example.com",
    ]
    assert request.top_via.branch == "z9hG4bKp"
    assert request.cseq == CSeq(314159, "INVITE")
    assert request.call_id == "a84b4c76e66710@pc33.atlanta.com"
    assert request.from_addr.tag == "1928301774"
    assert request.to_addr.tag is None
    assert request.max_forwards == 70
    assert [str(c.uri) for c in request.contacts] == ["sip:alice@pc33.atlanta.com"]
    assert [str(r.uri) for r in request.routes] == ["sip:p1;lr", "sip:p2;lr"]
    assert [str(r.uri) for r in request.record_routes] == ["sip:p3;lr"]
    assert str(request.request_uri) == "sip:bob@biloxi.com"
    assert request.to_bytes() == INVITE


def test_response_copies_what_rfc_3261_8_2_6_2_lists() -> None:
    """Every Via in order and as received, From, To with tag, Call-ID, CSeq."""
    request = parse_message(INVITE)
    assert isinstance(request, Request)
    response = request.response(
        180, to_tag="abc", headers=[("Contact", "<sip:bob@192.0.2.4>")]
    )
    assert (response.status, response.reason) == (180, "Ringing")
    assert [h.name for h in response.headers] == [
        "v",
        "Via",
        "From",
        "To",
        "Call-ID",
        "CSeq",
        "Contact",
        "Content-Length",
    ]
    assert response.headers.get_all("via") == request.headers.get_all("via")
    assert response.headers.fields[0].raw == request.headers.fields[0].raw
    assert response.to_addr.tag == "abc"
    assert response.headers.get("content-length") == "0"
    wire = response.to_bytes()
    assert wire.startswith(b"SIP/2.0 180 Ringing\r\nv: SIP/2.0/UDP p.example.com")
    assert parse_message(wire) == response


def test_response_keeps_an_existing_to_tag() -> None:
    """A To that already has a tag is copied unchanged (§8.2.6.2)."""
    headers = Headers.of(
        ("Via", "SIP/2.0/UDP h;branch=z9hG4bK1"),
        ("From", "sip:a@b;tag=1"),
        ("To", "sip:c@d;tag=2"),
        ("Call-ID", "x"),
        ("CSeq", "1 BYE"),
    )
    response = response_from_headers(headers, 200, to_tag="3", body=b"hi")
    assert response.headers.get("to") == "sip:c@d;tag=2"
    assert response.headers.get("content-length") == "2"
    no_tag = response_from_headers(
        headers.replace("To", "sip:c@d"), 400, "Nope", to_tag="9"
    )
    assert no_tag.headers.get("to") == "sip:c@d;tag=9"
    assert no_tag.reason == "Nope"
    broken = response_from_headers(
        headers.replace("To", '"x <sip:c@d>'), 400, to_tag="9"
    )
    assert broken.headers.get("to") == '"x <sip:c@d>;tag=9'


@pytest.mark.parametrize("missing", ["via", "from", "to", "call-id", "cseq"])
def test_unaddressable_response_raises(missing: str) -> None:
    """Without Via, From, To, Call-ID and CSeq no response can be built."""
    headers = Headers.of(
        ("Via", "SIP/2.0/UDP h;branch=z9hG4bK1"),
        ("From", "sip:a@b;tag=1"),
        ("To", "sip:c@d"),
        ("Call-ID", "x"),
        ("CSeq", "1 BYE"),
    )
    with pytest.raises(ParseError):
        response_from_headers(headers.remove(missing), 400)
    with pytest.raises(ParseError):
        response_from_headers(headers.replace("Via", "garbage"), 400)


def test_with_body_sets_length_and_type() -> None:
    """with_body() sets Content-Length and, if given, Content-Type."""
    request = Request("MESSAGE", "sip:a@b", Headers.of(("Content-Length", "0")))
    changed = request.with_body(b"hello", "text/plain")
    assert changed.headers.get("content-length") == "5"
    assert changed.headers.get("content-type") == "text/plain"
    assert changed.to_bytes() == (
        b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 5\r\n"
        b"Content-Type: text/plain\r\n\r\nhello"
    )
    response = Response(200, "OK", Headers()).with_body(b"")
    assert response.to_bytes() == b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"
    assert Response(200, "OK", Headers()).to_bytes() == b"SIP/2.0 200 OK\r\n\r\n"


@pytest.mark.parametrize(
    ("text", "cseq"),
    [
        ("1 INVITE", CSeq(1, "INVITE")),
        ("0009   ACK", CSeq(9, "ACK")),
        ("4294967295 X", CSeq(2**32 - 1, "X")),
    ],
)
def test_cseq_parses(text: str, cseq: CSeq) -> None:
    """CSeq is 1*DIGIT LWS Method, below 2**32 (§8.1.1.5)."""
    assert CSeq.parse(text) == cseq
    assert CSeq.parse(str(cseq)) == cseq


@pytest.mark.parametrize(
    "text",
    ["4294967296 INVITE", "1" * 5000 + " X", "INVITE", "-1 INVITE", "1 IN VITE", ""],
)
def test_bad_cseq_raises(text: str) -> None:
    """Overlarge or malformed CSeq values raise ParseError (RFC 4475 §3.1.2.4)."""
    with pytest.raises(ParseError):
        CSeq.parse(text)


def test_max_forwards_limits() -> None:
    """Max-Forwards is 0..255; leading zeros are fine (RFC 4475 wsinv)."""

    def mf(value: str) -> int | None:
        return Request(
            "OPTIONS", "sip:a", Headers.of(("Max-Forwards", value))
        ).max_forwards

    assert mf("0068") == 68
    assert mf("0") == 0
    for bad in ("256", "300", "-1", "x", "0" * 10 + "1" * 10):
        with pytest.raises(ParseError):
            mf(bad)
    assert Request("OPTIONS", "sip:a", Headers()).max_forwards is None
    with pytest.raises(ParseError):
        Request("OPTIONS", "sip:a", Headers()).top_via  # noqa: B018


def test_status_tables() -> None:
    """Reason phrases exist for every code the proxy may send; unknown ones by class."""
    for code in (
        100,
        183,
        200,
        302,
        400,
        403,
        416,
        420,
        421,
        422,
        423,
        428,
        429,
        430,
        433,
        439,
        440,
        469,
        470,
        482,
        483,
        489,
        494,
        501,
        505,
        513,
        580,
        607,
        608,
    ):
        assert code in REASON_PHRASES
    assert reason_phrase(404) == "Not Found"
    assert reason_phrase(499) == "Client Error"
    assert reason_phrase(799) == "Unknown"
    assert "REGISTER" in METHODS
    assert "UPDATE" in METHODS
    assert len(METHODS) == 14


def _options(from_value: str, n: int) -> Request:
    data = (
        f"OPTIONS sip:c@d SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK{n}\r\n"
        f"From: {from_value}\r\nTo: <sip:c@d>\r\nCall-ID: x{n}\r\n"
        "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    request = parse_message(data)
    assert isinstance(request, Request)
    return request


def test_a_value_seen_lately_is_not_parsed_again() -> None:
    """Messages of one call repeat their From: the second reuses the first's view."""
    first = _options("<sip:alice@example.test>;tag=shared-1", 1)
    second = _options("<sip:alice@example.test>;tag=shared-1", 2)
    assert first.from_addr is second.from_addr
    assert first.from_addr == NameAddress.parse("<sip:alice@example.test>;tag=shared-1")
    other = _options("<sip:alice@example.test>;tag=shared-2", 3)
    assert other.from_addr.tag == "shared-2"


def test_a_value_that_does_not_parse_is_refused_every_time() -> None:
    for n in range(2):
        with pytest.raises(ParseError):
            _options('"unterminated <sip:a@b>', n).from_addr  # noqa: B018
    assert all(
        '"unterminated <sip:a@b>' not in table
        for table in message_module._SEEN.values()
    )


def test_the_table_of_values_seen_is_bounded() -> None:
    for n in range(message_module.SEEN_MAX + 50):
        _options(f"<sip:u{n}@example.test>;tag=bound", n).from_addr  # noqa: B018
    assert all(len(t) <= message_module.SEEN_MAX for t in message_module._SEEN.values())
    # Starting over forgets nothing that matters: the value parses again.
    again = _options("<sip:u0@example.test>;tag=bound", 0)
    assert again.from_addr.uri == parse_uri("sip:u0@example.test")


def test_a_long_value_is_not_kept() -> None:
    long_user = "u" * message_module.SEEN_VALUE_MAX
    first = _options(f"<sip:{long_user}@example.test>;tag=long", 1)
    second = _options(f"<sip:{long_user}@example.test>;tag=long", 2)
    assert first.from_addr == second.from_addr
    assert first.from_addr is not second.from_addr


def test_one_table_of_values_seen_per_header_name() -> None:
    """Parsing many messages adds no tables: one per header name read."""
    before = set(message_module._SEEN)
    for n in range(20):
        request = _options("<sip:alice@example.test>;tag=tables", n)
        request.from_addr  # noqa: B018
        request.to_addr  # noqa: B018
        request.cseq  # noqa: B018
        request.top_via  # noqa: B018
    assert set(message_module._SEEN) == before | {"via", "from", "to", "cseq"}


def test_a_request_uri_seen_lately_is_not_parsed_again() -> None:
    first = _options("<sip:alice@example.test>;tag=r", 1)
    second = _options("<sip:alice@example.test>;tag=r", 2)
    assert first.request_uri is second.request_uri
    assert first.request_uri == parse_uri("sip:c@d")
    bad = Request("OPTIONS", "sip:[bad", Headers())
    for _ in range(2):
        with pytest.raises(ParseError):
            bad.request_uri  # noqa: B018
    assert "sip:[bad" not in message_module._SEEN_URIS
