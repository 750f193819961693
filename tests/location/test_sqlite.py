"""What only the SQLite store promises: the file outlives the process."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from sipproxy.location import LocationUnavailableError
from sipproxy.location.sqlite import SCHEMA_VERSION, SQLiteLocationService
from tests.location.examples import ALICE, binding

ROOT = Path(__file__).resolve().parents[2]


@pytest_twisted.ensureDeferred
async def test_bindings_survive_close_and_reopen(tmp_path: Path) -> None:
    """A restarted server finds the registrations it had."""
    path = str(tmp_path / "location.db")
    store = SQLiteLocationService(path, reactor=reactor)
    await store.open()
    saved = [binding("sip:a@192.0.2.1"), binding("sip:a@192.0.2.2", q=0.5)]
    await store.update(ALICE, save=saved, now=100)
    await store.close()

    again = SQLiteLocationService(path, reactor=reactor)
    await again.open()
    try:
        assert await again.bindings(ALICE, now=100) == saved
    finally:
        await again.close()


def test_a_binding_survives_the_process_being_killed(tmp_path: Path) -> None:
    """Once update() returns, kill -9 cannot lose the binding (RFC 3261 §10.3)."""
    path = str(tmp_path / "location.db")
    script = textwrap.dedent(
        """
        import os, signal, sys
        from twisted.internet import defer, reactor
        from sipproxy.location.sqlite import SQLiteLocationService
        from tests.location.examples import ALICE, binding

        async def main():
            store = SQLiteLocationService(sys.argv[1], reactor=reactor)
            await store.open()
            await store.update(ALICE, save=[binding("sip:a@192.0.2.1")], now=100)
            os.kill(os.getpid(), signal.SIGKILL)

        defer.Deferred.fromCoroutine(main()).addErrback(print)
        reactor.run()
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, path], cwd=ROOT, timeout=60, check=False
    )
    assert done.returncode == -signal.SIGKILL

    # Read it with plain sqlite3: nothing of the store's own process is left.
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT aor, contact FROM binding").fetchall()
    assert rows == [(ALICE, "sip:a@192.0.2.1")]


@pytest_twisted.ensureDeferred
async def test_a_new_file_records_its_schema_version(tmp_path: Path) -> None:
    """A fresh file says which schema it holds, for later migrations."""
    path = str(tmp_path / "location.db")
    store = SQLiteLocationService(path, reactor=reactor)
    await store.open()
    await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [
            (SCHEMA_VERSION,)
        ]
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


@pytest_twisted.ensureDeferred
async def test_a_file_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    """An older sipproxy does not write into a schema it does not know."""
    path = str(tmp_path / "location.db")
    store = SQLiteLocationService(path, reactor=reactor)
    await store.open()
    await store.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(LocationUnavailableError, match="newer"):
        await SQLiteLocationService(path, reactor=reactor).open()


@pytest_twisted.ensureDeferred
async def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    """Opening garbage fails at start with the path in the message."""
    path = tmp_path / "location.db"
    path.write_bytes(b"this is not an SQLite database, not at all" * 100)
    with pytest.raises(LocationUnavailableError, match=r"location\.db"):
        await SQLiteLocationService(str(path), reactor=reactor).open()


@pytest_twisted.ensureDeferred
async def test_a_missing_directory_is_refused(tmp_path: Path) -> None:
    """A path in a directory that does not exist fails at start."""
    path = str(tmp_path / "missing" / "location.db")
    with pytest.raises(LocationUnavailableError, match="missing"):
        await SQLiteLocationService(path, reactor=reactor).open()


@pytest_twisted.ensureDeferred
async def test_calls_after_close_fail_clearly(tmp_path: Path) -> None:
    """A closed store says so instead of hanging."""
    store = SQLiteLocationService(str(tmp_path / "location.db"), reactor=reactor)
    await store.open()
    await store.close()
    await store.close()
    with pytest.raises(LocationUnavailableError, match="not open"):
        await store.bindings(ALICE, now=100)
