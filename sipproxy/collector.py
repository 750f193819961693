"""Garbage collection without long pauses (docs/performance.md, issue 18).

A busy server's objects live for seconds to hours: bindings, transactions
kept for Timer J, call contexts, timers. CPython's young collections find
nearly all of them alive and pass them on to the older generations, whose
collections then walk them all: at 160 calls/s a generation-1 collection
walked about a million objects and stopped the server for 565 ms every 28 s,
long enough for every phone's Timer A to fire (measured with a
``gc.callbacks`` probe, SIPp saw the retransmissions).

Our requests leave no cyclic garbage on their way through (bench/hotpath.py,
tests/test_collector.py), so what survives a young collection is, nearly
always, alive. :class:`Collector` moves it out of the collector's sight at
once (``gc.freeze``) after each young collection: no older collection ever
has much to walk, and each young one walks only what was made since the last
(a threshold of 10,000 keeps that to a few milliseconds). Freed objects are
still freed at once by reference counting, frozen or not; what freezing
gives up is finding cycles that become garbage after they were frozen. For
those, a full collection over everything runs every ``full_every`` seconds
(10 minutes): one pause of that size then, instead of one every half a minute.
"""

from __future__ import annotations

import gc
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

__all__ = ["FULL_EVERY", "YOUNG_THRESHOLD", "Collector"]

#: Allocations between young collections.
YOUNG_THRESHOLD = 10_000
#: Seconds between the full collections that find cycles frozen while alive.
FULL_EVERY = 600.0


class Collector:
    """Young collections, then freeze what survived; a full one now and then."""

    def __init__(self, clock: IReactorTime, full_every: float = FULL_EVERY) -> None:
        self._clock = clock
        self._full_every = full_every
        self._loop: LoopingCall | None = None
        self._saved: tuple[int, int, int] | None = None
        #: Full collections run, and the unreachable objects they found.
        self.full_collections = 0
        self.found_in_full = 0

    def start(self) -> None:
        """Freeze everything built so far and take over the thresholds."""
        self._saved = gc.get_threshold()
        gc.freeze()
        gc.set_threshold(YOUNG_THRESHOLD, 20, 20)
        gc.callbacks.append(self._collected)
        loop = LoopingCall(self.full)
        loop.clock = self._clock
        loop.start(self._full_every, now=False)
        self._loop = loop

    def stop(self) -> None:
        """Leave the collector as it was found (tests start many servers)."""
        if self._collected in gc.callbacks:
            gc.callbacks.remove(self._collected)
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._saved is not None:
            gc.set_threshold(*self._saved)
            self._saved = None

    def full(self) -> None:
        """Collect everything, frozen or not, then freeze the survivors again."""
        gc.unfreeze()
        self.found_in_full += gc.collect()
        self.full_collections += 1
        gc.freeze()

    def _collected(self, phase: str, info: dict[str, Any]) -> None:
        # After the collection: what is left of the young was found reachable.
        if phase == "stop" and info["generation"] == 0:
            gc.freeze()
