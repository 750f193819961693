"""What only the SQLite store promises: indexed queries, a file shared by processes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from sipproxy.cdr import CallRecordUnavailableError
from sipproxy.cdr.sqlite import SQLiteCallRecordStore, query_statement
from tests.cdr.examples import T0, call, call_ids


def plan(path: Path, sql: str, args: tuple[object, ...]) -> str:
    with sqlite3.connect(path) as db:
        rows = db.execute(f"EXPLAIN QUERY PLAN {sql}", args).fetchall()
    return " / ".join(row[-1] for row in rows)


@pytest_twisted.ensureDeferred
async def test_queries_use_the_indexes(tmp_path: Path) -> None:
    """By user and by time, SQLite walks an index, never the whole table."""
    path = tmp_path / "cdr.sqlite"
    store = SQLiteCallRecordStore(str(path), reactor=reactor)
    await store.open()
    try:
        await store.add(call())
    finally:
        await store.close()
    missed = frozenset({"busy", "no_answer"})
    by_user = plan(path, *query_statement(T0, T0 + 1, "alice", missed, 100))
    assert by_user.startswith(
        "SEARCH cdr_user USING PRIMARY KEY (user=? AND start>? AND start<?)"
    ), by_user
    assert "TEMP B-TREE" not in by_user  # no sort: the key is in ORDER BY order
    by_time = plan(path, *query_statement(T0, None, None, missed, 100))
    assert by_time.startswith("SEARCH cdr USING INDEX cdr_start (start>?)"), by_time
    assert "TEMP B-TREE" not in by_time


@pytest_twisted.ensureDeferred
async def test_two_processes_share_one_file(tmp_path: Path) -> None:
    """Records one process adds are found by another on the same file at once."""
    path = str(tmp_path / "cdr.sqlite")
    one = SQLiteCallRecordStore(path, reactor=reactor)
    two = SQLiteCallRecordStore(path, reactor=reactor)
    await one.open()
    await two.open()
    try:
        await one.add(call("from-one"))
        await two.add(call("from-two", start=T0 + 1))
        assert call_ids(await one.query(limit=10)) == ["from-two", "from-one"]
    finally:
        await one.close()
        await two.close()


@pytest_twisted.ensureDeferred
async def test_a_file_that_is_not_a_database_fails_open(tmp_path: Path) -> None:
    path = tmp_path / "cdr.sqlite"
    path.write_bytes(b"not a database, just some bytes " * 100)
    store = SQLiteCallRecordStore(str(path), reactor=reactor)
    with pytest.raises(CallRecordUnavailableError, match="sqlite:"):
        await store.open()
    with pytest.raises(CallRecordUnavailableError, match="not open"):
        await store.query(limit=10)
