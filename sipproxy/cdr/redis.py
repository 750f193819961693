"""Call records in Redis: one stream that a single reader sees every process in.

Theory of operation. Keys, under a configurable prefix ``P`` (``sipproxy:``, the
location store's, whose keys these do not clash with):

- ``P cdr``, a stream: one entry per finished call, field ``json`` = the record's
  :meth:`~sipproxy.cdr.record.CallRecord.to_json`. ``XADD ... MAXLEN ~ 1000000``
  keeps roughly the newest million; older ones are for whoever consumes the
  stream (``XREAD``) to have archived.
- ``P cdr:live``, a hash: field = a call in progress's key, value = its record
  as JSON.

Stream ids are Redis's clock in milliseconds when the record was added, which is
when the call ended: never before it started. A query reads the stream newest
first, a page at a time (``XREVRANGE`` in a script that also drops, inside Redis,
entries that cannot name the user asked for), stops once the ids fall below ``since``,
and, since later pages hold only calls that started before their ids, also stops
once it holds ``limit`` records that all started after the current page: a query
for recent calls reads a few pages, however long the stream. That reasoning trusts
the proxies' clocks to agree with Redis's within :data:`CLOCK_SKEW` (NTP does
far better).

:meth:`RedisCallRecordStore.close_lost` moves each lost call with one script that
deletes the live entry and adds the record only if the entry was still there, so
two processes closing the same owner's calls never add one twice.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
from typing import Any

import txredisapi
from twisted.internet.defer import Deferred, TimeoutError

from sipproxy.cdr import CallRecordUnavailableError
from sipproxy.cdr.record import CallRecord, user_part

__all__ = ["CLOCK_SKEW", "MAXLEN", "RedisCallRecordStore"]

MAXLEN = 1_000_000
"""About how many records the stream keeps (``MAXLEN ~``)."""

CLOCK_SKEW = 300.0
"""Seconds by which a proxy's clock may differ from Redis's without a query
missing records."""

_PAGE = 1000
"""Stream entries per ``XREVRANGE``, which :data:`_PAGE_SCRIPT` runs."""

# KEYS: the stream. ARGV: highest id, lowest id, count, a needle ("" for none).
# Returns {entries read, the last id read, then id, json for each entry whose
# json holds the needle or a %-escape}: the filter a user query can do without
# parsing JSON runs beside the data, and only likely matches cross the network.
_PAGE_SCRIPT = """
local entries = redis.call('XREVRANGE', KEYS[1], ARGV[1], ARGV[2], 'COUNT', ARGV[3])
local result = {#entries, ''}
if #entries > 0 then result[2] = entries[#entries][1] end
for _, entry in ipairs(entries) do
  local fields = entry[2]
  for i = 1, #fields - 1, 2 do
    if fields[i] == 'json' then
      local text = fields[i + 1]
      if ARGV[4] == '' or string.find(text, ARGV[4], 1, true)
          or string.find(text, '%', 1, true) then
        result[#result + 1] = entry[1]
        result[#result + 1] = text
      end
    end
  end
end
return result
"""

# KEYS: the live hash, the stream. ARGV: the live key, the lost record's JSON,
# MAXLEN. Adds the record only if this call removed the live entry.
_CLOSE_LOST = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'json', ARGV[2])
return 1
"""


class RedisCallRecordStore:
    """A :class:`~sipproxy.cdr.CallRecordStore` in a Redis server.

    :param prefix: starts every key, so several deployments can share a server.
    :param timeout: seconds to wait for the first connection, and for each
        command's reply, before raising :class:`CallRecordUnavailableError`.
    :param reactor: times the timeouts. (txredisapi itself uses the global
        reactor, which is the same one in a running server.)
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 6379,
        db: int = 0,
        password: str | None = None,
        prefix: str = "sipproxy:",
        timeout: float = 5.0,
        reactor: Any,
    ) -> None:
        self.host = host
        self.port = port
        self.db = db
        self.prefix = prefix
        self._password = password
        self._timeout = timeout
        self._reactor = reactor
        self._redis: Any = None
        self._stream_key = f"{prefix}cdr"
        self._live_key = f"{prefix}cdr:live"

    def __repr__(self) -> str:
        return f"<RedisCallRecordStore {self._where()} prefix={self.prefix!r}>"

    async def open(self) -> None:
        """Connect, and check the server answers.

        :raises CallRecordUnavailableError: no answer within ``timeout``, or the
            server refuses (a wrong password, a database out of range).
        """
        # Lazy and reconnecting: after an outage the connection comes back by
        # itself, and commands wait for it, bounded by the timeout.
        self._redis = txredisapi.lazyConnection(
            self.host,
            self.port,
            dbid=self.db,
            password=self._password,
            reconnect=True,
            connectTimeout=self._timeout,
            # Strings stay strings: a Call-ID such as "1" must not become an int.
            convertNumbers=False,
        )
        try:
            await self._call(self._client().ping())
        except CallRecordUnavailableError:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the connection and stop reconnecting."""
        if self._redis is not None:
            redis, self._redis = self._redis, None
            await redis.disconnect()

    async def add(self, record: CallRecord) -> None:
        """``XADD`` the record to the stream."""
        await self._command(
            "XADD", self._stream_key, "MAXLEN", "~", MAXLEN, "*", "json", _json(record)
        )

    async def keep_live(self, key: str, record: CallRecord) -> None:
        """``HSET`` the record in the live hash."""
        await self._command("HSET", self._live_key, key, _json(record))

    async def drop_live(self, key: str) -> None:
        """``HDEL`` the key from the live hash."""
        await self._command("HDEL", self._live_key, key)

    async def close_lost(self, owner: str, now: float) -> list[CallRecord]:
        """Move ``owner``'s live records to the stream as ``lost``, one by one."""
        fields = await self._command("HGETALL", self._live_key)
        if isinstance(fields, dict):  # txredisapi may pair them up itself
            pairs = list(fields.items())
        else:
            pairs = list(zip(fields[::2], fields[1::2], strict=True))
        found = [
            (_text(key), _lost(CallRecord.from_json(json.loads(value)), now))
            for key, value in pairs
            if _text(key).startswith(f"{owner}:")
        ]
        found.sort(key=lambda item: (item[1].start, item[1].call_id))
        lost = []
        for key, record in found:
            keys = [self._live_key, self._stream_key]
            moved = await self._call(
                self._client().eval(_CLOSE_LOST, keys, [key, _json(record), MAXLEN])
            )
            if int(moved):
                lost.append(record)
        return lost

    async def query(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        user: str | None = None,
        dispositions: frozenset[str] | None = None,
        limit: int = 100,
    ) -> list[CallRecord]:
        """Read the stream newest first, a page at a time; see the module doc."""
        if limit <= 0:
            return []
        # A record's id is no earlier than its start (less the clock skew), so
        # ids before since - skew hold no record that started since.
        lowest = "-" if since is None else str(max(0, int((since - CLOCK_SKEW) * 1000)))
        highest = "+"
        # As in the JSON lines store: entries that cannot name the user are
        # skipped without parsing them, here by the script, in Redis.
        needle = "" if user is None else json.dumps(user_part(user))[1:-1]
        # A min-heap of (start, id, record): the newest `limit` so far, the
        # oldest of them on top.
        best: list[tuple[float, tuple[int, int], CallRecord]] = []
        while True:
            read, last_id, *found = await self._call(
                self._client().eval(
                    _PAGE_SCRIPT, [self._stream_key], [highest, lowest, _PAGE, needle]
                )
            )
            for entry_id, text in zip(found[::2], found[1::2], strict=True):
                record = _parse(text)
                if record is None or not record.matches(
                    user, since, until, dispositions
                ):
                    continue
                item = (record.start, _id_order(entry_id), record)
                if len(best) < limit:
                    heapq.heappush(best, item)
                elif item[:2] > best[0][:2]:
                    heapq.heapreplace(best, item)
            if int(read) < _PAGE:
                break
            # Entries older than this page were added, so started, before it.
            added_by = _id_order(last_id)[0] / 1000 + CLOCK_SKEW
            if len(best) == limit and best[0][0] > added_by:
                break
            highest = f"({_text(last_id)}"
        best.sort(key=lambda item: item[:2], reverse=True)
        return [record for _start, _id, record in best]

    def _where(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"redis://{host}:{self.port}/{self.db}"

    def _client(self) -> Any:
        if self._redis is None:
            raise CallRecordUnavailableError(f"{self._where()} is not open")
        return self._redis

    async def _command(self, *args: object) -> Any:
        return await self._call(self._client().execute_command(*args))

    async def _call(self, command: Deferred[Any]) -> Any:
        command.addTimeout(self._timeout, self._reactor)
        try:
            return await command
        except TimeoutError:
            raise CallRecordUnavailableError(
                f"{self._where()}: no answer within {self._timeout} s"
            ) from None
        except (txredisapi.ConnectionError, txredisapi.ResponseError) as error:
            raise CallRecordUnavailableError(f"{self._where()}: {error}") from error


def _json(record: CallRecord) -> str:
    return json.dumps(record.to_json(), separators=(",", ":"))


def _lost(record: CallRecord, now: float) -> CallRecord:
    return dataclasses.replace(record, disposition="lost", end=now)


def _parse(text: str | bytes) -> CallRecord | None:
    """The record in a stream entry's JSON, or None if it holds none."""
    try:
        return CallRecord.from_json(json.loads(_text(text)))
    except ValueError:
        return None


def _id_order(entry_id: str | bytes) -> tuple[int, int]:
    milliseconds, _, sequence = _text(entry_id).partition("-")
    return int(milliseconds), int(sequence or 0)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
