"""Completed non-INVITE transactions over UDP kept as entries, one sweep for all.

RFC 3261 §17.2.2: in Completed "the server transaction MUST pass the final
response to the transport layer for retransmission whenever a retransmission of
the request is received", until Timer J (64*T1 over UDP, zero when reliable).
§17.1.2.2: a client transaction in Completed absorbs retransmissions of the
final response until Timer K (T4 over UDP, zero when reliable).
"""

from __future__ import annotations

import gc
import weakref
from typing import Any

from twisted.internet.testing import MemoryReactorClock

from sipproxy.sip.addressing import Peer
from sipproxy.sip.message import Request, Response
from sipproxy.transaction.layer import State, TransactionLayer

from .support import TCP_PEER, UDP_PEER, RecordingUser, TimedChannel, Wire, request

#: A phone behind NAT: its Via names a private address, so responses go to the
#: source (received, rport).
NAT_PEER = Peer("udp", "203.0.113.7", 41000)


class Setup:
    """A layer on a MemoryReactorClock whose TU answers every request with 200."""

    def __init__(self, **layer: Any) -> None:
        self.clock = MemoryReactorClock()
        self.user = RecordingUser()
        self.channel = TimedChannel(self.clock)
        self.layer = TransactionLayer(self.user, self.clock, **layer)
        self.user.on_request = lambda got, transaction: transaction.respond(
            got.response(200, to_tag="t1")
        )

    def receive(self, message: Request, peer: Peer = UDP_PEER) -> None:
        self.layer.message_received(message, peer, self.channel)

    def receive_response(self, message: Response, peer: Peer = UDP_PEER) -> None:
        self.layer.message_received(message, peer, self.channel)

    def at(self, moment: float) -> None:
        self.clock.advance(moment - self.clock.seconds())


def register(number: int, transport: str = "UDP", **kwargs: Any) -> Request:
    return request(
        "REGISTER", branch=f"z9hG4bK-c{number}", transport=transport, **kwargs
    )


def test_a_retransmission_gets_the_same_bytes_from_the_entry() -> None:
    """The very bytes of the final response go again, to the same address (§17.2.2).

    The TU does not see the retransmission, and the layer keeps no transaction
    object for it: once the TU lets go of its transaction, nothing of it is left
    but the entry.
    """
    s = Setup()
    s.receive(register(1, sent_by="10.0.0.2:5062;rport"), NAT_PEER)
    transaction = s.user.requests[0][1]
    assert transaction.state is State.COMPLETED
    [(_, first, to)] = s.channel.sent
    assert (to.host, to.port) == ("203.0.113.7", 41000)
    gone = weakref.ref(transaction)
    del transaction
    s.user.requests.clear()
    gc.collect()
    assert gone() is None
    s.clock.advance(5.0)
    s.receive(register(1, sent_by="10.0.0.2:5062;rport"), NAT_PEER)
    s.receive(register(1, sent_by="10.0.0.2:5062;rport"), NAT_PEER)
    assert [(data, peer) for _, data, peer in s.channel.sent] == [(first, to)] * 3
    assert s.user.requests == []
    assert (s.layer.pending(), s.layer.completed()) == (0, 1)
    assert s.layer.counts()["server_non_invite"] == 1


def test_expiry_never_comes_before_timer_j() -> None:
    """An entry is answered for all of Timer J (32 s), then forgotten.

    After that a retransmission is a new request to the TU.
    """
    s = Setup()
    s.at(0.3)
    s.receive(register(1))
    s.at(32.29)
    s.receive(register(1))
    assert len(s.user.requests) == 1
    s.at(34.0)
    assert (s.layer.completed(), s.layer.counts()["server_non_invite"]) == (0, 0)
    s.receive(register(1))
    assert len(s.user.requests) == 2
    assert s.channel.statuses == [200, 200, 200]


def test_entries_are_swept_at_most_one_resolution_late() -> None:
    """With the default 1 s buckets, an entry goes by Timer J plus 1 s."""
    s = Setup()
    s.receive(register(1))  # at 0: expires at 32
    s.at(0.3)
    s.receive(register(2))  # expires at 32.3, swept with the bucket at 33
    s.at(32.0)
    assert s.layer.completed() == 1
    s.receive(register(2))
    assert len(s.user.requests) == 2  # still answered from the entry
    s.at(33.0)
    assert s.layer.completed() == 0
    assert s.clock.getDelayedCalls() == []


def test_resolution_zero_expires_each_at_its_own_timer_j() -> None:
    """``sweep_resolution=0``: each entry goes exactly at Timer J."""
    s = Setup(sweep_resolution=0)
    s.at(0.5)
    s.receive(register(1))
    s.at(0.75)
    s.receive(register(2))
    s.at(32.25)
    assert s.layer.completed() == 2
    s.at(32.5)
    assert s.layer.completed() == 1
    s.at(32.75)
    assert s.layer.completed() == 0
    assert s.clock.getDelayedCalls() == []


def test_one_timer_sweeps_them_all() -> None:
    """A thousand Completed entries hold one reactor call, not one each."""
    s = Setup()
    for number in range(1000):
        s.at(number * 0.01)
        s.receive(register(number))
    assert s.layer.completed() == 1000
    assert len(s.clock.getDelayedCalls()) == 1
    s.at(42.0)
    assert s.layer.completed() == 0
    assert s.clock.getDelayedCalls() == []


def test_a_full_table_forgets_the_oldest_first() -> None:
    """Beyond max_completed the oldest entry goes; the newer ones still answer."""
    s = Setup(max_completed=2)
    for number in range(3):
        s.receive(register(number))
    assert s.layer.completed() == 2
    s.receive(register(1))
    s.receive(register(2))
    assert len(s.user.requests) == 3
    s.receive(register(0))  # forgotten: a new request, answered again
    assert len(s.user.requests) == 4
    assert s.layer.completed() == 2
    s.receive(register(1))  # that one pushed out 1, the oldest then
    assert len(s.user.requests) == 5
    s.at(33.0)
    assert (s.layer.completed(), s.clock.getDelayedCalls()) == (0, [])


def test_over_a_reliable_transport_nothing_is_kept() -> None:
    """Timer J is zero over TCP: no entry, no timer, nothing pending (§17.2.2)."""
    s = Setup()
    s.receive(register(1, transport="TCP"), TCP_PEER)
    assert s.user.requests[0][1].state is State.TERMINATED
    assert (s.layer.pending(), s.layer.completed()) == (0, 0)
    assert s.layer.counts()["server_non_invite"] == 0
    assert s.clock.getDelayedCalls() == []


def test_pending_and_completed_stay_apart() -> None:
    """Waiting requests are pending; answered ones count as completed, per source."""
    s = Setup()
    s.user.on_request = None
    s.receive(register(1))
    s.receive(register(2))
    assert (s.layer.pending(), s.layer.pending_from(UDP_PEER)) == (2, 2)
    first = s.user.requests[0][1]
    first.respond(first.request.response(200, to_tag="t1"))
    assert (s.layer.pending(), s.layer.pending_from(UDP_PEER)) == (1, 1)
    assert s.layer.completed() == 1
    first.respond(first.request.response(500))  # discarded in Completed
    assert (s.layer.pending(), s.layer.completed()) == (1, 1)
    s.at(40.0)
    assert (s.layer.pending(), s.layer.completed()) == (1, 0)


def test_timer_k_absorbs_retransmitted_finals_then_forgets() -> None:
    """A client non-INVITE over UDP absorbs its final's retransmissions (§17.1.2.2).

    They never reach the TU while Timer K (T4) runs; the layer keeps only the
    key, on one sweep. After it a late copy is a stray response for the TU.
    """
    s = Setup()
    sent = Wire(s.clock)
    out = request("OPTIONS", branch="z9hG4bK-out1", sent_by="192.0.2.1:5060")
    transaction = s.layer.send_request(out, sent, reliable=False)
    final = out.response(200, to_tag="b")
    s.receive_response(final)
    assert [r for r, _ in s.user.responses] == [final]
    assert transaction.state is State.COMPLETED
    assert s.layer.counts()["client_non_invite"] == 1
    assert len(s.clock.getDelayedCalls()) == 1  # the sweep; E and F are gone
    s.at(4.0)
    s.receive_response(final)
    assert len(s.user.responses) == 1
    s.at(6.0)
    assert s.layer.counts()["client_non_invite"] == 0
    assert s.clock.getDelayedCalls() == []
    s.receive_response(final)
    assert s.user.responses[-1] == (final, None)


def test_timer_k_is_zero_over_a_reliable_transport() -> None:
    """Over TCP the client transaction ends with its final response: no entry."""
    s = Setup()
    out = request("OPTIONS", branch="z9hG4bK-out2", transport="TCP")
    transaction = s.layer.send_request(out, Wire(s.clock), reliable=True)
    s.receive_response(out.response(200, to_tag="b"), TCP_PEER)
    assert transaction.state is State.TERMINATED
    assert s.layer.counts()["client_non_invite"] == 0
    assert s.clock.getDelayedCalls() == []
