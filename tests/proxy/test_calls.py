"""Call records from the event stream: CallTracker on the harness's proxy."""

from __future__ import annotations

from twisted.internet.defer import Deferred

from sipproxy.cdr.record import CallRecord
from sipproxy.office.headers import diversion_reason
from sipproxy.office.model import parse_office
from sipproxy.proxy.calls import CallTracker, disposition
from sipproxy.proxy.forking import TIMER_C
from sipproxy.sip.message import Request, Response
from sipproxy.testing import MemoryCallRecordStore
from tests.proxy.harness import ALICE, BOB, BOB2, Harness, answer, invite
from tests.proxy.test_events import bye_from_bob, cancel_from_alice
from tests.proxy.test_trust_auth import credentials, nonce_for, request_to, secured

OWNER = "udp:127.0.0.1:5060"
BOB_CONTACT = "sip:bob@10.0.0.62:5060"
VM = ("192.0.2.99", 5070)


class Observer:
    def __init__(self) -> None:
        self.setups: list[float] = []
        self.ends: list[str] = []

    def call_setup(self, seconds: float) -> None:
        self.setups.append(seconds)

    def call_ended(self, disposition: str) -> None:
        self.ends.append(disposition)


def tracked(
    h: Harness, store: MemoryCallRecordStore | None = None, **options: object
) -> tuple[CallTracker, MemoryCallRecordStore]:
    store = store or MemoryCallRecordStore()
    tracker = CallTracker(store, h.clock, owner=OWNER, **options)  # type: ignore[arg-type]
    h.proxy.events.decisions.append(tracker)
    h.proxy.events.dialogs.append(tracker)
    tracker.start()
    return tracker, store


def requests(
    messages: list[Request | Response], method: str | None = None
) -> list[Request]:
    return [
        m
        for m in messages
        if isinstance(m, Request) and (method is None or m.method == method)
    ]


def ringing(h: Harness, where: tuple[str, int] = BOB) -> Request:
    """Alice calls Bob at 10 s; Bob rings 1.5 s later."""
    h.clock.advance(10)
    h.receive(invite(), ALICE)
    [to_bob] = requests(h.sent_to(where))
    h.clock.advance(1.5)
    h.receive(answer(to_bob, 180), where)
    return to_bob


def answered(h: Harness) -> Response:
    """Ringing, then Bob answers 2.5 s later; returns the 200 Alice got."""
    to_bob = ringing(h)
    h.clock.advance(2.5)
    h.receive(answer(to_bob, 200, contact=f"<{BOB_CONTACT}>"), BOB)
    [ok] = [m for m in h.sent_to(ALICE) if isinstance(m, Response) and m.status == 200]
    return ok


def bye_from_alice(ok: Response) -> bytes:
    route_set = list(reversed(ok.headers.get_all("record-route")))
    return (
        f"BYE {BOB_CONTACT} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {ALICE[0]}:{ALICE[1]};branch=z9hG4bKbyea;rport\r\n"
        "Max-Forwards: 70\r\n"
        f"Route: {route_set[0]}, {route_set[1]}\r\n"
        'From: "Alice" <sip:alice@example.test>;tag=a1\r\n'
        "To: <sip:bob@example.test>;tag=b1\r\n"
        "Call-ID: call-1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def test_an_answered_call_hung_up_by_the_callee() -> None:
    h = Harness()
    h.register("bob", BOB)
    observer = Observer()
    tracker, store = tracked(h, observer=observer)
    ok = answered(h)
    assert tracker.active() == 1
    [live] = tracker.live()
    assert live["state"] == "answered"
    [kept] = store.live.values()
    assert kept.answer == 14.0
    h.clock.advance(60)
    h.receive(bye_from_bob(ok), BOB)
    [record] = store.records
    assert record == CallRecord(
        call_id="call-1",
        caller="sip:alice@example.test",
        callee="sip:bob@example.test",
        answered_by=BOB_CONTACT,
        start=10.0,
        answer=14.0,
        end=74.0,
        disposition="answered",
        status=200,
        hangup_by="callee",
    )
    assert (record.duration, record.billsec) == (64.0, 60.0)
    assert store.live == {}
    assert tracker.active() == 0
    assert observer.setups == [1.5]
    assert observer.ends == ["answered"]


def test_an_answered_call_hung_up_by_the_caller() -> None:
    h = Harness()
    h.register("bob", BOB)
    _tracker, store = tracked(h)
    ok = answered(h)
    h.clock.advance(30)
    h.receive(bye_from_alice(ok), ALICE)
    [record] = store.records
    assert (record.disposition, record.hangup_by, record.billsec) == (
        "answered",
        "caller",
        30.0,
    )


def test_a_ringing_call_is_live_and_kept_in_the_store() -> None:
    h = Harness()
    h.register("bob", BOB)
    tracker, store = tracked(h)
    ringing(h)
    [live] = tracker.live()
    assert live["state"] == "ringing"
    assert (live["caller"], live["callee"]) == (
        "sip:alice@example.test",
        "sip:bob@example.test",
    )
    assert list(store.live) == [f"{OWNER}:call-1:a1"]
    assert store.records == []


def test_a_busy_callee() -> None:
    h = Harness()
    h.register("bob", BOB)
    _tracker, store = tracked(h)
    to_bob = ringing(h)
    h.receive(answer(to_bob, 486), BOB)
    [record] = store.records
    assert (record.disposition, record.status, record.answer, record.hangup_by) == (
        "busy",
        486,
        None,
        None,
    )
    assert record.end == 11.5
    assert store.live == {}


def test_no_answer_when_timer_c_fires() -> None:
    h = Harness()
    h.register("bob", BOB)
    _tracker, store = tracked(h)
    to_bob = ringing(h)
    h.clock.advance(TIMER_C)
    [cancel] = requests(h.sent_to(BOB), "CANCEL")
    assert cancel.method == "CANCEL"
    h.receive(answer(cancel, 200), BOB)
    h.receive(answer(to_bob, 487), BOB)
    [record] = store.records
    assert (record.disposition, record.status) == ("no_answer", 408)


def test_a_call_cancelled_by_the_caller() -> None:
    h = Harness()
    h.register("bob", BOB)
    _tracker, store = tracked(h)
    to_bob = ringing(h)
    h.receive(cancel_from_alice(), ALICE)
    [cancel] = requests(h.sent_to(BOB), "CANCEL")
    h.receive(answer(cancel, 200), BOB)
    h.receive(answer(to_bob, 487), BOB)
    [record] = store.records
    assert (record.disposition, record.status, record.billsec) == (
        "cancelled",
        487,
        0.0,
    )


def test_an_unknown_user_is_a_failed_call() -> None:
    h = Harness()
    tracker, store = tracked(h)
    h.clock.advance(5)
    h.receive(invite("nobody"), ALICE)
    [record] = store.records
    assert record == CallRecord(
        call_id="call-1",
        caller="sip:alice@example.test",
        callee="sip:nobody@example.test",
        start=5.0,
        end=5.0,
        disposition="failed",
        status=404,
    )
    assert tracker.active() == 0
    assert store.live == {}


def test_an_unknown_user_called_by_an_authenticated_user_names_the_user() -> None:
    """The 404 comes after the caller proved who it is: caller is the user.

    As for every other call: the authenticated user, else the From URI.
    """
    h = secured()
    _tracker, store = tracked(h)
    nonce = nonce_for(h, ALICE)
    proof = credentials(nonce, "wonderland", uri="sip:nobody@example.test")
    h.receive(request_to("nobody", ALICE, extra=proof), ALICE)
    [record] = store.records
    assert (record.caller, record.callee) == ("alice", "sip:nobody@example.test")
    assert (record.disposition, record.status) == ("failed", 404)


def test_a_parallel_fork_answered_by_the_second_phone() -> None:
    h = Harness(forking="parallel")
    h.register("bob", BOB)
    h.register("bob", BOB2)
    tracker, store = tracked(h)
    h.clock.advance(1)
    h.receive(invite(), ALICE)
    [first] = requests(h.sent_to(BOB))
    [second] = requests(h.sent_to(BOB2))
    h.receive(answer(first, 180, to_tag="p1"), BOB)
    h.receive(answer(second, 180, to_tag="p2"), BOB2)
    h.clock.advance(2)
    h.receive(answer(second, 200, to_tag="p2"), BOB2)
    assert tracker.active() == 1
    [cancel] = requests(h.sent_to(BOB), "CANCEL")
    h.receive(answer(cancel, 200), BOB)
    h.receive(answer(first, 487, to_tag="p1"), BOB)
    assert tracker.active() == 1, "the other branch's 487 does not end the call"
    [ok] = [m for m in h.sent_to(ALICE) if isinstance(m, Response) and m.status == 200]
    bye = bye_from_alice(ok).replace(b";tag=b1", b";tag=p2")
    h.receive(bye, ALICE)
    [record] = store.records
    assert record.answered_by == "sip:bob@10.0.0.64:5060"
    assert (record.disposition, record.hangup_by) == ("answered", "caller")


def test_a_call_whose_bye_never_comes_times_out() -> None:
    h = Harness()
    h.register("bob", BOB)
    tracker, store = tracked(h, max_call_seconds=3600, sweep_every=60)
    answered(h)
    h.clock.advance(3000)
    assert tracker.active() == 1
    for _ in range(20):
        h.clock.advance(60)
    [record] = store.records
    assert (record.disposition, record.hangup_by) == ("answered", "timeout")
    assert record.end == 14.0 + 3600
    assert store.live == {}


def test_calls_over_the_cap_are_counted_not_tracked() -> None:
    h = Harness()
    h.register("bob", BOB)
    tracker, _store = tracked(h, max_calls=1)
    h.receive(invite(), ALICE)
    h.receive(invite(call_id="call-2", branch="z9hG4bKalice2"), ALICE)
    assert (tracker.active(), tracker.untracked) == (1, 1)


def test_start_closes_what_the_last_run_left_live() -> None:
    h = Harness()
    store = MemoryCallRecordStore()
    left = CallRecord(
        call_id="old", caller="a", callee="b", start=1.0, disposition="lost"
    )
    store.live[f"{OWNER}:old:x"] = left
    store.live["udp:192.0.2.9:5060:other:y"] = left
    h.clock.advance(100)
    tracked(h, store)
    [record] = store.records
    assert (record.call_id, record.disposition, record.end) == ("old", "lost", 100.0)
    assert list(store.live) == ["udp:192.0.2.9:5060:other:y"]


def test_a_failing_store_is_counted_never_raised() -> None:
    h = Harness()
    h.register("bob", BOB)
    tracker, _store = tracked(h, MemoryCallRecordStore(fail=OSError("disk full")))
    ok = answered(h)
    h.receive(bye_from_bob(ok), BOB)
    assert tracker.store_errors == 4  # close_lost, live twice, the record
    assert tracker.ended["answered"] == 1


def test_dispositions_by_status() -> None:
    assert [disposition(s) for s in (200, 486, 600, 408, 480, 487, 404, 503)] == [
        "answered",
        "busy",
        "busy",
        "no_answer",
        "no_answer",
        "cancelled",
        "failed",
        "failed",
    ]


def test_a_re_invite_keeps_a_call_alive() -> None:
    h = Harness()
    h.register("bob", BOB)
    tracker, store = tracked(h, max_call_seconds=3600, sweep_every=60)
    ok = answered(h)
    h.clock.advance(3000)
    h.sent_to(BOB)  # the first INVITE's retransmissions, before the 180
    reinvite = bye_from_alice(ok).replace(b"BYE", b"INVITE").replace(b"bye", b"rei")
    h.receive(reinvite, ALICE)
    [to_bob] = requests(h.sent_to(BOB), "INVITE")
    h.receive(answer(to_bob, 200), BOB)
    for _ in range(20):
        h.clock.advance(60)  # past the first hour since the answer
    assert tracker.active() == 1
    for _ in range(50):
        h.clock.advance(60)
    [record] = store.records
    assert record.hangup_by == "timeout"
    assert record.end == 3014.0 + 3600


def test_a_call_forwarded_on_busy_names_the_reason_and_who_answered() -> None:
    vm_uri = f"sip:vm@{VM[0]}:{VM[1]}"
    h = Harness(
        office=parse_office(
            {"extensions": {"102": "bob"}, "forward": {"bob": {"busy": vm_uri}}}
        ).with_users(frozenset({"alice", "bob"}))
    )
    h.register("bob", BOB)
    _tracker, store = tracked(h)
    h.receive(invite("bob"), ALICE)
    [to_bob] = requests(h.sent_to(BOB), "INVITE")
    h.receive(answer(to_bob, 486), BOB)
    [to_vm] = requests(h.sent_to(VM), "INVITE")
    h.receive(answer(to_vm, 200, to_tag="vm"), VM)
    [ok] = [m for m in h.sent_to(ALICE) if isinstance(m, Response) and m.status == 200]
    h.receive(bye_from_alice(ok).replace(b";tag=b1", b";tag=vm"), ALICE)
    [record] = store.records
    assert (record.forwarded, record.answered_by) == ("user-busy", vm_uri)
    assert (record.callee, record.disposition) == ("sip:bob@example.test", "answered")


def test_the_reason_of_the_newest_diversion() -> None:
    assert diversion_reason(None) is None
    assert diversion_reason("<sip:bob@example.test>;counter=1") is None
    assert (
        diversion_reason(
            "<sip:bob@example.test;x=a,b>;reason=no-answer;counter=1, "
            "<sip:carol@example.test>;reason=user-busy"
        )
        == "no-answer"
    )


class SlowStore(MemoryCallRecordStore):
    """Adds records only when the test says the disk is done."""

    def __init__(self) -> None:
        super().__init__()
        self.disk: Deferred[None] = Deferred()

    async def add(self, record: CallRecord) -> None:
        await self.disk
        await super().add(record)


def test_stopping_waits_for_the_records_of_calls_that_just_ended() -> None:
    """A clean stop closes the store only after the last records are written."""
    h = Harness()
    h.register("bob", BOB)
    store = SlowStore()
    tracker, _ = tracked(h, store)
    ok = answered(h)
    h.receive(bye_from_bob(ok), BOB)
    stopped = tracker.stop()
    assert not stopped.called
    assert list(store.live), "the call is live until its record is written"
    store.disk.callback(None)
    assert stopped.called
    [record] = store.records
    assert (record.disposition, record.hangup_by) == ("answered", "callee")
    assert not store.live


def test_writes_in_flight_are_counted_until_the_store_is_done() -> None:
    h = Harness()
    h.register("bob", BOB)
    store = SlowStore()
    tracker, _ = tracked(h, store)
    ok = answered(h)
    assert tracker.pending_writes() == 0  # live writes: at once in memory
    h.receive(bye_from_bob(ok), BOB)
    assert tracker.pending_writes() == 1
    store.disk.callback(None)
    assert tracker.pending_writes() == 0
