"""Per-user preferences (issue 9: forwarding, do-not-disturb) in every store."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest_twisted
from twisted.internet import reactor

from sipproxy.location import LocationStore
from sipproxy.location.sqlite import SQLiteLocationService
from tests.location.conftest import redis_store
from tests.location.examples import ALICE, binding

PREFS = {"busy": "sip:vm@127.0.0.1:5070", "no_answer_seconds": 12.5, "dnd": True}


@pytest_twisted.ensureDeferred
async def test_nothing_stored_reads_as_empty(location: LocationStore) -> None:
    """A user nobody set anything for has no preferences."""
    assert await location.preferences("alice") == {}


@pytest_twisted.ensureDeferred
async def test_preferences_round_trip_with_their_types(
    location: LocationStore,
) -> None:
    """Strings, numbers and booleans come back as they were stored."""
    await location.set_preferences("alice", PREFS)
    assert await location.preferences("alice") == PREFS
    assert await location.preferences("bob") == {}


@pytest_twisted.ensureDeferred
async def test_setting_replaces_and_empty_deletes(location: LocationStore) -> None:
    """set_preferences replaces the whole entry; {} removes it."""
    await location.set_preferences("alice", PREFS)
    await location.set_preferences("alice", {"dnd": False})
    assert await location.preferences("alice") == {"dnd": False}
    await location.set_preferences("alice", {})
    assert await location.preferences("alice") == {}


@pytest_twisted.ensureDeferred
async def test_a_returned_copy_does_not_change_the_store(
    location: LocationStore,
) -> None:
    """Changing what was read changes nothing stored."""
    await location.set_preferences("alice", {"dnd": True})
    found = await location.preferences("alice")
    found["dnd"] = False
    assert await location.preferences("alice") == {"dnd": True}


@pytest_twisted.ensureDeferred
async def test_preferences_and_bindings_do_not_touch(
    location: LocationStore,
) -> None:
    """Removing a user's bindings keeps their preferences, and the reverse."""
    await location.update(ALICE, save=[binding("sip:a@192.0.2.1")], now=100)
    await location.set_preferences("alice", PREFS)
    await location.remove_aor(ALICE, now=100)
    assert await location.preferences("alice") == PREFS
    await location.update(ALICE, save=[binding("sip:a@192.0.2.1")], now=100)
    await location.set_preferences("alice", {})
    assert len(await location.bindings(ALICE, now=100)) == 1
    assert await location.aors(now=100) == [ALICE]


@pytest_twisted.ensureDeferred
async def test_sqlite_keeps_preferences_across_a_restart(tmp_path: Path) -> None:
    """What was set is there after the file is opened again (a restart)."""
    path = str(tmp_path / "location.db")
    store = SQLiteLocationService(path, reactor=reactor)
    await store.open()
    await store.set_preferences("alice", PREFS)
    await store.close()
    again = SQLiteLocationService(path, reactor=reactor)
    await again.open()
    try:
        assert await again.preferences("alice") == PREFS
    finally:
        await again.close()


@pytest_twisted.ensureDeferred
async def test_sqlite_version_1_file_is_migrated(tmp_path: Path) -> None:
    """A file from before preferences keeps its bindings and gains the table."""
    path = str(tmp_path / "location.db")
    store = SQLiteLocationService(path, reactor=reactor)
    await store.open()
    await store.update(ALICE, save=[binding("sip:a@192.0.2.1")], now=100)
    await store.close()
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE preference")
        db.execute("DROP TABLE subscription")
        db.execute("UPDATE schema_version SET version = 1")
    old = SQLiteLocationService(path, reactor=reactor)
    await old.open()
    try:
        assert len(await old.bindings(ALICE, now=100)) == 1
        await old.set_preferences("alice", {"dnd": True})
        assert await old.preferences("alice") == {"dnd": True}
    finally:
        await old.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(3,)]


@pytest_twisted.ensureDeferred
async def test_redis_preferences_are_shared_by_processes(
    redis_server: int, redis_prefix: str
) -> None:
    """Two stores on one Redis (two proxy processes) see one user's settings."""
    one, two = (
        redis_store(redis_server, redis_prefix),
        redis_store(redis_server, redis_prefix),
    )
    await one.open()
    await two.open()
    try:
        await one.set_preferences("alice", PREFS)
        assert await two.preferences("alice") == PREFS
        await two.set_preferences("alice", {})
        assert await one.preferences("alice") == {}
    finally:
        await one.close()
        await two.close()
