"""Locating SIP servers (RFC 3263 §4) against a real DNS server on 127.0.0.1.

A twisted.names authoritative server serves ``example.test`` from records built
here and records every query it answers, so a test can say which queries were
(or were not) sent. The answer cache runs on a ``Clock`` the tests advance.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from random import Random
from typing import Any, cast

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.names import authority, client, dns, server

from sipproxy.dnsrecords import Service, order_services
from sipproxy.resolver import SIPResolver, make_resolver
from sipproxy.sip.addressing import Peer
from sipproxy.sip.uri import SipURI
from sipproxy.testing import UDPMemoryReactor

ZONE = "example.test"
TTL = 60
SOA = dns.Record_SOA(
    mname=b"ns.example.test",
    rname=b"hostmaster.example.test",
    serial=1,
    refresh=3600,
    retry=600,
    expire=86400,
    minimum=300,
    ttl=TTL,
)


def naptr(order: int, pref: int, service: str, replacement: str) -> Any:
    return dns.Record_NAPTR(
        order, pref, b"s", service.encode(), b"", replacement.encode(), ttl=TTL
    )


def srv(priority: int, weight: int, port: int, target: str) -> Any:
    return dns.Record_SRV(priority, weight, port, target.encode(), ttl=TTL)


def a(address: str) -> Any:
    return dns.Record_A(address, ttl=TTL)


def aaaa(address: str) -> Any:
    return dns.Record_AAAA(address, ttl=TTL)


RECORDS: dict[str, list[Any]] = {
    ZONE: [SOA],
    # NAPTR: SCTP (which we cannot send) comes first, then TCP preferred over
    # UDP; the order-20 TLS record must be ignored (RFC 3403 §4.1).
    "naptr.example.test": [
        naptr(5, 10, "SIP+D2S", "_sip._sctp.naptr.example.test"),
        naptr(10, 90, "SIP+D2U", "_sip._udp.naptr.example.test"),
        naptr(10, 50, "SIP+D2T", "_sip._tcp.naptr.example.test"),
        naptr(20, 10, "SIPS+D2T", "_sips._tcp.naptr.example.test"),
    ],
    "_sip._tcp.naptr.example.test": [srv(0, 0, 5070, "tcp.naptr.example.test")],
    "_sip._udp.naptr.example.test": [srv(0, 0, 5080, "udp.naptr.example.test")],
    "_sips._tcp.naptr.example.test": [srv(0, 0, 5061, "tls.naptr.example.test")],
    "tcp.naptr.example.test": [a("192.0.2.10")],
    "udp.naptr.example.test": [a("192.0.2.11")],
    "tls.naptr.example.test": [a("192.0.2.12")],
    # SRV without NAPTR.
    "srv.example.test": [a("192.0.2.29")],
    "_sip._udp.srv.example.test": [srv(10, 0, 5060, "a.srv.example.test")],
    "_sip._tcp.srv.example.test": [srv(10, 0, 5062, "b.srv.example.test")],
    "a.srv.example.test": [a("192.0.2.20")],
    "b.srv.example.test": [a("192.0.2.21")],
    # Addresses only.
    "plain.example.test": [a("192.0.2.30"), aaaa("2001:db8::30")],
    "v6only.example.test": [aaaa("2001:db8::1")],
    # A domain offering TLS and UDP by NAPTR.
    "secure.example.test": [
        naptr(10, 10, "SIP+D2U", "_sip._udp.secure.example.test"),
        naptr(10, 20, "SIPS+D2T", "_sips._tcp.secure.example.test"),
    ],
    "_sip._udp.secure.example.test": [srv(0, 0, 5060, "udp.secure.example.test")],
    "_sips._tcp.secure.example.test": [srv(0, 0, 5061, "tls.secure.example.test")],
    "udp.secure.example.test": [a("192.0.2.41")],
    "tls.secure.example.test": [a("192.0.2.40")],
    # Weighted SRV: one priority-10 group, one priority-20 backup.
    "_sip._udp.weighted.example.test": [
        srv(10, 0, 5060, "w0.example.test"),
        srv(10, 60, 5060, "w60.example.test"),
        srv(10, 40, 5060, "w40.example.test"),
        srv(20, 0, 5060, "backup.example.test"),
    ],
    "w0.example.test": [a("192.0.2.50")],
    "w60.example.test": [a("192.0.2.60")],
    "w40.example.test": [a("192.0.2.40")],
    "backup.example.test": [a("192.0.2.99")],
    # "." target: the service is decidedly not available (RFC 2782).
    "_sip._udp.closed.example.test": [srv(0, 0, 0, ".")],
    "closed.example.test": [a("192.0.2.70")],
    # A domain whose NAPTR records offer only UDP and TCP.
    "udptcp.example.test": [
        naptr(10, 10, "SIP+D2U", "_sip._udp.udptcp.example.test"),
        naptr(10, 20, "SIP+D2T", "_sip._tcp.udptcp.example.test"),
        a("192.0.2.80"),
    ],
    "_sip._udp.udptcp.example.test": [srv(0, 0, 5060, "udptcp.example.test")],
    "_sip._tcp.udptcp.example.test": [srv(0, 0, 5060, "udptcp.example.test")],
}


class ZoneAuthority(authority.FileAuthority):
    """An in-memory zone that records each query it is asked."""

    def __init__(self) -> None:
        self.queries: list[tuple[str, int]] = []
        super().__init__("")

    def loadFile(self, filename: str) -> None:  # noqa: N802 - Twisted's name
        self.soa = (ZONE.encode(), SOA)  # type: ignore[assignment]
        records = {name.encode(): rrs for name, rrs in RECORDS.items()}
        self.records = records  # type: ignore[assignment]

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any = None) -> Any:
        self.queries.append((name.decode().lower(), type))
        if b"broken." in name.lower():
            return defer.fail(RuntimeError("zone is broken"))  # answered SERVFAIL
        return super()._lookup(name, cls, type, timeout)


@dataclass
class DNSServer:
    zone: ZoneAuthority
    port: int

    @property
    def queries(self) -> list[tuple[str, int]]:
        return self.zone.queries


def listen_udp(protocol: DatagramProtocol) -> Any:
    """Bind ``protocol`` to a free UDP port on loopback, and nowhere else."""
    udp: Any = reactor  # the installed reactor provides IReactorUDP
    return udp.listenUDP(0, protocol, interface="127.0.0.1")


@pytest.fixture
def dns_server() -> Iterator[DNSServer]:
    zone = ZoneAuthority()
    factory = server.DNSServerFactory(authorities=[zone])
    protocol = dns.DNSDatagramProtocol(controller=factory)
    port = listen_udp(protocol)
    yield DNSServer(zone, port.getHost().port)
    port.stopListening()


@dataclass
class Setup:
    resolver: SIPResolver
    clock: Clock
    server: DNSServer

    async def resolve(self, uri: str) -> list[Peer]:
        return await self.resolver.resolve(SipURI.parse(uri))


def harness(
    dns_server: DNSServer,
    transports: tuple[str, ...] = ("udp", "tcp"),
    rng: Random | None = None,
) -> Setup:
    clock = Clock()
    resolver = make_resolver(
        [("127.0.0.1", dns_server.port)],
        clock,
        reactor,
        transports=transports,
        rng=rng,
        hosts_file=None,
    )
    return Setup(resolver, clock, dns_server)


def resolver_events(captured: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """What SIPResolver logged, among everything captured."""
    return [e for e in captured if e["log_namespace"].startswith("sipproxy.resolver")]


@pytest_twisted.ensureDeferred
async def test_ip_literal_needs_no_query(dns_server: DNSServer) -> None:
    """A numeric host is used as it is, port and transport from the URI (§4.1)."""
    s = harness(dns_server, transports=("udp", "tcp", "tls"))
    assert await s.resolve("sip:alice@192.0.2.1") == [Peer("udp", "192.0.2.1", 5060)]
    assert await s.resolve("sip:[2001:db8::5]:5070;transport=TCP") == [
        Peer("tcp", "2001:db8::5", 5070)
    ]
    assert await s.resolve("sips:192.0.2.1") == [Peer("tls", "192.0.2.1", 5061)]
    assert dns_server.queries == []


@pytest_twisted.ensureDeferred
async def test_websocket_targets_are_never_looked_up(dns_server: DNSServer) -> None:
    """RFC 7118 §5.3: a browser's Contact (a .invalid host) is no DNS name.

    Even when asked to, the resolver knows no way to send over ws or wss: a
    browser is reached over the connection it opened, or not at all.
    """
    s = harness(dns_server, transports=("udp", "tcp", "tls", "ws", "wss"))
    assert await s.resolve("sip:x@df7jal23ls0d.invalid;transport=ws") == []
    assert await s.resolve("sips:x@df7jal23ls0d.invalid;transport=wss") == []
    assert await s.resolve("sip:x@plain.example.test;transport=ws") == []
    assert dns_server.queries == []


@pytest_twisted.ensureDeferred
async def test_naptr_leads_to_srv_then_addresses(dns_server: DNSServer) -> None:
    """NAPTR picks transports by order then preference, SRV and A follow (§4.1)."""
    s = harness(dns_server, transports=("udp", "tcp", "tls"))
    assert await s.resolve("sip:bob@naptr.example.test") == [
        Peer("tcp", "192.0.2.10", 5070),
        Peer("udp", "192.0.2.11", 5080),
    ]
    assert ("naptr.example.test", dns.NAPTR) in dns_server.queries
    # Neither the SCTP service we cannot use nor the higher-order TLS one is asked.
    assert ("_sip._sctp.naptr.example.test", dns.SRV) not in dns_server.queries
    assert ("_sips._tcp.naptr.example.test", dns.SRV) not in dns_server.queries


@pytest_twisted.ensureDeferred
async def test_srv_without_naptr(dns_server: DNSServer) -> None:
    """With no NAPTR, SRV for UDP then TCP, each at its own port (§4.1, §4.2)."""
    s = harness(dns_server)
    assert await s.resolve("sip:srv.example.test") == [
        Peer("udp", "192.0.2.20", 5060),
        Peer("tcp", "192.0.2.21", 5062),
    ]
    # The domain's own A record is not a destination when SRV records exist.
    assert ("srv.example.test", dns.A) not in dns_server.queries


@pytest_twisted.ensureDeferred
async def test_addresses_when_there_is_no_srv(dns_server: DNSServer) -> None:
    """With neither NAPTR nor SRV, A then AAAA over UDP at 5060 (§4.2)."""
    s = harness(dns_server)
    assert await s.resolve("sip:plain.example.test") == [
        Peer("udp", "192.0.2.30", 5060),
        Peer("udp", "2001:db8::30", 5060),
    ]
    assert Counter(t for _, t in dns_server.queries) == {
        dns.NAPTR: 1,
        dns.SRV: 2,
        dns.A: 1,
        dns.AAAA: 1,
    }


@pytest_twisted.ensureDeferred
async def test_srv_target_dot_means_no_service(dns_server: DNSServer) -> None:
    """An SRV target of "." says the service is not there; A is not tried (RFC 2782)."""
    s = harness(dns_server)
    assert await s.resolve("sip:closed.example.test") == []
    assert ("closed.example.test", dns.A) not in dns_server.queries


@pytest_twisted.ensureDeferred
async def test_explicit_port_skips_naptr_and_srv(dns_server: DNSServer) -> None:
    """A host name with a port is looked up by A and AAAA only (§4.2)."""
    s = harness(dns_server)
    assert await s.resolve("sip:srv.example.test:5099") == [
        Peer("udp", "192.0.2.29", 5099)
    ]
    assert {t for _, t in dns_server.queries} == {dns.A, dns.AAAA}


@pytest_twisted.ensureDeferred
async def test_transport_param_queries_only_its_srv(dns_server: DNSServer) -> None:
    """transport=tcp: SRV for TCP alone, no NAPTR (§4.1, §4.2)."""
    s = harness(dns_server)
    assert await s.resolve("sip:srv.example.test;transport=tcp") == [
        Peer("tcp", "192.0.2.21", 5062)
    ]
    assert dns_server.queries[0] == ("_sip._tcp.srv.example.test", dns.SRV)
    assert all(t != dns.NAPTR for _, t in dns_server.queries)


@pytest_twisted.ensureDeferred
async def test_transport_param_without_srv_uses_default_port(
    dns_server: DNSServer,
) -> None:
    """transport=tcp with no SRV: the addresses over TCP at 5060 (§4.2)."""
    s = harness(dns_server)
    assert await s.resolve("sip:plain.example.test;transport=tcp") == [
        Peer("tcp", "192.0.2.30", 5060),
        Peer("tcp", "2001:db8::30", 5060),
    ]


@pytest_twisted.ensureDeferred
async def test_unsupported_transport_param_gives_nothing(
    dns_server: DNSServer,
) -> None:
    """A transport we cannot send over (SCTP; TLS when not enabled) gives none."""
    s = harness(dns_server)
    assert await s.resolve("sip:plain.example.test;transport=sctp") == []
    assert await s.resolve("sip:192.0.2.1;transport=tls") == []
    assert dns_server.queries == []


@pytest_twisted.ensureDeferred
async def test_sips_yields_only_tls(dns_server: DNSServer) -> None:
    """A SIPS URI keeps only SIPS NAPTR services (§4.1, RFC 3261 §26.2.2)."""
    s = harness(dns_server, transports=("udp", "tcp", "tls"))
    assert await s.resolve("sips:carol@secure.example.test") == [
        Peer("tls", "192.0.2.40", 5061)
    ]
    # The same domain over sip: offers UDP first, then TLS.
    assert await s.resolve("sip:carol@secure.example.test") == [
        Peer("udp", "192.0.2.41", 5060),
        Peer("tls", "192.0.2.40", 5061),
    ]


@pytest_twisted.ensureDeferred
async def test_sips_gets_nothing_from_a_udp_tcp_domain(dns_server: DNSServer) -> None:
    """A domain whose NAPTR records offer only UDP and TCP gives sips: nothing.

    A SIPS URI is never downgraded (RFC 3261 §26.2.2), and the SRV fallback is
    for domains without NAPTR records (RFC 3263 §4.1).
    """
    s = harness(dns_server, transports=("udp", "tcp", "tls"))
    assert await s.resolve("sips:udptcp.example.test") == []
    assert all(t == dns.NAPTR for _, t in dns_server.queries)
    assert await s.resolve("sips:192.0.2.1;transport=udp") == []
    # The same domain over sip: is reachable.
    assert await s.resolve("sip:udptcp.example.test") == [
        Peer("udp", "192.0.2.80", 5060),
        Peer("tcp", "192.0.2.80", 5060),
    ]


@pytest_twisted.ensureDeferred
async def test_sips_takes_the_first_naptr_order_it_can_use(
    dns_server: DNSServer,
) -> None:
    """For sips:, the discarded non-SIPS records do not hide a later TLS one."""
    s = harness(dns_server, transports=("udp", "tcp", "tls"))
    assert await s.resolve("sips:naptr.example.test") == [
        Peer("tls", "192.0.2.12", 5061)
    ]


@pytest_twisted.ensureDeferred
async def test_sips_without_tls_support_gets_nothing(dns_server: DNSServer) -> None:
    """Without TLS among our transports, sips: has no destination, and asks no one."""
    s = harness(dns_server)
    assert await s.resolve("sips:secure.example.test") == []
    assert await s.resolve("sips:192.0.2.1") == []
    assert dns_server.queries == []


@pytest_twisted.ensureDeferred
async def test_sips_without_naptr_or_srv_uses_tls_port(dns_server: DNSServer) -> None:
    """SIPS with no NAPTR: SRV _sips._tcp only, then A/AAAA at 5061 (§4.1, §4.2)."""
    s = harness(dns_server, transports=("udp", "tcp", "tls"))
    assert await s.resolve("sips:plain.example.test") == [
        Peer("tls", "192.0.2.30", 5061),
        Peer("tls", "2001:db8::30", 5061),
    ]
    srv_names = [n for n, t in dns_server.queries if t == dns.SRV]
    assert srv_names == ["_sips._tcp.plain.example.test"]


@pytest_twisted.ensureDeferred
async def test_srv_priority_then_weight(dns_server: DNSServer) -> None:
    """Lower priority always first; within it, picks proportional to weight (RFC 2782).

    The random source is seeded, so the counts are the same on every run.
    """
    s = harness(dns_server, rng=Random(3263))
    firsts: Counter[str] = Counter()
    for _ in range(1000):
        peers = await s.resolve("sip:weighted.example.test")
        assert len(peers) == 4
        assert peers[-1].host == "192.0.2.99"  # the priority-20 backup
        firsts[peers[0].host] += 1
    assert 530 <= firsts["192.0.2.60"] <= 670
    assert 330 <= firsts["192.0.2.40"] <= 470
    assert firsts["192.0.2.50"] <= 20  # weight 0: "a very small chance"
    # The answers came from the cache after the first resolve.
    assert Counter(dns_server.queries)[("_sip._udp.weighted.example.test", 33)] == 1


def test_srv_weight_selection_follows_rfc_2782() -> None:
    """Running sums over zero-weight-first records pick by the random number."""

    class Scripted(Random):
        def __init__(self, picks: list[int]) -> None:
            super().__init__()
            self.picks = picks
            self.bounds: list[int] = []

        def randint(self, a: int, b: int) -> int:
            self.bounds.append(b)
            return self.picks.pop(0)

    w0 = Service(1, 0, 5060, "w0")
    w10 = Service(1, 10, 5060, "w10")
    w30 = Service(1, 30, 5060, "w30")
    low = Service(2, 5, 5060, "low")
    rng = Scripted([11, 0, 0, 0])
    # Running sums 0 (w0), 10 (w10), 40 (w30): 11 picks w30; then w0, w10, low.
    assert order_services((w10, low, w30, w0), rng) == [w30, w0, w10, low]
    assert rng.bounds == [40, 10, 10, 5]


@pytest_twisted.ensureDeferred
async def test_ipv6_only_host(dns_server: DNSServer) -> None:
    """AAAA records give IPv6 destinations, the address without brackets."""
    s = harness(dns_server)
    assert await s.resolve("sip:v6only.example.test:5070;transport=tcp") == [
        Peer("tcp", "2001:db8::1", 5070)
    ]


@pytest_twisted.ensureDeferred
async def test_nxdomain_gives_empty_list(dns_server: DNSServer) -> None:
    """A name that does not exist has no destinations, logged once."""
    s = harness(dns_server)
    with capturedLogs() as captured:
        assert await s.resolve("sip:missing.example.test") == []
    events = resolver_events(captured)
    assert len(events) == 1
    assert "no SIP server" in events[0]["log_format"]


@pytest_twisted.ensureDeferred
async def test_server_failure_gives_empty_list_logged_once(
    dns_server: DNSServer,
) -> None:
    """SERVFAIL answers give no destination and one warning, not an exception."""
    s = harness(dns_server)
    with capturedLogs() as captured:
        assert await s.resolve("sip:broken.example.test") == []
        # Remembered for a while (RFC 2308 §7): no new queries, no new log.
        sent = len(dns_server.queries)
        assert await s.resolve("sip:broken.example.test") == []
    assert len(dns_server.queries) == sent
    events = resolver_events(captured)
    assert len(events) == 1
    assert "SERVFAIL" in events[0]["failures"]


@pytest_twisted.ensureDeferred
async def test_timeout_gives_empty_list() -> None:
    """A DNS server that never answers gives [] after the timeout, and one warning."""
    received: list[bytes] = []

    class Silent(DatagramProtocol):
        def datagramReceived(self, datagram: bytes, addr: Any) -> None:  # noqa: N802
            received.append(datagram)

    port = listen_udp(Silent())
    try:
        dns_client = client.Resolver(
            servers=[("127.0.0.1", port.getHost().port)], reactor=reactor
        )
        resolver = SIPResolver(dns_client, Clock(), timeout=(0.2,))
        uri = SipURI.parse("sip:slow.example.test:5060")
        with capturedLogs() as captured:
            assert await resolver.resolve(uri) == []
        assert len(received) == 2  # A and AAAA, asked together
        events = resolver_events(captured)
        assert len(events) == 1
        assert "timed out" in events[0]["failures"]
    finally:
        await defer.maybeDeferred(port.stopListening)


@pytest_twisted.ensureDeferred
async def test_cache_answers_until_ttl(dns_server: DNSServer) -> None:
    """Within the TTL the answer comes from the cache; after it, DNS is asked again."""
    s = harness(dns_server)
    expected = [Peer("udp", "192.0.2.30", 5070), Peer("udp", "2001:db8::30", 5070)]
    assert await s.resolve("sip:plain.example.test:5070") == expected
    s.clock.advance(TTL - 1)
    assert await s.resolve("sip:plain.example.test:5070") == expected
    assert Counter(dns_server.queries) == {
        ("plain.example.test", dns.A): 1,
        ("plain.example.test", dns.AAAA): 1,
    }
    s.clock.advance(1)
    assert await s.resolve("sip:plain.example.test:5070") == expected
    assert Counter(dns_server.queries) == {
        ("plain.example.test", dns.A): 2,
        ("plain.example.test", dns.AAAA): 2,
    }


@pytest_twisted.ensureDeferred
async def test_empty_answer_cached_by_soa(dns_server: DNSServer) -> None:
    """An empty answer is cached by its SOA, and not without one (RFC 2308 §5)."""
    s = harness(dns_server)
    await s.resolve("sip:plain.example.test")
    await s.resolve("sip:plain.example.test")
    seen = Counter(dns_server.queries)
    # NAPTR at an existing name: NODATA with the zone's SOA, cached.
    assert seen[("plain.example.test", dns.NAPTR)] == 1
    # SRV at a missing name: this server's NXDOMAIN carries no SOA, so not cached.
    assert seen[("_sip._udp.plain.example.test", dns.SRV)] == 2


def test_cache_is_bounded() -> None:
    """Beyond max_cache answers, the least recently used one is dropped."""

    class Answering:
        def __init__(self) -> None:
            self.asked: list[tuple[str, int]] = []

        def query(self, query: dns.Query, timeout: Any) -> defer.Deferred[Any]:
            name = query.name.name.decode()
            self.asked.append((name, query.type))
            answer = a("192.0.2.1") if query.type == dns.A else aaaa("2001:db8::1")
            return defer.succeed(
                ([dns.RRHeader(name, query.type, payload=answer, ttl=TTL)], [], [])
            )

    dns_client = Answering()
    resolver = SIPResolver(dns_client, Clock(), max_cache=4)  # type: ignore[arg-type]
    for host in (
        "one.test",
        "two.test",
        "one.test",
        "three.test",
        "one.test",
        "two.test",
    ):
        d = defer.ensureDeferred(resolver.resolve(SipURI.parse(f"sip:{host}:5060")))
        assert d.called
    # Two answers (A, AAAA) per host: three hosts do not fit; two.test was the
    # least recently used when three.test came, so it alone was asked again.
    assert Counter(name for name, _ in dns_client.asked) == {
        "one.test": 2,
        "two.test": 4,
        "three.test": 2,
    }


@pytest_twisted.ensureDeferred
async def test_maddr_replaces_the_host(dns_server: DNSServer) -> None:
    """maddr, when present, is the address looked up (RFC 3261 §19.1.1)."""
    s = harness(dns_server)
    assert await s.resolve("sip:bob@nowhere.example.test;maddr=plain.example.test") == [
        Peer("udp", "192.0.2.30", 5060),
        Peer("udp", "2001:db8::30", 5060),
    ]
    assert all("nowhere" not in name for name, _ in dns_server.queries)
    before = len(dns_server.queries)
    assert await s.resolve("sip:bob@nowhere.example.test:5070;maddr=[2001:db8::9]") == [
        Peer("udp", "2001:db8::9", 5070)
    ]
    assert len(dns_server.queries) == before


def test_make_resolver_reads_resolv_conf_without_querying(tmp_path: Path) -> None:
    """With no servers configured, resolv.conf is read; nothing is sent until asked."""
    memory = UDPMemoryReactor()
    make_resolver([], Clock(), memory)  # the system's own resolv.conf
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 192.0.2.53\n")
    resolver = make_resolver(
        [], Clock(), memory, resolv_conf=str(conf), hosts_file=None
    )
    assert memory.udp == []
    assert memory.tcpClients == []
    # The first lookup goes to the server the file names (a fake socket: no network).
    d = defer.ensureDeferred(resolver.resolve(SipURI.parse("sip:example.test:5060")))
    assert {addr for _, _, _, t in memory.udp for _, addr in t.written} == {
        ("192.0.2.53", 53)
    }
    memory.pump([1.0] * 5)  # past every retry: the lookups time out
    assert d.called
    assert d.result == []


@pytest_twisted.ensureDeferred
async def test_without_udp_the_default_is_tcp(dns_server: DNSServer) -> None:
    """A proxy that cannot send UDP sends where UDP would go over TCP instead."""
    s = harness(dns_server, transports=("tcp",))
    assert await s.resolve("sip:192.0.2.1") == [Peer("tcp", "192.0.2.1", 5060)]
    assert await s.resolve("sip:srv.example.test") == [Peer("tcp", "192.0.2.21", 5062)]
    srv_names = [n for n, t in dns_server.queries if t == dns.SRV]
    assert srv_names == ["_sip._tcp.srv.example.test"]


# A hostile domain (issue 13, item 11): 50 NAPTR records, each to an SRV name
# with 50 records, each to a name with 10 A records. Records are listed worst
# first, so that keeping "the first ones" would keep the wrong ones.
EVIL = "evil.test"
EVIL_POINTERS = 50
EVIL_SERVICES = 50
EVIL_ADDRESSES = 10


def evil_srv_name(i: int) -> str:
    return f"_sip._{'udp' if i % 2 == 0 else 'tcp'}.s{i}.{EVIL}"


def evil_target(i: int, j: int) -> str:
    return f"h{i}-{j}.{EVIL}"


def evil_records(name: str, kind: int, *, addresses: bool) -> list[Any]:
    """The hostile zone's answer; ``addresses=False`` leaves every target empty."""
    if name == EVIL and kind == dns.NAPTR:
        return [
            naptr(10, i, "SIP+D2U" if i % 2 == 0 else "SIP+D2T", evil_srv_name(i))
            for i in reversed(range(EVIL_POINTERS))
        ]
    if name.startswith("_sip.") and kind == dns.SRV:
        # _sip._udp.sI.evil.test (from NAPTR I), or _sip._udp.evil.test (I = 0).
        label = name.split(".")[2]
        i = int(label[1:]) if label.startswith("s") else 0
        return [
            srv(j, 0, 5060, evil_target(i, j)) for j in reversed(range(EVIL_SERVICES))
        ]
    if name.startswith("h") and kind == dns.A and addresses:
        i, j = (int(n) for n in name.split(".")[0][1:].split("-"))
        return [a(f"10.{i}.{j}.{k}") for k in range(1, EVIL_ADDRESSES + 1)]
    return []


class HostileDNS:
    """A fake twisted.names resolver serving the hostile zone; counts queries.

    With ``held=True`` answers wait until :meth:`release`, so a test can see how
    many queries are in flight at once.
    """

    def __init__(self, *, addresses: bool = True, held: bool = False) -> None:
        self.asked: list[tuple[str, int]] = []
        self.addresses = addresses
        self.held = held
        self.waiting: list[tuple[defer.Deferred[Any], Any]] = []
        self.most_in_flight = 0

    def query(self, query: dns.Query, timeout: Any) -> defer.Deferred[Any]:
        name = query.name.name.decode()
        self.asked.append((name, query.type))
        records = evil_records(name, query.type, addresses=self.addresses)
        answer: Any = (
            [dns.RRHeader(name, query.type, payload=r, ttl=TTL) for r in records],
            [],
            [],
        )
        if not self.held:
            return defer.succeed(answer)
        d: defer.Deferred[Any] = defer.Deferred()
        self.waiting.append((d, answer))
        self.most_in_flight = max(self.most_in_flight, len(self.waiting))
        return d

    def release(self) -> None:
        """Answer every query waiting now (new ones may come in meanwhile)."""
        batch, self.waiting = self.waiting, []
        for d, answer in batch:
            d.callback(answer)


def resolve_now(resolver: SIPResolver, uri: str) -> list[Peer]:
    """resolve() over a fake that answers at once: the result without a reactor."""
    d = defer.ensureDeferred(resolver.resolve(SipURI.parse(uri)))
    assert d.called
    return cast(list[Peer], d.result)


def test_hostile_domain_costs_few_queries_and_destinations() -> None:
    """50 NAPTR x 50 SRV x 10 A: a handful of queries, 8 destinations, best first.

    RFC 3263 sets no limit; the preferred NAPTR records (RFC 3403 §4.1) and the
    lowest-priority SRV targets (RFC 2782) are the ones kept.
    """
    fake = HostileDNS()
    resolver = SIPResolver(fake, Clock(), rng=Random(1))  # type: ignore[arg-type]
    peers = resolve_now(resolver, f"sip:x@{EVIL}")
    assert len(fake.asked) <= 16  # there were 5,051 before the caps
    assert peers == [
        *(Peer("udp", f"10.0.0.{k}", 5060) for k in range(1, 5)),
        *(Peer("udp", f"10.0.1.{k}", 5060) for k in range(1, 5)),
    ]
    # At most 4 NAPTR records followed: those of the best preference.
    srv_asked = [name for name, kind in fake.asked if kind == dns.SRV]
    assert srv_asked == [evil_srv_name(i) for i in range(4)]
    # No cached answer keeps thousands of records.
    assert all(len(entry.records) <= 32 for entry in resolver._cache.entries())


def test_hostile_domain_stops_at_the_query_cap_and_says_so() -> None:
    """Targets without addresses: 16 queries, then the lookup stops, logged once."""
    fake = HostileDNS(addresses=False)
    clock = Clock()
    resolver = SIPResolver(fake, clock)  # type: ignore[arg-type]
    with capturedLogs() as captured:
        assert resolve_now(resolver, f"sip:x@{EVIL}") == []
        assert len(fake.asked) == 16
        # Asked again within the hour: again at most 16 queries, no new line.
        assert resolve_now(resolver, f"sip:y@{EVIL}") == []
    assert len(fake.asked) <= 32
    events = resolver_events(captured)
    assert len(events) == 1
    assert events[0]["domain"] == EVIL
    assert "stopped after" in events[0]["log_format"]
    clock.advance(3600)
    with capturedLogs() as captured:
        resolve_now(resolver, f"sip:x@{EVIL}")
    assert [e["domain"] for e in resolver_events(captured)] == [EVIL]


def test_only_six_srv_targets_per_name() -> None:
    """transport=udp: the 6 lowest-priority SRV targets, no others (RFC 2782)."""
    fake = HostileDNS(addresses=False)
    resolver = SIPResolver(fake, Clock())  # type: ignore[arg-type]
    assert resolve_now(resolver, f"sip:x@{EVIL};transport=udp") == []
    a_asked = [name for name, kind in fake.asked if kind == dns.A]
    assert a_asked == [evil_target(0, j) for j in range(6)]


def test_only_four_addresses_per_name() -> None:
    """A name with 10 A records gives 4 destinations."""
    fake = HostileDNS()
    resolver = SIPResolver(fake, Clock())  # type: ignore[arg-type]
    peers = resolve_now(resolver, f"sip:x@{evil_target(3, 7)}:5070")
    assert peers == [Peer("udp", f"10.3.7.{k}", 5070) for k in range(1, 5)]


def test_queries_of_one_lookup_are_few_at_a_time() -> None:
    """At most 4 queries of a lookup wait for an answer at once, level by level."""
    fake = HostileDNS(held=True)
    resolver = SIPResolver(fake, Clock(), rng=Random(1))  # type: ignore[arg-type]
    d = defer.ensureDeferred(resolver.resolve(SipURI.parse(f"sip:x@{EVIL}")))
    rounds = 0
    while not d.called:
        assert fake.waiting, "the lookup waits for nothing"
        fake.release()
        rounds += 1
    assert fake.most_in_flight <= 4
    assert len(cast(list[Peer], d.result)) == 8
    # NAPTR, then the SRV level, then A/AAAA of the first two targets.
    assert rounds == 3


def test_concurrent_lookups_share_one_query() -> None:
    """Two calls to one domain at once send each query once, and both get the answer."""
    fake = HostileDNS(held=True)
    resolver = SIPResolver(fake, Clock(), rng=Random(1))  # type: ignore[arg-type]
    uri = SipURI.parse(f"sip:x@{evil_target(1, 2)}:5060")
    first = defer.ensureDeferred(resolver.resolve(uri))
    second = defer.ensureDeferred(resolver.resolve(uri))
    while fake.waiting:
        fake.release()
    assert Counter(fake.asked) == {
        (evil_target(1, 2), dns.A): 1,
        (evil_target(1, 2), dns.AAAA): 1,
    }
    assert first.result == second.result
    assert len(cast(list[Peer], first.result)) == 4


def test_names_asked_once_do_not_evict_names_in_use() -> None:
    """Thousands of one-off names churn the cache, but not the answers used twice."""
    fake = HostileDNS()
    resolver = SIPResolver(fake, Clock(), max_cache=10)  # type: ignore[arg-type]
    trunk = f"sip:{evil_target(1, 1)}:5060"
    resolve_now(resolver, trunk)
    resolve_now(resolver, trunk)  # from the cache: now protected
    for n in range(1000):
        resolve_now(resolver, f"sip:{evil_target(2, n)}:5060")
    assert resolve_now(resolver, trunk) == [
        Peer("udp", f"10.1.1.{k}", 5060) for k in range(1, 5)
    ]
    # Its A answer was asked for once. (The empty AAAA answer has no SOA, so it
    # is not cached at all: RFC 2308 §5.)
    assert fake.asked.count((evil_target(1, 1), dns.A)) == 1
    assert len(resolver._cache) <= 10
