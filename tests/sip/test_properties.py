"""Property tests: no input crashes the parser, and what we write we read back."""

from __future__ import annotations

import contextlib
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipproxy.sip.errors import ParseError
from sipproxy.sip.headers import Headers, canonical_name
from sipproxy.sip.message import Request, Response
from sipproxy.sip.parser import (
    Keepalive,
    StreamFramer,
    parse_message,
    validate_request,
    validate_response,
)
from sipproxy.sip.uri import NameAddress, SipURI, parse_uri
from sipproxy.sip.via import Via

CORPUS = sorted((Path(__file__).parent.parent / "conformance").rglob("*.dat"))
TORTURE = [p.read_bytes() for p in CORPUS]
MUTATION_BYTES = list(b' \t\r\n:;,<>"\\@[]%=/?0A\x00\xff')

FAST = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
tokens = st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=12)
alnum = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)
hostnames = st.lists(alnum, min_size=1, max_size=4).map(".".join)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(lambda a: f"[{a}]")
hosts = st.one_of(hostnames, ipv4, ipv6)
ports = st.none() | st.integers(min_value=0, max_value=65535)
escaped = st.integers(min_value=0, max_value=255).map(lambda b: f"%{b:02X}")
user_chars = st.sampled_from(list("abcXYZ019-_.!~*'()&=+$,;?/")) | escaped
users = st.lists(user_chars, min_size=1, max_size=10).map("".join)
param_chars = st.sampled_from(list("abcXYZ019-_.!~*'()[]/:&+$")) | escaped
paramtexts = st.lists(param_chars, min_size=1, max_size=8).map("".join)
uri_params = st.lists(st.tuples(paramtexts, st.none() | paramtexts), max_size=3)
hnv_chars = st.sampled_from(list("abcXYZ019-_.!~*'()[]/?:+$")) | escaped
hnvtexts = st.lists(hnv_chars, min_size=1, max_size=8).map("".join)
uri_headers = st.lists(st.tuples(hnvtexts, hnvtexts | st.just("")), max_size=2)

sip_uris = st.builds(
    SipURI,
    scheme=st.sampled_from(["sip", "sips", "SIP"]),
    user=st.none() | users,
    password=st.none(),
    host=hosts,
    port=ports,
    params=uri_params.map(tuple),
    headers=uri_headers.map(tuple),
)
gen_values = tokens | st.builds(
    lambda s: f'"{s}"', st.text(alphabet=TOKEN_CHARS + " ,;:<>")
)
header_params = st.lists(st.tuples(tokens, st.none() | gen_values), max_size=3)
vias = st.builds(
    Via,
    protocol=st.just("SIP/2.0"),
    transport=st.sampled_from(["UDP", "TCP", "TLS", "SCTP", "ws"]),
    host=hosts,
    port=ports,
    params=st.lists(st.tuples(tokens, st.none() | tokens | ipv6), max_size=3).map(
        tuple
    ),
)
display_names = st.none() | st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n"),
    max_size=12,
)
name_addresses = st.builds(
    NameAddress,
    uri=sip_uris,
    display_name=display_names,
    params=header_params.map(tuple),
    angle=st.just(True),
)
# Any bytes but CR and LF, decoded as the parser decodes them, stripped as it strips.
raw_values = st.binary(max_size=40).map(
    lambda b: (
        b.replace(b"\r", b"")
        .replace(b"\n", b"")
        .decode("utf-8", "surrogateescape")
        .strip(" \t")
    )
)
other_names = tokens.filter(lambda n: canonical_name(n) != "content-length")
fields = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["Via", "v", "VIA"]), vias.map(str)),
        st.tuples(
            st.sampled_from(["From", "t", "Contact", "Route"]), name_addresses.map(str)
        ),
        st.tuples(other_names, raw_values),
    ),
    max_size=8,
)
bodies = st.binary(max_size=64)


@st.composite
def requests(draw: st.DrawFn, framed: bool | None = None) -> Request:
    uri = str(draw(sip_uris))
    request = Request(draw(tokens), uri, Headers.of(*draw(fields)))
    with_length = draw(st.booleans()) if framed is None else framed
    body = draw(bodies)
    return (
        request.with_body(body)
        if with_length
        else Request(request.method, uri, request.headers, body)
    )


@st.composite
def responses(draw: st.DrawFn, framed: bool | None = None) -> Response:
    reason = draw(raw_values)
    response = Response(
        draw(st.integers(min_value=100, max_value=699)),
        reason,
        Headers.of(*draw(fields)),
    )
    with_length = draw(st.booleans()) if framed is None else framed
    body = draw(bodies)
    return (
        response.with_body(body)
        if with_length
        else Response(response.status, reason, response.headers, body)
    )


def _touch(message: Request | Response) -> None:
    """Read every typed view and validate; only ParseError may come out."""
    views = ["vias", "top_via", "cseq", "call_id", "from_addr", "to_addr"]
    views += ["max_forwards", "contacts", "routes", "record_routes"]
    if isinstance(message, Request):
        views.append("request_uri")
    for view in views:
        with contextlib.suppress(ParseError):
            getattr(message, view)
    with contextlib.suppress(ParseError):
        if isinstance(message, Request):
            validate_request(message)
        else:
            validate_response(message)


@FAST
@given(st.binary(max_size=512))
def test_any_bytes_parse_or_raise_parse_error(data: bytes) -> None:
    """Any bytes at all either parse or raise ParseError."""
    with contextlib.suppress(ParseError):
        _touch(parse_message(data))
    with contextlib.suppress(ParseError):
        _touch(parse_message(data, stream=True))


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(TORTURE)))
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
        at = draw(st.integers(min_value=0, max_value=len(data)))
        kind = draw(st.sampled_from(["set", "insert", "delete"]))
        byte = draw(st.sampled_from(MUTATION_BYTES))
        if kind == "insert" or at == len(data):
            data.insert(at, byte)
        elif kind == "set":
            data[at] = byte
        else:
            del data[at]
    return bytes(data)


@settings(max_examples=400, deadline=None)
@given(mutated())
def test_mutated_torture_messages_raise_only_parse_error(data: bytes) -> None:
    """Corrupted torture messages never raise anything but ParseError."""
    with contextlib.suppress(ParseError):
        _touch(parse_message(data))
    framer = StreamFramer()
    for item in framer.feed(data):
        assert isinstance(item, (bytes, Keepalive, ParseError))
        if isinstance(item, bytes):
            with contextlib.suppress(ParseError):
                _touch(parse_message(item, stream=True))


@FAST
@given(st.one_of(requests(), responses()))
def test_serialised_messages_parse_back_equal(message: Request | Response) -> None:
    """parse_message(m.to_bytes()) == m for generated messages."""
    parsed = parse_message(message.to_bytes())
    assert parsed == message
    assert parsed.to_bytes() == message.to_bytes()


@FAST
@given(sip_uris)
def test_uris_round_trip(uri: SipURI) -> None:
    """A URI written by str() parses back to the same value and text."""
    assert parse_uri(str(uri)) == uri
    assert uri.matches(uri)
    assert SipURI.parse(str(uri)).aor() == uri.aor()


@FAST
@given(vias, name_addresses)
def test_vias_and_addresses_round_trip(via: Via, address: NameAddress) -> None:
    """Via and name-addr values written by str() parse back equal."""
    assert Via.parse(str(via)) == via
    assert NameAddress.parse(str(address)) == address


@FAST
@given(
    st.lists(requests(framed=True) | responses(framed=True), min_size=1, max_size=4),
    st.lists(st.booleans(), min_size=4, max_size=4),
    st.data(),
)
def test_framer_yields_exactly_the_messages(
    messages: list[Request | Response], pings: list[bool], data: st.DataObject
) -> None:
    """Any chunking of a stream of messages and pings frames to those messages."""
    stream = b""
    expected: list[bytes | Keepalive] = []
    for message, ping in zip(messages, pings, strict=False):
        if ping:
            stream += b"\r\n\r\n"
            expected.append(Keepalive())
        stream += message.to_bytes()
        expected.append(message.to_bytes())
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    framer = StreamFramer()
    out: list[object] = []
    previous = 0
    for cut in [*cuts, len(stream)]:
        out += framer.feed(stream[previous:cut])
        previous = cut
    assert out == expected
    for item, message in zip(
        [o for o in out if isinstance(o, bytes)], messages, strict=True
    ):
        assert parse_message(item, stream=True) == message
