"""Call records from a running server, of calls made over real sockets.

They are read back with GET /cdr, GET /cdr.csv and sipproxy-ctl; a call live at
kill -9 is a lost record after the restart.

The phones are the raw-socket UAs of tests/security/sipua.py: Bob registers,
Alice calls him with digest credentials, Bob answers as the test says. Every
final non-2xx an INVITE gets is ACKed, so no retransmission of it is still
arriving when the next call starts.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from sipproxy.cdr.record import CSV_FIELDS
from tests.integration.conftest import start_twistd, status_of, stop
from tests.integration.test_operations import Ops, start
from tests.security.sipua import UA, digest, header_values, start_line

pytestmark = pytest.mark.integration

#: A time as the records write it: ISO 8601, UTC, milliseconds.
ISO_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
#: The users file of test_operations.start.
PASSWORDS = {"alice": "wonderland", "bob": "builder"}


def serve(tmp_path: Path, extra: str = "") -> Iterator[Ops]:
    """A server writing call records to ``cdr.jsonl``; stopped after the test."""
    running = start(tmp_path, f'cdr = "jsonl:{tmp_path / "cdr.jsonl"}"\n{extra}')
    yield running
    stop(running.server.process)
    log = running.server.log_text()
    assert "Traceback" not in log, log


@pytest.fixture
def recording(tmp_path: Path) -> Iterator[Ops]:
    yield from serve(tmp_path)


@pytest.fixture
def forking(tmp_path: Path) -> Iterator[Ops]:
    """A recording server that rings every phone of a user at once."""
    yield from serve(tmp_path, 'forking = "parallel"\n')


@pytest.fixture
def phone() -> Iterator[Callable[[Ops], UA]]:
    """Makes UAs talking to a server; each is closed after the test."""
    made: list[UA] = []

    def make(ops: Ops) -> UA:
        made.append(UA(ops.server.port))
        return made[-1]

    yield make
    for ua in made:
        ua.close()


def next_request(ua: UA, method: str) -> bytes:
    """The next request of ``method`` ``ua`` receives (responses skipped)."""
    deadline = time.monotonic() + 5
    while (left := deadline - time.monotonic()) > 0:
        data = ua.receive(left)
        if data is not None and start_line(data).startswith(f"{method} "):
            return data
    raise AssertionError(f"no {method} arrived")


def invite(
    caller: UA, call_id: str, callee: str = "bob", *, user: str = "alice"
) -> bytes:
    """``user``'s INVITE to ``callee``, sent again with credentials after the 407.

    :returns: the INVITE as sent the second time (for CANCEL and ACK).
    """
    make: dict[str, Any] = {
        "method": "INVITE",
        "uri": f"sip:{callee}@example.test",
        "from_user": f"{user}@example.test",
        "to": f"sip:{callee}@example.test",
        "call_id": call_id,
        "from_tag": f"a-{call_id}",
    }
    first = caller.request(**make)
    caller.send(first)
    challenged = caller.final_to(first)
    assert status_of(challenged) == 407, challenged
    assert challenged is not None
    caller.send(caller.ack(first, challenged))
    challenge = dict(
        re.findall(
            r'(\w+)="?([^",]*)"?', header_values(challenged, "Proxy-Authenticate")[0]
        )
    )
    credentials = digest(
        challenge,
        user=user,
        password=PASSWORDS[user],
        method="INVITE",
        uri=make["uri"],
    )
    make.update(cseq=2, extra=f"Proxy-Authorization: {credentials}\r\n")
    sent = caller.request(**make)
    caller.send(sent)
    return sent


def call_bob(alice: UA, bob: UA, call_id: str) -> bytes:
    """Alice's INVITE to Bob, with credentials; the INVITE as Bob got it."""
    invite(alice, call_id)
    return next_request(bob, "INVITE")


def answered(alice: UA, bob: UA, call_id: str) -> tuple[bytes, bytes]:
    """A call Bob answers: (the INVITE as Bob got it, the 200 as Alice got it)."""
    sent = invite(alice, call_id)
    to_bob = next_request(bob, "INVITE")
    bob.send(bob.answer(to_bob, 200))
    ok = alice.final_to(sent)
    assert status_of(ok) == 200, ok
    assert ok is not None
    return to_bob, ok


def refused(
    caller: UA, bob: UA, call_id: str, status: int, *, user: str = "alice"
) -> None:
    """A call to Bob he answers ``status``; the caller must get it, and ACKs it."""
    sent = invite(caller, call_id, user=user)
    bob.send(bob.answer(next_request(bob, "INVITE"), status))
    answer = caller.final_to(sent)
    assert status_of(answer) == status, answer
    assert answer is not None
    caller.send(caller.ack(sent, answer))


def cancelled(alice: UA, bob: UA, sent: bytes, to_bob: bytes) -> None:
    """Alice CANCELs her INVITE while Bob rings; Bob answers 487 as a phone does.

    Bob must have sent a provisional answer: before one, the proxy holds its
    CANCEL back (RFC 3261 §9.1).
    """
    cancel = alice.cancel(sent)
    alice.send(cancel)
    assert status_of(alice.final_to(cancel)) == 200
    from_proxy = next_request(bob, "CANCEL")
    bob.send(bob.answer(from_proxy, 200))
    bob.send(bob.answer(to_bob, 487))
    terminated = alice.final_to(sent)
    assert status_of(terminated) == 487, terminated
    assert terminated is not None
    alice.send(alice.ack(sent, terminated))


def tag_of(header: str) -> str:
    found = re.search(r";tag=([^;>\s]+)", header)
    assert found is not None, header
    return found.group(1)


def caller_hangs_up(alice: UA, bob: UA, ok: bytes) -> None:
    """Alice sends BYE along the route set of Bob's 200; Bob answers it."""
    call_id = header_values(ok, "Call-ID")[0]
    contact = header_values(ok, "Contact")[0].strip("<>")
    routes = ", ".join(reversed(header_values(ok, "Record-Route")))
    bye = alice.request(
        "BYE",
        contact,
        from_user="alice@example.test",
        to="sip:bob@example.test",
        to_tag=tag_of(header_values(ok, "To")[0]),
        from_tag=tag_of(header_values(ok, "From")[0]),
        call_id=call_id,
        cseq=3,
        extra=f"Route: {routes}\r\n",
    )
    alice.send(bye)
    bob.send(bob.answer(next_request(bob, "BYE"), 200))
    assert status_of(alice.final_to(bye)) == 200


def callee_hangs_up(bob: UA, alice: UA, to_bob: bytes) -> None:
    """Bob sends BYE along the route set of the INVITE he got; Alice answers it."""
    contact = header_values(to_bob, "Contact")[0].strip("<>")
    bye = bob.request(
        "BYE",
        contact,
        from_user="bob@example.test",
        from_tag="callee",  # the To tag of UA.answer
        to="sip:alice@example.test",
        to_tag=tag_of(header_values(to_bob, "From")[0]),
        call_id=header_values(to_bob, "Call-ID")[0],
        cseq=1,
        extra=f"Route: {', '.join(header_values(to_bob, 'Record-Route'))}\r\n",
    )
    bob.send(bye)
    alice.send(alice.answer(next_request(alice, "BYE"), 200))
    assert status_of(bob.final_to(bye)) == 200


def records(ops: Ops, query: str = "", count: int = 1) -> list[dict[str, Any]]:
    """GET /cdr until it holds ``count`` records (writes are asynchronous)."""
    deadline = time.monotonic() + 10
    while True:
        code, body = ops.get(f"/cdr{query}")
        assert code == 200, body
        found: list[dict[str, Any]] = json.loads(body)["records"]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def live_calls(
    ops: Ops, done: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    """GET /calls until ``done`` says its calls are the awaited ones (bounded)."""
    deadline = time.monotonic() + 5
    while True:
        code, body = ops.get("/calls")
        assert code == 200, body
        calls: list[dict[str, Any]] = json.loads(body)["calls"]
        if done(calls) or time.monotonic() > deadline:
            return calls
        time.sleep(0.02)


def moment(text: str) -> datetime:
    """A record's time, checked to be ISO 8601 UTC with milliseconds."""
    assert ISO_MS.fullmatch(text), text
    return datetime.fromisoformat(text)


def test_an_answered_call_and_a_busy_one_are_recorded(
    recording: Ops, phone: Callable[[Ops], UA]
) -> None:
    alice, bob = phone(recording), phone(recording)
    assert status_of(bob.register("bob", "builder")) == 200
    to_bob = call_bob(alice, bob, "cdr-answered")
    bob.send(bob.answer(to_bob, 180))
    [live] = live_calls(recording, bool)
    assert (live["call_id"], live["caller"]) == ("cdr-answered", "alice")
    bob.send(bob.answer(to_bob, 200))
    ok = alice.final()
    assert status_of(ok) == 200, ok
    assert ok is not None
    caller_hangs_up(alice, bob, ok)
    refused(alice, bob, "cdr-busy", 486)

    newest, oldest = records(recording, count=2)
    assert (newest["call_id"], newest["disposition"], newest["status"]) == (
        "cdr-busy",
        "busy",
        486,
    )
    assert newest["answer"] is None and newest["billsec"] == 0
    assert oldest["call_id"] == "cdr-answered"
    assert oldest["disposition"] == "answered"
    assert (oldest["caller"], oldest["callee"]) == ("alice", "sip:bob@example.test")
    assert oldest["answered_by"] == f"sip:bob@{bob.sent_by}"
    assert oldest["hangup_by"] == "caller"
    assert oldest["status"] == 200
    assert oldest["answer"] is not None and oldest["end"] is not None

    assert [r["call_id"] for r in records(recording, "?disposition=busy")] == [
        "cdr-busy"
    ]
    code, body = recording.get("/cdr.csv?user=bob")
    assert code == 200
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert [row["disposition"] for row in rows] == ["busy", "answered"]
    status, out, err = recording.ctl("cdr", "--user", "alice")
    assert status == 0, err
    assert "busy" in out and "answered" in out
    # One JSON object per line in the file the operator asked for.
    lines = (recording.tmp / "cdr.jsonl").read_text().splitlines()
    assert [json.loads(line)["call_id"] for line in lines] == [
        "cdr-answered",
        "cdr-busy",
    ]


def test_a_call_the_callee_hangs_up_names_the_callee(
    recording: Ops, phone: Callable[[Ops], UA]
) -> None:
    """Bob's BYE ends the call: hangup_by callee, billed from answer to BYE."""
    alice, bob = phone(recording), phone(recording)
    assert status_of(bob.register("bob", "builder")) == 200
    to_bob, _ = answered(alice, bob, "cdr-callee-bye")
    time.sleep(0.2)  # talking: billsec is at least this
    callee_hangs_up(bob, alice, to_bob)

    [record] = records(recording)
    assert record["call_id"] == "cdr-callee-bye"
    assert (record["disposition"], record["status"]) == ("answered", 200)
    assert record["hangup_by"] == "callee"
    assert record["answered_by"] == f"sip:bob@{bob.sent_by}"
    start, answer, end = (moment(record[name]) for name in ("start", "answer", "end"))
    assert start <= answer < end
    assert record["billsec"] >= 0.2
    assert record["billsec"] == round((end - answer).total_seconds(), 3)
    assert record["duration"] == round((end - start).total_seconds(), 3)


@pytest.mark.parametrize("status", [480, 408])
def test_a_call_nobody_answers_is_no_answer(
    recording: Ops, phone: Callable[[Ops], UA], status: int
) -> None:
    """Bob's phone gives up (480, 408): no_answer, with the status Alice got."""
    alice, bob = phone(recording), phone(recording)
    assert status_of(bob.register("bob", "builder")) == 200
    refused(alice, bob, "cdr-no-answer", status)

    [record] = records(recording)
    assert record["call_id"] == "cdr-no-answer"
    assert (record["disposition"], record["status"]) == ("no_answer", status)
    assert record["answer"] is None and record["answered_by"] is None
    assert record["hangup_by"] is None
    assert record["end"] is not None and record["billsec"] == 0


def test_a_call_cancelled_while_ringing_is_cancelled(
    recording: Ops, phone: Callable[[Ops], UA]
) -> None:
    """Alice gives up while Bob rings: cancelled, 487, and nobody hung up.

    hangup_by names who ended an answered call (sipproxy.cdr.record.HANGUP_BY);
    a call never answered has none.
    """
    alice, bob = phone(recording), phone(recording)
    assert status_of(bob.register("bob", "builder")) == 200
    sent = invite(alice, "cdr-cancel")
    to_bob = next_request(bob, "INVITE")
    bob.send(bob.answer(to_bob, 180))
    [live] = live_calls(recording, bool)
    assert (live["call_id"], live["state"]) == ("cdr-cancel", "ringing")
    cancelled(alice, bob, sent, to_bob)

    [record] = records(recording)
    assert record["call_id"] == "cdr-cancel"
    assert (record["disposition"], record["status"]) == ("cancelled", 487)
    assert record["hangup_by"] is None
    assert record["answer"] is None and record["answered_by"] is None
    assert moment(record["end"]) >= moment(record["start"])
    assert record["billsec"] == 0


def test_a_call_to_an_unknown_user_failed(
    recording: Ops, phone: Callable[[Ops], UA]
) -> None:
    """404 from the proxy itself: one failed record, not one for the 407 first."""
    alice = phone(recording)
    sent = invite(alice, "cdr-nobody", callee="nobody")
    answer = alice.final_to(sent)
    assert status_of(answer) == 404, answer
    assert answer is not None
    alice.send(alice.ack(sent, answer))

    # Records are written in order: one for the 407 would be the first seen.
    [record] = records(recording)
    assert (record["call_id"], record["caller"]) == ("cdr-nobody", "alice")
    assert record["callee"] == "sip:nobody@example.test"
    assert (record["disposition"], record["status"]) == ("failed", 404)
    assert record["answered_by"] is None and record["answer"] is None
    assert record["hangup_by"] is None


def test_a_forked_call_names_the_phone_that_answered(
    forking: Ops, phone: Callable[[Ops], UA]
) -> None:
    """Bob's two phones ring at once; the second answers; the first is CANCELled.

    Targets are tried newest registration first: the desk phone, registered
    last, is the fork's first branch, the mobile its second.
    """
    alice, mobile, desk = phone(forking), phone(forking), phone(forking)
    assert status_of(mobile.register("bob", "builder")) == 200
    assert status_of(desk.register("bob", "builder")) == 200
    sent = invite(alice, "cdr-forked")
    at_desk = next_request(desk, "INVITE")
    at_mobile = next_request(mobile, "INVITE")
    desk.send(desk.answer(at_desk, 180, to_tag="desk"))
    mobile.send(mobile.answer(at_mobile, 180, to_tag="mobile"))
    mobile.send(mobile.answer(at_mobile, 200, to_tag="mobile"))
    ok = alice.final_to(sent)
    assert status_of(ok) == 200, ok
    assert ok is not None
    assert tag_of(header_values(ok, "To")[0]) == "mobile"
    desk.send(desk.answer(next_request(desk, "CANCEL"), 200))
    desk.send(desk.answer(at_desk, 487, to_tag="desk"))
    caller_hangs_up(alice, mobile, ok)

    # The desk's 487 ended a branch, not the call: a record of it would have
    # been written before the BYE's, so it would be the one seen here.
    [record] = records(forking)
    assert record["call_id"] == "cdr-forked"
    assert record["disposition"] == "answered"
    assert record["answered_by"] == f"sip:bob@{mobile.sent_by}"
    assert (record["hangup_by"], record["status"]) == ("caller", 200)


def test_calls_lists_ringing_and_answered_calls_until_they_end(
    recording: Ops, phone: Callable[[Ops], UA]
) -> None:
    """GET /calls (and sipproxy-ctl calls) while one call rings and one is up."""
    alice, bob = phone(recording), phone(recording)
    assert status_of(bob.register("bob", "builder")) == 200
    _, ok = answered(alice, bob, "cdr-up")
    ringing = invite(alice, "cdr-ringing")
    to_bob = next_request(bob, "INVITE")
    bob.send(bob.answer(to_bob, 180, to_tag="ring"))

    calls = live_calls(recording, lambda calls: len(calls) == 2)
    by_id = {call["call_id"]: call for call in calls}
    assert set(by_id) == {"cdr-up", "cdr-ringing"}, calls
    up, rings = by_id["cdr-up"], by_id["cdr-ringing"]
    assert up["state"] == "answered"
    assert up["answered_by"] == f"sip:bob@{bob.sent_by}"
    assert moment(up["answer"]) >= moment(up["start"])
    assert rings["state"] == "ringing"
    assert rings["answer"] is None and rings["answered_by"] is None
    assert (rings["caller"], rings["callee"]) == ("alice", "sip:bob@example.test")
    # Oldest first.
    assert [call["call_id"] for call in calls] == ["cdr-up", "cdr-ringing"]
    status, out, err = recording.ctl("calls")
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["STATE", "START", "ANSWER"], out
    assert [line.split()[0] for line in lines[1:]] == ["answered", "ringing"], out

    caller_hangs_up(alice, bob, ok)
    cancelled(alice, bob, ringing, to_bob)
    assert live_calls(recording, lambda calls: not calls) == []
    ended = {r["call_id"]: r["disposition"] for r in records(recording, count=2)}
    assert ended == {"cdr-up": "answered", "cdr-ringing": "cancelled"}


def test_missed_calls_are_found_by_user_and_disposition(
    recording: Ops, phone: Callable[[Ops], UA]
) -> None:
    """?user=alice&disposition=no_answer,busy,cancelled: her missed calls, no more."""
    alice, bob = phone(recording), phone(recording)
    assert status_of(bob.register("bob", "builder")) == 200
    _, ok = answered(alice, bob, "missed-not-answered")
    caller_hangs_up(alice, bob, ok)
    refused(alice, bob, "missed-busy", 486)
    refused(alice, bob, "missed-no-answer", 480)
    sent = invite(alice, "missed-cancelled")
    to_bob = next_request(bob, "INVITE")
    bob.send(bob.answer(to_bob, 180))
    cancelled(alice, bob, sent, to_bob)
    refused(alice, bob, "missed-not-failed", 403)
    # Bob calls himself and is busy: a missed call, but not one of alice's.
    refused(phone(recording), bob, "missed-by-bob", 486, user="bob")

    every = records(recording, count=6)
    assert len(every) == 6, every
    query = "?user=alice&disposition=no_answer,busy,cancelled"
    missed = records(recording, query, count=3)
    assert [(r["call_id"], r["disposition"]) for r in missed] == [
        ("missed-cancelled", "cancelled"),
        ("missed-no-answer", "no_answer"),
        ("missed-busy", "busy"),
    ]
    status, out, err = recording.ctl(
        "--json", "cdr", "--user", "alice", "--disposition", "no_answer,busy,cancelled"
    )
    assert status == 0, err
    assert [r["call_id"] for r in json.loads(out)["records"]] == [
        r["call_id"] for r in missed
    ]


def test_cdr_csv_has_every_field_with_utc_milliseconds(
    recording: Ops, phone: Callable[[Ops], UA]
) -> None:
    """GET /cdr.csv: a header row naming every field, then the same as /cdr."""
    alice, bob = phone(recording), phone(recording)
    assert status_of(bob.register("bob", "builder")) == 200
    _, ok = answered(alice, bob, "csv-answered")
    caller_hangs_up(alice, bob, ok)
    # A Call-ID is the caller's word: one that starts like a formula is quoted.
    refused(alice, bob, "+csv-busy", 486)
    as_json = records(recording, count=2)
    assert len(as_json) == 2

    code, body = recording.get("/cdr.csv")
    assert code == 200, body
    reader = csv.DictReader(io.StringIO(body.decode(), newline=""))
    rows = list(reader)
    named = [
        "call_id",
        "caller",
        "callee",
        "answered_by",
        "start",
        "answer",
        "end",
        "duration",
        "billsec",
        "disposition",
        "status",
        "hangup_by",
        "forwarded",
    ]
    assert reader.fieldnames is not None
    assert set(named) <= set(reader.fieldnames)
    assert list(reader.fieldnames) == list(CSV_FIELDS)
    busy, talked = rows
    assert busy["call_id"] == "'+csv-busy"
    assert (busy["disposition"], busy["status"], busy["answer"]) == ("busy", "486", "")
    assert talked["call_id"] == "csv-answered"
    for row, record in ((busy, as_json[0]), (talked, as_json[1])):
        for name in ("start", "end", *(("answer",) if row["answer"] else ())):
            moment(row[name])
        for name in named[1:]:  # the call_ids were compared above
            value = record[name]
            assert row[name] == ("" if value is None else str(value)), name
    assert float(talked["billsec"]) <= float(talked["duration"])
    assert (talked["hangup_by"], talked["status"]) == ("caller", "200")
    assert talked["answered_by"] == f"sip:bob@{bob.sent_by}"
    status, out, err = recording.ctl("cdr", "--csv")
    assert status == 0, err
    assert out.replace("\r\n", "\n") == body.decode().replace("\r\n", "\n")


def test_a_call_live_at_kill_9_is_lost_at_the_next_start(tmp_path: Path) -> None:
    extra = f'cdr = "jsonl:{tmp_path / "cdr.jsonl"}"\n'
    first = start(tmp_path, extra)
    alice, bob = UA(first.server.port), UA(first.server.port)
    try:
        assert status_of(bob.register("bob", "builder")) == 200
        answered(alice, bob, "cdr-lost")
        live_file = tmp_path / "cdr.jsonl.live.json"
        deadline = time.monotonic() + 10
        # Answered, as the store has it: the record that must survive.
        while not live_file.exists() or '"answer":"' not in live_file.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        alice.close()
        bob.close()
        os.killpg(first.server.process.pid, signal.SIGKILL)
        first.server.process.wait(10)
    # The same configuration and so the same listener: the same owner, whose
    # leftovers the new process closes.
    server = start_twistd(
        ["--config", str(first.config)], first.server.port, tmp_path / "again.log"
    )
    again = dataclasses.replace(first, server=server)
    try:
        [lost] = records(again)
        assert (lost["call_id"], lost["disposition"]) == ("cdr-lost", "lost")
        assert lost["answer"] is not None and lost["end"] is not None
        # The warning follows the store's answer: it may come a moment later.
        server.wait_for_log("1 calls in progress when the last run ended")
    finally:
        stop(server.process)
