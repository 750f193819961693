"""Memory per binding: the RSS a process gains holding N registrations in memory.

    python -m bench.binding_memory                 # 100,000 bindings
    python -m bench.binding_memory --count 1000000 # do 1,000,000 fit?

Each binding is made the way the server makes it: a REGISTER (one AOR per
phone, a SIPp-like Contact with ``transport=udp``, a User-Agent) parsed by
sipproxy's parser and handed to the real :class:`~sipproxy.registrar.Registrar`
with the memory store, on the flow the server would record. Messages and
transactions are garbage once answered; only the bindings stay. The RSS is read
from /proc/self/status after a full collection, before and after; the
difference over N is the cost of one binding, including the store's indexes.
Issue 8's target: at most 1 KB per binding, and 1,000,000 bindings fit.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as bench/binding_memory.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twisted.internet.defer import Deferred

from sipproxy.location import Flow
from sipproxy.location.memory import MemoryLocationService
from sipproxy.registrar import Registrar, RegistrarSettings
from sipproxy.sip.message import Request
from sipproxy.sip.parser import parse_message


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise SystemExit("no VmRSS in /proc/self/status (Linux only)")


def register_bytes(number: int) -> bytes:
    host = f"10.{number >> 16 & 255}.{number >> 8 & 255}.{number & 255}"
    return (
        f"REGISTER sip:example.test SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:5060;branch=z9hG4bK-{number};rport\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: <sip:u{number}@example.test>;tag=t{number}\r\n"
        f"To: <sip:u{number}@example.test>\r\n"
        f"Call-ID: {number}-4242@{host}\r\n"
        f"CSeq: 1 REGISTER\r\n"
        f"Contact: <sip:u{number}@{host}:5060;transport=udp>\r\n"
        f"Expires: 3600\r\n"
        f"User-Agent: SIPp register benchmark\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    args = parser.parse_args()
    if not 1 <= args.count <= 5_000_000:
        raise SystemExit("--count: 1 to 5,000,000")
    store = MemoryLocationService()
    registrar = Registrar(store, RegistrarSettings(domains=frozenset({"example.test"})))
    Deferred.fromCoroutine(store.open())
    gc.collect()
    before = rss_bytes()
    started = time.perf_counter()
    statuses: dict[int, int] = {}
    for number in range(args.count):
        request = parse_message(register_bytes(number))
        assert isinstance(request, Request)
        flow = Flow("udp", "127.0.0.1", 5060, request.top_via.host, 5060)
        done = Deferred.fromCoroutine(
            registrar.register(request, flow, now=1_000_000.0)
        )
        # The memory store never waits: the answer is there at once.
        status = int(getattr(done.result, "status", 0)) if done.called else 0
        statuses[status] = statuses.get(status, 0) + 1
    elapsed = time.perf_counter() - started
    gc.collect()
    after = rss_bytes()
    if statuses != {200: args.count}:
        raise SystemExit(f"not every REGISTER was accepted: {statuses}")
    per_binding = (after - before) / args.count
    print(
        f"{args.count} bindings: RSS {before / 2**20:.1f} -> {after / 2**20:.1f} MiB, "
        f"{per_binding:.0f} bytes per binding "
        f"({args.count / elapsed:.0f} registrations/s through the registrar)"
    )
    print(
        f"1,000,000 bindings would take about {per_binding * 1e6 / 2**30:.2f} GiB; "
        f"target <= 1 KB each: {'met' if per_binding <= 1024 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
