"""Bindings in dicts, for one process: tests, and servers that can lose them.

Theory of operation: ``_table`` maps an address-of-record to its bindings by
:attr:`~sipproxy.location.Binding.key`. Each save also pushes
``(expires_at, aor, key)`` onto a min-heap, so :meth:`MemoryLocationService.purge`
pops only what has expired instead of sweeping every binding. Heap entries are
never updated in place: an entry whose binding has since been replaced or
removed is stale, recognised by its ``expires_at`` no longer matching, and
dropped when it reaches the top. Reads filter by ``now`` themselves, so purging
is housekeeping, never correctness.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from typing import Any

from sipproxy.location import Binding, sort_bindings

__all__ = ["MemoryLocationService"]

_MIN_COMPACT = 1024


class MemoryLocationService:
    """A :class:`~sipproxy.location.LocationStore` held in memory.

    Nothing here waits, so each coroutine runs to completion in one step, which
    makes every ``update`` atomic in a single-threaded reactor.
    """

    def __init__(self) -> None:
        self._table: dict[str, dict[str, Binding]] = {}
        self._expiry: list[tuple[float, str, str]] = []
        self._compact_at = _MIN_COMPACT
        self._preferences: dict[str, dict[str, Any]] = {}
        self._subscriptions: dict[str, tuple[float, dict[str, Any]]] = {}

    async def open(self) -> None:
        """Nothing to connect to."""

    async def bindings(self, aor: str, *, now: float) -> list[Binding]:
        """Unexpired bindings of ``aor``, newest first."""
        return self._live(aor, now)

    async def update(
        self,
        aor: str,
        *,
        save: Sequence[Binding] = (),
        remove: Sequence[str] = (),
        now: float,
    ) -> list[Binding]:
        """Remove by key, then add or replace; return the bindings after."""
        table = self._table.setdefault(aor, {})
        for key in remove:
            table.pop(key, None)
        for binding in save:
            if binding.is_expired(now):
                # An expiry already past means "gone", as with Expires: 0.
                table.pop(binding.key, None)
                continue
            table[binding.key] = binding
            heapq.heappush(self._expiry, (binding.expires_at, aor, binding.key))
        if not table:
            del self._table[aor]
        if len(self._expiry) > self._compact_at:
            self._compact()
        return self._live(aor, now)

    async def remove_aor(self, aor: str, *, now: float) -> int:
        """Drop every binding of ``aor``; count the unexpired ones."""
        table = self._table.pop(aor, {})
        return sum(not b.is_expired(now) for b in table.values())

    async def aors(self, *, now: float) -> list[str]:
        """Addresses-of-record with an unexpired binding, sorted."""
        return sorted(
            aor
            for aor, table in self._table.items()
            if any(not b.is_expired(now) for b in table.values())
        )

    async def purge(self, *, now: float, limit: int = 1000) -> int:
        """Pop expired entries off the heap and delete their bindings."""
        removed = 0
        heap = self._expiry
        while heap and removed < limit and heap[0][0] <= now:
            expires_at, aor, key = heapq.heappop(heap)
            table = self._table.get(aor)
            if table is None:
                continue
            binding = table.get(key)
            if binding is None or binding.expires_at != expires_at:
                continue  # stale: replaced or removed since it was pushed
            del table[key]
            removed += 1
            if not table:
                del self._table[aor]
        return removed

    async def preferences(self, user: str) -> dict[str, Any]:
        """A copy of what is stored for ``user``."""
        return dict(self._preferences.get(user, {}))

    async def set_preferences(self, user: str, prefs: Mapping[str, Any]) -> None:
        """Replace (or with {}, delete) what is stored for ``user``."""
        if prefs:
            self._preferences[user] = dict(prefs)
        else:
            self._preferences.pop(user, None)

    async def subscriptions(self, *, now: float) -> list[dict[str, Any]]:
        """Unexpired records, by key; expired ones are dropped on the way."""
        for key in [k for k, (at, _) in self._subscriptions.items() if at <= now]:
            del self._subscriptions[key]
        return [dict(self._subscriptions[k][1]) for k in sorted(self._subscriptions)]

    async def save_subscription(
        self, key: str, record: Mapping[str, Any], *, expires_at: float
    ) -> None:
        """Keep a copy of ``record`` under ``key``."""
        self._subscriptions[key] = (expires_at, dict(record))

    async def remove_subscription(self, key: str) -> None:
        """Forget ``key``."""
        self._subscriptions.pop(key, None)

    async def close(self) -> None:
        """Forget everything."""
        self._subscriptions.clear()
        self._table.clear()
        self._preferences.clear()
        self._expiry.clear()

    def _compact(self) -> None:
        # Refreshing a binding leaves its old heap entry behind until that entry's
        # time comes; rebuilding whenever the heap doubles keeps it near the
        # number of bindings at an amortised constant cost per save.
        self._expiry = [
            (b.expires_at, aor, key)
            for aor, table in self._table.items()
            for key, b in table.items()
        ]
        heapq.heapify(self._expiry)
        self._compact_at = max(_MIN_COMPACT, 2 * len(self._expiry))

    def _live(self, aor: str, now: float) -> list[Binding]:
        table = self._table.get(aor, {})
        return sort_bindings([b for b in table.values() if not b.is_expired(now)])
