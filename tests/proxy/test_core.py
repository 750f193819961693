"""The proxy core end to end on fakes (RFC 3261 §16), time driven by the test."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from sipproxy.config import DialRule
from sipproxy.sip.message import Request, Response
from tests.proxy.harness import ALICE, BOB, BOB2, PROXY, Harness, answer, invite


def only(messages: list[Request | Response]) -> Request | Response:
    assert len(messages) == 1, messages
    return messages[0]


def statuses(messages: list[Request | Response]) -> list[int]:
    return [m.status for m in messages if isinstance(m, Response)]


def forwarded_invite(h: Harness, to: tuple[str, int] = BOB) -> Request:
    message = only(h.sent_to(to))
    assert isinstance(message, Request)
    return message


def options(
    uri: str = "sip:example.test", *, max_forwards: int = 70, extra: str = ""
) -> bytes:
    return (
        f"OPTIONS {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {ALICE[0]}:{ALICE[1]};branch=z9hG4bKo1;rport\r\n"
        f"Max-Forwards: {max_forwards}\r\n"
        "From: <sip:alice@example.test>;tag=a1\r\n"
        f"To: <{uri}>\r\n"
        "Call-ID: opt-1\r\n"
        "CSeq: 1 OPTIONS\r\n"
        f"{extra}"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def test_options_to_the_server_is_answered_200() -> None:
    h = Harness()
    h.receive(options(), ALICE)
    response = only(h.sent_to(ALICE))
    assert isinstance(response, Response)
    assert response.status == 200
    assert "INVITE" in (response.headers.get("allow") or "")
    assert response.headers.get_all("supported") == ["path", "outbound"]
    # RFC 6665 §8.2.2: the event packages we serve as notifier (busy lamps).
    assert response.headers.get("allow-events") == "dialog"
    assert response.to_addr.tag


def test_proxy_require_unknown_gets_420() -> None:
    h = Harness()
    h.receive(options(extra="Proxy-Require: foo\r\n"), ALICE)
    response = only(h.sent_to(ALICE))
    assert isinstance(response, Response)
    assert response.status == 420
    assert response.headers.get("unsupported") == "foo"


def test_invite_to_unknown_user_gets_100_then_404() -> None:
    h = Harness()
    h.receive(invite("nobody"), ALICE)
    assert statuses(h.sent_to(ALICE)) == [100, 404]


def test_max_forwards_zero_gets_483() -> None:
    h = Harness()
    h.register("bob", BOB)
    h.receive(invite(max_forwards=0), ALICE)
    assert statuses(h.sent_to(ALICE)) == [483]


def test_invite_reaches_the_registered_flow_not_the_private_contact() -> None:
    """§16.5, RFC 5626: the request goes where the REGISTER came from."""
    h = Harness()
    h.register("bob", BOB)
    h.receive(invite(), ALICE)
    out = h.sent()
    assert [(statuses([m]), addr) for m, addr in out if isinstance(m, Response)] == [
        ([100], ALICE)
    ]
    forwarded = forwarded_invite_from(out)
    assert forwarded.uri == "sip:bob@10.0.0.62:5060"  # the binding's contact
    assert forwarded.max_forwards == 69
    top = forwarded.top_via
    assert (top.host, top.port) == PROXY
    assert (top.branch or "").startswith("z9hG4bK")
    assert len(forwarded.vias) == 2
    rr = forwarded.headers.get_all("record-route")
    assert len(rr) == 2
    assert all("127.0.0.1:5060" in value and ";lr" in value for value in rr)
    assert forwarded.body == b"v=0\n"


def test_contact_on_the_flows_own_address_is_trusted() -> None:
    """No sign of NAT (same IP as the REGISTER's source): the Contact's port wins."""
    h = Harness()
    h.register("bob", BOB, contact=f"sip:bob@{BOB[0]}:5099")
    h.receive(invite(), ALICE)
    h.sent_to(ALICE)
    assert len(h.sent_to((BOB[0], 5099))) == 1
    assert h.sent_to(BOB) == []


def forwarded_invite_from(
    out: list[tuple[Request | Response, tuple[str, int]]],
) -> Request:
    found = [m for m, addr in out if addr == BOB and isinstance(m, Request)]
    assert len(found) == 1
    return found[0]


@pytest.fixture
def ringing() -> tuple[Harness, Request]:
    """Alice's INVITE forwarded to Bob, Bob ringing, Alice got the 180."""
    h = Harness()
    h.register("bob", BOB)
    h.receive(invite(), ALICE)
    out = h.sent()
    to_bob = forwarded_invite_from(out)
    h.receive(answer(to_bob, 180), BOB)
    ring = only(h.sent_to(ALICE))
    assert isinstance(ring, Response)
    assert ring.status == 180
    assert len(ring.vias) == 1  # our Via removed (§16.7 step 3)
    assert ring.headers.get_all("via")[0].startswith(
        f"SIP/2.0/UDP {ALICE[0]}:{ALICE[1]}"
    )
    return h, to_bob


def test_answer_ack_and_bye_follow_the_record_route(
    ringing: tuple[Harness, Request],
) -> None:
    h, to_bob = ringing
    ok = answer(to_bob, 200, contact="<sip:bob@10.0.0.62:5060>")
    h.receive(ok, BOB)
    up = only(h.sent_to(ALICE))
    assert isinstance(up, Response)
    assert up.status == 200
    route_set = up.headers.get_all("record-route")
    assert len(route_set) == 2
    # Alice's ACK: new branch, Route = the Record-Route reversed (§12.1.2).
    ack = (
        "ACK sip:bob@10.0.0.62:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {ALICE[0]}:{ALICE[1]};branch=z9hG4bKack1;rport\r\n"
        "Max-Forwards: 70\r\n"
        f"Route: {route_set[1]}, {route_set[0]}\r\n"
        'From: "Alice" <sip:alice@example.test>;tag=a1\r\n'
        "To: <sip:bob@example.test>;tag=b1\r\n"
        "Call-ID: call-1\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    h.receive(ack, ALICE)
    to_bob_ack = only(h.sent_to(BOB))
    assert isinstance(to_bob_ack, Request)
    assert to_bob_ack.method == "ACK"
    assert "route" not in to_bob_ack.headers  # both our entries consumed
    # Bob hangs up: his route set is the Record-Route in order.
    bye = (
        "BYE sip:alice@192.0.2.10:5070 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 10.0.0.62:5060;branch=z9hG4bKbye1;rport\r\n"
        "Max-Forwards: 70\r\n"
        f"Route: {route_set[0]}, {route_set[1]}\r\n"
        "From: <sip:bob@example.test>;tag=b1\r\n"
        'To: "Alice" <sip:alice@example.test>;tag=a1\r\n'
        "Call-ID: call-1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    h.receive(bye, BOB)
    to_alice = only(h.sent_to(ALICE))
    assert isinstance(to_alice, Request)
    assert to_alice.method == "BYE"
    h.receive(answer(to_alice, 200, to_tag="a1"), ALICE)
    bye_ok = only(h.sent_to(BOB))
    assert isinstance(bye_ok, Response)
    assert bye_ok.status == 200
    # Every transaction and context is gone once the timers have run.
    h.clock.advance(64)
    h.clock.advance(64)
    assert h.proxy.layer.counts() == dict.fromkeys(h.proxy.layer.counts(), 0)


def test_cancel_before_answer_gives_487(ringing: tuple[Harness, Request]) -> None:
    """§16.10: CANCEL answered 200 at once, branch cancelled, caller gets 487."""
    h, to_bob = ringing
    cancel = (
        "CANCEL sip:bob@example.test SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {ALICE[0]}:{ALICE[1]};branch=z9hG4bKalice1;rport\r\n"
        "Max-Forwards: 70\r\n"
        'From: "Alice" <sip:alice@example.test>;tag=a1\r\n'
        "To: <sip:bob@example.test>\r\n"
        "Call-ID: call-1\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    h.receive(cancel, ALICE)
    assert statuses(h.sent_to(ALICE)) == [200]
    to_bob_cancel = only(h.sent_to(BOB))
    assert isinstance(to_bob_cancel, Request)
    assert to_bob_cancel.method == "CANCEL"
    assert to_bob_cancel.top_via.branch == to_bob.top_via.branch
    h.receive(answer(to_bob_cancel, 200), BOB)
    h.receive(answer(to_bob, 487), BOB)
    assert statuses(h.sent_to(ALICE)) == [487]
    acks = [m for m in h.sent_to(BOB) if isinstance(m, Request) and m.method == "ACK"]
    assert len(acks) == 1  # the client transaction acknowledges the 487 (§17.1.1.3)


def test_cancel_matching_nothing_gets_481() -> None:
    h = Harness()
    h.receive(
        invite()
        .replace(b"INVITE sip:", b"CANCEL sip:", 1)
        .replace(b"1 INVITE", b"1 CANCEL"),
        ALICE,
    )
    assert 481 in statuses(h.sent_to(ALICE))


def test_unreachable_newest_binding_falls_back_to_the_next() -> None:
    """Sequential: a 408 (Timer B) on the newest binding tries the older one."""
    h = Harness()
    h.register("bob", BOB2, at=0)
    h.clock.advance(1)
    h.register("bob", BOB, at=1)
    h.receive(invite(), ALICE)
    h.sent()
    h.clock.advance(33)  # Timer B = 64*T1 = 32 s: BOB never answered
    assert any(
        isinstance(m, Request) and m.method == "INVITE" for m in h.sent_to(BOB2) or []
    )


def test_no_answer_at_all_gives_408() -> None:
    h = Harness()
    h.register("bob", BOB)
    h.receive(invite(), ALICE)
    h.sent()
    for _ in range(40):
        h.clock.advance(1)
    assert 408 in statuses(h.sent_to(ALICE))


def test_parallel_forking_cancels_the_other_branch_on_200() -> None:
    h = Harness(forking="parallel")
    h.register("bob", BOB2, at=0)
    h.register("bob", BOB, at=1)
    h.receive(invite(), ALICE)
    out = h.sent()
    first = next(m for m, a in out if a == BOB and isinstance(m, Request))
    second = next(m for m, a in out if a == BOB2 and isinstance(m, Request))
    h.receive(answer(first, 180), BOB)
    h.receive(answer(second, 180, to_tag="b2"), BOB2)
    h.sent()
    h.receive(answer(first, 200), BOB)
    cancels = [
        m for m in h.sent_to(BOB2) if isinstance(m, Request) and m.method == "CANCEL"
    ]
    assert len(cancels) == 1


def test_timer_c_cancels_a_branch_ringing_too_long(
    ringing: tuple[Harness, Request],
) -> None:
    """§16.8: Timer C (> 3 min) fires: the ringing branch is CANCELled."""
    h, to_bob = ringing
    h.clock.advance(182)
    sent = h.sent_to(BOB)
    cancel = next(m for m in sent if isinstance(m, Request) and m.method == "CANCEL")
    h.receive(answer(cancel, 200), BOB)
    h.receive(answer(to_bob, 487), BOB)
    assert statuses(h.sent_to(ALICE)) == [408]  # nobody answered: 408, not 487


def test_loop_gets_482() -> None:
    h = Harness()
    h.register("bob", BOB)
    h.receive(invite(), ALICE)
    fwd = forwarded_invite_from(h.sent())
    # The same request comes back to us unchanged (e.g. a misconfigured hop).
    looped = replace(fwd, uri="sip:bob@example.test")
    raw = looped.to_bytes()
    h.receive(raw, BOB)
    assert 482 in statuses(h.sent_to(BOB))


DIAL_OUT = (DialRule(re.compile(r"^9(\d+)$"), r"sip:\1@192.0.2.50:5070"),)
TRUNK = ("192.0.2.50", 5070)


def test_dialplan_rule_sends_a_number_to_the_trunk() -> None:
    r"""A user part matching ^9(\d+)$ goes to sip:\1@trunk (the dial plan)."""
    h = Harness(dialplan=DIAL_OUT)
    h.receive(invite("9555123"), ALICE)
    out = only(h.sent_to(TRUNK))
    assert isinstance(out, Request)
    assert out.uri == "sip:555123@192.0.2.50:5070"
    assert statuses(h.sent_to(ALICE)) == [100]


def test_dialplan_through_an_outbound_proxy() -> None:
    h = Harness(dialplan=DIAL_OUT, outbound_proxy="sip:192.0.2.60:5080")
    h.receive(invite("9555123"), ALICE)
    out = only(h.sent_to(("192.0.2.60", 5080)))
    assert isinstance(out, Request)
    assert out.uri == "sip:555123@192.0.2.50:5070"
    assert out.headers.get_all("route") == ["<sip:192.0.2.60:5080;lr>"]


def test_users_not_matching_the_dialplan_use_the_location_service() -> None:
    h = Harness(dialplan=DIAL_OUT)
    h.register("bob", BOB)
    h.receive(invite(), ALICE)
    assert len(h.sent_to(BOB)) == 1


def test_overload_refuses_new_requests_with_503() -> None:
    """Pending transactions are bounded: beyond the cap, 503 with Retry-After."""
    h = Harness()
    h.proxy.settings = replace(h.proxy.settings, max_pending=0)
    h.receive(invite("nobody"), ALICE)
    response = only(h.sent_to(ALICE))
    assert isinstance(response, Response)
    assert response.status == 503
    assert response.headers.get("retry-after") == "5"


def test_known_user_without_binding_gets_480_stranger_404() -> None:
    """Issue 4: unknown user -> 404; a user of ours with no phone registered -> 480."""
    h = Harness(known_users=frozenset({"sip:carol@example.test"}))
    h.receive(invite("carol", call_id="c-carol", branch="z9hG4bKc1"), ALICE)
    assert statuses(h.sent_to(ALICE)) == [100, 480]
    h.receive(invite("nobody", call_id="c-nobody", branch="z9hG4bKn1"), ALICE)
    assert statuses(h.sent_to(ALICE)) == [100, 404]


def test_sequential_forking_stops_at_a_busy_phone() -> None:
    """The newest phone answers 486: the caller gets it, the older one is not tried.

    Before, the untried binding stayed pending and the caller never got a final
    answer.
    """
    h = Harness()
    h.register("bob", BOB2, at=0)
    h.register("bob", BOB, at=1)
    h.receive(invite(), ALICE)
    to_bob = forwarded_invite(h)
    h.receive(answer(to_bob, 486), BOB)
    assert statuses(h.sent_to(ALICE)) == [100, 486]
    assert h.sent_to(BOB2) == []
