"""Many timers of one length on one reactor call: Timers J and K (RFC 3261 §17).

Theory of operation. Some timers only bound how long the layer remembers an
answered transaction: Timer J (64*T1 over UDP) keeps a non-INVITE server
transaction's final response for retransmitted requests (§17.2.2), Timer K (T4)
absorbs retransmitted responses to a non-INVITE client transaction (§17.1.2.2).
Each is the same length for every transaction of a layer, so the order in
which entries start waiting is the order in which they expire: an
:class:`Expiry` is a FIFO queue with one :class:`IDelayedCall`, armed while the
queue is not empty, for its oldest entry. When it fires, every entry due is
forgotten (the owner's ``forget`` is told) and the call is armed again for the
next.

Entries added within one ``resolution`` share one expiry, rounded up to a
multiple of it, so there is at most one sweep per resolution however many
entries there are; an entry lasts up to ``resolution`` longer than the timer,
never less. With a ``limit``, adding beyond it forgets the oldest entry first.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["Expiry"]

T = TypeVar("T")


class Expiry(Generic[T]):
    """Entries that each expire ``delay`` seconds after they were added."""

    def __init__(
        self,
        clock: IReactorTime,
        delay: float,
        forget: Callable[[T], None],
        *,
        resolution: float = 1.0,
        limit: int | None = None,
    ) -> None:
        """Start empty; nothing is armed until the first :meth:`add`.

        :param forget: told each entry as it expires or is pushed out by
            ``limit``; the owner removes it from its tables.
        :param resolution: seconds; 0 gives each entry its own expiry.
        :param limit: entries kept at most (at least 1), or None.
        """
        self._clock = clock
        self._delay = delay
        self._forget = forget
        self._resolution = resolution
        self._limit = None if limit is None else max(1, limit)
        self._entries: deque[T] = deque()
        self._expires: deque[float] = deque()
        self._bucket_at = -math.inf
        self._call: IDelayedCall | None = None
        self._call_at = 0.0

    def __len__(self) -> int:
        """How many entries wait, in O(1)."""
        return len(self._entries)

    def add(self, entry: T) -> None:
        """Forget ``entry`` after ``delay`` (or sooner, when over ``limit``)."""
        expires_at = self._clock.seconds() + self._delay
        if expires_at > self._bucket_at:
            # A new bucket; every entry until its end shares its expiry.
            resolution = self._resolution
            self._bucket_at = (
                math.ceil(expires_at / resolution) * resolution
                if resolution > 0
                else expires_at
            )
        entries = self._entries
        entries.append(entry)
        self._expires.append(self._bucket_at)
        if self._limit is not None and len(entries) > self._limit:
            self._expires.popleft()
            self._forget(entries.popleft())
        if self._call is None:
            self._arm(self._expires[0])

    def _arm(self, at: float) -> None:
        self._call_at = at
        delay = max(0.0, at - self._clock.seconds())
        self._call = self._clock.callLater(delay, self._sweep)

    def _sweep(self) -> None:
        """Forget every entry due; wait for the next oldest."""
        self._call = None
        # The clock fires no earlier than asked; a float sum may read just below.
        due = max(self._clock.seconds(), self._call_at)
        entries, expires, forget = self._entries, self._expires, self._forget
        while expires and expires[0] <= due:
            expires.popleft()
            forget(entries.popleft())
        if expires:
            self._arm(expires[0])
