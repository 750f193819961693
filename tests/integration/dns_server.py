"""A DNS server on loopback for the servers under test: they never ask anyone else.

    python -m tests.integration.dns_server PORT [ZONEFILE.py]

Serves the test zone ``example.test`` (A records of loopback hosts) and answers
every other name with NXDOMAIN at once, so a test that makes the proxy look up
a foreign domain (the torture messages name many) gets a fast, local "no".
"""

from __future__ import annotations

import sys

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


def main() -> None:
    port = int(sys.argv[1])
    factory = server.DNSServerFactory(authorities=[TestZone(None), _Nothing()])
    protocol = dns.DNSDatagramProtocol(factory)
    reactor.listenUDP(port, protocol, interface="127.0.0.1")  # type: ignore[attr-defined]
    reactor.listenTCP(port, factory, interface="127.0.0.1")
    print("ready", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
