"""Abuse defences keyed by source address: rate limit, brute-force bans, connections.

A public registrar is scanned, flooded and brute-forced within minutes of going online.
This module decides, from values alone, what to do about one source address; the
transports and the core ask it and act (drop, refuse, log). Nothing here does I/O or
reads a clock: every decision takes ``now``.

Theory of operation:

- :class:`RateLimiter` is a token bucket per source IP. The transport asks
  :meth:`RateLimiter.allow` for every request it receives, after reading no more than
  the start line, and drops the request when the answer is False.
- :class:`BanList` counts failed authentications per source IP in a sliding window.
  The core reports :meth:`BanList.failed` when presented credentials are wrong and
  :meth:`BanList.succeeded` when they are right; the transports drop every message
  from an address for which :meth:`BanList.is_banned` is True. :func:`ban_line` is
  the one log line a ban produces; ``etc/fail2ban/filter.d/sipproxy.conf`` matches it.
- :class:`ConnectionLimiter` counts open TCP/TLS connections per source IP and in
  total; the stream factory refuses a connection beyond either limit.
- :class:`TrustedNetworks` is the operator's ``--trusted`` list: one membership test,
  ``ip in trusted``, for everything that treats a source as trusted (never rate
  limited or banned; allowed to assert identities, RFC 3325).

A "source" is an IPv4 address, or the /64 network of an IPv6 address
(:func:`source_key`): one IPv6 subscriber gets a /64 or more and can send from any of
its 2**64 addresses, so counting per /128 would give each of them fresh tokens and
fresh guesses. An IPv4-mapped IPv6 address (``::ffff:192.0.2.7``, a dual-stack socket)
is its IPv4 address.

Every table is bounded by ``max_sources`` entries, so a flood from spoofed or rotating
addresses costs a fixed amount of memory. Each table evicts in least-recently-used order
in O(1): a source that keeps sending stays in the table, the quiet ones go first.

An office behind one NAT address looks like one source that sends a lot, so the
defaults are sized for it: 200 phones re-registering at once after an outage are never
rate limited, never banned and never refused a connection (see each class).
"""

from __future__ import annotations

import ipaddress
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Iterator

from sipproxy.sip.addressing import canonical_ip, source_key

__all__ = [
    "BanList",
    "ConnectionLimiter",
    "RateLimiter",
    "TrustedNetworks",
    "ban_line",
    "source_key",
]

_EPSILON = 1e-9


class TrustedNetworks:
    """The operator's trusted networks (``--trusted``): a membership test.

    ``"192.0.2.7" in trusted`` is True when the address lies in one of the
    networks; entries are networks or single addresses (``198.51.100.0/24``,
    ``192.0.2.7``, ``2001:db8::/48``), host bits ignored. An IPv4-mapped IPv6 source
    matches its IPv4 network; text that is no address is never trusted.

    :param entries: the ``--trusted`` values as written.
    :raises ValueError: for an entry that is no address or network.
    """

    __slots__ = ("_networks",)

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self._networks = tuple(
            ipaddress.ip_network(entry.strip("[]"), strict=False) for entry in entries
        )

    def reload(self, entries: Iterable[str]) -> None:
        """Trust ``entries`` from now on (a configuration reload).

        The object stays the same, so everything holding it (the transports, the
        ban list, the core) sees the new networks at once.

        :raises ValueError: for an entry that is no address or network; then
            nothing changes.
        """
        self._networks = TrustedNetworks(entries)._networks

    def __contains__(self, ip: object) -> bool:
        """Whether ``ip`` (an address string, brackets allowed) is trusted."""
        if not self._networks or not isinstance(ip, str):
            return False
        address = canonical_ip(ip)
        return address is not None and any(
            address in network for network in self._networks
        )

    def __bool__(self) -> bool:
        """Whether any network is trusted at all."""
        return bool(self._networks)

    def __iter__(self) -> Iterator[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """The networks, in the order given."""
        return iter(self._networks)

    def __repr__(self) -> str:
        return f"TrustedNetworks({[str(n) for n in self._networks]!r})"


class _Bucket:
    """The tokens one source has left, as of ``updated_at``."""

    __slots__ = ("tokens", "updated_at")

    def __init__(self, tokens: float, updated_at: float) -> None:
        self.tokens = tokens
        self.updated_at = updated_at


class RateLimiter:
    """A token bucket per source: at most ``rate`` requests a second.

    A source is an IPv4 address or an IPv6 /64 (:func:`source_key`).

    Each source starts with ``burst`` tokens; every request spends one, and tokens come
    back at ``rate`` per second up to ``burst``. A request that finds no whole token is
    refused (the caller drops it). Buckets are independent, so one flooding source
    empties only its own and never slows down another.

    The defaults (``rate=100``, ``burst=600``) are generous on purpose. An office of 200
    phones behind one NAT address, re-registering at once after an outage, sends 2
    requests per phone (the REGISTER, challenged with 401, then the REGISTER with
    credentials: 400 requests), and over UDP a busy server sees about one
    retransmission per phone on top (Timer E fires after 500 ms, RFC 3261 §17.1.2.2):
    600 requests from one address within a second, which the burst admits even if all
    arrive in the same instant. The rate of 100 a second then refills the whole burst
    in 6 s, and it is far above what such an office sends in steady state (200 phones
    refreshing a 3600 s registration send one REGISTER every 18 s on average), while a
    flood of thousands of requests a second from one address loses all but 100 of them.

    Memory is bounded: at most ``max_sources`` buckets. A bucket untouched for
    ``burst / rate`` seconds is full again and forgetting it changes nothing; when the
    table is full, the least recently used bucket is forgotten (idle or not: its source
    then starts again with a full bucket, which errs on the side of letting it in).

    :param rate: tokens added per second, per source (> 0).
    :param burst: the most tokens a source can hold, i.e. the largest burst (>= 1).
    :param max_sources: the most sources remembered at once (>= 1).
    """

    def __init__(
        self, rate: float = 100.0, burst: float = 600.0, *, max_sources: int = 100_000
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, not {rate}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, not {burst}")
        if max_sources < 1:
            raise ValueError(f"max_sources must be at least 1, not {max_sources}")
        self.rate = rate
        self.burst = burst
        self.max_sources = max_sources
        #: seconds after which an untouched bucket is full again
        self.refill_time = burst / rate
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        """The number of sources remembered (never more than ``max_sources``)."""
        return len(self._buckets)

    def allow(self, source_ip: str, now: float) -> bool:
        """Spend one token of ``source_ip``; False when it has none (drop the request).

        O(1): one dictionary lookup, and at most one eviction.

        :param source_ip: the address the request came from (the IP only, no port).
        :param now: the current time in seconds.
        """
        key = source_key(source_ip)
        bucket = self._buckets.get(key)
        if bucket is None:
            self._make_room()
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        else:
            self._buckets.move_to_end(key)
            # A clock that steps back refills nothing, and takes nothing away.
            elapsed = max(0.0, now - bucket.updated_at)
            bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.rate)
            bucket.updated_at = max(now, bucket.updated_at)
        # 0.1 s at 10 a second is 0.9999999999999 tokens in floating point: one token.
        if bucket.tokens >= 1.0 - _EPSILON:
            bucket.tokens = max(0.0, bucket.tokens - 1.0)
            return True
        return False

    def _make_room(self) -> None:
        """If the table is full, forget the bucket idle longest.

        The table is in least-recently-used order, so the first bucket is the one idle
        longest: if any bucket is full again (idle ``refill_time``), this one is, and
        forgetting it loses nothing; if not, its source merely starts afresh.
        """
        if len(self._buckets) < self.max_sources:
            return
        self._buckets.popitem(last=False)


class _Failures:
    """Recent failed authentications of one source, oldest first.

    Two parallel arrays of machine numbers (the moments, and a hash of the user name
    or -1), not a list of tuples: a fraction of the memory, which counts at 100,000
    sources.
    """

    __slots__ = ("moments", "users")

    def __init__(self) -> None:
        self.moments = array("d")
        self.users = array("q")

    def append(self, moment: float, user: int) -> None:
        self.moments.append(moment)
        self.users.append(user)

    def drop_oldest(self) -> None:
        del self.moments[0]
        del self.users[0]

    def forgive(self, user: int, since: float) -> None:
        """Forget the failures of ``user``, and those before ``since``."""
        kept = [
            (moment, key)
            for moment, key in zip(self.moments, self.users, strict=True)
            if key != user and moment > since
        ]
        self.moments = array("d", (moment for moment, _ in kept))
        self.users = array("q", (key for _, key in kept))


_NO_USER = -1


def _user_key(user: str | None) -> int:
    # The user name comes from the request: keep a hash, not the string, so that an
    # attacker's long names cost no memory. A collision only forgives one failure.
    return _NO_USER if user is None else hash(user) & 0x7FFF_FFFF_FFFF_FFFF


class BanList:
    """Ban a source address after ``max_failures`` failed authentications in ``window``.

    A banned address is ignored for ``ban_time`` seconds: its requests are dropped and
    get no response, so a password cracker such as sipvicious' ``svcrack`` learns
    nothing more. Only *failed authentications* count: credentials were presented and
    were wrong, or named a user that does not exist. A request without credentials (the
    first REGISTER, answered with a challenge), a stale nonce and a retransmission are
    not failures; so 200 phones with correct credentials re-registering at once from
    one NAT address, each challenged once, record no failure at all.

    Failures are counted per source address, not per (address, user), as the issue
    asks and the threat requires: counting per (address, user) would let an
    attacker try one password against each of many users (spraying, or ``svcrack``
    over an extension range) without ever reaching the limit. A success from the same
    address does not forgive other users' failures: if it did, an attacker with one
    valid account, or one hiding behind a busy office NAT, could guess forever by
    slipping in a correct REGISTER now and then. A success *does* forgive the earlier
    failures of the same user from the same address (pass ``user`` to both calls): a
    user who mistyped a password and then got it right has proved the failures were
    theirs, and whoever knows that password gains nothing from the reset.

    What this means for an office behind one NAT address: a phone with a wrong password
    counts against the whole office. A phone retries a refused registration every 20 to
    60 s or more (its registration retry interval), i.e. 1 to 3 failures a minute,
    well under the default 10 within 60 s; several such phones at once could ban the
    office. For that, list the office address or network in ``exempt``: it is never
    counted or banned (fail2ban's ``ignoreip`` should then list it too).

    Memory is bounded: at most ``max_sources`` addresses with recent failures (least
    recently failed forgotten first) and at most ``max_sources`` bans (soonest to end
    lifted first), each keeping at most ``max_failures`` timestamps: about 55 MB in the
    worst case of 100,000 addresses with 9 recent failures each.

    :param max_failures: failures within ``window`` that ban an address (>= 1).
    :param window: the sliding window, in seconds.
    :param ban_time: how long a ban lasts, in seconds.
    :param max_sources: the most addresses remembered in each table.
    :param exempt: addresses or networks ("192.0.2.7", "198.51.100.0/24") never
        banned, or a :class:`TrustedNetworks`.

    Sources are counted and banned by :func:`source_key`: an IPv6 ban covers the
    whole /64. The ban line (:func:`ban_line`) and :meth:`bans` name the address
    whose failure completed the count, so fail2ban's ``<HOST>`` still matches and
    the admin API lists addresses; :meth:`lift` takes any address of the /64, or
    the network (``2001:db8::/64``).
    """

    def __init__(
        self,
        max_failures: int = 10,
        window: float = 60.0,
        ban_time: float = 600.0,
        *,
        max_sources: int = 100_000,
        exempt: Iterable[str] | TrustedNetworks = (),
    ) -> None:
        if max_failures < 1:
            raise ValueError(f"max_failures must be at least 1, not {max_failures}")
        if window <= 0 or ban_time <= 0:
            raise ValueError("window and ban_time must be positive")
        if max_sources < 1:
            raise ValueError(f"max_sources must be at least 1, not {max_sources}")
        self.max_failures = max_failures
        self.window = window
        self.ban_time = ban_time
        self.max_sources = max_sources
        self.exempt = (
            exempt if isinstance(exempt, TrustedNetworks) else TrustedNetworks(exempt)
        )
        self._failures: OrderedDict[str, _Failures] = OrderedDict()
        #: source -> (the moment its ban ends, the address that earned it); in order
        #: of banning, so soonest end first
        self._bans: OrderedDict[str, tuple[float, str]] = OrderedDict()

    def __len__(self) -> int:
        """The number of addresses remembered, with failures or banned."""
        return len(self._failures) + len(self._bans)

    def failed(self, source_ip: str, now: float, *, user: str | None = None) -> bool:
        """Record a failed authentication; True when this very failure bans the source.

        When it returns True, log :func:`ban_line` once. A source already banned, or
        exempt, returns False and records nothing.

        :param source_ip: the address the request came from (the IP only, no port).
        :param now: the current time in seconds.
        :param user: the user name the credentials claimed, if known; lets a later
            success of the same user forgive this failure.
        """
        if self.is_banned(source_ip, now) or source_ip in self.exempt:
            return False
        key = source_key(source_ip)
        record = self._failures.get(key)
        if record is None:
            if len(self._failures) >= self.max_sources:
                self._failures.popitem(last=False)
            record = self._failures[key] = _Failures()
        else:
            self._failures.move_to_end(key)
        record.append(now, _user_key(user))
        since = now - self.window
        # At most max_failures entries are kept, so this is O(max_failures) at worst.
        moments = record.moments
        while moments and (len(moments) > self.max_failures or moments[0] <= since):
            record.drop_oldest()
        if len(record.moments) < self.max_failures:
            return False
        del self._failures[key]
        self._ban(key, source_ip, now + self.ban_time, now)
        return True

    def succeeded(self, source_ip: str, now: float, *, user: str | None = None) -> None:
        """Record a successful authentication: forgive ``user``'s failures from here.

        Other users' failures from the same address stay counted (see the class
        docstring); without ``user`` nothing is forgiven.

        :param source_ip: the address the request came from.
        :param now: the current time in seconds.
        :param user: the user name that authenticated.
        """
        key = source_key(source_ip)
        record = self._failures.get(key)
        if record is None or user is None:
            return
        record.forgive(_user_key(user), now - self.window)
        if not record.moments:
            del self._failures[key]

    def is_banned(self, source_ip: str, now: float) -> bool:
        """True while ``source_ip`` is banned: drop what it sends, answer nothing.

        O(1); an ended ban is forgotten on the way.
        """
        key = source_key(source_ip)
        ban = self._bans.get(key)
        if ban is None:
            return False
        if ban[0] > now:
            return True
        del self._bans[key]
        return False

    def bans(self, now: float) -> list[tuple[str, float]]:
        """The bans in force at ``now``: (address, when it ends), soonest first.

        The address is the one whose failure completed the count; for IPv6 the
        ban covers its whole /64.
        """
        self._expire(now)
        return sorted(
            ((ip, until) for until, ip in self._bans.values() if until > now),
            key=lambda ban: ban[1],
        )

    def lift(self, source_ip: str) -> bool:
        """End the ban of ``source_ip`` and forget its failures; False if not banned.

        ``source_ip`` is an address (its /64 for IPv6) or an IPv6 /64 network.
        """
        key = source_ip if "/" in source_ip else source_key(source_ip)
        self._failures.pop(key, None)
        return self._bans.pop(key, None) is not None

    def _ban(self, key: str, source_ip: str, until: float, now: float) -> None:
        self._expire(now)
        if len(self._bans) >= self.max_sources:
            self._bans.popitem(last=False)
        self._bans[key] = (until, source_ip)

    def _expire(self, now: float) -> None:
        # Bans all last ban_time, so they end in the order they began: ended bans are
        # at the front. Amortised O(1) per ban.
        while self._bans:
            key, (until, _) = next(iter(self._bans.items()))
            if until > now:
                return
            del self._bans[key]


class ConnectionLimiter:
    """At most ``max_per_source`` TCP/TLS connections per source, ``max_total`` in all.

    The per-source default is 500, not less: every phone of an office behind one NAT
    address keeps its own connection, so 200 phones hold 200 connections from one
    address; and after an outage that changed the NAT's mappings, the 200 old
    connections stay open on our side until they time out while the phones open 200
    new ones. 400, plus margin. A single scanner holding connections open is stopped
    well before it can exhaust the server's file descriptors.

    The total cap (default 10,000) stops many sources together: past it, every new
    connection is refused, so the process keeps descriptors for its UDP sockets,
    the store and the connections it has (raise ``LimitNOFILE`` above it).

    Call :meth:`opened` for each accepted connection and :meth:`closed` exactly once
    for each connection that :meth:`opened` allowed. Memory is bounded by the number of
    open connections. Sources are keyed by :func:`source_key` (IPv6 by /64).

    :param max_per_source: the most connections one source may hold (>= 1).
    :param max_total: the most inbound connections open at once (>= 1).
    """

    def __init__(self, max_per_source: int = 500, max_total: int = 10_000) -> None:
        if max_per_source < 1:
            raise ValueError(f"max_per_source must be at least 1, not {max_per_source}")
        if max_total < 1:
            raise ValueError(f"max_total must be at least 1, not {max_total}")
        self.max_per_source = max_per_source
        self.max_total = max_total
        self._open: dict[str, int] = {}
        self._total = 0

    def __len__(self) -> int:
        """The number of sources with open connections."""
        return len(self._open)

    @property
    def total(self) -> int:
        """The inbound connections open now, from every source."""
        return self._total

    @property
    def full(self) -> bool:
        """Whether the total cap is reached: every new connection is refused."""
        return self._total >= self.max_total

    def count(self, source_ip: str) -> int:
        """The connections ``source_ip``'s source holds open."""
        return self._open.get(source_key(source_ip), 0)

    def opened(self, source_ip: str) -> bool:
        """Count a new connection from ``source_ip``; False: refuse it (not counted)."""
        if self._total >= self.max_total:
            return False
        key = source_key(source_ip)
        current = self._open.get(key, 0)
        if current >= self.max_per_source:
            return False
        self._open[key] = current + 1
        self._total += 1
        return True

    def closed(self, source_ip: str) -> None:
        """Count one connection from ``source_ip`` as closed; unknown addresses pass."""
        key = source_key(source_ip)
        current = self._open.get(key, 0)
        if current == 0:
            return
        self._total -= 1
        if current == 1:
            del self._open[key]
        else:
            self._open[key] = current - 1


def ban_line(ip: str, failures: int, ban_time: float) -> str:
    """The one log line for a ban; ``etc/fail2ban/filter.d/sipproxy.conf`` matches it.

    >>> ban_line("192.0.2.7", 10, 600.0)
    'sipproxy: banned 192.0.2.7 for 600 s after 10 failed authentications'

    :param ip: the banned source address.
    :param failures: how many failed authentications led to the ban.
    :param ban_time: how long the ban lasts, in seconds (rounded to whole seconds).
    """
    return (
        f"sipproxy: banned {ip} for {round(ban_time)} s "
        f"after {failures} failed authentications"
    )
