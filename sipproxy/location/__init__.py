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
not. :func:`~sipproxy.location.spec.location_from_spec` turns a configuration
string into an unopened store;
the service wiring awaits :meth:`LocationService.open` at start, which raises
:class:`LocationUnavailableError` when the backend cannot be reached.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

__all__ = [
    "Binding",
    "Flow",
    "LocationService",
    "LocationStore",
    "LocationUnavailableError",
    "OfficePreferencesStore",
    "SubscriptionStore",
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


class SubscriptionStore(Protocol):
    """Event subscriptions we serve as notifier (busy lamps, RFC 6665).

    Kept beside the bindings so that a restart keeps them (SQLite) and every
    process sharing a Redis server sees them. A record is a JSON object the
    notifier (proxy/notifier.py) writes and reads back whole; the store only
    keeps it under its key until ``expires_at``. Like bindings, a record whose
    ``expires_at`` is not after the caller's ``now`` is gone for every read.
    """

    async def subscriptions(self, *, now: float) -> list[dict[str, Any]]:
        """Every unexpired record, oldest key first (sorted by key)."""

    async def save_subscription(
        self, key: str, record: Mapping[str, Any], *, expires_at: float
    ) -> None:
        """Add ``record`` under ``key``, or replace the one there."""

    async def remove_subscription(self, key: str) -> None:
        """Forget the record under ``key``; nothing happens if there is none."""


class LocationStore(
    LocationService, OfficePreferencesStore, SubscriptionStore, Protocol
):
    """What every store implements: bindings, office settings, subscriptions."""
