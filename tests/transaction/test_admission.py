"""Work and memory counted apart: pending requests; Completed ones, bounded."""

from __future__ import annotations

from typing import Any

from sipproxy.sip.addressing import Peer
from sipproxy.sip.message import Request
from sipproxy.transaction.layer import (
    MAX_COMPLETED,
    State,
    TransactionLayer,
)

from .support import (
    TCP_PEER,
    UDP_PEER,
    RecordingUser,
    SortedClock,
    TimedChannel,
    request,
)

OTHER_PEER = Peer("udp", "198.51.100.7", 5060)


class Setup:
    """A layer with a recording TU, a clock and a channel; a small Completed bound."""

    def __init__(self, max_completed: int = MAX_COMPLETED) -> None:
        self.clock = SortedClock()
        self.user = RecordingUser()
        self.channel = TimedChannel(self.clock)
        self.layer = TransactionLayer(
            self.user, self.clock, max_completed=max_completed
        )

    def receive(self, message: Request, peer: Peer = UDP_PEER) -> None:
        self.layer.message_received(message, peer, self.channel)

    def transaction(self, index: int = -1) -> Any:
        return self.user.requests[index][1]


def answer(transaction: Any, status: int) -> None:
    transaction.respond(transaction.request.response(status, to_tag="x"))


def test_a_non_invite_request_is_pending_until_its_final_answer() -> None:
    """Trying and Proceeding are work in flight; Completed is not (§17.2.2)."""
    s = Setup()
    s.receive(request("REGISTER"))
    assert (s.layer.pending(), s.layer.pending_from(UDP_PEER)) == (1, 1)
    answer(s.transaction(), 100)
    assert s.layer.pending() == 1
    answer(s.transaction(), 200)
    assert s.transaction().state is State.COMPLETED
    assert (s.layer.pending(), s.layer.pending_from(UDP_PEER)) == (0, 0)
    assert s.layer.completed() == 1
    s.clock.advance(32.0)  # Timer J
    assert (s.layer.pending(), s.layer.completed()) == (0, 0)


def test_an_invite_is_pending_until_its_final_answer() -> None:
    """A ringing INVITE is in flight; once answered it waits only for the ACK."""
    s = Setup()
    s.receive(request("INVITE"))
    answer(s.transaction(), 180)
    assert s.layer.pending() == 1
    answer(s.transaction(), 486)
    assert s.layer.pending() == 0
    # Not in the bounded table: an INVITE taken twice would ring phones twice.
    assert s.layer.completed() == 0
    s.clock.advance(64.0)
    assert s.layer.counts()["server_invite"] == 0


def test_answered_requests_never_pile_up_as_pending() -> None:
    """60,000 REGISTERs answered at once: never more than one pending at a time.

    The overload guard compares pending() with max_pending (50,000 by default),
    so none of them can be refused, though all are kept for Timer J.
    """
    s = Setup()
    seen: list[int] = []

    def respond(got: Request, transaction: Any) -> None:
        seen.append(s.layer.pending())
        answer(transaction, 200)

    s.user.on_request = respond
    template = request("REGISTER")
    for number in range(60_000):
        # A new branch each: new transactions, parsed once (the layer's input).
        via = f"SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-r{number}"
        s.receive(
            Request("REGISTER", template.uri, template.headers.replace("Via", via))
        )
    assert max(seen) == 1
    assert len(seen) == 60_000
    assert (s.layer.pending(), s.layer.completed()) == (0, 60_000)


def test_pending_is_counted_per_source() -> None:
    """Each source's requests in flight are its own; answering frees them."""
    s = Setup()
    s.receive(request("MESSAGE", branch="z9hG4bK-1"))
    s.receive(request("MESSAGE", branch="z9hG4bK-2"))
    s.receive(
        request("MESSAGE", branch="z9hG4bK-3", sent_by="198.51.100.7"), OTHER_PEER
    )
    assert s.layer.pending() == 3
    assert s.layer.pending_from(UDP_PEER) == 2
    assert s.layer.pending_from(OTHER_PEER) == 1
    assert s.layer.pending_from(Peer("udp", "203.0.113.1", 5060)) == 0
    answer(s.transaction(0), 200)
    assert s.layer.pending_from(UDP_PEER) == 1
    answer(s.transaction(1), 404)
    answer(s.transaction(2), 200)
    assert (s.layer.pending(), s.layer.pending_from(UDP_PEER)) == (0, 0)


def test_ipv6_sources_in_one_64_share_their_count() -> None:
    """Two addresses of one /64 count as one source; another /64 apart."""
    s = Setup()
    first = Peer("udp", "2001:db8:1:2::10", 5060)
    s.receive(
        request("OPTIONS", branch="z9hG4bK-1", sent_by="[2001:db8:1:2::10]"), first
    )
    second = Peer("udp", "2001:db8:1:2:aaaa::1", 5060)
    s.receive(
        request("OPTIONS", branch="z9hG4bK-2", sent_by="[2001:db8:1:2::11]"), second
    )
    assert s.layer.pending_from(first) == 2
    assert s.layer.pending_from(Peer("udp", "2001:db8:1:3::10", 5060)) == 0


def test_completed_table_never_exceeds_its_bound() -> None:
    """The oldest Completed transaction goes first; newer ones still absorb."""
    s = Setup(max_completed=3)
    for number in range(10):
        s.receive(request("REGISTER", branch=f"z9hG4bK-{number}"))
        answer(s.transaction(), 200)
        assert s.layer.completed() == min(number + 1, 3)
    assert s.layer.counts()["server_non_invite"] == 3
    # No Timer J each: one sweep for all of them.
    assert len(s.clock.getDelayedCalls()) == 1
    # A retransmission of a kept one is answered from the transaction.
    s.receive(request("REGISTER", branch="z9hG4bK-9"))
    assert len(s.user.requests) == 10
    assert s.channel.statuses[-1] == 200
    # One of an evicted one is a new request to the TU, answered again.
    s.receive(request("REGISTER", branch="z9hG4bK-0"))
    assert len(s.user.requests) == 11
    answer(s.transaction(), 200)
    assert s.layer.completed() == 3
    assert s.channel.statuses[-1] == 200
    s.clock.advance(32.0)
    assert (s.layer.completed(), s.clock.getDelayedCalls()) == (0, [])
    assert s.layer.counts()["server_non_invite"] == 0


def test_reliable_transactions_are_not_kept() -> None:
    """Over TCP Timer J is zero: nothing is kept, nothing is pending (§17.2.2)."""
    s = Setup()
    s.receive(request("REGISTER", transport="TCP"), TCP_PEER)
    assert s.layer.pending_from(TCP_PEER) == 1
    answer(s.transaction(), 200)
    assert (s.layer.pending(), s.layer.completed()) == (0, 0)
    assert s.layer.counts()["server_non_invite"] == 0
