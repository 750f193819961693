"""Every RFC 4475 and RFC 5118 torture message, with the outcome the RFCs ask for.

The corpora live in tests/conformance/ (see the READMEs there). The table below
names, for each file, whether it parses and validates ("ok") or which stage rejects
it and with what status; a check function spot-tests what the RFC calls out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from sipproxy.sip.errors import ParseError
from sipproxy.sip.message import Request, Response, response_from_headers
from sipproxy.sip.parser import (
    Keepalive,
    StreamFramer,
    parse_message,
    validate_request,
    validate_response,
)
from sipproxy.sip.uri import AbsoluteURI, NameAddress, SipURI

CORPUS = Path(__file__).parent.parent / "conformance"

Message = Request | Response


def _wsinv(m: Message) -> None:
    assert m.max_forwards == 68
    assert m.cseq.number == 9
    assert m.cseq.method == "INVITE"
    assert m.headers.get("subject") == ""
    assert m.headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    assert m.to_addr.tag == "1918181833n"
    assert m.from_addr.display_name == 'J Rosenberg \\"'
    assert m.from_addr.tag == "98asjd8"
    assert [v.transport for v in m.vias] == ["UDP", "TCP", "UDP"]
    assert m.vias[1].branch == "z9hG4bK9ikj8"
    assert m.vias[2].branch == "z9hG4bK30239"
    assert m.headers.get("NewFangledHeader") == (
        "newfangled value continued newfangled value"
    )
    (contact,) = m.contacts
    assert contact.display_name == 'Quoted string ""'
    assert contact.param("newparam") == "newvalue"
    assert contact.param("secondparam") == ""
    assert contact.param("q") == "0.33"
    (route,) = m.routes
    assert isinstance(route.uri, SipURI)
    assert route.uri.has_param("lr")
    assert route.uri.param("unknown-no-value") == ""
    assert len(m.body) == 150


def _intmeth(m: Message) -> None:
    assert isinstance(m, Request)
    assert m.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert m.cseq.method == m.method
    uri = m.request_uri
    assert isinstance(uri, SipURI)
    assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert uri.host == "example.com"
    assert m.to_addr.display_name == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert m.max_forwards == 255
    assert m.headers.get("extensionHeader-!.%*+_`'~") == "\ufeff大停電"


def _esc01(m: Message) -> None:
    assert isinstance(m, Request)
    uri = m.request_uri
    assert isinstance(uri, SipURI)
    assert uri.unescaped_user == "sips:user@example.com"
    assert isinstance(m.to_addr.uri, SipURI)
    assert m.to_addr.uri.unescaped_user == "user"
    assert isinstance(m.from_addr.uri, SipURI)
    assert m.from_addr.uri.unescaped_user == "I have spaces"
    (contact,) = m.contacts
    assert isinstance(contact.uri, SipURI)
    assert contact.uri.unescaped_user == "caller"
    assert contact.uri.param("n%61me") == "v%61lue%25%34%31"
    # Unescaped once the parameter is name=value%41, never valueA.
    other = SipURI.parse("sip:caller@host5.example.net;lr;name=value%2541")
    assert contact.uri.matches(other)
    assert not contact.uri.matches(other.with_param("name", "valueA"))
    assert (
        str(contact.uri)
        == "sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31"
    )


def _escnull(m: Message) -> None:
    first, second = m.contacts
    assert isinstance(first.uri, SipURI)
    assert isinstance(second.uri, SipURI)
    assert first.uri.unescaped_user == "\x00"
    assert second.uri.unescaped_user == "\x00\x00"
    assert first.uri.aor() != second.uri.aor()
    assert not first.uri.matches(second.uri)
    assert isinstance(m.to_addr.uri, SipURI)
    assert m.to_addr.uri.aor() == "sip:null-\x00-null@example.com"


def _esc02(m: Message) -> None:
    assert isinstance(m, Request)
    assert m.method == "RE%47IST%45R"
    assert len(m.contacts) == 2
    assert m.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"
    assert m.to_addr.display_name == "%Z%45"
    assert m.top_via.branch == "z9hG4bK209%fzsnel234"


def _lwsdisp(m: Message) -> None:
    assert m.from_addr.display_name == "caller"
    assert str(m.from_addr.uri) == "sip:caller@example.com"


def _longreq(m: Message) -> None:
    assert len(m.vias) == 34
    assert len(m.body) == 150
    assert m.headers.get("call-id") is not None
    assert m.from_addr.tag is not None
    assert m.to_addr.param("unknownparam") is None
    assert len(m.to_addr.display_name or "") > 80


def _dblreq(m: Message) -> None:
    assert isinstance(m, Request)
    assert m.method == "REGISTER"
    assert m.body == b""


def _semiuri(m: Message) -> None:
    assert isinstance(m, Request)
    uri = m.request_uri
    assert isinstance(uri, SipURI)
    assert uri.user == "user;par=u%40example.net"
    assert uri.unescaped_user == "user;par=u@example.net"
    assert uri.host == "example.com"
    assert uri.params == ()


def _transports(m: Message) -> None:
    assert [v.transport for v in m.vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]


def _mpart01(m: Message) -> None:
    assert len(m.body) == 553
    assert b"\x00" in m.body
    assert m.top_via.rport == ""


def _unreason(m: Message) -> None:
    assert isinstance(m, Response)
    assert m.status == 200
    assert "=" in m.reason


def _noreason(m: Message) -> None:
    assert isinstance(m, Response)
    assert (m.status, m.reason) == (100, "")


def _inv2543(m: Message) -> None:
    assert m.headers.get("content-length") is None
    assert len(m.body) == 105
    assert m.body.startswith(b"v=0")
    assert m.top_via.branch is None
    assert m.from_addr.tag is None
    assert m.max_forwards is None
    (rr,) = m.record_routes
    assert isinstance(rr.uri, SipURI)
    assert rr.uri.param("maddr") == "ss1.example.com"


def _unkscm(m: Message) -> None:
    assert isinstance(m, Request)
    assert m.request_uri == AbsoluteURI("nobodyKnowsThisScheme", "totallyopaquecontent")


def _novelsc(m: Message) -> None:
    assert isinstance(m, Request)
    assert m.request_uri == AbsoluteURI("soap.beep", "//192.0.2.103:3002")


def _unksm2(m: Message) -> None:
    assert m.to_addr.uri == AbsoluteURI("isbn", "2983792873")
    assert m.from_addr.uri == AbsoluteURI("http", "//www.example.com")
    (contact,) = m.contacts
    assert contact.uri == AbsoluteURI("name", "John_Smith")


def _bext01(m: Message) -> None:
    assert m.headers.get_all("proxy-require") == [
        "noProxiesSupportThis",
        "norDoAnyProxiesSupportThis",
    ]
    assert m.headers.get_all("require") == [
        "nothingSupportsThis",
        "nothingSupportsThisEither",
    ]


def _regaut01(m: Message) -> None:
    assert m.headers.get("authorization") == "NoOneKnowsThisScheme opaque-data=here"


def _zeromf(m: Message) -> None:
    assert m.max_forwards == 0


def _cparam01(m: Message) -> None:
    (contact,) = m.contacts
    assert not contact.angle
    assert contact.has_param("unknownparam")
    assert isinstance(contact.uri, SipURI)
    assert contact.uri.params == ()


def _cparam02(m: Message) -> None:
    (contact,) = m.contacts
    assert contact.params == ()
    assert isinstance(contact.uri, SipURI)
    assert contact.uri.has_param("unknownparam")


def _regescrt(m: Message) -> None:
    (contact,) = m.contacts
    assert isinstance(contact.uri, SipURI)
    assert contact.uri.headers == (("Route", "%3Csip:sip.example.com%3E"),)


def _bcast(m: Message) -> None:
    assert m.vias[1].host == "255.255.255.255"


def _baddate(m: Message) -> None:
    assert m.headers.get("date") == "Fri, 01 Jan 2010 16:00:00 EST"


def _ipv6_good(m: Message) -> None:
    assert isinstance(m, Request)
    uri = m.request_uri
    assert isinstance(uri, SipURI)
    assert (uri.host, uri.port) == ("[2001:db8::10]", None)
    assert m.top_via.host.startswith("[2001:db8::")
    assert isinstance(m.contacts[0].uri, SipURI)
    assert m.contacts[0].uri.host.startswith("[2001:db8::")


def _port_ambiguous(m: Message) -> None:
    assert isinstance(m, Request)
    uri = m.request_uri
    assert isinstance(uri, SipURI)
    assert (uri.host, uri.port) == ("[2001:db8::10:5070]", None)


def _port_unambiguous(m: Message) -> None:
    assert isinstance(m, Request)
    uri = m.request_uri
    assert isinstance(uri, SipURI)
    assert (uri.host, uri.port) == ("[2001:db8::10]", 5070)


def _received_delim(m: Message) -> None:
    assert m.top_via.received == "[2001:db8::9:255]"


def _received_no_delim(m: Message) -> None:
    assert m.top_via.received == "2001:db8::9:255"


def _mult_ip_in_header(m: Message) -> None:
    assert [v.sent_by for v in m.vias] == [
        ("[2001:db8::9:1]", 6050),
        ("192.0.2.1", None),
        ("[2001:db8::9:255]", None),
    ]
    assert m.vias[2].received == "192.0.2.200"


def _ipv4_mapped(m: Message) -> None:
    assert m.top_via.sent_by == ("[::ffff:192.0.2.10]", 19823)
    assert isinstance(m.contacts[0].uri, SipURI)
    assert m.contacts[0].uri.host == "[::ffff:192.0.2.2]"


def _three_colons(m: Message) -> None:
    assert isinstance(m, Request)
    uri = m.request_uri
    assert isinstance(uri, SipURI)
    assert uri.host == "[2001:db8:::192.0.2.1]"


def _two_colons(m: Message) -> None:
    assert isinstance(m, Request)
    uri = m.request_uri
    assert isinstance(uri, SipURI)
    assert uri.host == "[2001:db8::192.0.2.1]"


def _sdp_body(m: Message) -> None:
    assert m.body.startswith(b"v=0")
    assert len(m.body) == int(m.headers.get("content-length") or "-1")


def _nothing(m: Message) -> None:
    pass


@dataclass(frozen=True)
class Outcome:
    """``stage`` is "ok", "parse" (parse_message raises) or "validate"."""

    stage: str
    status: int = 0
    check: Callable[[Message], None] = _nothing
    answerable: bool = True  # a request whose error carries headers enough to answer


def ok(check: Callable[[Message], None] = _nothing) -> Outcome:
    return Outcome("ok", check=check)


def at_parse(status: int, *, answerable: bool = True) -> Outcome:
    return Outcome("parse", status, answerable=answerable)


def at_validate(status: int, *, answerable: bool = True) -> Outcome:
    return Outcome("validate", status, answerable=answerable)


RESPONSE_DROPPED = Outcome("parse", 400, answerable=False)

EXPECTED: dict[str, Outcome] = {
    # RFC 4475 §3.1.1: valid messages
    "rfc4475/wsinv": ok(_wsinv),
    "rfc4475/intmeth": ok(_intmeth),
    "rfc4475/esc01": ok(_esc01),
    "rfc4475/escnull": ok(_escnull),
    "rfc4475/esc02": ok(_esc02),
    "rfc4475/lwsdisp": ok(_lwsdisp),
    "rfc4475/longreq": ok(_longreq),
    "rfc4475/dblreq": ok(_dblreq),
    "rfc4475/semiuri": ok(_semiuri),
    "rfc4475/transports": ok(_transports),
    "rfc4475/mpart01": ok(_mpart01),
    "rfc4475/unreason": ok(_unreason),
    "rfc4475/noreason": ok(_noreason),
    # RFC 4475 §3.1.2: invalid messages
    # The top Via itself is broken, so no response can be addressed.
    "rfc4475/badinv01": at_validate(400, answerable=False),
    "rfc4475/clerr": at_parse(400),
    "rfc4475/ncl": at_parse(400),
    "rfc4475/scalar02": at_validate(400),
    "rfc4475/scalarlg": Outcome("validate", 400, answerable=False),
    "rfc4475/quotbal": at_validate(400),
    "rfc4475/ltgtruri": at_parse(400),
    "rfc4475/lwsruri": at_parse(400),
    "rfc4475/lwsstart": at_parse(400),
    "rfc4475/trws": at_parse(400),
    "rfc4475/escruri": at_validate(400),
    "rfc4475/baddate": ok(_baddate),
    "rfc4475/regbadct": at_validate(400),
    "rfc4475/badaspec": at_validate(400),
    "rfc4475/baddn": at_validate(400),
    "rfc4475/variants/baddn.terminated": at_validate(400),
    "rfc4475/badvers": at_parse(505),
    "rfc4475/mismatch01": at_validate(400),
    "rfc4475/mismatch02": at_validate(501),
    "rfc4475/bigcode": RESPONSE_DROPPED,
    # RFC 4475 §3.2 to §3.4: the wire level passes what the proxy layer judges
    "rfc4475/badbranch": at_validate(400),
    "rfc4475/insuf": at_validate(400, answerable=False),
    "rfc4475/unkscm": ok(_unkscm),
    "rfc4475/novelsc": ok(_novelsc),
    "rfc4475/unksm2": ok(_unksm2),
    "rfc4475/bext01": ok(_bext01),
    "rfc4475/invut": ok(),
    "rfc4475/regaut01": ok(_regaut01),
    "rfc4475/multi01": at_validate(400),
    "rfc4475/mcl01": at_parse(400),
    "rfc4475/bcast": ok(_bcast),
    "rfc4475/zeromf": ok(_zeromf),
    "rfc4475/cparam01": ok(_cparam01),
    "rfc4475/cparam02": ok(_cparam02),
    "rfc4475/regescrt": ok(_regescrt),
    "rfc4475/sdp01": ok(),
    "rfc4475/inv2543": ok(_inv2543),
    # RFC 5118, wire form (CRLF, Content-Length fixed)
    "rfc5118/wire/ipv6-good": ok(_ipv6_good),
    "rfc5118/wire/ipv6-bad": at_validate(400),
    "rfc5118/wire/port-ambiguous": ok(_port_ambiguous),
    "rfc5118/wire/port-unambiguous": ok(_port_unambiguous),
    "rfc5118/wire/via-received-param-with-delim": ok(_received_delim),
    "rfc5118/wire/via-received-param-no-delim": ok(_received_no_delim),
    "rfc5118/wire/ipv6-in-sdp": ok(_sdp_body),
    "rfc5118/wire/mult-ip-in-header": ok(_mult_ip_in_header),
    "rfc5118/wire/mult-ip-in-sdp": ok(_sdp_body),
    "rfc5118/wire/ipv4-mapped-ipv6": ok(_ipv4_mapped),
    "rfc5118/wire/ipv6-bug-abnf-3-colons": ok(_three_colons),
    "rfc5118/wire/ipv6-correct-abnf-2-colons": ok(_two_colons),
    # RFC 5118 archive form: bare LF line ends are tolerated; the archive's
    # Content-Length is too large for two SDP bodies, which a datagram cannot hold.
    "rfc5118/ipv6-good": ok(_ipv6_good),
    "rfc5118/ipv6-bad": at_validate(400),
    "rfc5118/port-ambiguous": ok(_port_ambiguous),
    "rfc5118/port-unambiguous": ok(_port_unambiguous),
    "rfc5118/via-received-param-with-delim": ok(_received_delim),
    "rfc5118/via-received-param-no-delim": ok(_received_no_delim),
    "rfc5118/ipv6-in-sdp": at_parse(400),
    "rfc5118/mult-ip-in-header": ok(_mult_ip_in_header),
    "rfc5118/mult-ip-in-sdp": at_parse(400),
    "rfc5118/ipv4-mapped-ipv6": ok(_ipv4_mapped),
    "rfc5118/ipv6-bug-abnf-3-colons": ok(_three_colons),
    "rfc5118/ipv6-correct-abnf-2-colons": ok(_two_colons),
}


def _on_disk() -> list[str]:
    names = []
    for pattern in ("rfc4475/*.dat", "rfc4475/variants/*.dat", "rfc5118/*.dat"):
        names += [str(p.relative_to(CORPUS))[:-4] for p in CORPUS.glob(pattern)]
    names += [
        str(p.relative_to(CORPUS))[:-4] for p in CORPUS.glob("rfc5118/wire/*.dat")
    ]
    return sorted(names)


def _read(name: str) -> bytes:
    return (CORPUS / f"{name}.dat").read_bytes()


def _validate(message: Message) -> None:
    if isinstance(message, Request):
        validate_request(message)
    else:
        validate_response(message)


def test_table_covers_every_file() -> None:
    """No corpus file is silently skipped, and the table names no missing file."""
    assert sorted(EXPECTED) == _on_disk()
    assert len(EXPECTED) == 49 + 1 + 12 + 12


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_message(name: str) -> None:
    """Each torture message meets the outcome its RFC section asks for."""
    outcome = EXPECTED[name]
    data = _read(name)
    if outcome.stage == "parse":
        with pytest.raises(ParseError) as info:
            parse_message(data)
    else:
        message = parse_message(data)
        if outcome.stage == "ok":
            _validate(message)
            outcome.check(message)
            return
        with pytest.raises(ParseError) as info:
            _validate(message)
    error = info.value
    is_request = not data.startswith(b"SIP/")
    if is_request:
        assert error.status == outcome.status
        assert error.headers is not None
        if outcome.answerable:
            response = response_from_headers(error.headers, error.status)
            assert response.status == error.status
            assert response.headers.get("call-id") == error.headers.get("call-id")
        else:
            with pytest.raises(ParseError):
                response_from_headers(error.headers, error.status)
    else:
        assert error.headers is None


def test_dblreq_ignores_trailing_octets() -> None:
    """Octets after Content-Length in a datagram are never part of the message."""
    data = _read("rfc4475/dblreq")
    message = parse_message(data)
    assert b"INVITE" not in message.to_bytes()
    assert len(message.to_bytes()) < len(data)


def test_untouched_torture_message_round_trips() -> None:
    """A parsed message serialises back to its exact bytes (wsinv: folds and all)."""
    for name in ("rfc4475/wsinv", "rfc4475/intmeth", "rfc4475/mpart01"):
        data = _read(name)
        assert parse_message(data).to_bytes() == data


RFC4475 = [n for n in sorted(EXPECTED) if n.startswith("rfc4475/")]


def _framed_ok(name: str) -> bool:
    """Messages whose Content-Length frames exactly what the datagram holds."""
    try:
        message = parse_message(_read(name))
    except ParseError:
        return False
    return message.headers.get("content-length") is not None


def _feed_all(framer: StreamFramer, chunks: list[bytes]) -> list[object]:
    """Everything the framer returns, errors as (status, reason) to compare."""
    out: list[object] = []
    for chunk in chunks:
        for item in framer.feed(chunk):
            if isinstance(item, ParseError):
                out.append((item.status, item.reason))
            else:
                out.append(item)
    return out


@pytest.mark.parametrize("name", RFC4475)
def test_stream_framing_of_corpus(name: str) -> None:
    """On a stream, a well-framed message comes out whole and parses the same."""
    data = _read(name)
    framer = StreamFramer()
    out = framer.feed(data)
    if name in ("rfc4475/ncl", "rfc4475/mcl01", "rfc4475/inv2543"):
        assert len(out) == 1
        assert isinstance(out[0], ParseError)
        assert out[0].headers is not None
        assert framer.closed
        assert framer.feed(b"OPTIONS sip:x SIP/2.0\r\nl: 0\r\n\r\n") == []
        return
    if name in ("rfc4475/clerr", "rfc4475/baddn"):
        # clerr: wait for the rest of the 9999 bytes; baddn: no empty line yet.
        assert out == []
        assert not framer.closed
        return
    if not _framed_ok(name):
        return
    assert out
    first = out[0]
    assert isinstance(first, bytes)
    assert parse_message(first, stream=True) == parse_message(data)
    assert data.startswith(first)


def test_clerr_is_an_error_as_one_stream_message() -> None:
    """A stream message cannot end before Content-Length bytes (RFC 4475 §3.1.2.2)."""
    with pytest.raises(ParseError) as info:
        parse_message(_read("rfc4475/clerr"), stream=True)
    assert info.value.status == 400


def test_stream_requires_content_length() -> None:
    """inv2543 has no Content-Length: fine in a datagram, not on a stream."""
    with pytest.raises(ParseError) as info:
        parse_message(_read("rfc4475/inv2543"), stream=True)
    assert info.value.headers is not None


@pytest.mark.parametrize("name", ["rfc4475/wsinv", "rfc4475/mpart01", "rfc4475/esc01"])
def test_stream_split_at_every_offset(name: str) -> None:
    """Any two-piece split of a message, followed by a ping, frames the same."""
    data = _read(name)
    expected = parse_message(data)
    for cut in range(len(data) + 1):
        framer = StreamFramer()
        out = _feed_all(framer, [data[:cut], data[cut:], b"\r\n\r\n"])
        assert len(out) == 2, cut
        assert isinstance(out[0], bytes)
        assert parse_message(out[0], stream=True) == expected
        assert out[1] == Keepalive()


@pytest.mark.parametrize(
    "name", ["rfc4475/longreq", "rfc4475/dblreq", "rfc4475/intmeth"]
)
def test_stream_byte_by_byte(name: str) -> None:
    """Fed one byte at a time, the framer yields the same messages as fed whole."""
    data = _read(name)
    whole = _feed_all(StreamFramer(), [data])
    framer = StreamFramer()
    out = _feed_all(framer, [data[i : i + 1] for i in range(len(data))])
    assert out == whole
    assert isinstance(out[0], bytes)
    assert parse_message(out[0], stream=True) == parse_message(data)


def test_name_address_of_corpus_round_trips() -> None:
    """Every From, To and Contact of the valid corpus re-parses from its str()."""
    for name, outcome in EXPECTED.items():
        if outcome.stage != "ok":
            continue
        message = parse_message(_read(name))
        values = [message.headers.get("from"), message.headers.get("to")]
        for value in [*values, *message.headers.get_all("contact")]:
            assert value is not None
            address = NameAddress.parse(value)
            assert NameAddress.parse(str(address)).uri == address.uri
