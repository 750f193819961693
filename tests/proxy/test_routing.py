"""Route preprocessing, loop detection and forwarding copies (RFC 3261 §16.3-16.6)."""

from __future__ import annotations

from sipproxy.proxy.routing import (
    is_loop,
    loop_key,
    make_branch,
    next_hop,
    prepare_forward,
    preprocess_routes,
)
from sipproxy.sip.message import Request
from sipproxy.sip.parser import parse_message
from sipproxy.sip.uri import SipURI
from sipproxy.sip.via import Via

US = "proxy.example.test"


def is_ours(uri: SipURI) -> bool:
    return uri.host == US and uri.port in (None, 5060)


def make(uri: str = "sip:bob@example.test", extra: str = "") -> Request:
    data = (
        f"INVITE {uri} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKa1\r\n"
        "Max-Forwards: 10\r\n"
        "From: <sip:alice@example.test>;tag=f1\r\n"
        "To: <sip:bob@example.test>\r\n"
        "Call-ID: call-1\r\n"
        "CSeq: 7 INVITE\r\n"
        f"{extra}"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    request = parse_message(data)
    assert isinstance(request, Request)
    return request


def test_our_top_route_is_removed_others_kept() -> None:
    """§16.4: the first Route naming us goes; loose routing keeps the R-URI."""
    request = make(extra=f"Route: <sip:{US};lr>, <sip:next.example.net;lr>\r\n")
    out = preprocess_routes(request, is_ours)
    assert out.headers.get_all("route") == ["<sip:next.example.net;lr>"]
    assert out.uri == "sip:bob@example.test"


def test_both_of_our_double_record_route_entries_are_removed() -> None:
    request = make(
        extra=f"Route: <sip:{US};transport=tcp;lr>, <sip:{US};lr>, "
        "<sip:b.example;lr>\r\n"
    )
    out = preprocess_routes(request, is_ours)
    assert out.headers.get_all("route") == ["<sip:b.example;lr>"]


def test_strict_router_fix_up() -> None:
    """§16.4: an R-URI we put in Record-Route -> the last Route becomes the R-URI."""
    request = make(
        uri=f"sip:{US};lr",
        extra="Route: <sip:x.example.net;lr>, <sip:bob@192.0.2.9:5062>\r\n",
    )
    out = preprocess_routes(request, is_ours)
    assert out.uri == "sip:bob@192.0.2.9:5062"
    assert out.headers.get_all("route") == ["<sip:x.example.net;lr>"]


def test_untouched_request_is_returned_as_is() -> None:
    request = make(extra="Route: <sip:other.example;lr>\r\n")
    assert preprocess_routes(request, is_ours) is request


def test_forward_copy_decrements_max_forwards_and_adds_via_and_record_route() -> None:
    request = make()
    via = Via.parse(f"SIP/2.0/UDP {US}:5060;branch=z9hG4bKx.1")
    out = prepare_forward(
        request,
        request_uri="sip:bob@192.0.2.20:5070",
        via=via,
        record_route=[f"<sip:{US};lr>"],
        routes=["<sip:edge.example.net;lr>"],
    )
    assert out.uri == "sip:bob@192.0.2.20:5070"
    assert out.max_forwards == 9
    assert out.headers.get_all("via")[0] == str(via)
    assert (
        out.headers.get_all("via")[1] == "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKa1"
    )
    assert out.headers.get_all("record-route") == [f"<sip:{US};lr>"]
    assert out.headers.get_all("route") == ["<sip:edge.example.net;lr>"]
    # Untouched fields stay byte for byte.
    assert out.headers.get("call-id") == "call-1"
    assert b"From: <sip:alice@example.test>;tag=f1\r\n" in out.to_bytes()


def test_missing_max_forwards_becomes_70() -> None:
    """§16.6 step 3 (RFC 2543 peers, RFC 4475 inv2543)."""
    request = make().headers.remove("max-forwards")
    out = prepare_forward(
        Request("INVITE", "sip:bob@example.test", request),
        request_uri=None,
        via=Via.parse("SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKz.1"),
    )
    assert out.max_forwards == 70


def test_loop_is_found_and_a_spiral_is_not() -> None:
    """§16.3 step 4: our own Via with the same loop key is a loop (482)."""
    request = make()
    key = loop_key(request)
    ours = Via.parse(f"SIP/2.0/UDP {US}:5060;branch={make_branch(key, '1')}")
    looped = Request(
        request.method, request.uri, request.headers.prepend("Via", str(ours))
    )

    def is_our_via(via: Via) -> bool:
        return via.host == US

    assert is_loop(looped, key, is_our_via)
    # Same route back but the Request-URI changed (e.g. forwarded): a spiral.
    spiral = Request(looped.method, "sip:carol@example.test", looped.headers)
    assert not is_loop(spiral, loop_key(spiral), is_our_via)


def test_next_hop_loose_and_strict() -> None:
    loose = make(extra="Route: <sip:edge.example.net;lr>\r\n")
    same, hop = next_hop(loose)
    assert same is loose
    assert str(hop) == "sip:edge.example.net;lr"
    strict = make(extra="Route: <sip:strict.example.net>, <sip:x.example.net;lr>\r\n")
    rewritten, hop = next_hop(strict)
    assert str(hop) == "sip:strict.example.net"
    assert rewritten.uri == "sip:strict.example.net"
    assert rewritten.headers.get_all("route") == [
        "<sip:x.example.net;lr>",
        "<sip:bob@example.test>",
    ]
    plain = make()
    assert str(next_hop(plain)[1]) == "sip:bob@example.test"


def test_our_via_goes_out_parsed_already() -> None:
    """The forwarded copy's top Via field keeps our Via as its view.

    The client transaction reads that Via for its key and again for every
    response; parsing back the text we wrote would cost a parse per request.
    The view must be exactly what the text parses to.
    """
    ours = Via.parse(f"SIP/2.0/UDP {US}:5060;branch=z9hG4bK-ours.1;rport")
    out = prepare_forward(make(), request_uri=None, via=ours)
    top = out.headers.first_field("via")
    assert top is not None
    assert top.view is ours
    assert out.top_via is ours
    assert Via.parse(top.value) == ours
    assert out.headers.get_all("via")[1].endswith("branch=z9hG4bKa1")
