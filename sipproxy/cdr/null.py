"""The store for ``--cdr none``: records go nowhere."""

from __future__ import annotations

from sipproxy.cdr.record import CallRecord

__all__ = ["NullCallRecordStore"]


class NullCallRecordStore:
    """A :class:`~sipproxy.cdr.CallRecordStore` that keeps nothing."""

    async def open(self) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """Nothing to close."""

    async def add(self, record: CallRecord) -> None:
        """Forget ``record``."""

    async def keep_live(self, key: str, record: CallRecord) -> None:
        """Forget ``record``."""

    async def drop_live(self, key: str) -> None:
        """Nothing was kept."""

    async def close_lost(self, owner: str, now: float) -> list[CallRecord]:
        """Nothing was kept, so nothing was lost."""
        return []

    async def query(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        user: str | None = None,
        dispositions: frozenset[str] | None = None,
        limit: int = 100,
    ) -> list[CallRecord]:
        """No records."""
        return []
