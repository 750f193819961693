"""The handler context: requests of our own (we are the UAC), on fakes."""

from __future__ import annotations

from sipproxy.sip.addressing import Peer
from sipproxy.sip.headers import Headers
from sipproxy.sip.message import Request, Response
from sipproxy.sip.via import Via
from tests.proxy.harness import BOB, PROXY, Harness


def notify() -> Request:
    """A NOTIFY as a later SUBSCRIBE handler would build it, without our Via."""
    return Request(
        "NOTIFY",
        f"sip:bob@{BOB[0]}:{BOB[1]}",
        Headers.of(
            ("Max-Forwards", "70"),
            ("From", "<sip:example.test>;tag=srv1"),
            ("To", "<sip:bob@example.test>;tag=b1"),
            ("Call-ID", "sub-1"),
            ("CSeq", "1 NOTIFY"),
            ("Event", "dialog"),
            ("Subscription-State", "active;expires=600"),
            ("Content-Length", "0"),
        ),
    )


def test_a_request_of_our_own_goes_out_under_our_via() -> None:
    """§8.1.1.7: our Via on top, a magic-cookie branch; the rest as given."""
    h = Harness()
    answers: list[Response] = []
    h.proxy.context.send_request(notify(), Peer("udp", *BOB), answers.append)
    [sent] = h.sent_to(BOB)
    assert isinstance(sent, Request)
    assert sent.method == "NOTIFY"
    assert len(sent.vias) == 1
    via = sent.top_via
    assert (via.host, via.port) == PROXY
    assert (via.branch or "").startswith("z9hG4bK")
    assert sent.headers.get("event") == "dialog"
    assert answers == []


def test_its_responses_come_back_to_the_caller_and_end_with_the_final() -> None:
    """Every response goes to on_response; after the final, nothing more does."""
    h = Harness()
    answers: list[Response] = []
    h.proxy.context.send_request(notify(), Peer("udp", *BOB), answers.append)
    [sent] = h.sent_to(BOB)
    assert isinstance(sent, Request)
    h.receive(sent.response(200, to_tag="b1"), BOB)
    assert [r.status for r in answers] == [200]
    h.clock.advance(64)
    assert [r.status for r in answers] == [200]
    # Nothing was forwarded anywhere: the answer was ours.
    assert h.sent() == []


def test_no_answer_is_a_408() -> None:
    """Timer F fires: the caller hears 408 once (§8.1.3.1)."""
    h = Harness()
    answers: list[Response] = []
    h.proxy.context.send_request(notify(), Peer("udp", *BOB), answers.append)
    for _ in range(20):
        h.clock.advance(4)
    assert [r.status for r in answers] == [408]


def test_a_transport_error_is_a_503() -> None:
    """No socket for the destination: the caller hears 503 once (§8.1.3.1)."""
    h = Harness()
    answers: list[Response] = []
    h.proxy.context.send_request(notify(), Peer("tcp", *BOB), answers.append)
    h.clock.advance(0)
    assert [r.status for r in answers] == [503]
    for _ in range(20):
        h.clock.advance(4)
    assert [r.status for r in answers] == [503]


def test_our_via_is_what_its_text_parses_to() -> None:
    """Our Via, built as a value, reads back the same from the wire (§20.42)."""
    h = Harness()
    upstream = Via.parse("SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bK-up;rport=5070")
    for peer in (
        Peer("udp", *BOB),
        Peer("tcp", *BOB),
        Peer("udp", "2001:db8::9", 5060),
    ):
        for rport in (True, False):
            for below in (None, upstream):
                via = h.proxy.stamps.our_via("k1", peer, rport=rport, upstream=below)
                assert Via.parse(str(via)) == via
                assert via.transport == peer.transport.upper()
                assert (via.rport == "") is rport
