"""A DNS server on loopback for the servers under test: they never ask anyone else.

    python -m tests.integration.dns_server PORT [ZONEFILE.py] [--query-log FILE]

Serves the test zone ``example.test`` (A records of loopback hosts) and answers
every other name with NXDOMAIN at once, so a test that makes the proxy look up
a foreign domain (the torture messages name many) gets a fast, local "no".

``ZONEFILE.py`` adds one more zone: a Python file whose globals name it, ``ZONE``
(e.g. ``"evil.test"``), and give its records, ``RECORDS``: a dict from owner
name to a list of ``twisted.names.dns.Record_*``. ``--query-log FILE`` appends
one line per query received, ``PROTOCOL NAME TYPE`` (``udp evil.test NAPTR``),
so a test can count what a server under test asked.
"""

from __future__ import annotations

import argparse
import runpy
from typing import IO, Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail
from twisted.names import authority, dns, error, server
from twisted.names.common import ResolverBase


class _Nothing(ResolverBase):
    """Authoritative for nothing: NXDOMAIN for every name not in the zone."""

    def _lookup(
        self, name: bytes, cls: int, type: int, timeout: object
    ) -> Deferred[object]:
        return fail(error.DomainError(name))


class TestZone(authority.FileAuthority):
    """``example.test`` with loopback A records, built in memory."""

    def loadFile(self, filename: object) -> None:  # noqa: N802 - Twisted's name
        soa = dns.Record_SOA(
            mname=b"ns.example.test", rname=b"root.example.test", serial=1,
            refresh=60, retry=60, expire=60, minimum=5, ttl=60,
        )  # fmt: skip
        self.soa = (b"example.test", soa)  # type: ignore[assignment]
        self.records = {  # type: ignore[assignment]
            b"example.test": [soa, dns.Record_A("127.0.0.1", ttl=60)],
            b"trunk.example.test": [dns.Record_A("127.0.0.1", ttl=60)],
        }


class ExtraZone(authority.FileAuthority):
    """The zone a ``ZONEFILE.py`` describes (see the module docstring)."""

    def loadFile(self, filename: str) -> None:  # noqa: N802 - Twisted's name
        spec = runpy.run_path(filename)
        zone = str(spec["ZONE"]).lower().rstrip(".")
        soa = dns.Record_SOA(
            mname=f"ns.{zone}".encode(), rname=f"root.{zone}".encode(), serial=1,
            refresh=60, retry=60, expire=60, minimum=5, ttl=60,
        )  # fmt: skip
        records: dict[bytes, list[Any]] = {zone.encode(): [soa]}
        for name, rrs in spec["RECORDS"].items():
            records.setdefault(name.lower().rstrip(".").encode(), []).extend(rrs)
        self.soa = (zone.encode(), soa)  # type: ignore[assignment]
        self.records = records  # type: ignore[assignment]


class LoggingFactory(server.DNSServerFactory):
    """A DNS server that writes each query it receives to ``log`` first."""

    def __init__(self, authorities: list[Any], log: IO[str] | None) -> None:
        super().__init__(authorities=authorities)
        self._log = log

    def handleQuery(  # noqa: N802 - Twisted's name
        self, message: dns.Message, protocol: Any, address: Any
    ) -> Deferred[Any]:
        if self._log is not None:
            kind = "udp" if isinstance(protocol, dns.DNSDatagramProtocol) else "tcp"
            for query in message.queries:
                name = query.name.name.decode("ascii", "replace").lower()
                label = dns.QUERY_TYPES.get(query.type, str(query.type))
                self._log.write(f"{kind} {name} {label}\n")
            self._log.flush()
        result: Deferred[Any] = super().handleQuery(message, protocol, address)
        return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.integration.dns_server")
    parser.add_argument("port", type=int)
    parser.add_argument("zonefile", nargs="?")
    parser.add_argument("--query-log")
    args = parser.parse_args()
    authorities: list[Any] = [TestZone(None)]
    if args.zonefile:
        authorities.append(ExtraZone(args.zonefile))
    authorities.append(_Nothing())
    log = open(args.query_log, "a") if args.query_log else None  # noqa: SIM115
    factory = LoggingFactory(authorities, log)
    protocol = dns.DNSDatagramProtocol(factory)
    reactor.listenUDP(args.port, protocol, interface="127.0.0.1")  # type: ignore[attr-defined]
    reactor.listenTCP(args.port, factory, interface="127.0.0.1")
    print("ready", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
