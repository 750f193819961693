"""DNS amplification (issue 13, item 11): a hostile domain costs a few queries.

``evil.test`` publishes 50 NAPTR x 50 SRV x 10 A records, every address one of
ten loopback sinks. Before the limits, one authenticated INVITE to
``sip:x@evil.test`` made the proxy send 5,051 DNS queries and fork to every
address it found. Now a lookup sends at most 16 queries and returns at most 8
destinations (RFC 3263 sets no limit; see sipproxy/resolver.py).
"""

from __future__ import annotations

import itertools
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT, free_port, status_of, stop
from tests.security.conftest import PASSWORDS, REALM, Sink, serve_with_users
from tests.support import challenge_params, digest_answer, final_response

pytestmark = pytest.mark.integration

MAX_QUERIES = 16
MAX_PEERS = 8
SINK_HOSTS = [f"127.0.0.{n}" for n in range(2, 12)]
_numbers = itertools.count(1)


@dataclass
class EvilDNS:
    """A test DNS server that also serves ``evil.test`` and logs each query."""

    port: int
    log: Path

    def queries(self) -> list[tuple[str, str, str]]:
        """(protocol, name, type) of each query received so far."""
        text = self.log.read_text() if self.log.exists() else ""
        return [
            (parts[0], parts[1], parts[2])
            for parts in (line.split() for line in text.splitlines())
            if len(parts) == 3
        ]

    def settled(self, quiet: float = 1.5, deadline: float = 20.0) -> None:
        """Wait (bounded) until no query came for ``quiet`` seconds."""
        until = time.monotonic() + deadline
        seen, since = -1, time.monotonic()
        while time.monotonic() < until:
            count = len(self.queries())
            if count != seen:
                seen, since = count, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return
            time.sleep(0.1)


@pytest.fixture
def sinks() -> Iterator[list[Sink]]:
    """A sink on each address evil.test names, all on one port."""
    for _ in range(20):
        port = free_port()
        made: list[Sink] = []
        try:
            for host in SINK_HOSTS:
                sink = Sink(host, port)
                sink.start()
                made.append(sink)
        except OSError:
            for sink in made:
                sink.close()
            continue
        yield made
        for sink in made:
            sink.close()
        return
    raise RuntimeError("no port free on every sink address")


@pytest.fixture
def evil_dns(tmp_path: Path, sinks: list[Sink]) -> Iterator[EvilDNS]:
    zonefile = tmp_path / "evil_zone_file.py"
    zonefile.write_text(
        "from tests.security.evil_zone import records\n"
        'ZONE = "evil.test"\n'
        f"RECORDS = records({SINK_HOSTS!r}, {sinks[0].port})\n"
    )
    dns = EvilDNS(free_port(), tmp_path / "queries.log")
    process = subprocess.Popen(
        [
            sys.executable, "-m", "tests.integration.dns_server",
            str(dns.port), str(zonefile), "--query-log", str(dns.log),
        ],
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == b"ready"
        yield dns
    finally:
        process.kill()
        process.wait(10)


def invite(local: int, *, cseq: int, branch: str, extra: str = "") -> bytes:
    return (
        "INVITE sip:x@evil.test SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch={branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:alice@{REALM}>;tag=amp\r\n"
        "To: <sip:x@evil.test>\r\n"
        f"Call-ID: dns-amplification-{local}\r\nCSeq: {cseq} INVITE\r\n"
        f"Contact: <sip:alice@127.0.0.1:{local}>\r\n{extra}"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def ack_for(local: int, branch: str, response: bytes) -> bytes:
    """The ACK for a non-2xx final response (RFC 3261 §17.1.1.3)."""
    to = next(
        line for line in response.decode().split("\r\n") if line.startswith("To:")
    )
    return (
        "ACK sip:x@evil.test SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch={branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:alice@{REALM}>;tag=amp\r\n{to}\r\n"
        f"Call-ID: dns-amplification-{local}\r\nCSeq: 1 ACK\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def proxy_authorization(response: bytes, uri: str) -> str:
    """Alice's answer to the first Proxy-Authenticate challenge of ``response``."""
    challenge = challenge_params(response, "Proxy-Authenticate")[0]
    return digest_answer(
        challenge, user="alice", password=PASSWORDS["alice"], method="INVITE",
        uri=uri, realm=REALM, cnonce="amp",
    )  # fmt: skip


def test_hostile_domain_costs_few_queries_and_destinations(
    tmp_path: Path, users_file: Path, sinks: list[Sink], evil_dns: EvilDNS
) -> None:
    """One authenticated INVITE to evil.test: at most 16 queries, 8 destinations.

    Queries are counted on UDP: should an answer come back truncated,
    twisted.names asks again over TCP (RFC 1035 §4.2.1), the same query.
    The sinks are loopback addresses that only the request named, which the
    proxy refuses unless --allow-destination allows them: allowed here, so
    that what reaches them shows the addresses are tried one at a time.
    """
    server = serve_with_users(
        tmp_path,
        users_file,
        # Let the sinks be reached, and ask for parallel forking: what reaches
        # them shows that one name's addresses are tried in turn, not at once.
        "--allow-destination",
        "127.0.0.0/8",
        "--forking",
        "parallel",
        dns_server=f"127.0.0.1:{evil_dns.port}",
    )
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(3)
            local = sock.getsockname()[1]
            branch = f"z9hG4bKamp{next(_numbers)}"
            sock.sendto(
                invite(local, cseq=1, branch=branch), ("127.0.0.1", server.port)
            )
            challenge = final_response(sock)
            assert status_of(challenge) == 407
            sock.sendto(ack_for(local, branch, challenge), ("127.0.0.1", server.port))
            before_credentials = evil_dns.queries()
            credentials = proxy_authorization(challenge, "sip:x@evil.test")
            sock.sendto(
                invite(local, cseq=2, branch=f"z9hG4bKamp{next(_numbers)}",
                       extra=f"Proxy-Authorization: {credentials}\r\n"),
                ("127.0.0.1", server.port),
            )  # fmt: skip
            evil_dns.settled()
            time.sleep(1.0)  # for the forwarded INVITEs to reach the sinks
        queries = evil_dns.queries()
        asked = [q for q in queries if q[0] == "udp"]
        # The lookup happened (the test measures something) and stayed small:
        # 8,783 queries here before the limits.
        assert ("udp", "evil.test", "NAPTR") in asked
        assert len(asked) <= MAX_QUERIES, asked
        assert len(queries) <= 2 * MAX_QUERIES, queries
        # Nothing was looked up for the caller before she proved who she is.
        assert before_credentials == []
        # Destinations reached: each sink address, per transport, counts once
        # (UDP retransmissions of one INVITE are one destination).
        reached = {
            (sink.host, kind)
            for sink in sinks
            for kind, _ in sink.received
            if kind in ("udp", "tcp-connect")
        }
        assert len(reached) <= MAX_PEERS, reached
        # Alternatives in turn: the first has 32 s (Timer B) before the next.
        assert len(reached) == 1, reached
        assert "DNS lookup for evil.test stopped after" in server.log_text()
    finally:
        stop(server.process)
    assert "Traceback" not in server.log_text(), server.log_text()
