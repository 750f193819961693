"""Locating SIP servers: from a URI to the ordered destinations to try (RFC 3263 §4).

Theory of operation. :meth:`SIPResolver.resolve` takes the target (``maddr`` if
present, else the host) and decides, as RFC 3263 §4 does:

- a numeric IP address is used as it is, with no query;
- a host name with a port gets A and AAAA queries only;
- a host name with a ``transport`` parameter but no port gets SRV for that
  transport, then A/AAAA at the default port when there is no SRV;
- otherwise NAPTR picks the transports (§4.1), SRV the servers (§4.2); with no
  NAPTR, SRV for every transport we support; with no SRV either, A/AAAA at the
  default port over UDP (TLS for ``sips``).

Every DNS answer is cached under (name, type) until its TTL runs out on the
injected clock; NXDOMAIN and empty answers by their SOA (RFC 2308 §5), failures
(timeout, SERVFAIL, refused) for ``failure_ttl`` seconds (RFC 2308 §7), so a dead
DNS server costs one timeout per name and period rather than one per call. The
cache keeps at most ``max_cache`` answers, dropping the least recently used,
among those asked for only once first (see :class:`sipproxy.dnsrecords.AnswerCache`).
A query already on its way is shared by every lookup that needs the same answer.
A lookup that fails is an empty list: resolve() never raises, and logs once.

Limits. RFC 3263 bounds nothing, and the domain being looked up is chosen by
whoever wrote the Request-URI: one INVITE to a domain publishing 50 NAPTR
records, each to 50 SRV records, once cost 5,051 queries and 2,500 destinations
in one proxy, before these limits. So each resolve() uses at most
``_MAX_POINTERS`` NAPTR records, and of each answer only what
:mod:`sipproxy.dnsrecords` keeps (``MAX_SERVICES`` SRV records, ``MAX_ADDRESSES``
A and AAAA records per name), always the ones the RFCs prefer; sends at most
``_MAX_QUERIES`` queries, ``_IN_FLIGHT`` at a time, one level at a time (NAPTR,
then SRV, then addresses in the order they will be tried); and returns at most
``_MAX_PEERS`` destinations, which the proxy tries one after another. A lookup
that reaches the query cap returns what it has found and logs the domain (once
per ``_CAP_LOG_INTERVAL``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from random import Random
from typing import Any, TypeVar, cast

from twisted.internet.defer import Deferred, TimeoutError, gatherResults
from twisted.internet.interfaces import IReactorTime, IResolver
from twisted.logger import Logger
from twisted.names import client, dns, error, hosts, resolve

from sipproxy.dnsrecords import (
    MAX_CNAMES,
    MAX_TTL,
    AnswerCache,
    Entry,
    Pointer,
    cname_chain,
    convert,
    dns_text,
    keep,
    negative_ttl,
    srv_targets,
)
from sipproxy.sip.addressing import Peer, ip_of
from sipproxy.sip.transports import DEFAULT_PORTS, KINDS, TCP, TLS, UDP, is_secure
from sipproxy.sip.uri import SipURI

__all__ = ["DNS_TIMEOUT", "SIPResolver", "make_resolver"]

#: Seconds to wait for each try of a DNS query: a dead server fails a call in 4 s.
DNS_TIMEOUT = (1, 3)

#: NAPTR service fields and the transport each names (RFC 3263 §4.1, table 1).
_NAPTR_SERVICES = {k.naptr_service: k.name for k in KINDS.values() if k.naptr_service}
#: SRV owner-name prefixes (RFC 3263 §4.1: "_sips" is TLS over TCP).
_SRV_PREFIXES = {k.name: k.srv_prefix for k in KINDS.values() if k.srv_prefix}
#: The order we try transports in when DNS states no preference.
_PREFERENCE = tuple(_SRV_PREFIXES)
# The transport parameter values we understand; "sctp", "ws" and others we cannot send.
_TRANSPORT_PARAMS = frozenset(_PREFERENCE)
# Limits per resolve() call (see the module docstring). RFC 3263 gives none;
# these follow what SIP stacks ship with and leave room for any real domain.
#: NAPTR records followed, best order and preference first. A real domain
#: publishes one per transport (UDP, TCP, TLS, maybe SCTP), so four cover all
#: the services one order can offer; Kamailio keeps track of at most 32
#: (MAX_NAPTR_RRS) but also tries them one at a time, on failure.
_MAX_POINTERS = 4
#: DNS queries sent per lookup, CNAME hops included. A lookup of a real domain
#: takes 1 NAPTR, up to 3 SRV and 2 per SRV target (A, AAAA): about 9 to 13.
_MAX_QUERIES = 16
#: Destinations returned per lookup: PJSIP's PJSIP_MAX_RESOLVED_ADDRESSES is 8.
#: Each is tried in turn until Timer C or the transaction runs out; more would
#: never be reached.
_MAX_PEERS = 8
#: Queries of one lookup waiting for their answer at the same time: enough for
#: the SRV queries of all NAPTR records we follow, or A and AAAA of two targets.
_IN_FLIGHT = 4
#: Seconds between two log lines about the same domain reaching the query cap.
_CAP_LOG_INTERVAL = 3600.0
#: Domains remembered for that rate limit; the oldest is forgotten first.
_CAP_LOG_NAMES = 1024
_T = TypeVar("_T")
_Answers = tuple[list[dns.RRHeader], list[dns.RRHeader], list[dns.RRHeader]]


@dataclass(slots=True)
class _Trace:
    """What one resolve() call saw, so that it logs once at the end."""

    queried: bool = False
    failures: list[str] = field(default_factory=list)
    #: DNS queries sent so far (answers from the cache cost nothing).
    queries: int = 0
    #: True once a query was not sent because of :data:`_MAX_QUERIES`.
    capped: bool = False

    def spend(self) -> bool:
        """Count one more query; False, and ``capped``, when none is left."""
        if self.queries >= _MAX_QUERIES:
            self.capped = True
            return False
        self.queries += 1
        self.queried = True
        return True


class SIPResolver:
    """Turn a SIP or SIPS URI into the destinations to try, in order (RFC 3263 §4).

    :param resolver: any twisted.names resolver; :func:`make_resolver` builds one.
    :param clock: the clock the cache reads TTLs against.
    :param transports: the transports we can send over (``udp``, ``tcp``, ``tls``).
    :param max_cache: how many DNS answers the cache holds.
    :param rng: the random source for SRV weights (RFC 2782); seed it in tests.
    :param timeout: seconds per try of each DNS query.
    :param failure_ttl: how long a failed lookup is remembered (RFC 2308 §7).
    """

    log = Logger()

    def __init__(
        self,
        resolver: IResolver,
        clock: IReactorTime,
        *,
        transports: Collection[str] = (UDP.name, TCP.name),
        max_cache: int = 10000,
        rng: Random | None = None,
        timeout: Sequence[float] = DNS_TIMEOUT,
        failure_ttl: float = 30.0,
    ) -> None:
        self._resolver = resolver
        self._clock = clock
        wanted = {t.lower() for t in transports}
        self._transports = tuple(t for t in _PREFERENCE if t in wanted)
        self._rng = rng if rng is not None else Random()
        # IResolver declares whole seconds, but twisted.names takes any number.
        self._timeout = cast(tuple[int, ...], tuple(timeout))
        self._failure_ttl = failure_ttl
        self._cache = AnswerCache(max_cache)
        # Queries on their way, and who else waits for each answer.
        self._pending: dict[tuple[str, int], list[Deferred[tuple[Any, ...]]]] = {}
        # When each domain last logged reaching the query cap.
        self._capped_at: OrderedDict[str, float] = OrderedDict()

    async def resolve(self, uri: SipURI) -> list[Peer]:
        """The destinations to try for ``uri``, best first; empty if there are none.

        Never raises: DNS failures give an empty list (or fewer destinations) and
        one log event.
        """
        trace = _Trace()
        try:
            peers = await self._resolve(uri, trace)
        except Exception:
            self.log.failure("resolving {uri} failed", uri=str(uri))
            return []
        if trace.capped:
            self._log_capped(uri, trace)
        if trace.failures:
            self.log.warn(
                "DNS lookups for {uri} failed: {failures}",
                uri=str(uri),
                failures="; ".join(trace.failures),
            )
        elif not peers and trace.queried and not trace.capped:
            self.log.info("no SIP server found in DNS for {uri}", uri=str(uri))
        return peers[:_MAX_PEERS]

    def _log_capped(self, uri: SipURI, trace: _Trace) -> None:
        """One line per domain and :data:`_CAP_LOG_INTERVAL`, however often asked."""
        domain = (uri.param("maddr") or uri.host).strip("[]").lower()
        now = self._clock.seconds()
        last = self._capped_at.get(domain)
        if last is not None and now - last < _CAP_LOG_INTERVAL:
            return
        self._capped_at[domain] = now
        self._capped_at.move_to_end(domain)
        while len(self._capped_at) > _CAP_LOG_NAMES:
            self._capped_at.popitem(last=False)
        self.log.warn(
            "DNS lookup for {domain} stopped after {queries} queries (the limit "
            "per lookup); records beyond it are ignored",
            domain=domain,
            queries=trace.queries,
        )

    def _allowed(self, secure: bool) -> tuple[str, ...]:
        # RFC 3261 §26.2.2: a SIPS URI is only ever reached over TLS, never less.
        if secure:
            return tuple(t for t in self._transports if is_secure(t))
        return self._transports

    async def _resolve(self, uri: SipURI, trace: _Trace) -> list[Peer]:
        secure = uri.scheme.lower() == "sips"
        allowed = self._allowed(secure)
        if not allowed:
            return []
        # RFC 3261 §19.1.1: "The maddr parameter indicates the server address to
        # be contacted for this user, overriding any address derived from the
        # host field."
        target = (uri.param("maddr") or uri.host).strip("[]")
        explicit = uri.transport
        if explicit is not None:
            if explicit not in _TRANSPORT_PARAMS:
                return []
            # RFC 3261 §26.2.2: transport=tcp on a SIPS URI means TLS over TCP.
            if secure and explicit == TCP.name:
                explicit = TLS.name
            if explicit not in allowed:
                return []
        # RFC 3263 §4.1: with no transport parameter, UDP for SIP, TLS for SIPS;
        # a proxy without UDP uses the first transport it has (any will do, §18.1).
        default = explicit or (UDP.name if UDP.name in allowed else allowed[0])
        if ip_of(target) is not None:
            port = uri.port or DEFAULT_PORTS[default]
            return [Peer(default, target, port)]
        if uri.port is not None:
            # RFC 3263 §4.2: with an explicit port, A or AAAA records only.
            return await self._address_peers(target, default, uri.port, trace)
        if explicit is not None:
            # RFC 3263 §4.2: SRV for that transport only, then A/AAAA.
            services = await self._query(
                _SRV_PREFIXES[explicit] + target, dns.SRV, trace
            )
            if services:
                return await self._peers_of(
                    srv_targets(explicit, services, self._rng), trace
                )
            return await self._address_peers(
                target, explicit, DEFAULT_PORTS[explicit], trace
            )
        pointers = await self._query(target, dns.NAPTR, trace)
        if pointers:
            return await self._naptr_peers(pointers, allowed, trace)
        # RFC 3263 §4.1: "If no NAPTR records are found, the client constructs SRV
        # queries for those transport protocols it supports".
        found = await _gather(
            [self._query(_SRV_PREFIXES[t] + target, dns.SRV, trace) for t in allowed]
        )
        if any(found):
            targets = [
                target
                for transport, services in zip(allowed, found, strict=True)
                for target in srv_targets(transport, services, self._rng)
            ]
            return await self._peers_of(targets, trace)
        # RFC 3263 §4.2: "If no SRV records were found, the client performs an A or
        # AAAA record lookup of the domain name", at the transport's default port.
        return await self._address_peers(target, default, DEFAULT_PORTS[default], trace)

    async def _naptr_peers(
        self, pointers: tuple[Any, ...], allowed: tuple[str, ...], trace: _Trace
    ) -> list[Peer]:
        """Follow the NAPTR records we can use to SRV, then addresses (§4.1)."""
        # RFC 3263 §4.1: a SIPS URI discards services other than SIPS (allowed is
        # then TLS only); we discard transports we cannot send over, and only the
        # "S" flag (an SRV replacement) is defined for SIP.
        usable = [
            p
            for p in pointers
            if p.flags == "s" and _NAPTR_SERVICES.get(p.service) in allowed
        ]
        # The domain listed its services and we can use none of them: we do not
        # guess others (the SRV fallback is for domains without NAPTR records).
        if not usable:
            return []
        # RFC 3403 §4.1: "once a match is found the client MUST NOT consider
        # records with a different Order"; preference only ranks within it.
        first = min(p.order for p in usable)
        chosen = sorted((p for p in usable if p.order == first), key=_preference)
        # The least preferred beyond the cap are ignored: one level of at most
        # _MAX_POINTERS SRV queries, all in flight together.
        chosen = chosen[:_MAX_POINTERS]
        found = await _gather(
            [self._query(p.replacement, dns.SRV, trace) for p in chosen]
        )
        targets = [
            target
            for p, services in zip(chosen, found, strict=True)
            for target in srv_targets(_NAPTR_SERVICES[p.service], services, self._rng)
        ]
        return await self._peers_of(targets, trace)

    async def _peers_of(
        self, targets: list[tuple[str, str, int]], trace: _Trace
    ) -> list[Peer]:
        """The addresses of SRV ``targets`` (transport, name, port), in their order.

        Targets are looked up a few at a time (A and AAAA of each together, at
        most :data:`_IN_FLIGHT` queries waiting), and no further once
        :data:`_MAX_PEERS` destinations are found or the query cap is reached:
        the later targets would only be tried after all of these anyway.
        """
        peers: list[Peer] = []
        step = max(1, _IN_FLIGHT // 2)
        for start in range(0, len(targets), step):
            if len(peers) >= _MAX_PEERS or trace.capped:
                break
            lists = await _gather(
                [
                    self._address_peers(name, transport, port, trace)
                    for transport, name, port in targets[start : start + step]
                ]
            )
            peers = _unique([*peers, *(peer for found in lists for peer in found)])
        return peers[:_MAX_PEERS]

    async def _address_peers(
        self, name: str, transport: str, port: int, trace: _Trace
    ) -> list[Peer]:
        """One destination per A then AAAA record of ``name``."""
        if ip_of(name) is not None:  # an SRV target should not be one, but some are
            return [Peer(transport, name, port)]
        found = await _gather(
            [self._query(name, dns.A, trace), self._query(name, dns.AAAA, trace)]
        )
        return [
            Peer(transport, address, port) for records in found for address in records
        ]

    async def _query(self, name: str, kind: int, trace: _Trace) -> tuple[Any, ...]:
        """The records of type ``kind`` at ``name``, from the cache or from DNS.

        At most ``MAX_KEPT`` records, the preferred ones (see
        :func:`sipproxy.dnsrecords.keep`); none, without asking, once ``trace``
        has spent its queries.
        """
        key = (name.lower().rstrip("."), kind)
        cached = self._cache.get(key, self._clock.seconds())
        if cached is not None:
            return cached
        waiting = self._pending.get(key)
        if waiting is not None:
            # Concurrent calls to one domain cost one query, not one each.
            answer: Deferred[tuple[Any, ...]] = Deferred()
            waiting.append(answer)
            return await answer
        if not trace.spend():
            return ()
        self._pending[key] = waiting = []
        try:
            found, ttl = await self._fetch(name, kind, trace)
        except Exception as failure:
            del self._pending[key]
            for answer in waiting:
                answer.errback(failure)
            raise
        del self._pending[key]
        records = keep(kind, found)
        if ttl > 0:
            expires_at = self._clock.seconds() + min(ttl, MAX_TTL)
            self._cache.put(key, Entry(records, expires_at))
        for answer in waiting:
            answer.callback(records)
        return records

    async def _fetch(
        self, name: str, kind: int, trace: _Trace
    ) -> tuple[tuple[Any, ...], float]:
        """Ask DNS; return the records (CNAMEs followed) and how long to keep them."""
        query_name = name
        ttl = MAX_TTL
        for _ in range(MAX_CNAMES):
            try:
                answers, authority, _additional = cast(
                    _Answers,
                    await self._resolver.query(
                        dns.Query(query_name, kind, dns.IN), self._timeout
                    ),
                )
            except error.DNSNameError as failure:
                # NXDOMAIN is an answer, not a failure: cache it, do not log it.
                message = failure.args[0] if failure.args else None
                return (), min(ttl, negative_ttl(getattr(message, "authority", [])))
            except Exception as failure:
                label = dns.QUERY_TYPES.get(kind, str(kind))
                trace.failures.append(f"{label} {name}: {_describe(failure)}")
                return (), self._failure_ttl
            names, chain_ttl, last = cname_chain(query_name, answers)
            ttl = min(ttl, chain_ttl)
            found = [
                rr
                for rr in answers
                if rr.type == kind and dns_text(rr.name.name).lower() in names
            ]
            if found:
                ttl = min([ttl, *(float(rr.ttl) for rr in found)])
                return tuple(convert(rr.payload) for rr in found), ttl
            if last == query_name.lower().rstrip("."):
                return (), min(ttl, negative_ttl(authority))
            # The server gave the alias but not its records: ask for the target,
            # which is one more query of this lookup.
            if not trace.spend():
                return (), 0.0
            query_name = last
        trace.failures.append(f"{name}: CNAME chain longer than {MAX_CNAMES}")
        return (), self._failure_ttl


def _preference(pointer: Pointer) -> int:
    return pointer.preference


def _unique(peers: Iterable[Peer]) -> list[Peer]:
    """``peers`` without repeats, first occurrence kept."""
    return list(dict.fromkeys(peers))


def _describe(failure: Exception) -> str:
    if isinstance(failure, error.DNSServerError):
        return "server failure (SERVFAIL)"
    if isinstance(failure, error.DNSQueryRefusedError):
        return "refused"
    if isinstance(failure, TimeoutError):  # twisted's, which DNS timeouts raise
        return "timed out"
    return f"{type(failure).__name__}: {failure}"


async def _gather(coroutines: list[Coroutine[Any, Any, _T]]) -> list[_T]:
    """Run the coroutines concurrently; their results in the same order."""
    return await gatherResults([Deferred.fromCoroutine(c) for c in coroutines])


def make_resolver(
    servers: Sequence[tuple[str, int]],
    clock: IReactorTime,
    reactor: Any,
    *,
    transports: Collection[str] = (UDP.name, TCP.name),
    resolv_conf: str = "/etc/resolv.conf",
    hosts_file: str | None = "/etc/hosts",
    rng: Random | None = None,
) -> SIPResolver:
    """A :class:`SIPResolver` over DNS, as ``Config.dns`` asks.

    ``servers`` are the only DNS servers asked; with none, those in
    ``resolv_conf`` (re-read when it changes, as twisted.names does). The hosts
    file is consulted first for addresses. Twisted's own cache is left out (it
    runs on the reactor's time and has no bound); :class:`SIPResolver` caches.

    :param clock: the clock of the answer cache.
    :param reactor: provides IReactorUDP, IReactorTCP and IReactorTime for the
        queries themselves; nothing is sent until the first lookup.
    """
    if servers:
        dns_client = client.Resolver(
            servers=list(servers), timeout=DNS_TIMEOUT, reactor=reactor
        )
    else:
        dns_client = client.Resolver(
            resolv=resolv_conf, timeout=DNS_TIMEOUT, reactor=reactor
        )
    chain: list[IResolver] = [dns_client]
    if hosts_file is not None:
        chain.insert(0, hosts.Resolver(hosts_file.encode()))
    return SIPResolver(
        resolve.ResolverChain(chain),
        clock,
        transports=transports,
        rng=rng,
        timeout=DNS_TIMEOUT,
    )
