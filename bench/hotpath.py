"""The server's own cost per message, without sockets or a load generator.

Feeds REGISTER (or OPTIONS) datagrams straight into the UDP protocol of a fully
wired ``SIPServerService`` (memory store) and reports microseconds per message.
It isolates what the parser, transaction layer, registrar and proxy cost, which
is what bounds the SIPp ramps on one core (docs/performance.md)::

    python -m bench.hotpath --messages 50000
    python -m bench.hotpath --profile              # cProfile, top functions
    valgrind --tool=callgrind python -m bench.hotpath --messages 5000

Every message is a new AOR, as in the SIPp ``register`` scenario.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import time

from twisted.internet import reactor
from twisted.internet.defer import Deferred

from sipproxy.config import build_config
from sipproxy.tap import SIPServerService
from sipproxy.testing import FakeDatagramTransport
from sipproxy.transport.udp import SIPDatagramProtocol

_REGISTER = (
    "REGISTER sip:example.test SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-{n}-1;rport\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:u{n}@example.test>;tag=1234SIPpTag00{n}\r\n"
    "To: <sip:u{n}@example.test>\r\n"
    "Call-ID: {n}-1234@127.0.0.1\r\n"
    "CSeq: 1 REGISTER\r\n"
    "Contact: <sip:u{n}@127.0.0.1:5061;transport=udp>\r\n"
    "Expires: 3600\r\n"
    "User-Agent: SIPp register benchmark\r\n"
    "Content-Length: 0\r\n"
    "\r\n"
)
_OPTIONS = (
    "OPTIONS sip:example.test SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-{n}-1;rport\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:probe@example.test>;tag={n}\r\n"
    "To: <sip:example.test>\r\n"
    "Call-ID: {n}-opt@127.0.0.1\r\n"
    "CSeq: 1 OPTIONS\r\n"
    "Content-Length: 0\r\n"
    "\r\n"
)


def build() -> tuple[SIPDatagramProtocol, FakeDatagramTransport]:
    """A server wired as twistd wires it, with a fake socket."""
    config = build_config(
        {}, {"domain": ["example.test"], "listen": ["udp:5060"], "rate-limit": "0"}
    )
    service = SIPServerService(config, reactor)
    protocol = SIPDatagramProtocol(
        service.proxy.layer, config.max_message_size, admit=service._admit
    )
    transport = FakeDatagramTransport()
    protocol.makeConnection(transport)
    service.transports.add_udp(protocol)
    Deferred.fromCoroutine(service.location.open())  # memory: at once
    return protocol, transport


def run(kind: str, count: int, profile: bool) -> None:
    protocol, transport = build()
    template = _REGISTER if kind == "register" else _OPTIONS
    datagrams = [template.format(n=n).encode() for n in range(count)]
    source = ("127.0.0.1", 5061)
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    profiler = cProfile.Profile() if profile else None
    if profiler:
        profiler.enable()
    start = time.process_time()
    for datagram in datagrams:
        protocol.datagramReceived(datagram, source)
    spent = time.process_time() - start
    if profiler:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
    answered = sum(1 for data, _ in transport.written if b" 200 " in data[:16])
    print(
        f"{kind}: {count} messages, {answered} answered 200, "
        f"{spent / count * 1e6:.1f} us CPU each, {count / spent:.0f}/s on one core"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=("register", "options"), default="register")
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    run(args.kind, args.messages, args.profile)


if __name__ == "__main__":
    main()
