"""Bindings in one SQLite file, written through, so they survive a restart.

Theory of operation: one ``sqlite3`` connection lives on one worker thread of a
private :class:`~twisted.python.threadpool.ThreadPool`; every method sends a
function there with ``deferToThreadPool`` and awaits it, so a slow disk never
stalls SIP traffic on the reactor thread, and the single thread serialises this
process's statements without locks. Each :meth:`SQLiteLocationService.update` is
one ``BEGIN IMMEDIATE`` ... ``COMMIT`` transaction: it takes the write lock
before reading, so two processes sharing the file queue up on the lock (the
busy timeout) instead of failing halfway, and it returns only once committed,
so the registrar answers 200 only for a binding on disk.

Schema: ``binding`` has one row per binding, primary key ``(aor, key)`` (which
is also the index for lookups by ``aor``), an index on ``expires_at`` for
:meth:`SQLiteLocationService.purge`, and the flow, Contact parameters and Path
as JSON (:mod:`sipproxy.location.record`). ``schema_version`` holds one row;
:data:`MIGRATIONS` brings an older file up to :data:`SCHEMA_VERSION` when it is
opened.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from sipproxy.location import Binding, LocationUnavailableError, sort_bindings
from sipproxy.location.record import (
    flow_from_json,
    flow_to_json,
    params_from_json,
    params_to_json,
    path_from_json,
    path_to_json,
)

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SQLiteLocationService"]

_T = TypeVar("_T")

SCHEMA_VERSION = 3
"""The schema this code reads and writes."""


def _add_preferences(db: sqlite3.Connection) -> None:
    """Version 2: per-user preferences (run-time forwarding, DND), JSON per user."""
    db.execute("CREATE TABLE preference (user TEXT PRIMARY KEY, prefs TEXT NOT NULL)")


def _add_subscriptions(db: sqlite3.Connection) -> None:
    """Version 3: subscriptions we serve as notifier (busy lamps), JSON per key."""
    db.execute(
        "CREATE TABLE subscription (key TEXT PRIMARY KEY,"
        " expires_at REAL NOT NULL, record TEXT NOT NULL)"
    )


MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    2: _add_preferences,
    3: _add_subscriptions,
}
"""``MIGRATIONS[n]`` upgrades a version ``n - 1`` file to version ``n``.

Each runs inside the opening transaction, so a failed migration leaves the file
as it was. A new file is created at version 1 and migrated like an old one.
"""

_SCHEMA_V1 = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE binding (
    aor TEXT NOT NULL,
    key TEXT NOT NULL,
    contact TEXT NOT NULL,
    expires_at REAL NOT NULL,
    registered_at REAL NOT NULL,
    call_id TEXT NOT NULL,
    cseq INTEGER NOT NULL,
    q REAL NOT NULL,
    flow TEXT NOT NULL,
    params TEXT NOT NULL,
    user_agent TEXT,
    path TEXT NOT NULL,
    instance_id TEXT,
    reg_id INTEGER,
    PRIMARY KEY (aor, key)
);
CREATE INDEX binding_expires_at ON binding (expires_at);
"""

_COLUMNS = (
    "aor, key, contact, expires_at, registered_at, call_id, cseq, q, flow, params,"
    " user_agent, path, instance_id, reg_id"
)
_SELECT = f"SELECT {_COLUMNS} FROM binding"
_UPSERT = f"INSERT OR REPLACE INTO binding ({_COLUMNS}) VALUES ({', '.join('?' * 14)})"

_BUSY_TIMEOUT = 10.0
"""Seconds to wait for another process's write lock before giving up."""


class SQLiteLocationService:
    """A :class:`~sipproxy.location.LocationStore` in an SQLite file.

    :param path: the database file, created if missing; relative paths are
        relative to the working directory at :meth:`open`.
    :param reactor: runs the worker thread's results back on the reactor thread.
    """

    def __init__(self, path: str, *, reactor: Any) -> None:
        self.path = path
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="sipproxy-sqlite")
        self._connection: sqlite3.Connection | None = None
        self._shutdown_trigger: Any = None

    async def open(self) -> None:
        """Start the worker thread, open the file, create or migrate the schema.

        :raises LocationUnavailableError: the file cannot be opened, is not a
            database, or was written by a newer version of this code.
        """
        self._pool.start()
        # A store nobody closed must not keep the process alive at exit.
        self._shutdown_trigger = self._reactor.addSystemEventTrigger(
            "during", "shutdown", self._pool.stop
        )
        try:
            await self._run(self._open)
        except (sqlite3.Error, LocationUnavailableError) as error:
            await self.close()
            if isinstance(error, LocationUnavailableError):
                raise
            raise LocationUnavailableError(f"sqlite:{self.path}: {error}") from error

    async def bindings(self, aor: str, *, now: float) -> list[Binding]:
        """Unexpired bindings of ``aor``, newest first."""
        return await self._run(self._bindings, aor, now)

    async def update(
        self,
        aor: str,
        *,
        save: Sequence[Binding] = (),
        remove: Sequence[str] = (),
        now: float,
    ) -> list[Binding]:
        """Remove by key, then add or replace, in one committed transaction."""
        return await self._run(self._update, aor, tuple(save), tuple(remove), now)

    async def remove_aor(self, aor: str, *, now: float) -> int:
        """Delete every binding of ``aor``; count the unexpired ones."""
        return await self._run(self._remove_aor, aor, now)

    async def aors(self, *, now: float) -> list[str]:
        """Addresses-of-record with an unexpired binding, sorted."""
        return await self._run(self._aors, now)

    async def purge(self, *, now: float, limit: int = 1000) -> int:
        """Delete up to ``limit`` expired rows, found through the expiry index."""
        return await self._run(self._purge, now, limit)

    async def preferences(self, user: str) -> dict[str, Any]:
        """What is stored for ``user``, or {}."""
        return await self._run(self._preferences, user)

    async def set_preferences(self, user: str, prefs: Mapping[str, Any]) -> None:
        """Replace (or with {}, delete) what is stored for ``user``, committed."""
        await self._run(self._set_preferences, user, json.dumps(dict(prefs)))

    async def subscriptions(self, *, now: float) -> list[dict[str, Any]]:
        """Unexpired records by key; expired ones are deleted on the way."""
        return await self._run(self._subscriptions, now)

    async def save_subscription(
        self, key: str, record: Mapping[str, Any], *, expires_at: float
    ) -> None:
        """Write ``record`` under ``key`` (one committed statement)."""
        await self._run(
            self._save_subscription, key, json.dumps(dict(record)), expires_at
        )

    async def remove_subscription(self, key: str) -> None:
        """Delete ``key``'s row."""
        await self._run(self._remove_subscription, key)

    async def close(self) -> None:
        """Close the connection and stop the worker thread."""
        if self._shutdown_trigger is not None:
            self._reactor.removeSystemEventTrigger(self._shutdown_trigger)
            self._shutdown_trigger = None
            if self._connection is not None:
                await self._run(self._close)
            self._pool.stop()

    async def _run(self, function: Callable[..., _T], *args: object) -> _T:
        if not self._pool.started:
            # A stopped pool would queue the call forever.
            raise LocationUnavailableError(f"sqlite:{self.path} is not open")
        return await deferToThreadPool(self._reactor, self._pool, function, *args)

    # Everything below runs on the worker thread.

    def _open(self) -> None:
        # isolation_level=None: this code says BEGIN and COMMIT itself, rather
        # than the sqlite3 module opening transactions behind its back.
        connection = sqlite3.connect(
            self.path,
            timeout=_BUSY_TIMEOUT,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            # WAL with synchronous=NORMAL: a COMMIT is in the write-ahead log, in
            # the operating system's hands, when it returns, so it survives the
            # process crashing or being killed (kill -9); only a power cut or an
            # OS crash can lose the last commits. FULL would also fsync every
            # commit, costing a disk flush per REGISTER for that rarer case.
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            with _transaction(connection):
                _migrate(connection)
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
            raise LocationUnavailableError(f"sqlite:{self.path} is not open")
        return self._connection

    def _bindings(self, aor: str, now: float) -> list[Binding]:
        return _select_live(self._db(), aor, now)

    def _update(
        self,
        aor: str,
        save: tuple[Binding, ...],
        remove: tuple[str, ...],
        now: float,
    ) -> list[Binding]:
        db = self._db()
        with _transaction(db):
            gone = [*remove, *(b.key for b in save if b.is_expired(now))]
            db.executemany(
                "DELETE FROM binding WHERE aor = ? AND key = ?",
                [(aor, key) for key in gone],
            )
            db.executemany(
                _UPSERT, [_row(aor, b) for b in save if not b.is_expired(now)]
            )
            return _select_live(db, aor, now)

    def _remove_aor(self, aor: str, now: float) -> int:
        db = self._db()
        with _transaction(db):
            (live,) = db.execute(
                "SELECT count(*) FROM binding WHERE aor = ? AND expires_at > ?",
                (aor, now),
            ).fetchone()
            db.execute("DELETE FROM binding WHERE aor = ?", (aor,))
        return int(live)

    def _aors(self, now: float) -> list[str]:
        rows = self._db().execute(
            "SELECT DISTINCT aor FROM binding WHERE expires_at > ?", (now,)
        )
        return sorted(aor for (aor,) in rows)

    def _preferences(self, user: str) -> dict[str, Any]:
        row = (
            self._db()
            .execute("SELECT prefs FROM preference WHERE user = ?", (user,))
            .fetchone()
        )
        found: dict[str, Any] = json.loads(row[0]) if row else {}
        return found

    def _set_preferences(self, user: str, prefs: str) -> None:
        db = self._db()
        with _transaction(db):
            if prefs == "{}":
                db.execute("DELETE FROM preference WHERE user = ?", (user,))
            else:
                db.execute(
                    "INSERT OR REPLACE INTO preference (user, prefs) VALUES (?, ?)",
                    (user, prefs),
                )

    def _subscriptions(self, now: float) -> list[dict[str, Any]]:
        db = self._db()
        with _transaction(db):
            db.execute("DELETE FROM subscription WHERE expires_at <= ?", (now,))
            rows = db.execute("SELECT record FROM subscription ORDER BY key").fetchall()
        return [json.loads(record) for (record,) in rows]

    def _save_subscription(self, key: str, record: str, expires_at: float) -> None:
        db = self._db()
        with _transaction(db):
            db.execute(
                "INSERT OR REPLACE INTO subscription (key, expires_at, record)"
                " VALUES (?, ?, ?)",
                (key, expires_at, record),
            )

    def _remove_subscription(self, key: str) -> None:
        db = self._db()
        with _transaction(db):
            db.execute("DELETE FROM subscription WHERE key = ?", (key,))

    def _purge(self, now: float, limit: int) -> int:
        db = self._db()
        with _transaction(db):
            cursor = db.execute(
                "DELETE FROM binding WHERE rowid IN"
                " (SELECT rowid FROM binding WHERE expires_at <= ? LIMIT ?)",
                (now, limit),
            )
        return cursor.rowcount


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


def _migrate(db: sqlite3.Connection) -> None:
    exists = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if not exists:
        # Not executescript(): it commits first, outside this transaction.
        for statement in _SCHEMA_V1.split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute("INSERT INTO schema_version (version) VALUES (?)", (1,))
    (version,) = db.execute("SELECT max(version) FROM schema_version").fetchone()
    if version > SCHEMA_VERSION:
        raise LocationUnavailableError(
            f"schema version {version} is newer than this sipproxy's"
            f" {SCHEMA_VERSION}; upgrade sipproxy"
        )
    for target in range(version + 1, SCHEMA_VERSION + 1):
        MIGRATIONS[target](db)
        db.execute("UPDATE schema_version SET version = ?", (target,))


def _select_live(db: sqlite3.Connection, aor: str, now: float) -> list[Binding]:
    rows = db.execute(f"{_SELECT} WHERE aor = ? AND expires_at > ?", (aor, now))
    return sort_bindings([_binding(row) for row in rows])


def _row(aor: str, b: Binding) -> tuple[object, ...]:
    return (
        aor,
        b.key,
        b.contact,
        b.expires_at,
        b.registered_at,
        b.call_id,
        b.cseq,
        b.q,
        flow_to_json(b.flow),
        params_to_json(b.params),
        b.user_agent,
        path_to_json(b.path),
        b.instance_id,
        b.reg_id,
    )


def _binding(row: Iterable[Any]) -> Binding:
    (
        aor,
        _key,
        contact,
        expires_at,
        registered_at,
        call_id,
        cseq,
        q,
        flow,
        params,
        user_agent,
        path,
        instance_id,
        reg_id,
    ) = row
    return Binding(
        aor=aor,
        contact=contact,
        expires_at=expires_at,
        registered_at=registered_at,
        call_id=call_id,
        cseq=cseq,
        flow=flow_from_json(flow),
        q=q,
        params=params_from_json(params),
        user_agent=user_agent,
        path=path_from_json(path),
        instance_id=instance_id,
        reg_id=reg_id,
    )
