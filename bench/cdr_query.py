"""How long one user's call history takes to query, per CDR store (issue 15).

Run ``python -m bench.cdr_query [--records N] [--queries Q] [--redis URL]`` from
the repository root. It writes N records (100 users, spread over 30 days) to an
SQLite and a JSON lines store in a temporary directory, then times Q queries of
``query(user=..., since=..., until=..., limit=100)`` over a random week each.
Numbers are printed, never asserted; the issue's target is under 100 ms a query
for SQLite at 10,000 records.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as bench/cdr_query.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twisted.internet import defer, task

from sipproxy.cdr import CallRecordStore
from sipproxy.cdr.record import CallRecord
from sipproxy.cdr.spec import cdr_from_spec

USERS = 100
DAYS = 30
DAY = 86_400.0
# 30 days ending a day ago: in the past, as finished calls are (Redis needs it).
END = time.time() - DAY
BEGIN = END - DAYS * DAY
DISPOSITIONS = ["answered"] * 6 + ["no_answer", "busy", "cancelled", "failed"]


def _records(count: int, rng: random.Random) -> list[CallRecord]:
    records = []
    for _ in range(count):
        start = BEGIN + rng.random() * DAYS * DAY
        caller, callee = rng.sample(range(USERS), 2)
        disposition = rng.choice(DISPOSITIONS)
        answered = disposition == "answered"
        records.append(
            CallRecord(
                call_id=f"{uuid.UUID(int=rng.getrandbits(128))}@bench",
                caller=f"user{caller}",
                callee=f"sip:user{callee}@example.test",
                answered_by=f"sip:user{callee}@192.0.2.{callee}" if answered else None,
                start=start,
                answer=start + 5 if answered else None,
                end=start + (5 + rng.expovariate(1 / 180) if answered else 30),
                disposition=disposition,
                status=200 if answered else 486,
                hangup_by="caller" if answered else None,
            )
        )
    # Finished calls are added as they end, not as they start.
    records.sort(key=lambda record: record.end or record.start)
    return records


async def _measure(
    name: str, store: CallRecordStore, records: list[CallRecord], queries: int
) -> None:
    rng = random.Random(2)
    await store.open()
    try:
        started = time.perf_counter()
        for record in records:
            await store.add(record)
        writing = time.perf_counter() - started
        timings, found = [], 0
        for _ in range(queries):
            since = BEGIN + rng.random() * (DAYS - 7) * DAY
            started = time.perf_counter()
            result = await store.query(
                user=f"user{rng.randrange(USERS)}",
                since=since,
                until=since + 7 * DAY,
                limit=100,
            )
            timings.append((time.perf_counter() - started) * 1000)
            found += len(result)
        print(
            f"{name:6} {statistics.mean(timings):8.2f} ms/query mean"
            f"  {statistics.median(timings):8.2f} median"
            f"  {max(timings):8.2f} max"
            f"  ({queries} queries, {found / queries:.0f} records each;"
            f" {len(records)} records added in {writing:.1f} s)"
        )
    finally:
        await store.close()


async def _main(reactor: Any, count: int, queries: int, redis: str | None) -> None:
    records = _records(count, random.Random(1))
    with tempfile.TemporaryDirectory() as directory:
        for kind in ("sqlite", "jsonl"):
            store = cdr_from_spec(
                f"{kind}:{directory}/cdr.{kind}", reactor, location="memory:"
            )
            await _measure(kind, store, records, queries)
    if redis:
        # A prefix of its own, so the run never touches real records.
        separator = "&" if "?" in redis else "?"
        spec = f"{redis}{separator}prefix=bench-{uuid.uuid4().hex}:"
        await _measure(
            "redis", cdr_from_spec(spec, reactor, location="memory:"), records, queries
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--redis", help="also measure this redis://HOST:PORT/DB")
    options = parser.parse_args()
    task.react(
        lambda reactor: defer.Deferred.fromCoroutine(
            _main(reactor, options.records, options.queries, options.redis)
        )
    )


if __name__ == "__main__":
    main()
