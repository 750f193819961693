"""DNS answers as the resolver keeps them: small values, the preferred few, cached.

:mod:`sipproxy.resolver` decides which names to ask for (RFC 3263 §4); this module
holds what comes back. Records become small values (:class:`Pointer` for NAPTR,
:class:`Service` for SRV, address strings for A and AAAA); of one answer only the
records the RFCs prefer are kept (:func:`keep`), so a huge answer cannot fill
memory; SRV records are put in the order to try them (RFC 2782); answers wait in
:class:`AnswerCache` until their TTL runs out.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from random import Random
from typing import Any

from twisted.names import dns

#: Longest CNAME chain followed; resolvers usually give up near here too.
MAX_CNAMES = 8

#: SRV records used per SRV name, in RFC 2782 order: a primary and backups per
#: transport. PJSIP stops at 8 addresses per SRV answer (PJ_DNS_SRV_MAX_ADDR);
#: six servers of one service are more than any operator lists for failover.
MAX_SERVICES = 6
#: A records, and AAAA records, used per name. PJSIP keeps 8 per A answer
#: (PJ_DNS_MAX_IP_IN_A_REC); with at most 8 destinations in all, 4 of each
#: family per name leaves room for a second SRV target to be tried.
MAX_ADDRESSES = 4
#: Records of one answer kept in the cache, the preferred ones: more than the
#: per-lookup caps use, so that SRV weights and SIPS filtering still see a whole
#: group, but bounded so a 64 KiB TCP answer cannot fill memory (Kamailio's SRV
#: weighting also looks at no more than 32 records of a priority group).
MAX_KEPT = 32
#: Cap for any TTL: a record that claims to live for years is re-checked daily.
MAX_TTL = 86400.0


@dataclass(frozen=True, slots=True)
class Pointer:
    """The part of a NAPTR record RFC 3263 §4.1 uses."""

    order: int
    preference: int
    flags: str
    service: str
    replacement: str


@dataclass(frozen=True, slots=True)
class Service:
    """An SRV record (RFC 2782)."""

    priority: int
    weight: int
    port: int
    target: str


@dataclass(frozen=True, slots=True)
class Entry:
    """A cached answer: the records (possibly none) and when they go stale."""

    records: tuple[Any, ...]
    expires_at: float


class AnswerCache:
    """DNS answers by (name, type), at most ``size`` of them, in two LRU parts.

    A new answer enters on probation; asked for again while fresh, it moves to
    the protected part (at most 80 % of ``size``). When full, the least recently
    used answer on probation goes first. A domain with thousands of names, each
    looked up once, so only churns the probationary part: the trunks and domains
    the proxy calls every day stay (segmented LRU, as in Karedla et al., 1994).
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._protected_size = size * 4 // 5
        self._probation: OrderedDict[tuple[str, int], Entry] = OrderedDict()
        self._protected: OrderedDict[tuple[str, int], Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._probation) + len(self._protected)

    def entries(self) -> list[Entry]:
        """Every answer held, fresh or not."""
        return [*self._probation.values(), *self._protected.values()]

    def get(self, key: tuple[str, int], now: float) -> tuple[Any, ...] | None:
        """The records of a fresh answer for ``key``, or None (then forgotten)."""
        entry = self._protected.get(key)
        if entry is not None:
            if now < entry.expires_at:
                self._protected.move_to_end(key)
                return entry.records
            del self._protected[key]
            return None
        entry = self._probation.pop(key, None)
        if entry is None or now >= entry.expires_at:
            return None
        self._protected[key] = entry
        if len(self._protected) > self._protected_size:
            demoted, oldest = self._protected.popitem(last=False)
            self._probation[demoted] = oldest
        return entry.records

    def put(self, key: tuple[str, int], entry: Entry) -> None:
        """Hold ``entry`` on probation, dropping the least valuable beyond ``size``."""
        self._protected.pop(key, None)
        self._probation[key] = entry
        self._probation.move_to_end(key)
        while len(self) > self._size:
            if self._probation:
                self._probation.popitem(last=False)
            else:
                self._protected.popitem(last=False)


def cname_chain(name: str, answers: list[dns.RRHeader]) -> tuple[set[str], float, str]:
    """The names ``name`` aliases to within ``answers``, their least TTL, the last."""
    last = name.lower().rstrip(".")
    names = {last}
    ttl = MAX_TTL
    aliases: dict[str, tuple[float, str]] = {}
    for rr in answers:
        if rr.type == dns.CNAME and isinstance(rr.payload, dns.Record_CNAME):
            target = dns_text(rr.payload.name.name).lower()
            aliases[dns_text(rr.name.name).lower()] = (float(rr.ttl), target)
    while last in aliases and len(names) <= MAX_CNAMES:
        alias_ttl, last = aliases[last]
        ttl = min(ttl, alias_ttl)
        if last in names:
            break
        names.add(last)
    return names, ttl, last


def negative_ttl(authority: Sequence[dns.RRHeader]) -> float:
    """How long a "no such record" answer may be cached (RFC 2308 §5).

    The least of the SOA record's TTL and its MINIMUM field; without an SOA the
    answer "SHOULD NOT be cached" (RFC 2308 §5), so zero.
    """
    for rr in authority:
        if rr.type == dns.SOA and isinstance(rr.payload, dns.Record_SOA):
            return float(min(rr.ttl, rr.payload.minimum))
    return 0.0


def convert(payload: Any) -> Any:
    """A twisted.names record as the small value the resolver works with."""
    if isinstance(payload, dns.Record_A):
        return payload.dottedQuad()
    if isinstance(payload, dns.Record_AAAA):
        return str(ipaddress.IPv6Address(payload.address))
    if isinstance(payload, dns.Record_SRV):
        return Service(
            payload.priority,
            payload.weight,
            payload.port,
            dns_text(payload.target.name).rstrip("."),
        )
    if isinstance(payload, dns.Record_NAPTR):
        return Pointer(
            payload.order,
            payload.preference,
            dns_text(payload.flags.string).lower(),
            dns_text(payload.service.string).lower(),
            dns_text(payload.replacement.name),
        )
    return payload


def keep(kind: int, records: tuple[Any, ...]) -> tuple[Any, ...]:
    """The records of one answer worth keeping, preferred first.

    Addresses: the first :data:`MAX_ADDRESSES` (DNS sets no order among them).
    NAPTR: by order then preference (RFC 3403 §4.1); SRV: by priority (RFC 2782),
    whole priority groups where they fit; :data:`MAX_KEPT` of either.
    """
    if kind in (dns.A, dns.AAAA):
        return records[:MAX_ADDRESSES]
    if len(records) <= MAX_KEPT:
        return records
    if kind == dns.NAPTR:
        return tuple(sorted(records, key=_naptr_rank)[:MAX_KEPT])
    if kind == dns.SRV:
        return tuple(sorted(records, key=_srv_rank)[:MAX_KEPT])
    return records[:MAX_KEPT]


def _naptr_rank(pointer: Any) -> tuple[int, int]:
    if isinstance(pointer, Pointer):
        return (pointer.order, pointer.preference)
    return (65536, 65536)


def _srv_rank(service: Any) -> int:
    return service.priority if isinstance(service, Service) else 65536


def srv_targets(
    transport: str, services: tuple[Any, ...], rng: Random
) -> list[tuple[str, str, int]]:
    """The first :data:`MAX_SERVICES` SRV targets in RFC 2782 order."""
    # RFC 2782: a target of "." means "decidedly not available at this domain".
    usable = tuple(s for s in services if isinstance(s, Service) and s.target)
    ordered = order_services(usable, rng, limit=MAX_SERVICES)
    return [(transport, s.target, s.port) for s in ordered]


def order_services(
    services: tuple[Any, ...], rng: Random, limit: int | None = None
) -> list[Service]:
    """SRV records in the order to try them (RFC 2782, "Usage rules").

    Lowest priority first; within a priority, repeatedly pick one at random with
    probability proportional to its weight, zero-weight records placed first so
    that they are chosen only rarely. With ``limit``, only the first ``limit``.
    """
    records = [s for s in services if isinstance(s, Service)]
    wanted = len(records) if limit is None else limit
    ordered: list[Service] = []
    for priority in sorted({s.priority for s in records}):
        if len(ordered) >= wanted:
            break
        group = sorted((s for s in records if s.priority == priority), key=_weighted)
        while group and len(ordered) < wanted:
            pick = rng.randint(0, sum(s.weight for s in group))
            index = 0
            running = group[0].weight
            while running < pick:
                index += 1
                running += group[index].weight
            ordered.append(group.pop(index))
    return ordered


def _weighted(service: Service) -> bool:
    return service.weight != 0


def dns_text(value: bytes | str) -> str:
    """A name or string of a record as text (twisted.names gives bytes)."""
    return value.decode("ascii", "replace") if isinstance(value, bytes) else value
