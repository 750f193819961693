"""The event stream: a FinalDecision per final answer, a DialogEvent per change."""

from __future__ import annotations

from sipproxy.proxy.events import DialogEvent, DialogState, FinalDecision
from sipproxy.sip.addressing import Peer
from sipproxy.sip.message import Request, Response
from tests.proxy.harness import ALICE, BOB, Harness, answer, invite


class Recorder:
    """An observer of both streams that keeps what it is told."""

    def __init__(self) -> None:
        self.decisions: list[FinalDecision] = []
        self.dialogs: list[DialogEvent] = []

    def decided(self, decision: FinalDecision) -> None:
        self.decisions.append(decision)

    def dialog_changed(self, event: DialogEvent) -> None:
        self.dialogs.append(event)


def observed(h: Harness) -> Recorder:
    recorder = Recorder()
    h.proxy.events.decisions.append(recorder)
    h.proxy.events.dialogs.append(recorder)
    return recorder


def ringing(h: Harness) -> Request:
    """Alice calls Bob; Bob rings. Returns the INVITE as Bob got it."""
    h.register("bob", BOB)
    h.receive(invite(), ALICE)
    [to_bob] = [m for m in h.sent_to(BOB) if isinstance(m, Request)]
    h.clock.advance(1.5)
    h.receive(answer(to_bob, 180), BOB)
    h.sent()
    return to_bob


def bye_from_bob(ok: Response) -> bytes:
    route_set = ok.headers.get_all("record-route")
    return (
        "BYE sip:alice@192.0.2.10:5070 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 10.0.0.62:5060;branch=z9hG4bKbye1;rport\r\n"
        "Max-Forwards: 70\r\n"
        f"Route: {route_set[0]}, {route_set[1]}\r\n"
        "From: <sip:bob@example.test>;tag=b1\r\n"
        'To: "Alice" <sip:alice@example.test>;tag=a1\r\n'
        "Call-ID: call-1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def cancel_from_alice() -> bytes:
    return (
        "CANCEL sip:bob@example.test SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {ALICE[0]}:{ALICE[1]};branch=z9hG4bKalice1;rport\r\n"
        "Max-Forwards: 70\r\n"
        'From: "Alice" <sip:alice@example.test>;tag=a1\r\n'
        "To: <sip:bob@example.test>\r\n"
        "Call-ID: call-1\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def test_a_local_answer_is_one_decision_with_who_decided() -> None:
    """A 404 we decide ourselves: one decision, route and why say "refused"."""
    h = Harness()
    seen = observed(h)
    h.clock.advance(10)
    h.receive(invite("nobody"), ALICE)
    [decision] = seen.decisions
    assert decision.method == "INVITE"
    assert decision.status == 404
    assert decision.call_id == "call-1"
    assert decision.caller == "sip:alice@example.test"
    assert decision.callee == "sip:nobody@example.test"
    assert (decision.route, decision.why) == ("refused", "refused")
    assert decision.started_at == decision.ended_at == 10
    assert decision.setup is None
    assert decision.user is None
    assert decision.source == Peer("udp", *ALICE)


def test_a_proxied_answer_is_one_decision_with_the_branch_it_came_from() -> None:
    """The 200 of a call: route is Bob's flow, setup the time to the 180."""
    h = Harness()
    seen = observed(h)
    to_bob = ringing(h)
    h.clock.advance(3)
    h.receive(answer(to_bob, 200), BOB)
    [decision] = seen.decisions
    assert decision.method == "INVITE"
    assert decision.status == 200
    assert decision.route == f"udp:{BOB[0]}:{BOB[1]}"
    assert decision.why is None
    assert decision.setup == 1.5
    assert decision.elapsed == 4.5
    assert decision.source == Peer("udp", *ALICE)


def test_every_final_answer_is_one_decision_provisional_ones_none() -> None:
    """100 and 180 are no decisions; the 200 to the INVITE and to the BYE are."""
    h = Harness()
    seen = observed(h)
    to_bob = ringing(h)
    h.receive(answer(to_bob, 200), BOB)
    [ok] = [m for m in h.sent_to(ALICE) if isinstance(m, Response)]
    h.receive(bye_from_bob(ok), BOB)
    [to_alice] = [m for m in h.sent_to(ALICE) if isinstance(m, Request)]
    h.receive(answer(to_alice, 200, to_tag="a1"), ALICE)
    assert [(d.method, d.status) for d in seen.decisions] == [
        ("INVITE", 200),
        ("BYE", 200),
    ]


def test_a_call_answered_then_ended_by_bye() -> None:
    """Created, early on the 180, confirmed on the 200, terminated by the BYE."""
    h = Harness()
    seen = observed(h)
    to_bob = ringing(h)
    h.receive(answer(to_bob, 200), BOB)
    [ok] = [m for m in h.sent_to(ALICE) if isinstance(m, Response)]
    h.receive(bye_from_bob(ok), BOB)
    states = [(e.state, e.from_tag, e.to_tag, e.status) for e in seen.dialogs]
    assert states == [
        (DialogState.CREATED, "a1", None, None),
        (DialogState.EARLY, "a1", "b1", 180),
        (DialogState.CONFIRMED, "a1", "b1", 200),
        # The BYE from Bob carries the tags the other way round.
        (DialogState.TERMINATED, "b1", "a1", None),
    ]
    assert {e.call_id for e in seen.dialogs} == {"call-1"}
    assert seen.dialogs[0].callee == "sip:bob@example.test"


def test_a_call_cancelled_while_ringing() -> None:
    """Created, early on the 180, terminated by the 487 that follows the CANCEL."""
    h = Harness()
    seen = observed(h)
    to_bob = ringing(h)
    h.receive(cancel_from_alice(), ALICE)
    [cancel] = [m for m in h.sent_to(BOB) if isinstance(m, Request)]
    h.receive(answer(cancel, 200), BOB)
    h.receive(answer(to_bob, 487), BOB)
    assert [(e.state, e.status) for e in seen.dialogs] == [
        (DialogState.CREATED, None),
        (DialogState.EARLY, 180),
        (DialogState.TERMINATED, 487),
    ]
    assert [(d.method, d.status) for d in seen.decisions] == [
        ("CANCEL", 200),
        ("INVITE", 487),
    ]


def test_a_bye_without_our_token_ends_no_dialog() -> None:
    """Call-ID and tags are claims: a BYE that brings no token of ours is no event."""
    h = Harness()
    seen = observed(h)
    h.register("alice", ALICE)
    forged = (
        "BYE sip:alice@example.test SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {BOB[0]}:{BOB[1]};branch=z9hG4bKforged;rport\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:bob@example.test>;tag=b1\r\n"
        "To: <sip:alice@example.test>;tag=a1\r\n"
        "Call-ID: call-1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    h.receive(forged, BOB)
    assert seen.dialogs == []


def test_metrics_and_the_log_line_observe_the_decisions() -> None:
    """A ProxyObserver is counted through the stream, after the log line."""
    counted: list[tuple[str, int, float | None]] = []

    class Counter:
        def request_received(self, method: str) -> None:
            pass

        def final_sent(self, method: str, status: int, elapsed: float | None) -> None:
            counted.append((method, status, elapsed))

        def auth_failed(self) -> None:
            pass

        def banned(self) -> None:
            pass

    h = Harness(observer=Counter())
    assert [type(o).__name__ for o in h.proxy.events.decisions] == ["FinalLogLine"]
    h.receive(invite("nobody"), ALICE)
    assert counted == [("INVITE", 404, 0.0)]


def test_a_detached_dialog_event_keeps_its_uris_and_not_its_request() -> None:
    """What a live call keeps: the same URIs, read once, without the INVITE."""
    h = Harness()
    recorder = observed(h)
    ringing(h)
    created = recorder.dialogs[0]
    assert created.state is DialogState.CREATED
    kept = created.detached()
    assert kept.request is None
    assert (kept.caller, kept.callee, kept.uri) == (
        created.caller,
        created.callee,
        created.uri,
    )
    assert (kept.caller, kept.uri) == (
        "sip:alice@example.test",
        "sip:bob@example.test",
    )
    assert kept.detached() is kept
