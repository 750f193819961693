"""The location service: where a registrar stores bindings and a proxy finds them.

A *binding* maps an address-of-record to one contact address, for a while
(RFC 3261 §10, §10.3). The registrar decides what to store (its §10.3 rules are not
here); this package only keeps bindings and answers lookups, through the
:class:`LocationService` protocol. Beside the bindings, each store keeps the
office settings users change at run time (:class:`OfficePreferencesStore`);
:class:`LocationStore` is both, which every store implements:

- :class:`~sipproxy.location.memory.MemoryLocationService`: dicts, one process;
- :class:`~sipproxy.location.sqlite.SQLiteLocationService`: one file, survives a
  restart; SQL runs on a worker thread;
- :class:`~sipproxy.location.redis.RedisLocationService`: shared by several proxy
  processes, which see each other's registrations at once.

Every method is a coroutine, so callers treat the stores alike and wrap calls in
``Deferred.fromCoroutine``. No store reads a clock: callers pass ``now``, and a
binding whose ``expires_at`` is not after ``now`` is gone for every read, purged or
not. :func:`location_from_spec` turns a configuration string into an unopened store;
the service wiring awaits :meth:`LocationService.open` at start, which raises
:class:`LocationUnavailableError` when the backend cannot be reached.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "Binding",
    "Flow",
    "LocationService",
    "LocationStore",
    "LocationUnavailableError",
    "OfficePreferencesStore",
    "location_from_spec",
    "sort_bindings",
]


class LocationUnavailableError(Exception):
    """The store cannot be opened or reached (a Redis server down, a bad file)."""


@dataclasses.dataclass(slots=True, unsafe_hash=True)  # immutable (sip/headers.py)
class Flow:
    """How a REGISTER reached us, so requests reach the phone back the same way.

    A phone behind NAT can only be reached through the address and port its
    requests came from (RFC 3581 §4), or over the very connection it opened
    (RFC 5626 §5.3); this is that flow, as the server saw it.
    """

    transport: str
    """``"udp"``, ``"tcp"`` or ``"tls"``."""
    local_host: str
    """Our listening address the REGISTER arrived on."""
    local_port: int
    remote_host: str
    """The source address of the REGISTER, as seen by the server."""
    remote_port: int
    connection_id: str | None = None
    """TCP/TLS: the id of the live connection in the process that holds it."""
    owner: str | None = None
    """With a shared store: the SIP URI of the process holding the connection,
    e.g. ``"sip:127.0.0.1:5062;transport=tcp"``; other processes route through it."""


@dataclasses.dataclass(slots=True, unsafe_hash=True)  # immutable (sip/headers.py)
class Binding:
    """One contact address bound to an address-of-record until ``expires_at``.

    ``contact`` is the URI text as registered; ``params`` are the Contact header
    parameters other than ``expires`` and ``q``, kept in order so they can be
    returned in the 200 response (RFC 3261 §10.3 step 8), including unknown
    ones (RFC 4475 §3.1.1.9, cparam01). ``call_id`` and ``cseq`` let the registrar
    reject an out-of-order REGISTER (RFC 3261 §10.3 step 7).
    """

    aor: str
    """The canonical address-of-record, ``sip:user@host`` (RFC 3261 §10.3 step 5)."""
    contact: str
    expires_at: float
    registered_at: float
    call_id: str
    cseq: int
    flow: Flow
    q: float = 1.0
    params: tuple[tuple[str, str | None], ...] = ()
    user_agent: str | None = None
    path: tuple[str, ...] = ()
    """The Path header values of the REGISTER, in order (RFC 3327 §5.3)."""
    instance_id: str | None = None
    """The ``+sip.instance`` value (RFC 5626 §4.1)."""
    reg_id: int | None = None
    """The ``reg-id`` value (RFC 5626 §4.2)."""

    @property
    def key(self) -> str:
        """The identity a new registration replaces.

        An outbound binding is identified by instance and reg-id, not by its
        contact, so a phone re-registering from a new address replaces its old
        flow (RFC 5626 §6); any other binding by its contact URI, which the
        registrar has already normalised (RFC 3261 §10.3 step 7).
        """
        if self.instance_id is not None and self.reg_id is not None:
            return f"{self.instance_id};reg-id={self.reg_id}"
        return self.contact

    def is_expired(self, now: float) -> bool:
        """Whether the binding has lapsed at ``now`` (RFC 3261 §10.2.1.1)."""
        return self.expires_at <= now

    def remaining(self, now: float) -> int:
        """Seconds left, for the ``expires`` parameter of a 200 (RFC 3261 §10.3).

        Rounded rather than truncated, so float noise in ``expires_at - now``
        does not turn 3600 into 3599; a binding still alive reports at least 1,
        because ``expires=0`` would tell the phone it is unregistered.
        """
        if self.is_expired(now):
            return 0
        return max(1, round(self.expires_at - now))


def sort_bindings(bindings: Sequence[Binding]) -> list[Binding]:
    """Order bindings the way every store returns them.

    Most recently registered first, then higher q first, then by contact, so the
    order is total and the same in every store.
    """
    return sorted(bindings, key=lambda b: (-b.registered_at, -b.q, b.contact))


class LocationService(Protocol):
    """Where bindings live. Callers pass ``now``; no store reads a clock.

    Reads never return a binding with ``expires_at <= now``, whether or not it
    has been purged yet.
    """

    async def open(self) -> None:
        """Connect, create the schema; call once before anything else.

        :raises LocationUnavailableError: the backend cannot be reached or used.
        """

    async def bindings(self, aor: str, *, now: float) -> list[Binding]:
        """Unexpired bindings of ``aor``, in :func:`sort_bindings` order."""

    async def update(
        self,
        aor: str,
        *,
        save: Sequence[Binding] = (),
        remove: Sequence[str] = (),
        now: float,
    ) -> list[Binding]:
        """Apply one registration to ``aor`` atomically; return its bindings after.

        First the bindings whose :attr:`Binding.key` is in ``remove`` go, then each
        of ``save`` is added or replaces the one with the same key. A binding in
        ``save`` that is already expired at ``now`` is removed instead. A
        persistent store has made the change durable when this returns, so a
        200 sent after it is never lost (RFC 3261 §10.3 step 7: "MUST be
        atomic").
        """

    async def remove_aor(self, aor: str, *, now: float) -> int:
        """Remove every binding of ``aor``; return how many were unexpired.

        For a REGISTER with ``Contact: *`` (RFC 3261 §10.3 step 6).
        """

    async def aors(self, *, now: float) -> list[str]:
        """Every address-of-record with at least one unexpired binding, sorted."""

    async def purge(self, *, now: float, limit: int = 1000) -> int:
        """Delete up to ``limit`` expired bindings; return how many were deleted.

        Cheap enough to call from a timer every few seconds: no store scans
        every binding to find the expired ones.
        """

    async def close(self) -> None:
        """Release connections and threads; the store is unusable afterwards."""


class OfficePreferencesStore(Protocol):
    """Per-user office settings set at run time: forwarding, do-not-disturb.

    Not part of :class:`LocationService`: the registrar and the proxy never read
    them; :class:`~sipproxy.office.preferences.OfficePreferences` does. Every
    store implements both, keeping the settings in the same database as the
    bindings, so a restart keeps them.
    """

    async def preferences(self, user: str) -> dict[str, Any]:
        """The settings stored for ``user``; {} if none. Values are JSON types."""

    async def set_preferences(self, user: str, prefs: Mapping[str, Any]) -> None:
        """Replace everything stored for ``user`` with ``prefs``; {} deletes it."""


class LocationStore(LocationService, OfficePreferencesStore, Protocol):
    """What every store implements: bindings, and the office settings beside them."""


def location_from_spec(spec: str, reactor: Any) -> LocationStore:
    """Make an unopened store from a configuration string.

    - ``memory:``
    - ``sqlite:PATH``, the path relative to the working directory or absolute;
    - ``redis://HOST[:PORT][/DB][?prefix=PREFIX]``, HOST possibly ``[::1]``,
      PORT 6379 and DB 0 by default, PREFIX ``sipproxy:``; ``redis://:PASSWORD@...``
      authenticates.

    :param reactor: what the store schedules threads and connections on.
    :raises ValueError: the spec is malformed; the message quotes it.
    """
    scheme, colon, rest = spec.partition(":")
    scheme = scheme.lower()
    if not colon or scheme not in ("memory", "sqlite", "redis"):
        raise _bad_spec(spec, f"expected {_FORMS}")
    if scheme == "memory":
        if rest:
            raise _bad_spec(spec, "memory: takes nothing after the colon")
        from sipproxy.location.memory import MemoryLocationService

        return MemoryLocationService()
    if scheme == "sqlite":
        if not rest or rest.startswith("//"):
            raise _bad_spec(spec, "expected sqlite:PATH, e.g. sqlite:/var/lib/loc.db")
        from sipproxy.location.sqlite import SQLiteLocationService

        return SQLiteLocationService(rest, reactor=reactor)
    return _redis_from_spec(spec, reactor)


_FORMS = "memory:, sqlite:PATH or redis://HOST:PORT/DB"


def _bad_spec(spec: str, why: str) -> ValueError:
    return ValueError(
        f"bad location spec {redacted_spec(spec)!r}: {redacted_text(why, spec)}"
    )


def redacted_spec(spec: str) -> str:
    """A location spec without its password, fit for a log (redis://:SECRET@host).

    >>> redacted_spec("redis://:s3cret@127.0.0.1:6379/0")
    'redis://***@127.0.0.1:6379/0'
    """
    scheme, sep, rest = spec.partition("://")
    if sep and "@" in rest:
        return f"{scheme}://***@{rest.rpartition('@')[2]}"
    return spec


def redacted_text(text: str, spec: str) -> str:
    """``text`` (say, a driver's error) without ``spec``'s password in any form.

    A driver may quote the URL it was given, or the password alone: both go.
    """
    text = text.replace(spec, redacted_spec(spec))
    _, sep, rest = spec.partition("://")
    userinfo = rest.rpartition("@")[0] if sep else ""
    secret = userinfo.partition(":")[2] or userinfo
    return text.replace(secret, "***") if secret else text


def _redis_from_spec(spec: str, reactor: Any) -> LocationStore:
    if not spec.lower().startswith("redis://"):
        raise _bad_spec(spec, "expected redis://HOST:PORT/DB")
    try:
        parts = urlsplit(spec)
        host = parts.hostname
        port = parts.port or 6379
    except ValueError as error:  # a bad port, an unclosed [
        raise _bad_spec(spec, str(error)) from None
    if not host:
        raise _bad_spec(spec, "no host")
    db_text = parts.path[1:] or "0"
    if not (db_text.isascii() and db_text.isdigit()):
        raise _bad_spec(spec, "the database must be a number, as in redis://HOST/0")
    options = parse_qs(parts.query, keep_blank_values=True)
    if parts.fragment or set(options) - {"prefix"}:
        raise _bad_spec(spec, "the only option is ?prefix=PREFIX")
    from sipproxy.location.redis import RedisLocationService

    return RedisLocationService(
        host=host,
        port=port,
        db=int(db_text),
        password=parts.password,
        prefix=options.get("prefix", ["sipproxy:"])[-1],
        reactor=reactor,
    )
