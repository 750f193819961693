"""Fixtures for the CDR store tests: each store opened, on tmp_path or a redis-server.

The redis-server is the location tests' session fixture, reused as is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from sipproxy.cdr import CallRecordStore
from sipproxy.cdr.jsonl import JSONLinesCallRecordStore
from sipproxy.cdr.redis import RedisCallRecordStore
from sipproxy.cdr.sqlite import SQLiteCallRecordStore
from tests.location.conftest import redis_prefix, redis_server

__all__ = ["redis_prefix", "redis_server"]

STORES = ["jsonl", "sqlite", "redis"]
"""Every store that keeps records; ``none`` has tests of its own."""

StoreFactory = Callable[[], CallRecordStore]


def redis_cdr(port: int, prefix: str) -> RedisCallRecordStore:
    """A store on the test server under ``prefix``, not yet opened."""
    return RedisCallRecordStore(port=port, prefix=prefix, reactor=reactor)


@pytest.fixture(params=STORES)
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Makes unopened stores of one kind, all on the same file or keys."""
    kind: str = request.param
    if kind == "jsonl":
        path = str(tmp_path / "cdr.jsonl")
        return lambda: JSONLinesCallRecordStore(path, reactor=reactor)
    if kind == "sqlite":
        path = str(tmp_path / "cdr.sqlite")
        return lambda: SQLiteCallRecordStore(path, reactor=reactor)
    port: int = request.getfixturevalue("redis_server")
    prefix: str = request.getfixturevalue("redis_prefix")
    return lambda: redis_cdr(port, prefix)


@pytest_twisted.async_yield_fixture
async def cdr(make_store: StoreFactory) -> AsyncIterator[CallRecordStore]:
    """An opened store of each kind, closed after the test."""
    store = make_store()
    await store.open()
    try:
        yield store
    finally:
        await store.close()
