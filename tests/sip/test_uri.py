from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipproxy.sip.errors import ParseError
from sipproxy.sip.uri import AbsoluteURI, NameAddress, SipURI, parse_uri


@pytest.mark.parametrize(
    "text",
    [
        "sip:alice@atlanta.com",
        "SIP:Alice@AtLanTa.CoM:5060",
        "sips:bob:secret@[2001:db8::1]:5061;transport=tls",
        "sip:192.0.2.1",
        "sip:host;lr",
        "sip:host;lr;maddr=239.255.255.1;ttl=15",
        "sip:u%40x@h?Subject=hi&Priority=urgent",
        "sip:null-%00-null@example.com",
        "sip:+1-212-555-1212:1234@gateway.com;user=phone",
        "sip:[2001:db8::10:5070]",
        "sip:[::ffff:192.0.2.2]:5060",
        "sip:user;par=u%40example.net@example.com",
        "sip:h?X=",
    ],
)
def test_sip_uri_round_trips_exactly(text: str) -> None:
    """str() of a parsed URI is the text it came from, escapes and case kept."""
    uri = parse_uri(text)
    assert isinstance(uri, SipURI)
    assert str(uri) == text


def test_sip_uri_parts() -> None:
    """Each part is parsed and kept as written."""
    uri = SipURI.parse("sips:bob:pw@[2001:db8::1]:5061;Transport=TLS;lr;x=%41?h=v")
    assert uri.scheme == "sips"
    assert (uri.user, uri.password) == ("bob", "pw")
    assert (uri.host, uri.port) == ("[2001:db8::1]", 5061)
    assert uri.params == (("Transport", "TLS"), ("lr", None), ("x", "%41"))
    assert uri.headers == (("h", "v"),)
    assert uri.transport == "tls"
    assert uri.param("LR") == ""
    assert uri.param("maddr") is None
    assert uri.has_param("x")
    assert str(uri.with_param("lr", "on")) == (
        "sips:bob:pw@[2001:db8::1]:5061;Transport=TLS;lr=on;x=%41?h=v"
    )
    assert uri.without_param("transport").transport is None
    assert str(SipURI.parse("sip:h").with_param("lr")) == "sip:h;lr"


@pytest.mark.parametrize(
    "text",
    [
        "sip:2001:db8::10",
        "sip:user@example.com:port",
        "sip:user@example.com:70000",
        "sip:user@exa mple.com",
        "<sip:user@example.com>",
        "sip:user@example.com>",
        "user@example.com",
        ":user",
        "sip:@host",
        "sip:us<er@host",
        "sip:host;",
        "sip:host;a=",
        "sip:host?novalue",
        "sip:[2001:db8::1",
        "sip:host:",
        "sip:a%zzb@host",
        "tel:+1 555",
        "sip:",
    ],
)
def test_bad_uris_raise(text: str) -> None:
    """Departures from the §25 grammar are ParseErrors, never other exceptions."""
    with pytest.raises(ParseError):
        parse_uri(text)


def test_other_schemes_are_absolute_uris() -> None:
    """tel:, http: and unknown schemes are kept opaque (RFC 3261 §19.1)."""
    assert parse_uri("tel:+1-201-555-0123") == AbsoluteURI("tel", "+1-201-555-0123")
    uri = parse_uri("soap.beep://192.0.2.103:3002")
    assert str(uri) == "soap.beep://192.0.2.103:3002"
    assert uri.matches(AbsoluteURI("SOAP.BEEP", "//192.0.2.103:3002"))
    with pytest.raises(ParseError):
        SipURI.parse("tel:+1")


def test_escapes_decode_exactly_once() -> None:
    """%25%34%31 is %41 after unescaping, never A (RFC 4475 §3.1.1.3)."""
    uri = SipURI.parse("sip:v%61lue%25%34%31@h")
    assert uri.unescaped_user == "value%41"
    assert SipURI.parse("sip:%00%00@h").unescaped_user == "\x00\x00"


def test_aor_is_canonical() -> None:
    """The registration key drops port and params and lowercases host and scheme."""
    uri = SipURI.parse("SIP:Al%69ce@AtLanta.COM:5070;transport=tcp?x=y")
    assert uri.aor() == "sip:Alice@atlanta.com"
    assert SipURI.parse("sip:Example.com").aor() == "sip:example.com"


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (
            "sip:%61lice@atlanta.com;transport=TCP",
            "sip:alice@AtLanTa.CoM;Transport=tcp",
        ),
        ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
        ("sip:carol@chicago.com;security=on", "sip:carol@chicago.com;newparam=5"),
        ("sip:alice@atlanta.com?subject=hi", "sip:alice@atlanta.com?Subject=hi"),
        ("sip:h;lr", "sip:h;%6C%72"),
    ],
)
def test_equivalent_uris_match(a: str, b: str) -> None:
    """URI comparison of RFC 3261 §19.1.4: these pairs are equivalent."""
    assert SipURI.parse(a).matches(SipURI.parse(b))
    assert SipURI.parse(b).matches(SipURI.parse(a))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP"),
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),
        ("sip:bob@biloxi.com", "sips:bob@biloxi.com"),
        ("sip:carol@chicago.com;newparam=5", "sip:carol@chicago.com;newparam=6"),
        ("sip:alice@atlanta.com?subject=hi", "sip:alice@atlanta.com"),
        ("sip:a:x@h", "sip:a:y@h"),
    ],
)
def test_different_uris_do_not_match(a: str, b: str) -> None:
    """URI comparison of RFC 3261 §19.1.4: these pairs differ."""
    assert not SipURI.parse(a).matches(SipURI.parse(b))
    assert not SipURI.parse(a).matches(AbsoluteURI("tel", "1"))


@pytest.mark.parametrize(
    ("text", "display", "uri", "params", "angle"),
    [
        ("<sip:a@b>", None, "sip:a@b", (), True),
        ("sip:a@b", None, "sip:a@b", (), False),
        ("sip:a@b;tag=1", None, "sip:a@b", (("tag", "1"),), False),
        ("Alice <sip:a@b>;tag=x", "Alice", "sip:a@b", (("tag", "x"),), True),
        ("A  B  C<sip:a@b>", "A  B  C", "sip:a@b", (), True),
        ('"Doe, J. \\"Q\\"" <sips:a@b;lr>', 'Doe, J. "Q"', "sips:a@b;lr", (), True),
        ('""<sip:a@b>', "", "sip:a@b", (), True),
        (
            '<sip:a@b> ; expires = 60 ;+sip.instance="<urn:uuid:1>"; q=0.5',
            None,
            "sip:a@b",
            (("expires", "60"), ("+sip.instance", '"<urn:uuid:1>"'), ("q", "0.5")),
            True,
        ),
        ("<tel:+123>;x", None, "tel:+123", (("x", None),), True),
        ("isbn:2983792873", None, "isbn:2983792873", (), False),
    ],
)
def test_name_address_parses(
    text: str,
    display: str | None,
    uri: str,
    params: tuple[tuple[str, str | None], ...],
    angle: bool,
) -> None:
    """name-addr and addr-spec values with their header parameters (§20.10)."""
    address = NameAddress.parse(text)
    assert address.display_name == display
    assert str(address.uri) == uri
    assert address.params == params
    assert address.angle is angle
    assert NameAddress.parse(str(address)) == address


@pytest.mark.parametrize(
    "text",
    [
        "*",
        '"Mr. J. User <sip:j.user@example.com>',
        "Bell, Alexander <sip:a.g.bell@example.com>",
        '"Watson, Thomas" < sip:t.watson@example.org >',
        "sip:user@example.com?Route=%3Csip:sip.example.com%3E",
        "sip:a@b,c",
        '"x" sip:a@b',
        "<sip:a@b",
        "<sip:a@b>;;",
        "<sip:a@b>;tag=",
        "<sip:a@b> junk",
        '<sip:a@b>;x="open',
        "",
        "a@b <sip:a@b>",
    ],
)
def test_bad_name_addresses_raise(text: str) -> None:
    """Unterminated quotes, unquoted commas, spaces in <>, '?' outside <>: 400."""
    with pytest.raises(ParseError):
        NameAddress.parse(text)


def test_name_address_editing() -> None:
    """tag, with_param and without_param work on header parameters only."""
    address = NameAddress.parse("Bob <sip:b@h;lr>;Tag=1;x")
    assert address.tag == "1"
    assert address.param("X") == ""
    assert address.has_param("x")
    assert str(address.with_param("tag", "2")) == '"Bob" <sip:b@h;lr>;Tag=2;x'
    assert str(address.without_param("tag")) == '"Bob" <sip:b@h;lr>;x'
    assert str(NameAddress(SipURI.parse("sip:a@b;lr"), angle=False)) == "<sip:a@b;lr>"
    quoted = NameAddress(SipURI.parse("sip:a@b"), 'x"\\\x00')
    assert NameAddress.parse(str(quoted)).display_name == 'x"\\\x00'


def _either(scheme: str, rest: str, walk: bool) -> object:
    parse = SipURI._parse_rest_walk if walk else SipURI._parse_rest
    try:
        return parse(scheme, rest)
    except ParseError as error:
        return ("error", error.reason)


@given(st.text(alphabet="ab1.-_~!*'()&=+$,;:?/@%[]<> \t9", min_size=0, max_size=40))
@settings(max_examples=3000, deadline=None)
def test_plain_uri_fast_path_gives_what_the_full_walk_gives(rest: str) -> None:
    """The one-regex path for plain URIs (the hot path) never differs."""
    assert _either("sip", rest, walk=False) == _either("sip", rest, walk=True)


@pytest.mark.parametrize(
    "rest",
    [
        "u1@127.0.0.1:5061;transport=udp",
        "bob@example.test",
        "127.0.0.1:5060;lr",
        "a@b:70000",
        "u@h;lr;x=1",
        "u@h;x=",
        "u@h:5060;maddr=[::1]",
        "GlMXYHPGd91TtnVkcHwxMjcuMC4wLjF8NTA2MXw@127.0.0.1:5060;lr",
    ],
)
def test_plain_uri_fast_path_examples(rest: str) -> None:
    assert _either("sip", rest, walk=False) == _either("sip", rest, walk=True)


def _outcome(parse: Callable[[str], object], text: str) -> object:
    try:
        return parse(text)
    except ParseError as error:
        return ("error", error.reason)


def _pick(plain: list[str], odd: list[str]) -> st.SearchStrategy[str]:
    """Mostly one of ``plain`` (what a fast path takes), else one of ``odd``."""
    return st.sampled_from(plain * 8 + odd)


# Name-addrs the fast path takes (bar long hosts and big ports, which it leaves
# to the walk), near misses with one odd part or more, and random text.
_SCHEMES = _pick(["sip:", "SIP:", "sips:", "sIpS:"], ["tel:", "sipx:", "si p:", ""])
_URI_PARTS = st.builds(
    "{}{}{}{}".format,
    _pick(["", "u@", "a.b-c_~!*'()&=+$,@"], ["@", "u:pw@", "u%41@", "u;x@"]),
    _pick(
        ["h", "127.0.0.1", "a_b.c-d.", "h" * 255],
        ["h" * 256, "[::1]", "[1:2]", "", "h h"],
    ),
    _pick(["", ":5060", ":0", ":65535"], [":65536", ":99999", ":", ":x", ":1 "]),
    st.lists(
        _pick(
            [";lr", ";transport=udp", ";x=[::1]/:&+$"],
            [";x=", ";", ";x=%41", "?h=v", ";x=a=b", "; x"],
        ),
        max_size=3,
    ).map("".join),
)
_URI_BODIES = st.one_of(
    _URI_PARTS, st.text(alphabet="ab1.-_~!*'()&=+$,;:?/@%[]<> \t9", max_size=40)
)
_DISPLAYS = _pick(
    ["", '"Alice" ', '"Alice"', '""', '"a <b> ;,@\u00e9\r\n" ', "Alice ", "A  B\tC"],
    ['"\\"" ', '"open ', "A,B ", "a@b ", " ", "\t", '"x" y '],
)
_HEADER_PARAMS = st.lists(
    _pick(
        [";tag=a1", ";expires=60", ";lr", ";q=0.5", ";received=[::1]"],
        [";x=", ";", " ;x", ";x ", ';x="a b"', ",", ">"],
    ),
    max_size=3,
).map("".join)
_NAME_ADDRESSES = st.one_of(
    st.builds("{}<{}{}>{}".format, _DISPLAYS, _SCHEMES, _URI_PARTS, _HEADER_PARAMS),
    st.builds("{}<{}{}>{}".format, _DISPLAYS, _SCHEMES, _URI_BODIES, _HEADER_PARAMS),
    st.builds("{}{}{}".format, _SCHEMES, _URI_BODIES, _HEADER_PARAMS),
    st.text(alphabet='"<>sip:a@b;tag=1 \t\\,', max_size=40),
)


@given(_NAME_ADDRESSES)
@settings(max_examples=3000, deadline=None)
def test_plain_name_address_fast_path_gives_what_the_full_walk_gives(
    text: str,
) -> None:
    """The one-regex path for '"Alice" <sip:a@h>;tag=1' and the like never differs."""
    assert _outcome(NameAddress.parse, text) == _outcome(NameAddress._parse_walk, text)


@pytest.mark.parametrize(
    "text",
    [
        "<sip:alice@example.test>;tag=a1",
        '"Alice" <sip:alice@example.test>;tag=a1',
        "Alice Smith <SIPS:alice@127.0.0.1:5061;transport=tls>;expires=60;q=0.5",
        '""<sip:a@b>',
        "<sip:a@b:65536>",
        "<sip:a@" + "h" * 256 + ">",
        "<sip:a@b>;",
        "<sip:a@b> ;tag=1",
        "  <sip:a@b>;tag=1\t",
    ],
)
def test_plain_name_address_fast_path_examples(text: str) -> None:
    assert _outcome(NameAddress.parse, text) == _outcome(NameAddress._parse_walk, text)


@pytest.mark.parametrize(
    "text",
    [
        "sip:[" + ":" * 8000,
        "sip:[" + ":" * 8000 + "]",
        "sip:a@[" + ":" * 8000 + "]:5060",
        "sip:[" + "1:" * 4000 + "]",
        "sip:[::1%eth0]",
        "sip:a@" + "h" * 256,
        "sip:a@" + "h" * 256 + ";lr",
    ],
    ids=lambda t: f"{t[:12]}..{len(t)}",
)
def test_hostile_uri_hosts_raise(text: str) -> None:
    """Issue 13: hosts are checked in linear time and at most 255 characters."""
    with pytest.raises(ParseError):
        parse_uri(text)


def test_three_colon_ipv6_reference_is_tolerated() -> None:
    """RFC 5118 §4.10: the form the RFC 3261 ABNF allows still parses."""
    uri = parse_uri("sip:user@[2001:db8:::192.0.2.1]:5060")
    assert isinstance(uri, SipURI)
    assert uri.host == "[2001:db8:::192.0.2.1]"
