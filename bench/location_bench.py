"""How many REGISTER-like update + lookup pairs per second each location store does.

Run ``python -m bench.location_bench [--count N] [--redis redis://HOST:PORT/DB]``
from the repository root. Numbers are printed, never asserted: compare them
before and after a change to a store, on the same machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as bench/location_bench.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twisted.internet import defer, task

from sipproxy.location import Binding, Flow, LocationService
from sipproxy.location.spec import location_from_spec

AORS = 1000


def _binding(i: int, now: float) -> Binding:
    aor = f"sip:user{i % AORS}@example.com"
    return Binding(
        aor=aor,
        contact=f"sip:user{i % AORS}@192.0.2.{i % 250}:5060;transport=udp",
        expires_at=now + 3600,
        registered_at=now,
        call_id=f"{i}@bench",
        cseq=i,
        flow=Flow("udp", "192.0.2.1", 5060, f"198.51.100.{i % 250}", 40000 + i % 1000),
        params=(("+sip.instance", '"<urn:uuid:bench>"'), ("unknownparam", None)),
        user_agent="bench/1.0",
    )


async def _measure(name: str, store: LocationService, count: int) -> None:
    await store.open()
    try:
        started = time.perf_counter()
        for i in range(count):
            now = 1_000_000.0 + i
            saved = _binding(i, now)
            await store.update(saved.aor, save=[saved], now=now)
            await store.bindings(saved.aor, now=now)
        elapsed = time.perf_counter() - started
        print(
            f"{name:8} {count / elapsed:10.0f} update+bindings/s"
            f"  ({elapsed / count * 1e6:7.1f} µs each, {count} pairs)"
        )
    finally:
        await store.close()


async def _main(reactor: Any, count: int, redis: str | None) -> None:
    await _measure("memory", location_from_spec("memory:", reactor), count)
    with tempfile.TemporaryDirectory() as directory:
        spec = f"sqlite:{directory}/location.db"
        await _measure("sqlite", location_from_spec(spec, reactor), count)
    if redis:
        # A prefix of its own, so the run never touches real registrations.
        separator = "&" if "?" in redis else "?"
        spec = f"{redis}{separator}prefix=bench-{uuid.uuid4().hex}:"
        await _measure("redis", location_from_spec(spec, reactor), count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--redis", help="also measure this redis://HOST:PORT/DB")
    options = parser.parse_args()
    task.react(
        lambda reactor: defer.Deferred.fromCoroutine(
            _main(reactor, options.count, options.redis)
        )
    )


if __name__ == "__main__":
    main()
