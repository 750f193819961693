"""Call detail records: one :class:`~.record.CallRecord` per call.

The proxy hands finished calls to a :class:`CallRecordStore`, and keeps each call
in progress there too (:meth:`CallRecordStore.keep_live`), so a process that
dies mid-call loses no record: at its next start
:meth:`CallRecordStore.close_lost` turns its leftovers into ``lost`` records.
Stores:

- :class:`~sipproxy.cdr.null.NullCallRecordStore` (``none``): keeps nothing;
- :class:`~sipproxy.cdr.jsonl.JSONLinesCallRecordStore` (``jsonl:PATH``): one
  JSON object per line, for a log shipper; queries scan the file;
- :class:`~sipproxy.cdr.sqlite.SQLiteCallRecordStore` (``sqlite:PATH``): indexed
  queries by time and by user;
- :class:`~sipproxy.cdr.redis.RedisCallRecordStore` (``redis://...``): a stream
  that one reader sees the records of every process in.

Every method is a coroutine, and no store reads a clock: callers pass ``now``.
:func:`~sipproxy.cdr.spec.cdr_from_spec` turns a configuration string into an
unopened store.
"""

from __future__ import annotations

from typing import Protocol

from sipproxy.cdr.record import CallRecord

__all__ = ["CallRecord", "CallRecordStore", "CallRecordUnavailableError"]


class CallRecordUnavailableError(Exception):
    """The store cannot be opened or reached (a Redis server down, a bad file)."""


class CallRecordStore(Protocol):
    """Where call detail records go, and where they are found again."""

    async def open(self) -> None:
        """Make the store ready; :raises CallRecordUnavailableError: it cannot be."""

    async def close(self) -> None:
        """Release what :meth:`open` took; closing twice is harmless."""

    async def add(self, record: CallRecord) -> None:
        """Append a finished call; it is stored when this returns."""

    async def keep_live(self, key: str, record: CallRecord) -> None:
        """Store (or replace) the record of a call in progress.

        :param key: unique per dialog within this process, and starting with the
            process's owner name and a colon (``"<owner>:<dialog>"``), which is
            what :meth:`close_lost` selects by.
        """

    async def drop_live(self, key: str) -> None:
        """Forget a call in progress, once its finished record was added.

        An unknown key is harmless.
        """

    async def close_lost(self, owner: str, now: float) -> list[CallRecord]:
        """Finish the calls a dead process left in progress; call at start.

        Every live record whose key starts with ``owner + ":"`` is added with
        ``disposition="lost"`` and ``end=now`` and dropped from the live ones;
        other owners' live records stay.

        :returns: the records added, oldest start first.
        """
        ...

    async def query(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        user: str | None = None,
        dispositions: frozenset[str] | None = None,
        limit: int = 100,
    ) -> list[CallRecord]:
        """Finished records, newest start first (ties: the later added first).

        The filters are :meth:`CallRecord.matches`'s; None selects any.

        :param limit: at most this many records.
        """
        ...
