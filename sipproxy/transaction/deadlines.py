"""Many transaction timers on one reactor call, each at its own exact deadline.

Theory of operation. An INVITE through the proxy arms about ten timers (the
100 Trying delay, Timers A, B, L, M, and E and F of its BYE) and nearly all of
them are cancelled long before they are due. Each would be a reactor
:class:`IDelayedCall`: an object of a dozen attributes, and in the reactor a heap
entry to insert and, once cancelled, to sweep out. A :class:`TimerQueue` keeps
them instead as small entries on a heap of its own, ordered by deadline (then by
the order they were armed), with one :class:`IDelayedCall` armed for the
earliest. When it fires, every entry due runs, in that order, and the call is
armed for the next.

Unlike :class:`~sipproxy.transaction.expiry.Expiry`, nothing is rounded: an
entry runs when the clock reaches its deadline, as its own call would (RFC 3261
wants Timers A and E to retransmit on time, and B, F and H to end transactions
on time). Cancelling marks an entry dead; dead entries leave the heap when they
come to the top, or in one rebuild once they are most of it. With no live entry
left the reactor call is cancelled too, so an idle queue leaves nothing armed.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["Entry", "TimerQueue"]

#: One armed timer: [deadline, sequence, what to run or None once dead].
Entry = list[Any]
#: Dead entries tolerated on the heap before a rebuild (and more than half).
_REBUILD_AT = 64


class TimerQueue:
    """Timers that each run at their deadline, on one reactor call."""

    def __init__(self, clock: IReactorTime) -> None:
        """Start empty; nothing is armed on ``clock`` until :meth:`call_later`."""
        self._clock = clock
        self._heap: list[Entry] = []
        self._live = 0
        self._sequence = 0
        self._call: IDelayedCall | None = None
        self._call_at = math.inf
        self._running = False

    def __len__(self) -> int:
        """Live (armed, not yet run or cancelled) timers."""
        return self._live

    def call_later(self, delay: float, fire: Callable[[], None]) -> Entry:
        """Run ``fire`` ``delay`` seconds from now; the entry cancels it."""
        at = self._clock.seconds() + delay
        self._sequence += 1
        entry = [at, self._sequence, fire]
        heapq.heappush(self._heap, entry)
        self._live += 1
        if at < self._call_at and not self._running:
            if self._call is not None:
                self._call.cancel()
            self._arm(at, delay)
        return entry

    def cancel(self, entry: Entry) -> None:
        """Stop ``entry`` from running; nothing if it ran or was cancelled."""
        if entry[2] is None:
            return
        entry[2] = None
        self._live -= 1
        heap = self._heap
        if not self._live:
            heap.clear()
            if self._call is not None:
                self._call.cancel()
                self._call = None
                self._call_at = math.inf
        elif len(heap) - self._live > max(_REBUILD_AT, self._live):
            heap[:] = [e for e in heap if e[2] is not None]
            heapq.heapify(heap)

    def _arm(self, at: float, delay: float) -> None:
        self._call_at = at
        self._call = self._clock.callLater(max(0.0, delay), self._run)

    def _run(self) -> None:
        """Run every entry due, in deadline order; arm for the next one."""
        # The clock fires no earlier than asked; a float sum may read just below.
        due = max(self._clock.seconds(), self._call_at)
        self._call = None
        self._call_at = math.inf
        heap = self._heap
        self._running = True
        try:
            while heap and heap[0][0] <= due:
                entry = heapq.heappop(heap)
                fire = entry[2]
                if fire is None:
                    continue
                entry[2] = None
                self._live -= 1
                fire()
        finally:
            self._running = False
            while heap and heap[0][2] is None:
                heapq.heappop(heap)
            if heap:
                at = heap[0][0]
                self._arm(at, at - self._clock.seconds())
