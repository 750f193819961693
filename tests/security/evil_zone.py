"""``evil.test``: a domain built to turn one INVITE into thousands of packets.

50 NAPTR records (UDP and TCP in turn), each to an SRV name with 50 records,
each to a name with 10 A records: 5,051 queries and 2,500 targets for a
resolver without limits (issue 13, item 11). Every address is one of the
loopback sinks, so a test sees where the proxy sent.

Used as ``tests.integration.dns_server``'s ZONEFILE through a generated file::

    from tests.security.evil_zone import records
    ZONE = "evil.test"
    RECORDS = records(["127.0.0.2", ...], 5999)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.names import dns

ZONE = "evil.test"
POINTERS = 50
SERVICES = 50
ADDRESSES = 10
TTL = 60


def records(sinks: Sequence[str], port: int) -> dict[str, list[Any]]:
    """The zone's records; SRV records name ``port``, A records the ``sinks``."""
    zone: dict[str, list[Any]] = {ZONE: []}
    for i in range(POINTERS):
        transport = "udp" if i % 2 == 0 else "tcp"
        service = b"SIP+D2U" if transport == "udp" else b"SIP+D2T"
        srv_name = f"_sip._{transport}.s{i}.{ZONE}"
        zone[ZONE].append(
            dns.Record_NAPTR(10, i, b"s", service, b"", srv_name.encode(), ttl=TTL)
        )
        zone[srv_name] = []
        for j in range(SERVICES):
            target = f"h{i}-{j}.{ZONE}"
            zone[srv_name].append(dns.Record_SRV(j, 0, port, target.encode(), ttl=TTL))
            # Each target lists the sinks from a different one, so that the
            # lookup would keep finding new destinations if nothing stopped it.
            zone[target] = [
                dns.Record_A(sinks[(j + k) % len(sinks)], ttl=TTL)
                for k in range(ADDRESSES)
            ]
    return zone
