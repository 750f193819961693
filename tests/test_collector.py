"""Collection without long pauses: survivors frozen, a full collection now and then."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from twisted.internet.testing import MemoryReactorClock

from sipproxy.collector import FULL_EVERY, YOUNG_THRESHOLD, Collector


class _Cycle:
    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def collector() -> Iterator[Collector]:
    clock = MemoryReactorClock()
    before = gc.get_threshold()
    c = Collector(clock)
    c.start()
    yield c
    c.stop()
    assert gc.get_threshold() == before
    assert c._collected not in gc.callbacks


def test_what_survives_a_young_collection_is_frozen(collector: Collector) -> None:
    """An older collection then has nothing left to walk."""
    assert gc.get_threshold()[0] == YOUNG_THRESHOLD
    alive = [_Cycle() for _ in range(100)]
    frozen = gc.get_freeze_count()
    gc.collect(0)
    assert gc.get_freeze_count() >= frozen + len(alive)
    assert gc.get_count()[1] == 0


def test_young_garbage_is_collected_before_anything_is_frozen(
    collector: Collector,
) -> None:
    """Cycles that are already garbage at a young collection are never frozen."""
    gc.collect(0)
    for _ in range(100):
        _Cycle()
    assert gc.collect(0) >= 100


def test_the_full_collection_finds_cycles_that_died_frozen() -> None:
    """A cycle frozen while alive and dropped later goes at the next full run."""
    clock = MemoryReactorClock()
    c = Collector(clock)
    c.start()
    try:
        kept = [_Cycle() for _ in range(50)]
        gc.collect(0)
        del kept
        assert gc.collect() < 50  # frozen: a plain full collection misses them
        clock.advance(FULL_EVERY)
        assert c.full_collections == 1
        assert c.found_in_full >= 50
    finally:
        c.stop()
