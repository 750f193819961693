"""What only the Redis store promises: one stream holds every process's records."""

from __future__ import annotations

import json
import re

import pytest
import pytest_twisted
import txredisapi
from twisted.internet import defer, reactor

from sipproxy.cdr import CallRecordUnavailableError
from sipproxy.cdr.record import CallRecord
from sipproxy.cdr.redis import RedisCallRecordStore
from tests.cdr.conftest import redis_cdr
from tests.cdr.examples import DAY, T0, call, call_ids
from tests.support import free_port


@pytest_twisted.ensureDeferred
async def test_records_go_to_one_capped_stream(
    redis_server: int, redis_prefix: str
) -> None:
    """Each record is an XADD to P cdr, field json, which any reader can XREAD."""
    store = redis_cdr(redis_server, redis_prefix)
    raw = await txredisapi.Connection("127.0.0.1", redis_server, convertNumbers=False)
    await store.open()
    try:
        record = call()
        await store.add(record)
        await store.keep_live("p1:d1", call("live", end=None))
        entries = await raw.execute_command("XRANGE", f"{redis_prefix}cdr", "-", "+")
        [(_id, fields)] = entries
        assert fields[0] == "json"
        assert CallRecord.from_json(json.loads(fields[1])) == record
        live = await raw.execute_command("HKEYS", f"{redis_prefix}cdr:live")
        assert live == ["p1:d1"]
    finally:
        await store.close()
        await raw.disconnect()


@pytest_twisted.ensureDeferred
async def test_two_processes_see_each_others_records(
    redis_server: int, redis_prefix: str
) -> None:
    """One reader sees the calls every proxy process added."""
    one, two = (
        redis_cdr(redis_server, redis_prefix),
        redis_cdr(redis_server, redis_prefix),
    )
    await one.open()
    await two.open()
    try:
        await one.add(call("via-one"))
        await two.add(call("via-two", start=T0 + 1))
        assert call_ids(await one.query(limit=10)) == ["via-two", "via-one"]
    finally:
        await one.close()
        await two.close()


@pytest_twisted.ensureDeferred
async def test_close_lost_twice_at_once_adds_each_call_once(
    redis_server: int, redis_prefix: str
) -> None:
    """Two starts closing the same owner's calls never add a lost call twice."""
    one, two = (
        redis_cdr(redis_server, redis_prefix),
        redis_cdr(redis_server, redis_prefix),
    )
    await one.open()
    await two.open()
    try:
        for i in range(20):
            await one.keep_live(f"p1:d{i}", call(f"c{i}", start=T0 + i, end=None))
        first, second = await defer.gatherResults(
            [
                defer.Deferred.fromCoroutine(one.close_lost("p1", T0 + 100)),
                defer.Deferred.fromCoroutine(two.close_lost("p1", T0 + 100)),
            ]
        )
        assert len(first) + len(second) == 20
        assert len(await one.query(limit=100)) == 20
    finally:
        await one.close()
        await two.close()


@pytest_twisted.ensureDeferred
async def test_queries_page_through_a_long_stream(
    redis_server: int, redis_prefix: str
) -> None:
    """Past one XREVRANGE page, queries still find the right records in order."""
    store = redis_cdr(redis_server, redis_prefix)
    raw = await txredisapi.Connection("127.0.0.1", redis_server, convertNumbers=False)
    await store.open()
    try:
        lines = [
            json.dumps(
                call(
                    f"c{i}",
                    caller=f"user{i % 7}",
                    start=T0 - DAY + i * 60,
                    disposition="busy" if i % 5 == 0 else "answered",
                ).to_json()
            )
            for i in range(1200)
        ]
        # Sent back to back, replies awaited together: no 1,200 round trips.
        await defer.gatherResults(
            [
                raw.execute_command("XADD", f"{redis_prefix}cdr", "*", "json", line)
                for line in lines
            ]
        )
        newest = await store.query(limit=3)
        assert call_ids(newest) == ["c1199", "c1198", "c1197"]
        found = await store.query(
            user="user3",
            dispositions=frozenset({"busy"}),
            until=T0 - DAY + 100 * 60,
            limit=100,
        )
        expected = [f"c{i}" for i in range(99, -1, -1) if i % 7 == 3 and i % 5 == 0]
        assert call_ids(found) == expected
        assert len(await store.query(limit=2000)) == 1200
    finally:
        await store.close()
        await raw.disconnect()


@pytest_twisted.ensureDeferred
async def test_entries_that_are_not_records_are_skipped(
    redis_server: int, redis_prefix: str
) -> None:
    store = redis_cdr(redis_server, redis_prefix)
    raw = await txredisapi.Connection("127.0.0.1", redis_server, convertNumbers=False)
    await store.open()
    try:
        await store.add(call("good"))
        await raw.execute_command("XADD", f"{redis_prefix}cdr", "*", "other", "x")
        await raw.execute_command("XADD", f"{redis_prefix}cdr", "*", "json", "{")
        assert call_ids(await store.query(limit=10)) == ["good"]
    finally:
        await store.close()
        await raw.disconnect()


@pytest_twisted.ensureDeferred
async def test_a_server_that_is_down_fails_open_clearly() -> None:
    """With nothing listening, open() raises within its timeout, naming the URL."""
    port = free_port()
    store = RedisCallRecordStore(port=port, timeout=0.5, reactor=reactor)
    with pytest.raises(
        CallRecordUnavailableError, match=re.escape(f"redis://127.0.0.1:{port}/0")
    ):
        await store.open()
    with pytest.raises(CallRecordUnavailableError, match="not open"):
        await store.add(call())
