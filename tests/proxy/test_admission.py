"""503 for work in flight, in total and per source; never for answered requests.

Issue 13, item 7: the cap counted Completed transactions, kept 32 s for
retransmissions, so any ~1,560 requests a second made the server refuse everyone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest
from twisted.internet.defer import Deferred

from sipproxy.guard import TrustedNetworks
from sipproxy.location import Binding
from sipproxy.location.memory import MemoryLocationService
from sipproxy.registrar import Registrar, RegistrarSettings
from sipproxy.sip.addressing import Peer
from sipproxy.sip.message import Request, Response
from sipproxy.testing import UDPMemoryReactor
from tests.proxy import harness
from tests.proxy.harness import ALICE, BOB, Harness, answer, invite
from tests.transaction.support import SortedCalls

CAROL = ("198.51.100.30", 5080)
DAVE = ("203.0.113.40", 5090)


class SortedReactor(SortedCalls, UDPMemoryReactor):
    """The harness's reactor, for tens of thousands of timers."""


def limited(h: Harness, max_pending: int, per_source: int | None = None) -> Harness:
    h.proxy.settings = replace(
        h.proxy.settings,
        max_pending=max_pending,
        max_pending_per_source=max_pending if per_source is None else per_source,
    )
    return h


def options(number: int, source: tuple[str, int] = ALICE) -> bytes:
    host, port = source
    return (
        "OPTIONS sip:example.test SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK-o{number};rport\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:alice@example.test>;tag=a1\r\n"
        "To: <sip:example.test>\r\n"
        f"Call-ID: opt-{number}\r\n"
        f"CSeq: {number} OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def register(number: int, source: tuple[str, int]) -> bytes:
    host, port = source
    return (
        "REGISTER sip:example.test SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK-r{number};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:u{number}@example.test>;tag=r{number}\r\n"
        f"To: <sip:u{number}@example.test>\r\n"
        f"Call-ID: reg-{number}\r\n"
        "CSeq: 1 REGISTER\r\n"
        f"Contact: <sip:u{number}@{host}:{port}>\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


class StuckStore(MemoryLocationService):
    """A location store that never answers (a Redis server that hangs)."""

    async def bindings(self, aor: str, *, now: float) -> list[Binding]:
        await Deferred[None]()
        raise AssertionError("never answered")

    async def update(
        self,
        aor: str,
        *,
        save: Sequence[Binding] = (),
        remove: Sequence[str] = (),
        now: float,
    ) -> list[Binding]:
        await Deferred[None]()
        raise AssertionError("never answered")


def call(h: Harness, number: int, source: tuple[str, int]) -> Request | int:
    """An INVITE to bob from ``source``: the copy bob got, or our final status."""
    h.receive(invite(call_id=f"c{number}", branch=f"z9hG4bK-i{number}"), source)
    forwarded = [m for m in h.sent_to(BOB) if isinstance(m, Request)]
    finals = [
        m.status
        for m in h.sent_to(source)
        if isinstance(m, Response) and m.status >= 200
    ]
    if forwarded:
        assert not finals
        return forwarded[0]
    [status] = finals
    return status


def refused(results: list[Request | int]) -> list[bool]:
    return [result == 503 for result in results]


def test_answered_requests_never_get_503(monkeypatch: pytest.MonkeyPatch) -> None:
    """More requests answered at once than the cap: not one 503.

    Each stays Completed for Timer J (32 s) to absorb retransmissions, which is
    memory, not work (RFC 3261 §17.2.2). The issue's figures are 60,000 against
    50,000 (tests/transaction/test_admission.py runs those through the layer);
    through the whole proxy the same ratio is run at a tenth of the size.
    """
    monkeypatch.setattr(harness, "UDPMemoryReactor", SortedReactor)
    h = limited(Harness(), 5_000, per_source=500)
    refused = 0
    for number in range(6_000):
        h.receive(options(number), ALICE)
        for data, _ in h.socket.written:
            refused += data.startswith(b"SIP/2.0 503")
        h.socket.written.clear()
    assert refused == 0
    assert (h.proxy.layer.pending(), h.proxy.layer.completed()) == (0, 6_000)


def test_requests_in_flight_beyond_the_cap_get_503() -> None:
    """Calls still ringing are work: beyond max_pending, 503 with Retry-After."""
    h = limited(Harness(), 3)
    h.register("bob", BOB)
    sources = [ALICE, CAROL, DAVE, ("192.0.2.99", 5099)]
    results = [call(h, n, source) for n, source in enumerate(sources)]
    assert refused(results) == [False, False, False, True]
    assert h.proxy.layer.pending() == 3


def test_registers_waiting_on_the_store_are_pending() -> None:
    """A REGISTER the store has not answered is work; beyond the cap, 503."""
    h = limited(Harness(), 3)
    h.proxy.context.registrar = Registrar(
        StuckStore(), RegistrarSettings(domains=frozenset({"example.test"}))
    )
    sources = [ALICE, CAROL, DAVE, ("192.0.2.99", 5099)]
    for number, source in enumerate(sources):
        h.receive(register(number, source), source)
    assert h.proxy.layer.pending() == 3
    answered = [(m.status, to) for m, to in h.sent() if isinstance(m, Response)]
    assert answered == [(503, sources[3])]


def test_503_carries_retry_after() -> None:
    """The refusal says when to come back (RFC 3261 §21.5.4)."""
    h = limited(Harness(), 0)
    h.receive(options(1), ALICE)
    [response] = h.sent_to(ALICE)
    assert isinstance(response, Response)
    assert response.status == 503
    assert response.headers.get("retry-after") == "5"


def test_one_source_beyond_its_share_gets_503_others_are_served() -> None:
    """A source holds at most its share of the budget; the others still get in."""
    h = limited(Harness(), 10, per_source=3)
    h.register("bob", BOB)
    results = [call(h, n, ALICE) for n in range(4)]
    assert refused(results) == [False, False, False, True]
    assert isinstance(call(h, 10, CAROL), Request)
    assert h.proxy.layer.pending_from(Peer("udp", *ALICE)) == 3
    assert h.proxy.layer.pending() == 4


def test_a_trusted_source_may_use_the_whole_budget() -> None:
    """An SBC in front is every caller at once: no per-source share for it."""
    h = limited(Harness(), 10, per_source=3)
    h.proxy.settings = replace(
        h.proxy.settings, trusted=TrustedNetworks([f"{ALICE[0]}/32"])
    )
    h.register("bob", BOB)
    results = [call(h, n, ALICE) for n in range(5)]
    assert refused(results) == [False] * 5
    assert h.proxy.layer.pending_from(Peer("udp", *ALICE)) == 5


def test_an_answer_frees_the_sources_share() -> None:
    """Once a call is answered it is no longer work: the source may send again."""
    h = limited(Harness(), 10, per_source=1)
    h.register("bob", BOB)
    forwarded = call(h, 0, ALICE)
    assert isinstance(forwarded, Request)
    assert call(h, 1, ALICE) == 503
    h.receive(answer(forwarded, 486), BOB)
    assert 486 in [m.status for m in h.sent_to(ALICE) if isinstance(m, Response)]
    assert isinstance(call(h, 2, ALICE), Request)


def test_a_source_at_its_share_may_still_cancel() -> None:
    """CANCEL ends work: it is answered even when its source is at its share."""
    h = limited(Harness(), 10, per_source=1)
    h.register("bob", BOB)
    forwarded = call(h, 0, ALICE)
    assert isinstance(forwarded, Request)
    h.receive(answer(forwarded, 180), BOB)  # §9.1: CANCEL once it rings
    h.sent_to(ALICE)
    cancel = (
        invite(call_id="c0", branch="z9hG4bK-i0")
        .replace(b"INVITE sip:", b"CANCEL sip:", 1)
        .replace(b"1 INVITE", b"1 CANCEL")
    )
    h.receive(cancel, ALICE)
    assert [m.status for m in h.sent_to(ALICE) if isinstance(m, Response)] == [200]
    [to_bob] = [m for m in h.sent_to(BOB) if isinstance(m, Request)]
    assert to_bob.method == "CANCEL"
    h.receive(answer(forwarded, 487), BOB)
    assert [m.status for m in h.sent_to(ALICE) if isinstance(m, Response)] == [487]
    assert h.proxy.layer.pending() == 0
