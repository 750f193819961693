"""The behaviour every CDR store shares, run against JSON lines, SQLite and Redis."""

from __future__ import annotations

import dataclasses

import pytest_twisted

from sipproxy.cdr import CallRecordStore
from sipproxy.cdr.record import CallRecord
from tests.cdr.conftest import StoreFactory
from tests.cdr.examples import DAY, T0, call, call_ids

MISSED = frozenset({"no_answer", "busy", "cancelled"})


@pytest_twisted.ensureDeferred
async def test_an_empty_store_finds_nothing(cdr: CallRecordStore) -> None:
    """A new store answers every query with no records."""
    assert await cdr.query(limit=100) == []
    assert await cdr.close_lost("p1", T0) == []


@pytest_twisted.ensureDeferred
async def test_query_lists_the_newest_start_first(cdr: CallRecordStore) -> None:
    """Records come newest start first, not in the order calls ended and were added."""
    long_call = call("long", start=T0, end=T0 + 3600)
    await cdr.add(call("middle", start=T0 + 60))
    await cdr.add(call("late", start=T0 + 120))
    await cdr.add(long_call)  # it started first but ended last
    assert call_ids(await cdr.query(limit=10)) == ["late", "middle", "long"]


@pytest_twisted.ensureDeferred
async def test_a_record_reads_back_equal(cdr: CallRecordStore) -> None:
    """Every field, set or None, comes back as written."""
    full = call(
        "full;@x",
        caller="sip:alice@example.test",
        callee="sip:100@example.test",
        answered_by="sip:carol@example.test",
        status=200,
        hangup_by="callee",
        forwarded="sip:carol@example.test",
    )
    bare = CallRecord(
        call_id="bare", caller="bob", callee="sip:x", start=T0 - 1, disposition="failed"
    )
    await cdr.add(full)
    await cdr.add(bare)
    assert await cdr.query(limit=10) == [full, bare]


@pytest_twisted.ensureDeferred
async def test_equal_starts_list_the_later_added_first(cdr: CallRecordStore) -> None:
    """Two calls starting in the same millisecond: the one added last comes first."""
    await cdr.add(call("first"))
    await cdr.add(call("second"))
    assert call_ids(await cdr.query(limit=10)) == ["second", "first"]


@pytest_twisted.ensureDeferred
async def test_limit_keeps_the_newest(cdr: CallRecordStore) -> None:
    """limit=n gives the n newest; limit=0 gives nothing."""
    for i in range(5):
        await cdr.add(call(f"c{i}", start=T0 + i))
    assert call_ids(await cdr.query(limit=2)) == ["c4", "c3"]
    assert await cdr.query(limit=0) == []


@pytest_twisted.ensureDeferred
async def test_since_is_inclusive_and_until_exclusive(cdr: CallRecordStore) -> None:
    """A window includes its since and excludes its until: since <= start < until."""
    for i in range(4):
        await cdr.add(call(f"day{i}", start=T0 + i * DAY))
    found = await cdr.query(since=T0 + DAY, until=T0 + 3 * DAY, limit=10)
    assert call_ids(found) == ["day2", "day1"]
    assert call_ids(await cdr.query(since=T0 + 2 * DAY, limit=10)) == [
        "day3",
        "day2",
    ]
    assert call_ids(await cdr.query(until=T0 + DAY, limit=10)) == ["day0"]


@pytest_twisted.ensureDeferred
async def test_user_matches_caller_callee_or_answerer(cdr: CallRecordStore) -> None:
    """A user's calls are those they made, dialled to them, or picked up."""
    await cdr.add(call("made", caller="alice", callee="sip:bob@example.test"))
    await cdr.add(
        call("dialled", caller="sip:carol@x.test", callee="sip:alice@example.test")
    )
    await cdr.add(
        call(
            "picked_up",
            caller="dave",
            callee="sip:sales@example.test",
            answered_by="sip:alice@192.0.2.7:5060",
        )
    )
    await cdr.add(call("other", caller="eve", callee="sip:frank@example.test"))
    expected = ["picked_up", "dialled", "made"]
    # Each call starts at T0: newest first means the last added first.
    assert call_ids(await cdr.query(user="alice", limit=10)) == expected
    found = await cdr.query(user="sip:alice@example.test", limit=10)
    assert call_ids(found) == expected
    assert call_ids(await cdr.query(user="bob", limit=10)) == ["made"]
    assert await cdr.query(user="ali", limit=10) == []


@pytest_twisted.ensureDeferred
async def test_dispositions_select_missed_calls(cdr: CallRecordStore) -> None:
    """dispositions={no_answer, busy, cancelled} lists the missed calls."""
    kinds = ["answered", "no_answer", "busy", "cancelled", "failed"]
    for i, kind in enumerate(kinds):
        await cdr.add(call(kind, start=T0 + i, disposition=kind))
    found = await cdr.query(dispositions=MISSED, limit=10)
    assert call_ids(found) == ["cancelled", "busy", "no_answer"]


@pytest_twisted.ensureDeferred
async def test_filters_combine(cdr: CallRecordStore) -> None:
    """User, time window, dispositions and limit all apply at once."""
    for i in range(10):
        await cdr.add(
            call(
                f"c{i}",
                caller="alice" if i % 2 else "bob",
                start=T0 + i * 60,
                disposition="no_answer" if i % 3 else "answered",
            )
        )
    found = await cdr.query(
        user="alice", since=T0 + 60, until=T0 + 540, dispositions=MISSED, limit=2
    )
    # alice: 1, 3, 5, 7; missed: not 3; before 540: not 9.
    assert call_ids(found) == ["c7", "c5"]


@pytest_twisted.ensureDeferred
async def test_close_lost_finishes_one_owners_calls(cdr: CallRecordStore) -> None:
    """At start, the calls this process left in progress become lost records.

    Other processes' calls stay live, including an owner whose name merely
    starts with this one's.
    """
    ringing = call("ringing", start=T0, end=None)
    talking = call("talking", start=T0 + 10, end=None)
    await cdr.keep_live("p1:d1", ringing)
    await cdr.keep_live("p1:d2", talking)
    await cdr.keep_live("p2:d1", call("elsewhere", end=None))
    await cdr.keep_live("p10:d1", call("lookalike", end=None))
    now = T0 + 500

    lost = await cdr.close_lost("p1", now)

    expected = [
        dataclasses.replace(ringing, disposition="lost", end=now),
        dataclasses.replace(talking, disposition="lost", end=now),
    ]
    assert lost == expected
    assert await cdr.query(limit=10) == expected[::-1]
    assert await cdr.close_lost("p1", now) == []
    assert call_ids(await cdr.close_lost("p2", now)) == ["elsewhere"]
    assert call_ids(await cdr.close_lost("p10", now)) == ["lookalike"]


@pytest_twisted.ensureDeferred
async def test_keep_live_replaces_and_drop_live_forgets(cdr: CallRecordStore) -> None:
    """The live record is the latest kept; a finished, dropped call is not lost."""
    ringing = call("c1", start=T0, disposition="no_answer", end=None)
    answered = call("c1", start=T0, end=None)
    await cdr.keep_live("p1:d1", ringing)
    await cdr.keep_live("p1:d1", answered)
    await cdr.keep_live("p1:d2", call("c2", end=None))
    await cdr.add(call("c2"))
    await cdr.drop_live("p1:d2")
    await cdr.drop_live("p1:unknown")

    lost = await cdr.close_lost("p1", T0 + 100)

    assert lost == [dataclasses.replace(answered, disposition="lost", end=T0 + 100)]
    assert lost[0].billsec == 95


@pytest_twisted.ensureDeferred
async def test_records_survive_close_and_reopen(
    cdr: CallRecordStore, make_store: StoreFactory
) -> None:
    """Finished and live records are still there for the next process."""
    await cdr.add(call("done"))
    await cdr.keep_live("p1:d1", call("live", start=T0 + 1, end=None))
    await cdr.close()
    await cdr.close()  # twice is harmless

    reopened = make_store()
    await reopened.open()
    try:
        assert call_ids(await reopened.query(limit=10)) == ["done"]
        lost = await reopened.close_lost("p1", T0 + 100)
        assert call_ids(lost) == ["live"]
        assert call_ids(await reopened.query(limit=10)) == ["live", "done"]
    finally:
        await reopened.close()


@pytest_twisted.ensureDeferred
async def test_user_matches_through_escapes_and_non_ascii(
    cdr: CallRecordStore,
) -> None:
    """%-escaped and non-ASCII user parts match as URI comparison has them."""
    await cdr.add(call("escaped", caller="sip:%61lice@example.test"))
    await cdr.add(call("umlaut", caller="jürgen", callee="sip:bob@example.test"))
    assert call_ids(await cdr.query(user="alice", limit=10)) == ["escaped"]
    assert call_ids(await cdr.query(user="sip:j%C3%BCrgen@x", limit=10)) == ["umlaut"]
    assert call_ids(await cdr.query(user="jürgen", limit=10)) == ["umlaut"]
    assert await cdr.query(user="", limit=10) == []
