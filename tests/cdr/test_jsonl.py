"""What only the JSON lines store promises: a file a log shipper can read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from sipproxy.cdr import CallRecordUnavailableError
from sipproxy.cdr.jsonl import JSONLinesCallRecordStore
from sipproxy.cdr.record import CallRecord
from tests.cdr.examples import T0, call, call_ids


def store_at(path: Path) -> JSONLinesCallRecordStore:
    return JSONLinesCallRecordStore(str(path), reactor=reactor)


@pytest_twisted.ensureDeferred
async def test_each_record_is_one_json_line(tmp_path: Path) -> None:
    """Added records are on disk, one to_json() object a line, when add returns."""
    path = tmp_path / "cdr.jsonl"
    store = store_at(path)
    await store.open()
    try:
        records = [call("c1"), call("c2", start=T0 + 1)]
        for record in records:
            await store.add(record)
        lines = path.read_text().splitlines()
        assert [json.loads(line) for line in lines] == [r.to_json() for r in records]
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_live_calls_are_a_json_object_beside(tmp_path: Path) -> None:
    """PATH.live.json maps each live key to its record, and empties as calls end."""
    store = store_at(tmp_path / "cdr.jsonl")
    await store.open()
    try:
        live = call("c1", end=None)
        await store.keep_live("p1:d1", live)
        data = json.loads((tmp_path / "cdr.jsonl.live.json").read_text())
        assert {k: CallRecord.from_json(v) for k, v in data.items()} == {"p1:d1": live}
        await store.drop_live("p1:d1")
        assert json.loads((tmp_path / "cdr.jsonl.live.json").read_text()) == {}
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            "cdr.jsonl",
            "cdr.jsonl.live.json",
        ]
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_a_line_cut_by_a_crash_costs_only_itself(tmp_path: Path) -> None:
    """A half-written last line is ended at open and skipped by queries."""
    path = tmp_path / "cdr.jsonl"
    whole = json.dumps(call("whole").to_json())
    path.write_text(f"{whole}\n{whole[:40]}")
    store = store_at(path)
    await store.open()
    try:
        await store.add(call("after", start=T0 + 1))
        assert call_ids(await store.query(limit=10)) == ["after", "whole"]
    finally:
        await store.close()
    assert len(path.read_text().splitlines()) == 3


@pytest_twisted.ensureDeferred
async def test_a_broken_live_file_fails_open(tmp_path: Path) -> None:
    (tmp_path / "cdr.jsonl.live.json").write_text("[1, 2]")
    store = store_at(tmp_path / "cdr.jsonl")
    with pytest.raises(CallRecordUnavailableError, match="not a JSON object"):
        await store.open()


@pytest_twisted.ensureDeferred
async def test_an_unwritable_path_fails_open(tmp_path: Path) -> None:
    store = store_at(tmp_path / "missing" / "cdr.jsonl")
    with pytest.raises(CallRecordUnavailableError, match="jsonl:"):
        await store.open()
    with pytest.raises(CallRecordUnavailableError, match="not open"):
        await store.add(call())
