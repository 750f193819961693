"""Call records from a running server, of calls made over real sockets.

They are read back with GET /cdr, GET /cdr.csv and sipproxy-ctl; a call live at
kill -9 is a lost record after the restart.

The phones are the raw-socket UAs of tests/security/sipua.py: Bob registers,
Alice calls him with digest credentials, Bob answers as the test says.
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import start_twistd, status_of, stop
from tests.integration.test_operations import Ops, start
from tests.security.sipua import UA, digest, header_values, start_line

pytestmark = pytest.mark.integration


@pytest.fixture
def recording(tmp_path: Path) -> Iterator[Ops]:
    running = start(tmp_path, f'cdr = "jsonl:{tmp_path / "cdr.jsonl"}"\n')
    yield running
    stop(running.server.process)
    log = running.server.log_text()
    assert "Traceback" not in log, log


def next_request(ua: UA, method: str) -> bytes:
    """The next request of ``method`` ``ua`` receives (responses skipped)."""
    deadline = time.monotonic() + 5
    while (left := deadline - time.monotonic()) > 0:
        data = ua.receive(left)
        if data is not None and start_line(data).startswith(f"{method} "):
            return data
    raise AssertionError(f"no {method} arrived")


def call_bob(alice: UA, bob: UA, call_id: str) -> bytes:
    """Alice's INVITE to Bob, with credentials; the INVITE as Bob got it."""
    make: dict[str, Any] = {
        "method": "INVITE",
        "uri": "sip:bob@example.test",
        "from_user": "alice@example.test",
        "to": "sip:bob@example.test",
        "call_id": call_id,
        "from_tag": f"a-{call_id}",
    }
    alice.send(alice.request(**make))
    challenged = alice.final()
    assert status_of(challenged) == 407, challenged
    assert challenged is not None
    challenge = dict(
        re.findall(
            r'(\w+)="?([^",]*)"?', header_values(challenged, "Proxy-Authenticate")[0]
        )
    )
    credentials = digest(
        challenge,
        user="alice",
        password="wonderland",
        method="INVITE",
        uri="sip:bob@example.test",
    )
    make.update(cseq=2, extra=f"Proxy-Authorization: {credentials}\r\n")
    alice.send(alice.request(**make))
    return next_request(bob, "INVITE")


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


def test_an_answered_call_and_a_busy_one_are_recorded(recording: Ops) -> None:
    port = recording.server.port
    alice, bob = UA(port), UA(port)
    try:
        assert status_of(bob.register("bob", "builder")) == 200
        to_bob = call_bob(alice, bob, "cdr-answered")
        bob.send(bob.answer(to_bob, 180))
        code, body = recording.get("/calls")
        assert code == 200
        deadline = time.monotonic() + 5
        while not json.loads(body)["calls"] and time.monotonic() < deadline:
            code, body = recording.get("/calls")
        [live] = json.loads(body)["calls"]
        assert (live["call_id"], live["caller"]) == ("cdr-answered", "alice")
        bob.send(bob.answer(to_bob, 200))
        ok = alice.final()
        assert status_of(ok) == 200, ok
        assert ok is not None
        routes = ", ".join(reversed(header_values(ok, "Record-Route")))
        bye = alice.request(
            "BYE",
            f"sip:callee@{bob.sent_by}",
            from_user="alice@example.test",
            to="sip:bob@example.test",
            to_tag="callee",
            from_tag="a-cdr-answered",
            call_id="cdr-answered",
            cseq=3,
            extra=f"Route: {routes}\r\n",
        )
        alice.send(bye)
        bob.send(bob.answer(next_request(bob, "BYE"), 200))
        assert status_of(alice.final()) == 200

        busy = call_bob(alice, bob, "cdr-busy")
        bob.send(bob.answer(busy, 486))
        assert status_of(alice.final()) == 486
    finally:
        alice.close()
        bob.close()

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


def test_a_call_live_at_kill_9_is_lost_at_the_next_start(tmp_path: Path) -> None:
    extra = f'cdr = "jsonl:{tmp_path / "cdr.jsonl"}"\n'
    first = start(tmp_path, extra)
    alice, bob = UA(first.server.port), UA(first.server.port)
    try:
        assert status_of(bob.register("bob", "builder")) == 200
        to_bob = call_bob(alice, bob, "cdr-lost")
        bob.send(bob.answer(to_bob, 200))
        assert status_of(alice.final()) == 200
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
        assert "1 calls in progress when the last run ended" in server.log_text()
    finally:
        stop(server.process)
