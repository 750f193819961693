"""Bindings in Redis, shared by every proxy process that uses the same server.

Theory of operation. Keys, under a configurable prefix ``P`` (``sipproxy:``):

- ``P aor:<aor>``, a hash per address-of-record: field = the binding's
  :attr:`~sipproxy.location.Binding.key`, value = the binding as JSON
  (:mod:`sipproxy.location.record`). Its TTL is the latest ``expires_at`` of its
  bindings, so Redis frees an address-of-record whose last binding lapsed even
  if nobody ever purges.
- ``P aors``, a sorted set: member = aor, score = its latest ``expires_at``;
  :meth:`RedisLocationService.aors` reads the members scored after ``now``.
- ``P prefs:<user>``, a string: the user's preferences as JSON (call
  forwarding and do-not-disturb set at run time), with no TTL.
- ``P subs``, a hash: field = a subscription's key, value = its record as
  JSON with its ``expires_at`` (busy lamps we serve, RFC 6665); expired ones
  are deleted when :meth:`RedisLocationService.subscriptions` reads them.
- ``P due``, a sorted set: member = aor, score = its earliest ``expires_at``;
  :meth:`RedisLocationService.purge` visits only the members scored up to ``now``.

Redis 7.0 has no TTL per hash field, so a binding that lapses while others of
its address-of-record live on stays in the hash until the next update or purge
of that address-of-record; reads skip it meanwhile, because every binding
carries its own ``expires_at`` and every read compares it with the caller's
``now``. TTLs are computed from ``expires_at - now`` with that same ``now``,
never from the Redis server's clock, so a test's fake clock and the stored
expiries agree; a binding with no time left is deleted rather than given a TTL
of zero or less (which Redis would also take as "delete", but silently).

Every change to one address-of-record is one Lua script (:data:`_UPDATE`), which
Redis runs atomically: two processes updating the same address-of-record at
once are serialised, and each gets back exactly the bindings its change left.
A reply means Redis has applied the change; how durable that is depends on the
server's own persistence settings (``appendonly``, ``save``), which belong to
whoever runs Redis. The scripts name all their keys in ``KEYS``, but the two
index sets are shared by every address-of-record, so this layout is for one
Redis server (or a primary with replicas), not Redis Cluster.

The client is ``txredisapi``: a lazy connection that reconnects by itself after
an outage, with :meth:`RedisLocationService.open` waiting for a first PING so a
server that is down at start is reported at once, and every command bounded by
a timeout so an outage later turns into :class:`LocationUnavailableError`
instead of a registration that never completes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import txredisapi
from twisted.internet.defer import Deferred, TimeoutError

from sipproxy.location import Binding, LocationUnavailableError, sort_bindings
from sipproxy.location.record import binding_from_json, binding_to_json

__all__ = ["RedisLocationService"]

# KEYS: the aor hash, the "aors" set, the "due" set.
# ARGV: now, aor, how many expired bindings to drop at most (-1: all), n, n keys
# to remove, then (key, json, expires_at) per binding to save.
# Returns {dropped, live binding JSON...}: dropped counts the expired bindings
# deleted on the way. Expired bindings beyond the cap stay, and keep the
# address-of-record due, for the next purge.
_UPDATE = """
local now = tonumber(ARGV[1])
local aor = ARGV[2]
local cap = tonumber(ARGV[3])
local i = 5
for _ = 1, tonumber(ARGV[4]) do
  redis.call('HDEL', KEYS[1], ARGV[i])
  i = i + 1
end
while i <= #ARGV do
  if tonumber(ARGV[i + 2]) > now then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  else
    redis.call('HDEL', KEYS[1], ARGV[i])
  end
  i = i + 3
end
local result = {0}
local dropped = 0
local first, last
local fields = redis.call('HGETALL', KEYS[1])
for j = 1, #fields, 2 do
  local expires_at = cjson.decode(fields[j + 1])['expires_at']
  if expires_at <= now and (cap < 0 or dropped < cap) then
    redis.call('HDEL', KEYS[1], fields[j])
    dropped = dropped + 1
  else
    if expires_at > now then result[#result + 1] = fields[j + 1] end
    if first == nil or expires_at < first then first = expires_at end
    if last == nil or expires_at > last then last = expires_at end
  end
end
result[1] = dropped
if last == nil then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], aor)
  redis.call('ZREM', KEYS[3], aor)
else
  if last > now then
    redis.call('PEXPIRE', KEYS[1], math.ceil((last - now) * 1000))
  end
  redis.call('ZADD', KEYS[2], last, aor)
  redis.call('ZADD', KEYS[3], first, aor)
end
return result
"""

# KEYS as for _UPDATE; ARGV: now, aor. Returns how many bindings were unexpired.
_REMOVE_AOR = """
local now = tonumber(ARGV[1])
local live = 0
for _, value in ipairs(redis.call('HVALS', KEYS[1])) do
  if cjson.decode(value)['expires_at'] > now then live = live + 1 end
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
return live
"""


class RedisLocationService:
    """A :class:`~sipproxy.location.LocationStore` in a Redis server.

    :param prefix: starts every key, so several deployments can share a server.
    :param timeout: seconds to wait for the first connection, and for each
        command's reply, before raising :class:`LocationUnavailableError`.
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
        self._aors_key = f"{prefix}aors"
        self._due_key = f"{prefix}due"
        self._subs_key = f"{prefix}subs"

    def __repr__(self) -> str:
        return f"<RedisLocationService {self._where()} prefix={self.prefix!r}>"

    async def open(self) -> None:
        """Connect, and check the server answers.

        :raises LocationUnavailableError: no answer within ``timeout``, or the
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
            # Numbers stay strings: a contact such as "1" must not become an int.
            convertNumbers=False,
        )
        try:
            await self._call(self._client().ping())
        except LocationUnavailableError:
            await self.close()
            raise

    async def bindings(self, aor: str, *, now: float) -> list[Binding]:
        """Unexpired bindings of ``aor``, newest first."""
        values = await self._call(self._client().hvals(self._aor_key(aor)))
        return _live(values, now)

    async def update(
        self,
        aor: str,
        *,
        save: Sequence[Binding] = (),
        remove: Sequence[str] = (),
        now: float,
    ) -> list[Binding]:
        """Remove by key, then add or replace, in one script run by Redis."""
        args: list[object] = [repr(now), aor, -1, len(remove), *remove]
        for binding in save:
            args += [binding.key, binding_to_json(binding), repr(binding.expires_at)]
        _dropped, *values = await self._script(_UPDATE, aor, args)
        return _live(values, now)

    async def remove_aor(self, aor: str, *, now: float) -> int:
        """Delete every binding of ``aor``; count the unexpired ones."""
        return int(await self._script(_REMOVE_AOR, aor, [repr(now), aor]))

    async def aors(self, *, now: float) -> list[str]:
        """Addresses-of-record whose latest expiry is after ``now``, sorted."""
        found = await self._call(
            self._client().zrangebyscore(self._aors_key, f"({now!r}", "+inf")
        )
        return sorted(_text(aor) for aor in found)

    async def purge(self, *, now: float, limit: int = 1000) -> int:
        """Drop expired bindings of the addresses-of-record due at ``now``.

        Bindings whose whole address-of-record Redis already expired by TTL are
        gone without being counted; their index entries are cleaned here.
        """
        due = await self._call(
            self._client().zrangebyscore(
                self._due_key, "-inf", repr(now), offset=0, count=limit
            )
        )
        removed = 0
        for aor in due:
            if removed >= limit:
                break
            args: list[object] = [repr(now), aor, limit - removed, 0]
            dropped, *_ = await self._script(_UPDATE, _text(aor), args)
            removed += int(dropped)
        return removed

    async def preferences(self, user: str) -> dict[str, Any]:
        """What is stored for ``user`` (key ``P prefs:<user>``, JSON), or {}."""
        value = await self._call(self._client().get(self._prefs_key(user)))
        found: dict[str, Any] = json.loads(_text(value)) if value else {}
        return found

    async def set_preferences(self, user: str, prefs: Mapping[str, Any]) -> None:
        """Replace (or with {}, delete) what is stored for ``user``; no TTL."""
        key = self._prefs_key(user)
        if prefs:
            await self._call(self._client().set(key, json.dumps(dict(prefs))))
        else:
            await self._call(self._client().delete(key))

    async def subscriptions(self, *, now: float) -> list[dict[str, Any]]:
        """Unexpired records of ``P subs`` by key; expired fields are deleted."""
        found = await self._call(self._client().hgetall(self._subs_key))
        live: list[tuple[str, dict[str, Any]]] = []
        expired: list[str] = []
        for field, value in found.items():
            entry = json.loads(_text(value))
            if float(entry["expires_at"]) <= now:
                expired.append(_text(field))
            else:
                live.append((_text(field), entry["record"]))
        if expired:
            await self._call(self._client().hdel(self._subs_key, expired))
        return [record for _, record in sorted(live, key=lambda kv: kv[0])]

    async def save_subscription(
        self, key: str, record: Mapping[str, Any], *, expires_at: float
    ) -> None:
        """Set field ``key`` of ``P subs``."""
        value = json.dumps({"expires_at": expires_at, "record": dict(record)})
        await self._call(self._client().hset(self._subs_key, key, value))

    async def remove_subscription(self, key: str) -> None:
        """Delete field ``key`` of ``P subs``."""
        await self._call(self._client().hdel(self._subs_key, key))

    def _prefs_key(self, user: str) -> str:
        return f"{self.prefix}prefs:{user}"

    async def close(self) -> None:
        """Close the connection and stop reconnecting."""
        if self._redis is not None:
            redis, self._redis = self._redis, None
            await redis.disconnect()

    def _aor_key(self, aor: str) -> str:
        return f"{self.prefix}aor:{aor}"

    def _where(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"redis://{host}:{self.port}/{self.db}"

    async def _script(self, script: str, aor: str, args: list[object]) -> Any:
        keys = [self._aor_key(aor), self._aors_key, self._due_key]
        # eval() sends EVALSHA once the script is known, EVAL otherwise or
        # after a server restart forgot it (NOSCRIPT).
        return await self._call(self._client().eval(script, keys, args))

    def _client(self) -> Any:
        if self._redis is None:
            raise LocationUnavailableError(f"{self._where()} is not open")
        return self._redis

    async def _call(self, command: Deferred[Any]) -> Any:
        command.addTimeout(self._timeout, self._reactor)
        try:
            return await command
        except TimeoutError:
            raise LocationUnavailableError(
                f"{self._where()}: no answer within {self._timeout} s"
            ) from None
        except (txredisapi.ConnectionError, txredisapi.ResponseError) as error:
            raise LocationUnavailableError(f"{self._where()}: {error}") from error


def _live(values: Sequence[str | bytes], now: float) -> list[Binding]:
    bindings = (binding_from_json(value) for value in values)
    return sort_bindings([b for b in bindings if not b.is_expired(now)])


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
