from __future__ import annotations

import time

import pytest

from sipproxy.sip.errors import ParseError
from sipproxy.sip.message import Request, Response
from sipproxy.sip.parser import (
    MAX_HEADER_FIELDS,
    MAX_LINE_LENGTH,
    MAX_MESSAGE_SIZE,
    Keepalive,
    StreamFramer,
    parse_message,
    validate_request,
    validate_response,
)

HEAD = (
    b"Via: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
    b"From: <sip:a@b>;tag=1\r\n"
    b"To: <sip:c@d>\r\n"
    b"Call-ID: x\r\n"
)


def request(
    start: bytes = b"OPTIONS sip:c@d SIP/2.0",
    extra: bytes = b"",
    cseq: bytes = b"1 OPTIONS",
    body: bytes = b"",
    length: bool = True,
) -> bytes:
    cl = b"Content-Length: %d\r\n" % len(body) if length else b""
    return (
        start
        + b"\r\n"
        + HEAD
        + b"CSeq: "
        + cseq
        + b"\r\n"
        + extra
        + cl
        + b"\r\n"
        + body
    )


def test_minimal_request_and_response() -> None:
    """Start lines and header fields split once; body by Content-Length."""
    message = parse_message(request(body=b"hello"))
    assert isinstance(message, Request)
    assert (message.method, message.uri, message.version) == (
        "OPTIONS",
        "sip:c@d",
        "SIP/2.0",
    )
    assert message.body == b"hello"
    validate_request(message)
    response = parse_message(
        b"SIP/2.0 200 OK then\r\n" + HEAD + b"CSeq: 1 OPTIONS\r\nl: 0\r\n\r\n"
    )
    assert isinstance(response, Response)
    assert (response.status, response.reason) == (200, "OK then")
    validate_response(response)


@pytest.mark.parametrize(
    ("start", "status"),
    [
        (b"OPTIONS  sip:c@d SIP/2.0", 400),
        (b"OPTIONS sip:c@d SIP/2.0 ", 400),
        (b"OPTIONS sip:c@d  SIP/2.0", 400),
        (b"OPTIONS <sip:c@d> SIP/2.0", 400),
        (b"OPTIONS sip:c@d; lr SIP/2.0", 400),
        (b"OPTIONS sip:c@d\tSIP/2.0", 400),
        (b"OPT(IONS sip:c@d SIP/2.0", 400),
        (b"OPTIONS sip:c@d SIP/7.0", 505),
        (b"OPTIONS sip:c@d SIP/2.1", 505),
        (b"OPTIONS sip:c@d HTTP/1.1", 400),
        (b"OPTIONS", 400),
    ],
)
def test_bad_request_lines_keep_headers(start: bytes, status: int) -> None:
    """A bad request line is a 400 (505 for a version) that can still be answered."""
    with pytest.raises(ParseError) as info:
        parse_message(request(start))
    assert info.value.status == status
    assert info.value.headers is not None
    assert info.value.headers.get("call-id") == "x"


@pytest.mark.parametrize(
    "start",
    [
        b"SIP/2.0 4294967301 Huge",
        b"SIP/2.0 99 Low",
        b"SIP/2.0 700 High",
        b"SIP/2.0 20 OK",
        b"SIP/3.0 200 OK",
        b"SIP/2.0",
    ],
)
def test_bad_status_lines_drop(start: bytes) -> None:
    """Bad status lines raise without headers: responses are dropped."""
    with pytest.raises(ParseError) as info:
        parse_message(start + b"\r\n" + HEAD + b"CSeq: 1 OPTIONS\r\n\r\n")
    assert info.value.headers is None


def test_empty_reason_phrase() -> None:
    """'SIP/2.0 100 ' has an empty reason (RFC 4475 §3.1.1.13); so has no SP."""
    for line in (b"SIP/2.0 100 ", b"SIP/2.0 100"):
        message = parse_message(line + b"\r\n" + HEAD + b"\r\n")
        assert isinstance(message, Response)
        assert message.reason == ""


@pytest.mark.parametrize(
    ("extra", "name", "value"),
    [
        (b"Subject  :  hi  \r\n", "subject", "hi"),
        (b"s :\r\n", "subject", ""),
        (b"X-A: one\r\n two\r\n\tthree\r\n", "x-a", "one two three"),
        (b"X-A:\r\n  folded\r\n", "x-a", "folded"),
        (b"X-A: a  \r\n  b\r\n", "x-a", "a   b"),
        (b"X-\xc3\xa9: x\r\n", None, None),
    ],
)
def test_header_field_syntax(extra: bytes, name: str | None, value: str | None) -> None:
    """LWS before the colon, empty values and folding (RFC 3261 §7.3.1)."""
    data = request(extra=extra)
    if name is None:
        with pytest.raises(ParseError) as info:
            parse_message(data)
        assert info.value.headers is not None
        assert info.value.headers.get("call-id") == "x"
        return
    message = parse_message(data)
    assert message.headers.get(name) == value
    assert message.to_bytes() == data


def test_bare_lf_line_ends_are_tolerated() -> None:
    """A header section with bare LF parses like CRLF; raw fields use CRLF."""
    data = request(extra=b"X-A: 1\r\n 2\r\n").replace(b"\r\n", b"\n")
    message = parse_message(data)
    assert message.headers.get("x-a") == "1 2"
    assert message.headers.get("cseq") == "1 OPTIONS"
    assert b"X-A: 1\r\n 2" in message.to_bytes()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\r\n\r\n",
        request(extra=b" folded start\r\n").replace(b"Via:", b" Via:", 1),
        request(extra=b"NoColon\r\n"),
        request(extra=b": empty name\r\n"),
        request(extra=b"X-A: bare\rCR\r\n"),
        request(extra=b"X-A: " + b"a" * MAX_LINE_LENGTH + b"\r\n"),
        request(extra=b"X-A: 1\r\n" * MAX_HEADER_FIELDS),
        request(extra=b"Content-Length: 4\r\n", body=b"hello"),
        request(extra=b"Content-Length: -1\r\n"),
        request(extra=b"Content-Length: five\r\n", length=False),
        request(extra=b"Content-Length: 1" + b"0" * 30 + b"\r\n", length=False),
        request(body=b"x")[:-1],
        request() + b"x" * MAX_MESSAGE_SIZE,
    ],
)
def test_unparseable_requests(data: bytes) -> None:
    """Framing, syntax and limits raise ParseError, with headers for requests."""
    with pytest.raises(ParseError) as info:
        parse_message(data)
    if len(data) > MAX_MESSAGE_SIZE:
        assert info.value.status == 513


def test_datagram_body_rules() -> None:
    """§18.3: no Content-Length takes the rest; extra octets are ignored."""
    assert parse_message(request(length=False) + b"rest").body == b"rest"
    assert parse_message(request(body=b"ab") + b"cd").body == b"ab"
    assert parse_message(b"\r\n\r\n" + request()).headers.get("call-id") == "x"
    # A datagram may end right after its last header line (RFC 5118 archive).
    assert parse_message(request()[:-2]).body == b""
    with pytest.raises(ParseError):
        parse_message(request()[:-4])
    with pytest.raises(ParseError):
        parse_message(request(length=False), stream=True)
    same = request(extra=b"l: 2\r\n", body=b"ab")
    twice = parse_message(same)
    assert twice.body == b"ab"
    assert isinstance(twice, Request)
    with pytest.raises(ParseError):
        validate_request(twice)  # Content-Length at most once


def _invalid(
    extra: bytes = b"",
    *,
    cseq: bytes = b"1 OPTIONS",
    start: bytes = b"OPTIONS sip:c@d SIP/2.0",
    drop: bytes = b"",
) -> ParseError:
    data = request(start, extra, cseq)
    if drop:
        lines = data.split(b"\r\n")
        data = b"\r\n".join(line for line in lines if not line.startswith(drop))
    message = parse_message(data)
    assert isinstance(message, Request)
    with pytest.raises(ParseError) as info:
        validate_request(message)
    assert info.value.headers is message.headers
    return info.value


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"drop": b"Via"}, 400),
        ({"drop": b"From"}, 400),
        ({"drop": b"To"}, 400),
        ({"drop": b"Call-ID"}, 400),
        ({"drop": b"CSeq"}, 400),
        ({"extra": b"Call-ID: y\r\n"}, 400),
        ({"extra": b"Max-Forwards: 1\r\nMax-Forwards: 2\r\n"}, 400),
        ({"extra": b"Content-Type: a/b\r\nc: a/b\r\n"}, 400),
        ({"extra": b"Max-Forwards: 256\r\n"}, 400),
        ({"extra": b"Via: SIP/2.0/UDP h;branch=z9hG4bK\r\n"}, 400),
        ({"extra": b"Via: SIP/2.0/UDP h,\r\n"}, 400),
        ({"extra": b"Contact: *, <sip:a@b>\r\n"}, 400),
        ({"extra": b"Route: sip:a@b?x=y\r\n"}, 400),
        ({"extra": b"Record-Route: <sip:a@b\r\n"}, 400),
        ({"cseq": b"4294967296 OPTIONS"}, 400),
        ({"cseq": b"1 INVITE"}, 400),
        ({"cseq": b"1 INVITE", "start": b"FOO sip:c@d SIP/2.0"}, 501),
        ({"start": b"OPTIONS sip:c@d?Route=x SIP/2.0"}, 400),
        ({"start": b"OPTIONS sip:2001:db8::1 SIP/2.0"}, 400),
        ({"start": b"OPTIONS nota-uri SIP/2.0"}, 400),
    ],
)
def test_validate_request_rejects(kwargs: dict[str, bytes], status: int) -> None:
    """What a proxy needs well-formed (RFC 3261 §16.3 step 1) is checked."""
    assert _invalid(**kwargs).status == status


@pytest.mark.parametrize("rport", [b"abc", b"99999", b"0", b"-1", b"1" * 300])
def test_validate_request_rejects_an_rport_that_is_no_port(rport: bytes) -> None:
    """RFC 3581 §3: rport is sent empty; a value that is no port is a 400."""
    data = request().replace(b"branch=z9hG4bK1", b"branch=z9hG4bK1;rport=" + rport)
    message = parse_message(data)
    assert isinstance(message, Request)
    with pytest.raises(ParseError) as info:
        validate_request(message)
    assert info.value.status == 400
    assert info.value.headers is message.headers


def test_validate_request_rejects_a_call_id_that_is_not_utf8() -> None:
    """RFC 3261 §25.1: a Call-ID is ASCII; bytes that are not UTF-8 get a 400.

    Stores refuse to keep them (SQLite raised on such a REGISTER: 500).
    """
    message = parse_message(request().replace(b"Call-ID: ", b"Call-ID: \xff\xfe"))
    assert isinstance(message, Request)
    with pytest.raises(ParseError) as info:
        validate_request(message)
    assert (info.value.status, info.value.reason) == (400, "Call-ID is not UTF-8")


def test_a_bad_top_via_is_parsed_once() -> None:
    """Issue 13: validating, then answering, a hostile Via costs one parse."""
    data = request().replace(b"SIP/2.0/UDP h", b"SIP/2.0/UDP [" + b":" * 8000)
    message = parse_message(data)
    assert isinstance(message, Request)
    with pytest.raises(ParseError):
        validate_request(message)
    field = message.headers.first_field("via")
    assert field is not None
    remembered = field.view
    assert remembered is not None
    with pytest.raises(ParseError):
        message.top_via  # noqa: B018 - read again: the failure is kept
    assert field.view is remembered


@pytest.mark.parametrize(
    "extra",
    [
        b"Contact: *\r\nExpires: 0\r\n",
        b"Date: Fri, 01 Jan 2010 16:00:00 EST\r\nExpires: 1" + b"0" * 100 + b"\r\n",
        b"Accept: text/nobodyKnowsThis\r\nContent-Type: ;;\r\n",
        b"Max-Forwards: 0\r\n",
        b"Via: SIP/2.0/UDP h\r\n",
    ],
)
def test_validate_request_leaves_the_rest_alone(extra: bytes) -> None:
    """Date, Expires, Accept and Content-Type values are not judged here."""
    message = parse_message(request(extra=extra))
    assert isinstance(message, Request)
    validate_request(message)
    other = parse_message(request(b"FOO tel:+1 SIP/2.0", cseq=b"1 FOO"))
    assert isinstance(other, Request)
    validate_request(other)


OK_LINE = b"SIP/2.0 200 OK\r\n"
R_VIA = b"Via: SIP/2.0/UDP h\r\n"
R_FROM = b"From: <sip:a@b>\r\n"
R_REST = b"To: <sip:c@d>\r\nCall-ID: x\r\n"
R_CSEQ = b"CSeq: 1 A\r\n"


@pytest.mark.parametrize(
    "head",
    [
        OK_LINE + R_FROM + R_REST + R_CSEQ,
        OK_LINE + b"Via: bad\r\n" + R_FROM + R_REST + R_CSEQ,
        OK_LINE + R_VIA + R_REST + R_CSEQ,
        OK_LINE + R_VIA + R_FROM + R_REST + b"CSeq: 99999999999 A\r\n",
        OK_LINE + R_VIA + R_FROM + R_REST,
    ],
)
def test_validate_response_rejects(head: bytes) -> None:
    """A response without a usable Via, CSeq, From, To or Call-ID is dropped."""
    message = parse_message(head + b"\r\n")
    assert isinstance(message, Response)
    with pytest.raises(ParseError) as info:
        validate_response(message)
    assert info.value.headers is None


def test_framer_keepalives_and_pongs() -> None:
    """CRLFCRLF between messages is a ping; a lone CRLF is skipped (RFC 5626)."""
    framer = StreamFramer()
    one = request(body=b"abc")
    assert framer.feed(b"\r\n\r\n" + one + b"\r\n" + one[:10]) == [Keepalive(), one]
    assert framer.feed(one[10:] + b"\r\n") == [one]
    # The pending CRLF and the next one make a ping, whatever the timing.
    assert framer.feed(b"\r") == []
    assert framer.feed(b"\n") == [Keepalive()]
    assert framer.feed(b"\r\n" + one) == [one]
    assert not framer.closed


@pytest.mark.parametrize(
    ("extra", "length", "status"),
    [
        (b"", False, 400),
        (b"Content-Length: -5\r\n", False, 400),
        (b"Content-Length: 1\r\nl: 2\r\n", False, 400),
        (b"Content-Length: 99999\r\n", False, 513),
    ],
)
def test_framer_closes_on_unframeable_message(
    extra: bytes, length: bool, status: int
) -> None:
    """Missing, bad or conflicting Content-Length ends the stream with an error."""
    framer = StreamFramer()
    good = request()
    out = framer.feed(good + request(extra=extra, length=length) + good)
    assert out[0] == good
    error = out[-1]
    assert isinstance(error, ParseError)
    assert len(out) == 2
    assert error.status == status
    assert error.headers is not None
    assert framer.closed
    assert framer.feed(good) == []


def test_framer_limits_header_section() -> None:
    """Endless header bytes without an empty line close the stream (513)."""
    framer = StreamFramer(max_message_size=1000)
    assert framer.feed(b"OPTIONS sip:a SIP/2.0\r\n") == []
    out = framer.feed(b"X: " + b"a" * 1000)
    assert len(out) == 1
    assert isinstance(out[0], ParseError)
    assert out[0].status == 513
    response = StreamFramer().feed(b"SIP/2.0 200 OK\r\n\r\n")
    assert isinstance(response[0], ParseError)
    assert response[0].headers is None


def test_framer_reads_folded_content_length() -> None:
    """Content-Length may be folded or compact, like any other header."""
    data = request(extra=b"Content-Length:\r\n 3\r\n", body=b"abc", length=False)
    assert StreamFramer().feed(data) == [data]


def test_framer_is_linear_byte_by_byte() -> None:
    """A 64 KiB message arriving byte by byte does not take quadratic time."""
    body = b"x" * 60000
    data = request(extra=b"X-Pad: " + b"p" * 4000 + b"\r\n", body=body)
    framer = StreamFramer()
    started = time.perf_counter()
    out: list[object] = []
    for i in range(len(data)):
        out += framer.feed(data[i : i + 1])
    assert out == [data]
    assert time.perf_counter() - started < 2.0
