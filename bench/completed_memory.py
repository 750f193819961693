"""Memory per Completed non-INVITE server transaction, as the layer keeps it.

    python -m bench.completed_memory                # 20,000 REGISTERs answered
    python -m bench.completed_memory --count 100000

A REGISTER over UDP that has been answered stays in the transaction layer for
Timer J (32 s) only to resend its response's bytes to a retransmission (RFC 3261
§17.2.2). This sizes :data:`sipproxy.transaction.layer.MAX_COMPLETED` (issue 13,
item 7): each REGISTER is parsed from bytes, handed to a real
:class:`~sipproxy.transaction.layer.TransactionLayer`, answered at once with a
200 the size the registrar sends, and left Completed: since issue 18 an entry in
the layer's table (key, the response's bytes, destination, expiry), its Timer J
one sweep for all on Twisted's own :class:`~twisted.internet.base.DelayedCall`
in a heap, as the reactor keeps it (before: the transaction object and a
DelayedCall of its own). tracemalloc counts what is still allocated after a full
collection, before and after; the difference over N is one entry's cost.
"""

from __future__ import annotations

import argparse
import gc
import heapq
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as bench/completed_memory.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twisted.internet.base import DelayedCall
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from bench.binding_memory import register_bytes
from sipproxy.sip.addressing import Channel, Peer
from sipproxy.sip.message import Request, Response
from sipproxy.sip.parser import parse_message
from sipproxy.transaction.layer import (
    MAX_COMPLETED,
    ClientTransaction,
    ServerTransaction,
    TransactionLayer,
)


@implementer(IReactorTime)
class HeapClock:
    """callLater on a heap of real DelayedCalls, like the reactor (no running)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.calls: list[tuple[float, int, DelayedCall]] = []

    def seconds(self) -> float:
        return self.now

    def callLater(  # noqa: N802 - IReactorTime
        self,
        delay: float,
        callable: Callable[..., Any],
        *args: object,
        **kwargs: object,
    ) -> DelayedCall:
        call = DelayedCall(
            self.now + delay,
            callable,
            args,
            kwargs,
            lambda c: None,
            lambda c: None,
            self.seconds,
        )
        heapq.heappush(self.calls, (call.time, id(call), call))
        return call

    def getDelayedCalls(self) -> list[DelayedCall]:  # noqa: N802 - IReactorTime
        return [call for _, _, call in self.calls]


class Silent:
    """A UDP socket that sends nowhere."""

    local = Peer("udp", "127.0.0.1", 5060)
    connection_id = None

    def send(self, data: bytes, peer: Peer) -> None:
        pass


class Registrar:
    """Answers every REGISTER at once with a 200 like the real one's."""

    def request_received(
        self,
        request: Request,
        transaction: ServerTransaction | None,
        peer: Peer,
        channel: Channel,
    ) -> None:
        assert transaction is not None
        contact = request.headers.get("contact") or ""
        transaction.respond(
            request.response(
                200,
                to_tag="4f1c2a9b",
                headers=(
                    ("Contact", f"{contact};expires=3600"),
                    ("Date", "Thu, 03 Dec 2026 22:00:00 GMT"),
                ),
            )
        )

    def response_received(
        self,
        response: Response,
        transaction: ClientTransaction | None,
        peer: Peer,
        channel: Channel,
    ) -> None:
        pass

    def transaction_timed_out(self, transaction: ClientTransaction) -> None:
        pass

    def message_invalid(self, error: Exception, peer: Peer, channel: Channel) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000)
    count = parser.parse_args().count
    clock = HeapClock()
    layer = TransactionLayer(Registrar(), clock, max_completed=count + 1)
    channel = Silent()
    datagrams = [register_bytes(n) for n in range(count)]
    tracemalloc.start()
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    for number, data in enumerate(datagrams):
        peer = Peer("udp", f"10.0.{number >> 8 & 255}.{number & 255}", 5060)
        layer.message_received(parse_message(data), peer, channel)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert layer.completed() == count
    assert layer.pending() == 0
    wire = len(datagrams[0])
    per_entry = (after - before) / count
    print(f"{count} Completed REGISTER transactions (request {wire} bytes)")
    full = per_entry * MAX_COMPLETED / 1e6
    print(f"{per_entry:.0f} bytes each; MAX_COMPLETED={MAX_COMPLETED}: {full:.0f} MB")


if __name__ == "__main__":
    main()
