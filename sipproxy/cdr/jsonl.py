"""Call records as JSON lines in one file, for a log shipper to tail.

Theory of operation: ``PATH`` gets one :meth:`~sipproxy.cdr.record.CallRecord.to_json`
object per line, appended and flushed per :meth:`JSONLinesCallRecordStore.add`,
so a process crash loses nothing that was added (a power cut may lose what the
operating system had not written yet). Calls in progress live in ``PATH.live.json``,
one JSON object ``{key: record}`` rewritten whole on every change: written to a
temporary file, then ``os.replace``-d over the old one, so a reader or a crash
sees the old file or the new one, never half of one. It stays small: only the
calls in progress.

All file I/O runs on one worker thread (:class:`~sipproxy.cdr.worker.WorkerThread`),
in the order it was asked for. :meth:`JSONLinesCallRecordStore.query` reads the
whole file, which suits an occasional look; SQLite suits frequent queries.

One process per file: two processes appending to one ``PATH`` would interleave
whole lines safely, but each rewrites ``PATH.live.json`` from its own calls only.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import os
from collections.abc import Iterator
from typing import IO, Any

from twisted.logger import Logger

from sipproxy.cdr import CallRecordUnavailableError
from sipproxy.cdr.record import CallRecord, user_part
from sipproxy.cdr.worker import WorkerThread

__all__ = ["JSONLinesCallRecordStore"]


class JSONLinesCallRecordStore:
    """A :class:`~sipproxy.cdr.CallRecordStore` in a JSON lines file.

    :param path: the file, created if missing; relative to the working
        directory at :meth:`open`.
    :param reactor: runs the worker thread's results back on the reactor thread.
    """

    log = Logger()

    def __init__(self, path: str, *, reactor: Any) -> None:
        self.path = path
        self.live_path = f"{path}.live.json"
        self._worker = WorkerThread(
            f"jsonl:{path}", errors=(OSError, ValueError), reactor=reactor
        )
        self._file: IO[str] | None = None
        self._live: dict[str, dict[str, Any]] = {}

    async def open(self) -> None:
        """Open (or create) the file and read the calls left in progress.

        :raises CallRecordUnavailableError: the file cannot be opened, or the
            live file is not what this store writes.
        """
        self._worker.start()
        try:
            await self._worker.run(self._open)
        except CallRecordUnavailableError:
            self._worker.stop()
            raise

    async def close(self) -> None:
        """Close the file and stop the worker thread."""
        if self._worker.started:
            await self._worker.run(self._close)
            self._worker.stop()

    async def add(self, record: CallRecord) -> None:
        """Append ``record`` as one line, flushed before this returns."""
        await self._worker.run(self._append, [_line(record)])

    async def keep_live(self, key: str, record: CallRecord) -> None:
        """Store ``record`` under ``key`` in the live file."""
        await self._worker.run(self._keep_live, key, record.to_json())

    async def drop_live(self, key: str) -> None:
        """Remove ``key`` from the live file."""
        await self._worker.run(self._drop_live, key)

    async def close_lost(self, owner: str, now: float) -> list[CallRecord]:
        """Append ``owner``'s live records as ``lost``, then drop them."""
        return await self._worker.run(self._close_lost, owner, now)

    async def query(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        user: str | None = None,
        dispositions: frozenset[str] | None = None,
        limit: int = 100,
    ) -> list[CallRecord]:
        """Scan the file; the newest ``limit`` matching records, newest first."""
        if limit <= 0:
            return []
        return await self._worker.run(
            self._query, since, until, user, dispositions, limit
        )

    # Everything below runs on the worker thread.

    def _open(self) -> None:
        # Append mode: every write lands at the end, even if someone else
        # appended meanwhile.
        file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open)
        try:
            if not _ends_a_line(self.path):
                # A crash mid-line: end it, so the next record starts afresh
                # instead of being glued to the broken one.
                file.write("\n")
                file.flush()
            self._live = _read_live(self.live_path)
        except BaseException:
            file.close()
            raise
        self._file = file

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _append(self, lines: list[str]) -> None:
        if self._file is None:
            raise CallRecordUnavailableError(f"jsonl:{self.path} is not open")
        self._file.write("".join(lines))
        self._file.flush()

    def _keep_live(self, key: str, record: dict[str, Any]) -> None:
        self._live[key] = record
        self._write_live()

    def _drop_live(self, key: str) -> None:
        if self._live.pop(key, None) is not None:
            self._write_live()

    def _close_lost(self, owner: str, now: float) -> list[CallRecord]:
        keys = [key for key in self._live if key.startswith(f"{owner}:")]
        lost = sorted(
            (_lost(CallRecord.from_json(self._live[key]), now) for key in keys),
            key=lambda record: (record.start, record.call_id),
        )
        # Records first, then the live file: a crash in between adds them twice
        # at the next start, which beats losing them.
        self._append([_line(record) for record in lost])
        for key in keys:
            del self._live[key]
        if keys:
            self._write_live()
        return lost

    def _write_live(self) -> None:
        temporary = f"{self.live_path}.tmp"
        with open(temporary, "w", encoding="utf-8") as file:
            json.dump(self._live, file, separators=(",", ":"))
        os.replace(temporary, self.live_path)

    def _query(
        self,
        since: float | None,
        until: float | None,
        user: str | None,
        dispositions: frozenset[str] | None,
        limit: int,
    ) -> list[CallRecord]:
        needle = None
        if user is not None:
            # A line can only hold the user's calls if it holds the user part as
            # json.dumps wrote it, or a %-escape that might decode to it: a
            # substring test skips most lines without parsing them.
            needle = json.dumps(user_part(user))[1:-1]
        selected = (
            (record.start, number, record)
            for number, record in enumerate(self._records(needle))
            if record is not None and record.matches(user, since, until, dispositions)
        )
        # The line number breaks ties: the later added comes first.
        newest = heapq.nlargest(limit, selected, key=lambda item: item[:2])
        return [record for _start, _number, record in newest]

    def _records(self, needle: str | None = None) -> Iterator[CallRecord | None]:
        """Each line's record; None for a line without ``needle`` (when given).

        Skipped lines still count, so the caller's line numbers stay true.
        """
        skipped = 0
        with open(self.path, encoding="utf-8", errors="replace") as file:
            for line in file:
                if not line.strip():
                    continue
                if needle is not None and needle not in line and "%" not in line:
                    yield None
                    continue
                try:
                    yield CallRecord.from_json(json.loads(line))
                except ValueError:  # json's errors are ValueErrors too
                    skipped += 1
        if skipped:
            self.log.warn(
                "{path}: skipped {count} lines that are not call records",
                path=self.path,
                count=skipped,
            )


def _line(record: CallRecord) -> str:
    return json.dumps(record.to_json(), separators=(",", ":")) + "\n"


def _lost(record: CallRecord, now: float) -> CallRecord:
    return dataclasses.replace(record, disposition="lost", end=now)


def _ends_a_line(path: str) -> bool:
    """Whether the file is empty or its last byte ends a line."""
    with open(path, "rb") as file:
        if file.seek(0, os.SEEK_END) == 0:
            return True
        file.seek(-1, os.SEEK_END)
        return file.read(1) == b"\n"


def _read_live(path: str) -> dict[str, dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as file:
            live = json.load(file)
    except FileNotFoundError:
        return {}
    if not isinstance(live, dict):
        raise ValueError(f"{path} is not a JSON object of call records")
    return live
