"""Subscriptions we serve as notifier (issue 16: busy lamps) in every store."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest_twisted
from twisted.internet import reactor

from sipproxy.location import LocationStore
from sipproxy.location.sqlite import SQLiteLocationService
from tests.location.conftest import redis_store

RECORD = {"key": "k1", "monitored": "bob", "version": 3, "expires_at": 200.0}


@pytest_twisted.ensureDeferred
async def test_nothing_stored_reads_as_empty(location: LocationStore) -> None:
    assert await location.subscriptions(now=0) == []


@pytest_twisted.ensureDeferred
async def test_records_round_trip_and_replace(location: LocationStore) -> None:
    """A record comes back whole; saving the same key again replaces it."""
    await location.save_subscription("k1", RECORD, expires_at=200)
    assert await location.subscriptions(now=100) == [RECORD]
    newer = {**RECORD, "version": 4}
    await location.save_subscription("k1", newer, expires_at=200)
    assert await location.subscriptions(now=100) == [newer]


@pytest_twisted.ensureDeferred
async def test_expired_records_are_gone(location: LocationStore) -> None:
    """A record whose expires_at is not after now is never read."""
    await location.save_subscription("k1", RECORD, expires_at=200)
    await location.save_subscription("k2", {**RECORD, "key": "k2"}, expires_at=300)
    assert [r["key"] for r in await location.subscriptions(now=200)] == ["k2"]
    assert await location.subscriptions(now=300) == []


@pytest_twisted.ensureDeferred
async def test_removing_forgets_one(location: LocationStore) -> None:
    await location.save_subscription("k1", RECORD, expires_at=200)
    await location.save_subscription("k2", {**RECORD, "key": "k2"}, expires_at=200)
    await location.remove_subscription("k1")
    await location.remove_subscription("nothing")
    assert [r["key"] for r in await location.subscriptions(now=100)] == ["k2"]


@pytest_twisted.ensureDeferred
async def test_subscriptions_and_preferences_do_not_touch(
    location: LocationStore,
) -> None:
    await location.save_subscription("bob", RECORD, expires_at=200)
    assert await location.preferences("bob") == {}
    await location.set_preferences("bob", {"dnd": True})
    assert await location.subscriptions(now=100) == [RECORD]


@pytest_twisted.ensureDeferred
async def test_sqlite_keeps_subscriptions_across_a_restart(tmp_path: Path) -> None:
    """A restart keeps the busy lamps (the file is written through)."""
    path = str(tmp_path / "location.db")
    store = SQLiteLocationService(path, reactor=reactor)
    await store.open()
    await store.save_subscription("k1", RECORD, expires_at=200)
    await store.close()
    again = SQLiteLocationService(path, reactor=reactor)
    await again.open()
    try:
        assert await again.subscriptions(now=100) == [RECORD]
    finally:
        await again.close()


@pytest_twisted.ensureDeferred
async def test_sqlite_version_2_file_is_migrated(tmp_path: Path) -> None:
    """A file from before subscriptions gains the table and keeps the rest."""
    path = str(tmp_path / "location.db")
    store = SQLiteLocationService(path, reactor=reactor)
    await store.open()
    await store.set_preferences("alice", {"dnd": True})
    await store.close()
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE subscription")
        db.execute("UPDATE schema_version SET version = 2")
    old = SQLiteLocationService(path, reactor=reactor)
    await old.open()
    try:
        assert await old.preferences("alice") == {"dnd": True}
        await old.save_subscription("k1", RECORD, expires_at=200)
        assert await old.subscriptions(now=100) == [RECORD]
    finally:
        await old.close()


@pytest_twisted.ensureDeferred
async def test_redis_subscriptions_are_shared_by_processes(
    redis_server: int, redis_prefix: str
) -> None:
    """Two stores on one Redis (two proxy processes) see the same subscriptions."""
    one, two = (
        redis_store(redis_server, redis_prefix),
        redis_store(redis_server, redis_prefix),
    )
    await one.open()
    await two.open()
    try:
        await one.save_subscription("k1", RECORD, expires_at=200)
        assert await two.subscriptions(now=100) == [RECORD]
        await two.remove_subscription("k1")
        assert await one.subscriptions(now=100) == []
    finally:
        await one.close()
        await two.close()
