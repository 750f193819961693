"""The memory store's expiry heap, driven by explicit times."""

from __future__ import annotations

import pytest_twisted

from sipproxy.location.memory import MemoryLocationService
from tests.location.examples import ALICE, BOB, binding


@pytest_twisted.ensureDeferred
async def test_purge_takes_only_what_is_due() -> None:
    """purge() deletes bindings in expiry order, none before their time."""
    store = MemoryLocationService()
    await store.update(ALICE, save=[binding("sip:a@1", expires_at=200)], now=100)
    await store.update(BOB, save=[binding("sip:b@1", aor=BOB, expires_at=300)], now=100)
    assert await store.purge(now=199.999) == 0
    assert await store.purge(now=200) == 1
    assert await store.aors(now=0) == [BOB]
    assert await store.purge(now=1000) == 1
    assert await store.aors(now=0) == []


@pytest_twisted.ensureDeferred
async def test_a_refreshed_binding_is_not_purged_at_its_old_expiry() -> None:
    """The heap entry of a replaced binding is stale and skipped (RFC 3261 §10.3)."""
    store = MemoryLocationService()
    await store.update(ALICE, save=[binding("sip:a@1", expires_at=200)], now=100)
    refreshed = binding("sip:a@1", registered_at=150, expires_at=400)
    await store.update(ALICE, save=[refreshed], now=150)
    assert await store.purge(now=300) == 0
    assert await store.bindings(ALICE, now=300) == [refreshed]
    assert await store.purge(now=400) == 1


@pytest_twisted.ensureDeferred
async def test_a_removed_binding_leaves_nothing_to_purge() -> None:
    """Removing by key or by AOR makes the heap entries stale."""
    store = MemoryLocationService()
    await store.update(ALICE, save=[binding("sip:a@1", expires_at=200)], now=100)
    await store.update(BOB, save=[binding("sip:b@1", aor=BOB, expires_at=200)], now=100)
    await store.update(ALICE, remove=["sip:a@1"], now=110)
    assert await store.remove_aor(BOB, now=110) == 1
    assert await store.purge(now=300) == 0


@pytest_twisted.ensureDeferred
async def test_refreshing_forever_keeps_the_heap_small() -> None:
    """Stale entries are compacted away, so refreshes do not grow memory."""
    store = MemoryLocationService()
    for second in range(10_000):
        fresh = binding("sip:a@1", registered_at=second, expires_at=second + 3600)
        await store.update(ALICE, save=[fresh], now=second)
    assert len(store._expiry) <= 2048
    assert [b.registered_at for b in await store.bindings(ALICE, now=9999)] == [9999]
