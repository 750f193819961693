"""What only the Redis store promises: processes sharing one server agree."""

from __future__ import annotations

import re

import pytest
import pytest_twisted
import txredisapi
from twisted.internet import reactor, task

from sipproxy.location import LocationUnavailableError
from sipproxy.location.redis import RedisLocationService
from tests.location.conftest import redis_store
from tests.location.examples import ALICE, BOB, binding
from tests.support import free_port


@pytest_twisted.ensureDeferred
async def test_two_processes_see_each_others_updates(
    redis_server: int, redis_prefix: str
) -> None:
    """A registration through one proxy process is found at once by another."""
    one, two = (
        redis_store(redis_server, redis_prefix),
        redis_store(redis_server, redis_prefix),
    )
    await one.open()
    await two.open()
    try:
        first = binding("sip:a@192.0.2.1")
        await one.update(ALICE, save=[first], now=100)
        assert await two.bindings(ALICE, now=100) == [first]
        second = binding("sip:a@192.0.2.2", registered_at=110)
        assert await two.update(ALICE, save=[second], now=110) == [second, first]
        assert await one.bindings(ALICE, now=110) == [second, first]
        assert await one.remove_aor(ALICE, now=120) == 2
        assert await two.aors(now=120) == []
    finally:
        await one.close()
        await two.close()


@pytest_twisted.ensureDeferred
async def test_prefixes_keep_deployments_apart(
    redis_server: int, redis_prefix: str
) -> None:
    """Stores with different prefixes on one server share nothing."""
    one = redis_store(redis_server, redis_prefix)
    other = redis_store(redis_server, redis_prefix + "other:")
    await one.open()
    await other.open()
    try:
        await one.update(ALICE, save=[binding("sip:a@192.0.2.1")], now=100)
        assert await other.bindings(ALICE, now=100) == []
        assert await other.aors(now=100) == []
    finally:
        await one.close()
        await other.close()


@pytest_twisted.ensureDeferred
async def test_ttl_comes_from_the_callers_clock(
    redis_server: int, redis_prefix: str
) -> None:
    """The AOR's key lives expires_at - now, whatever the server's clock says."""
    store = redis_store(redis_server, redis_prefix)
    raw = await txredisapi.Connection("127.0.0.1", redis_server, convertNumbers=False)
    await store.open()
    try:
        save = [
            binding("sip:a@192.0.2.1", expires_at=1_000_000_060),
            binding("sip:a@192.0.2.2", expires_at=1_000_003_600),
        ]
        await store.update(ALICE, save=save, now=1_000_000_000)
        ttl = int(await raw.execute_command("PTTL", f"{redis_prefix}aor:{ALICE}"))
        assert 3_590_000 < ttl <= 3_600_000

        # Redis drops the key itself when the last binding lapses.
        short = binding("sip:b@192.0.2.1", aor=BOB, expires_at=100.2)
        await store.update(BOB, save=[short], now=100)
        await task.deferLater(reactor, 0.4, lambda: None)
        assert int(await raw.exists(f"{redis_prefix}aor:{BOB}")) == 0
        assert await store.purge(now=200) == 0
        assert await raw.zrange(f"{redis_prefix}due", 0, -1) == [ALICE]
    finally:
        await store.close()
        await raw.disconnect()


@pytest_twisted.ensureDeferred
async def test_a_server_that_is_down_fails_open_clearly() -> None:
    """With nothing listening, open() raises within its timeout, naming the URL."""
    port = free_port()
    store = RedisLocationService(port=port, timeout=0.5, reactor=reactor)
    with pytest.raises(
        LocationUnavailableError, match=re.escape(f"redis://127.0.0.1:{port}/0")
    ):
        await store.open()


@pytest_twisted.ensureDeferred
async def test_calls_after_close_fail_clearly(
    redis_server: int, redis_prefix: str
) -> None:
    """A closed store says so instead of hanging."""
    store = redis_store(redis_server, redis_prefix)
    await store.open()
    await store.close()
    with pytest.raises(LocationUnavailableError, match="not open"):
        await store.bindings(ALICE, now=100)
