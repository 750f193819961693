"""The admin API's calls: GET /calls, GET /cdr and GET /cdr.csv."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread
from twisted.web.server import Site

from sipproxy.admin import AdminAPI
from sipproxy.cdr.record import CSV_FIELDS, CallRecord, format_time
from sipproxy.ctl import main
from sipproxy.testing import MemoryCallRecordStore, run
from tests.test_admin import TOKEN, FakeServer, Running, reactor

pytestmark = pytest.mark.filterwarnings("ignore:Using readBody:DeprecationWarning")

T0 = 1_796_379_330.0


class FakeCalls:
    def __init__(self) -> None:
        self.store = MemoryCallRecordStore()
        self.calls: list[dict[str, Any]] = []

    def live(self) -> list[dict[str, Any]]:
        return self.calls


def record(n: int, callee: str, disposition: str, **fields: Any) -> CallRecord:
    return CallRecord(
        call_id=f"c{n}",
        caller="sip:alice@example.test",
        callee=callee,
        start=T0 + n * 60,
        end=T0 + n * 60 + 10,
        disposition=disposition,
        **fields,
    )


@pytest.fixture
def calls_admin() -> Any:
    server = FakeServer()
    calls = FakeCalls()
    for item in (
        record(1, "sip:bob@example.test", "answered", answer=T0 + 62, status=200),
        record(2, "sip:bob@example.test", "busy", status=486),
        record(3, "sip:carol@example.test", "no_answer", status=408),
        record(4, "sip:dave@example.test", "failed", status=404),
    ):
        run(calls.store.add(item))
    api = AdminAPI(server, token=TOKEN, metrics=None, calls=calls)
    port = reactor.listenTCP(0, Site(api), interface="127.0.0.1")
    running = Running(server, api, port)
    running.calls = calls  # type: ignore[attr-defined]
    yield running
    pytest_twisted.blockon(port.stopListening())


@pytest.mark.parametrize("path", ["/calls", "/cdr", "/cdr.csv"])
@pytest_twisted.ensureDeferred
async def test_calls_and_records_need_the_token(
    calls_admin: Running, path: str
) -> None:
    code, _body, _ = await calls_admin.fetch("GET", path, token=None)
    assert code == 401


@pytest_twisted.ensureDeferred
async def test_calls_in_progress(calls_admin: Running) -> None:
    live = {"call_id": "x", "state": "ringing", "caller": "a", "callee": "b"}
    calls_admin.calls.calls.append(live)  # type: ignore[attr-defined]
    code, body = await calls_admin.json("GET", "/calls")
    assert (code, body) == (200, {"calls": [live]})


@pytest_twisted.ensureDeferred
async def test_records_newest_first_with_every_field(calls_admin: Running) -> None:
    code, body = await calls_admin.json("GET", "/cdr")
    assert code == 200
    assert [r["call_id"] for r in body["records"]] == ["c4", "c3", "c2", "c1"]
    answered = body["records"][3]
    assert (
        answered
        == record(
            1, "sip:bob@example.test", "answered", answer=T0 + 62, status=200
        ).to_json()
    )
    assert answered["billsec"] == 8.0


@pytest_twisted.ensureDeferred
async def test_missed_calls_of_one_user(calls_admin: Running) -> None:
    code, body = await calls_admin.json(
        "GET", "/cdr?user=bob&disposition=no_answer,busy,cancelled"
    )
    assert code == 200
    assert [r["call_id"] for r in body["records"]] == ["c2"]


@pytest_twisted.ensureDeferred
async def test_records_by_time_and_limit(calls_admin: Running) -> None:
    since = format_time(T0 + 120)
    until = format_time(T0 + 240)
    code, body = await calls_admin.json("GET", f"/cdr?since={since}&until={until}")
    assert code == 200
    assert [r["call_id"] for r in body["records"]] == ["c3", "c2"]
    code, body = await calls_admin.json("GET", "/cdr?limit=1")
    assert code == 200
    assert [r["call_id"] for r in body["records"]] == ["c4"]


@pytest.mark.parametrize(
    "query",
    ["since=yesterday", "until=12", "disposition=missed", "limit=0", "limit=x"],
)
@pytest_twisted.ensureDeferred
async def test_bad_queries_are_400(calls_admin: Running, query: str) -> None:
    code, body = await calls_admin.json("GET", f"/cdr?{query}")
    assert code == 400, body
    assert body["error"]


@pytest_twisted.ensureDeferred
async def test_csv_parses_with_a_header_row(calls_admin: Running) -> None:
    code, body, headers = await calls_admin.fetch("GET", "/cdr.csv?user=alice")
    assert code == 200
    assert headers.getRawHeaders(b"content-type") == [b"text/csv; charset=utf-8"]
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert tuple(rows[0]) == CSV_FIELDS
    assert [row["call_id"] for row in rows] == ["c4", "c3", "c2", "c1"]
    assert (rows[3]["disposition"], rows[3]["billsec"]) == ("answered", "8.0")
    assert rows[0]["answer"] == ""


async def ctl(running: Running, *argv: str) -> int:
    """sipproxy-ctl against the running API, on a thread: it blocks."""
    url = f"http://127.0.0.1:{running.port.getHost().port}"  # type: ignore[attr-defined]
    status: int = await deferToThread(main, ["--url", url, "--token", TOKEN, *argv])
    return status


@pytest_twisted.ensureDeferred
async def test_ctl_calls_and_cdr(
    calls_admin: Running, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await ctl(calls_admin, "calls") == 0
    assert capsys.readouterr().out == "no calls in progress\n"
    live = {
        "call_id": "x1",
        "state": "answered",
        "caller": "sip:alice@example.test",
        "callee": "sip:bob@example.test",
        "start": "2026-12-04T10:15:30.000Z",
        "answer": "2026-12-04T10:15:33.000Z",
    }
    calls_admin.calls.calls.append(live)  # type: ignore[attr-defined]
    assert await ctl(calls_admin, "calls") == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["STATE", "START", "ANSWER", "CALLER", "CALLEE", "CALL-ID"]
    assert row.split()[0] == "answered"

    assert await ctl(calls_admin, "cdr", "--user", "bob") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert " busy " in lines[1]
    assert " answered " in lines[2]

    assert await ctl(calls_admin, "cdr", "--disposition", "no_answer", "--csv") == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [row["call_id"] for row in rows] == ["c3"]

    assert await ctl(calls_admin, "--json", "cdr", "--limit", "1") == 0
    assert '"call_id": "c4"' in capsys.readouterr().out

    assert await ctl(calls_admin, "cdr", "--since", "yesterday") == 1
    assert "400" in capsys.readouterr().err
