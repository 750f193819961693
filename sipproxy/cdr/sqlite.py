"""Call records in an SQLite file of their own, with indexed queries.

Theory of operation: one ``sqlite3`` connection lives on one worker thread
(:class:`~sipproxy.cdr.worker.WorkerThread`); every method sends a function there
and awaits it, so a slow disk never stalls the reactor, and the single thread
runs this process's statements in order. Writes are ``BEGIN IMMEDIATE`` ...
``COMMIT`` transactions: several processes sharing the file queue up on the write
lock (the busy timeout) instead of failing. WAL with ``synchronous=NORMAL``: a
commit survives the process being killed; only a power cut can lose the last few.

Schema:

- ``cdr``: one row per finished call, a column per field, times as REAL epoch
  seconds; ``id`` orders records added at the same start; indexed on ``start``
  for queries by time alone.
- ``cdr_user``: one row per distinct user part of a record's caller, callee and
  answered_by (:meth:`~sipproxy.cdr.record.CallRecord.users`), primary key
  ``(user, start, cdr_id)``: a query for one user's calls walks that key
  backwards from ``until`` and stops at ``limit``, however many records the
  file holds.
- ``cdr_live``: the calls in progress, ``key`` -> the record as JSON.
- ``schema_version``: one row, for the migrations a later schema will need.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sipproxy.cdr import CallRecordUnavailableError
from sipproxy.cdr.record import CallRecord, user_part
from sipproxy.cdr.worker import WorkerThread

__all__ = ["SCHEMA_VERSION", "SQLiteCallRecordStore", "query_statement"]

SCHEMA_VERSION = 1
"""The schema this code reads and writes."""

_SCHEMA = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE cdr (
    id INTEGER PRIMARY KEY,
    call_id TEXT NOT NULL,
    caller TEXT NOT NULL,
    callee TEXT NOT NULL,
    answered_by TEXT,
    start REAL NOT NULL,
    answer REAL,
    "end" REAL,
    disposition TEXT NOT NULL,
    status INTEGER,
    hangup_by TEXT,
    forwarded TEXT
);
CREATE INDEX cdr_start ON cdr (start);
CREATE TABLE cdr_user (
    user TEXT NOT NULL,
    start REAL NOT NULL,
    cdr_id INTEGER NOT NULL,
    PRIMARY KEY (user, start, cdr_id)
) WITHOUT ROWID;
CREATE TABLE cdr_live (key TEXT PRIMARY KEY, record TEXT NOT NULL);
"""

_FIELDS = (
    "call_id",
    "caller",
    "callee",
    "answered_by",
    "start",
    "answer",
    "end",
    "disposition",
    "status",
    "hangup_by",
    "forwarded",
)
# Quoted: "end" is an SQL keyword.
_COLUMNS = ", ".join(f'cdr."{name}"' for name in _FIELDS)
_INSERT = "INSERT INTO cdr ({}) VALUES ({})".format(
    ", ".join(f'"{name}"' for name in _FIELDS), ", ".join("?" * len(_FIELDS))
)

_BUSY_TIMEOUT = 10.0
"""Seconds to wait for another process's write lock before giving up."""


class SQLiteCallRecordStore:
    """A :class:`~sipproxy.cdr.CallRecordStore` in an SQLite file.

    :param path: the database file, created if missing; relative paths are
        relative to the working directory at :meth:`open`.
    :param reactor: runs the worker thread's results back on the reactor thread.
    """

    def __init__(self, path: str, *, reactor: Any) -> None:
        self.path = path
        self._worker = WorkerThread(
            f"sqlite:{path}", errors=(sqlite3.Error, ValueError), reactor=reactor
        )
        self._connection: sqlite3.Connection | None = None

    async def open(self) -> None:
        """Open (or create) the file and its schema.

        :raises CallRecordUnavailableError: the file cannot be opened, is not a
            database, or was written by a newer version of this code.
        """
        self._worker.start()
        try:
            await self._worker.run(self._open)
        except CallRecordUnavailableError:
            self._worker.stop()
            raise

    async def close(self) -> None:
        """Close the connection and stop the worker thread."""
        if self._worker.started:
            await self._worker.run(self._close)
            self._worker.stop()

    async def add(self, record: CallRecord) -> None:
        """Insert ``record`` and its user index rows, committed."""
        await self._worker.run(self._add, record)

    async def keep_live(self, key: str, record: CallRecord) -> None:
        """Insert or replace the live row ``key``."""
        await self._worker.run(self._keep_live, key, _json(record))

    async def drop_live(self, key: str) -> None:
        """Delete the live row ``key``."""
        await self._worker.run(self._drop_live, key)

    async def close_lost(self, owner: str, now: float) -> list[CallRecord]:
        """Move ``owner``'s live rows to ``cdr`` as ``lost``, in one transaction."""
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
        """Matching records, newest first, through the start or the user index."""
        if limit <= 0:
            return []
        return await self._worker.run(
            self._query, since, until, user, dispositions, limit
        )

    # Everything below runs on the worker thread.

    def _open(self) -> None:
        # isolation_level=None: this code says BEGIN and COMMIT itself.
        connection = sqlite3.connect(
            self.path,
            timeout=_BUSY_TIMEOUT,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            with _transaction(connection):
                _create_schema(connection)
        except BaseException:
            connection.close()
            raise
        self._connection = connection

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            raise CallRecordUnavailableError(f"sqlite:{self.path} is not open")
        return self._connection

    def _add(self, record: CallRecord) -> None:
        db = self._db()
        with _transaction(db):
            _insert(db, record)

    def _keep_live(self, key: str, record: str) -> None:
        db = self._db()
        with _transaction(db):
            db.execute(
                "INSERT OR REPLACE INTO cdr_live (key, record) VALUES (?, ?)",
                (key, record),
            )

    def _drop_live(self, key: str) -> None:
        db = self._db()
        with _transaction(db):
            db.execute("DELETE FROM cdr_live WHERE key = ?", (key,))

    def _close_lost(self, owner: str, now: float) -> list[CallRecord]:
        db = self._db()
        # Keys from "owner:" up to, not including, "owner;" (";" follows ":"):
        # exactly those starting with "owner:", through the primary key, with no
        # LIKE wildcards for an owner name to smuggle in.
        bounds = (f"{owner}:", f"{owner};")
        with _transaction(db):
            rows = db.execute(
                "SELECT record FROM cdr_live WHERE key >= ? AND key < ?", bounds
            ).fetchall()
            lost = sorted(
                (_lost(CallRecord.from_json(json.loads(row[0])), now) for row in rows),
                key=lambda record: (record.start, record.call_id),
            )
            for record in lost:
                _insert(db, record)
            db.execute("DELETE FROM cdr_live WHERE key >= ? AND key < ?", bounds)
        return lost

    def _query(
        self,
        since: float | None,
        until: float | None,
        user: str | None,
        dispositions: frozenset[str] | None,
        limit: int,
    ) -> list[CallRecord]:
        sql, args = query_statement(since, until, user, dispositions, limit)
        return [_record(row) for row in self._db().execute(sql, args)]


def query_statement(
    since: float | None,
    until: float | None,
    user: str | None,
    dispositions: frozenset[str] | None,
    limit: int,
) -> tuple[str, tuple[object, ...]]:
    """The SELECT for :meth:`SQLiteCallRecordStore.query`, and its arguments.

    With a user it walks ``cdr_user``'s primary key, otherwise ``cdr_start``;
    either way in ORDER BY order, so SQLite stops after ``limit`` rows.
    """
    # Compare start in the table that leads the plan, so its key bounds the walk.
    table = "cdr_user" if user is not None else "cdr"
    conditions: list[str] = []
    args: list[object] = []
    if user is not None:
        conditions.append("cdr_user.user = ?")
        args.append(user_part(user))
    if since is not None:
        conditions.append(f"{table}.start >= ?")
        args.append(since)
    if until is not None:
        conditions.append(f"{table}.start < ?")
        args.append(until)
    if dispositions is not None:
        marks = ", ".join("?" * len(dispositions))
        conditions.append(f"cdr.disposition IN ({marks})")
        args.extend(sorted(dispositions))
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    if user is not None:
        source = "cdr_user JOIN cdr ON cdr.id = cdr_user.cdr_id"
        order = "cdr_user.start DESC, cdr_user.cdr_id DESC"
    else:
        source, order = "cdr", "cdr.start DESC, cdr.id DESC"
    sql = f"SELECT {_COLUMNS} FROM {source}{where} ORDER BY {order} LIMIT ?"
    return sql, (*args, limit)


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE``; then ``COMMIT``, or ``ROLLBACK`` on an exception."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _create_schema(db: sqlite3.Connection) -> None:
    exists = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if not exists:
        # Not executescript(): it commits first, outside this transaction.
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute("INSERT INTO schema_version (version) VALUES (?)", (1,))
    (version,) = db.execute("SELECT max(version) FROM schema_version").fetchone()
    if version != SCHEMA_VERSION:
        raise CallRecordUnavailableError(
            f"CDR schema version {version} is not this sipproxy's {SCHEMA_VERSION}"
        )


def _insert(db: sqlite3.Connection, record: CallRecord) -> None:
    cursor = db.execute(_INSERT, tuple(getattr(record, name) for name in _FIELDS))
    db.executemany(
        "INSERT INTO cdr_user (user, start, cdr_id) VALUES (?, ?, ?)",
        [(user, record.start, cursor.lastrowid) for user in record.users()],
    )


def _record(row: Sequence[Any]) -> CallRecord:
    return CallRecord(**dict(zip(_FIELDS, row, strict=True)))


def _lost(record: CallRecord, now: float) -> CallRecord:
    return dataclasses.replace(record, disposition="lost", end=now)


def _json(record: CallRecord) -> str:
    return json.dumps(record.to_json(), separators=(",", ":"))
