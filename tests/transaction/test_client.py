"""Client transactions (RFC 3261 §17.1, figures 5 and 6, as RFC 6026 amends them)."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from sipproxy.sip.message import Request
from sipproxy.testing import RecordingChannel
from sipproxy.transaction.client import (
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    ack_for,
)
from sipproxy.transaction.state import State

from .support import UDP_PEER, RecordingUser, Wire, request, run_until, state_of

CHANNEL = RecordingChannel()
ROUTE = "Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n"


def invite_transaction(
    *, reliable: bool = False, invite: Request | None = None
) -> tuple[ClientInviteTransaction, RecordingUser, Wire, Clock]:
    clock = Clock()
    wire, user = Wire(clock), RecordingUser()
    txn = ClientInviteTransaction(
        invite or request("INVITE", extra=ROUTE),
        user,
        send=wire,
        clock=clock,
        reliable=reliable,
    )
    txn.start()
    return txn, user, wire, clock


def non_invite_transaction(
    *, reliable: bool = False
) -> tuple[ClientNonInviteTransaction, RecordingUser, Wire, Clock]:
    clock = Clock()
    wire, user = Wire(clock), RecordingUser()
    txn = ClientNonInviteTransaction(
        request("OPTIONS"), user, send=wire, clock=clock, reliable=reliable
    )
    txn.start()
    return txn, user, wire, clock


def reply(
    txn: ClientInviteTransaction | ClientNonInviteTransaction, status: int
) -> None:
    to_tag = None if status == 100 else "bob9"
    txn.receive_response(txn.request.response(status, to_tag=to_tag), UDP_PEER, CHANNEL)


# -- INVITE: Timers A and B ------------------------------------------------------


def test_timer_a_doubles_until_timer_b() -> None:
    """Over UDP the INVITE goes out at 0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 (§17.1.1.2)."""
    txn, user, wire, clock = invite_transaction()
    run_until(clock, 31.9)
    assert wire.times == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert all(data == txn.request.to_bytes() for _, data in wire.sent)
    assert state_of(txn) is State.CALLING
    assert user.timeouts == []


def test_timer_b_times_out_calling() -> None:
    """Timer B (64*T1) in Calling: TU told of the timeout, then Terminated."""
    txn, user, _, clock = invite_transaction()
    run_until(clock, 31.9)
    clock.advance(0.1)
    assert user.timeouts == [txn]
    assert state_of(txn) is State.TERMINATED
    assert clock.getDelayedCalls() == []


def test_reliable_invite_is_never_retransmitted() -> None:
    """Over TCP Timer A never starts (§17.1.1.2: "SHOULD NOT start timer A")."""
    txn, user, wire, clock = invite_transaction(reliable=True)
    run_until(clock, 32.0)
    assert wire.times == [0.0]
    assert user.timeouts == [txn]


def test_provisional_stops_retransmission_and_timer_b() -> None:
    """A 1xx moves Calling to Proceeding, goes to the TU; A and B stop."""
    txn, user, wire, clock = invite_transaction()
    clock.advance(0.2)
    reply(txn, 100)
    reply(txn, 180)
    assert state_of(txn) is State.PROCEEDING
    assert user.statuses == [100, 180]
    run_until(clock, 200.0)
    assert wire.times == [0.0]
    assert user.timeouts == []
    assert state_of(txn) is State.PROCEEDING


def test_custom_timeout_replaces_timer_b() -> None:
    """``timeout`` overrides 64*T1."""
    clock = Clock()
    user = RecordingUser()
    txn = ClientInviteTransaction(
        request(), user, send=Wire(clock), clock=clock, reliable=True, timeout=4.0
    )
    txn.start()
    clock.advance(3.9)
    assert user.timeouts == []
    clock.advance(0.1)
    assert user.timeouts == [txn]


# -- INVITE: non-2xx final, ACK, Timer D ----------------------------------------


@pytest.mark.parametrize("first", [None, 180])
def test_non_2xx_is_acknowledged_by_the_transaction(first: int | None) -> None:
    """Calling/Proceeding -300..699-> Completed: ACK sent, response to the TU."""
    txn, user, wire, _ = invite_transaction()
    if first is not None:
        reply(txn, first)
    reply(txn, 486)
    assert state_of(txn) is State.COMPLETED
    assert user.statuses[-1] == 486
    assert wire.messages()[-1].method == "ACK"


def test_ack_header_fields() -> None:
    """§17.1.1.3: the ACK's fields copy the INVITE and the response's To."""
    txn, _, wire, _ = invite_transaction()
    response = txn.request.response(404, to_tag="bob9")
    txn.receive_response(response, UDP_PEER, CHANNEL)
    ack = wire.messages()[-1]
    invite = txn.request
    assert ack.method == "ACK"
    assert ack.uri == invite.uri
    assert ack.headers.get_all("via") == [invite.headers.get_all("via")[0]]
    assert ack.top_via.branch == invite.top_via.branch
    assert ack.call_id == invite.call_id
    assert ack.headers.get("from") == invite.headers.get("from")
    assert ack.to_addr.tag == "bob9"
    assert ack.headers.get("to") == response.headers.get("to")
    assert str(ack.cseq) == f"{invite.cseq.number} ACK"
    assert ack.headers.get_all("route") == invite.headers.get_all("route")
    assert ack.max_forwards == 70
    assert ack.headers.get("content-length") == "0"


def test_ack_has_a_single_via() -> None:
    """The ACK has one Via, the INVITE's top one (§17.1.1.3), and no Route here."""
    invite = request(
        "INVITE", extra="Via: SIP/2.0/UDP 198.51.100.1;branch=z9hG4bKx\r\n"
    )
    ack = ack_for(invite, invite.response(500, to_tag="t"))
    assert len(ack.headers.get_all("via")) == 1
    assert ack.top_via == invite.top_via
    assert "route" not in ack.headers


def test_retransmitted_final_resends_ack_not_to_tu() -> None:
    """In Completed a retransmitted final response re-sends the ACK only."""
    txn, user, wire, _ = invite_transaction()
    reply(txn, 486)
    reply(txn, 486)
    reply(txn, 180)
    assert user.statuses == [486]
    acks = [m for m in wire.messages() if m.method == "ACK"]
    assert len(acks) == 2


def test_timer_d_is_32_seconds_over_udp() -> None:
    """Timer D "at least 32 seconds for unreliable transports" (§17.1.1.2)."""
    txn, _, _, clock = invite_transaction()
    reply(txn, 486)
    clock.advance(31.9)
    assert state_of(txn) is State.COMPLETED
    clock.advance(0.1)
    assert state_of(txn) is State.TERMINATED
    assert clock.getDelayedCalls() == []


def test_timer_d_is_zero_over_reliable() -> None:
    """Over TCP, Completed ends at once: "zero seconds for reliable transports"."""
    txn, user, wire, clock = invite_transaction(reliable=True)
    reply(txn, 603)
    assert state_of(txn) is State.TERMINATED
    assert user.statuses == [603]
    assert wire.messages()[-1].method == "ACK"
    assert clock.getDelayedCalls() == []


# -- INVITE: 2xx, Accepted, Timer M ----------------------------------------------


@pytest.mark.parametrize("first", [None, 183])
def test_2xx_goes_to_tu_and_accepts(first: int | None) -> None:
    """RFC 6026 (§17.1.1.2): a 2xx goes to the TU and the transaction is Accepted."""
    txn, user, wire, _ = invite_transaction()
    if first is not None:
        reply(txn, first)
    reply(txn, 200)
    assert state_of(txn) is State.ACCEPTED
    assert user.statuses[-1] == 200
    assert all(m.method == "INVITE" for m in wire.messages())  # no ACK for 2xx


def test_2xx_retransmissions_go_to_tu_in_accepted() -> None:
    """In Accepted every 2xx goes to the TU; others are dropped (RFC 6026)."""
    txn, user, _, _ = invite_transaction()
    reply(txn, 200)
    reply(txn, 200)
    reply(txn, 180)
    reply(txn, 486)
    assert user.statuses == [200, 200]


def test_timer_m_ends_accepted() -> None:
    """Timer M (64*T1) moves Accepted to Terminated."""
    txn, _, wire, clock = invite_transaction()
    reply(txn, 200)
    clock.advance(31.9)
    assert state_of(txn) is State.ACCEPTED
    clock.advance(0.1)
    assert state_of(txn) is State.TERMINATED
    assert wire.times == [0.0]
    assert clock.getDelayedCalls() == []


def test_on_terminated_called_once() -> None:
    """The owner hears of termination exactly once."""
    clock, ended = Clock(), list[object]()
    txn = ClientInviteTransaction(
        request(),
        RecordingUser(),
        send=Wire(clock),
        clock=clock,
        reliable=True,
        on_terminated=ended.append,
    )
    txn.start()
    reply(txn, 486)
    reply(txn, 486)
    assert ended == [txn]


# -- non-INVITE: Timers E, F, K ---------------------------------------------------


def test_timer_e_doubles_up_to_t2() -> None:
    """Over UDP, resends come at 0.5, 1, 2, 4, then every 4 s (§17.1.2.2)."""
    txn, _, wire, clock = non_invite_transaction()
    clock.pump([0.5, 1.0, 2.0, 4.0, 4.0])
    assert wire.times == [0.0, 0.5, 1.5, 3.5, 7.5, 11.5]
    assert all(data == txn.request.to_bytes() for _, data in wire.sent)


def test_timer_e_is_t2_in_proceeding() -> None:
    """In Proceeding Timer E is reset to T2 each time it fires (§17.1.2.2)."""
    txn, user, wire, clock = non_invite_transaction()
    clock.advance(0.2)
    reply(txn, 100)
    assert state_of(txn) is State.PROCEEDING
    run_until(clock, 13.0)
    assert wire.times == [0.0, 0.5, 4.5, 8.5, 12.5]
    assert user.statuses == [100]


def test_timer_f_times_out() -> None:
    """Timer F (64*T1) in Trying or Proceeding: TU told, Terminated."""
    txn, user, wire, clock = non_invite_transaction()
    run_until(clock, 31.9)
    assert user.timeouts == []
    assert wire.times[-1] == 31.5
    clock.advance(0.1)
    assert user.timeouts == [txn]
    assert state_of(txn) is State.TERMINATED
    assert clock.getDelayedCalls() == []


def test_timer_f_times_out_proceeding() -> None:
    """A 1xx does not stop Timer F (figure 6)."""
    txn, user, _, clock = non_invite_transaction()
    reply(txn, 180)
    clock.advance(32.0)
    assert user.timeouts == [txn]


def test_reliable_non_invite_is_never_retransmitted() -> None:
    """Timer E runs over unreliable transports only."""
    txn, user, wire, clock = non_invite_transaction(reliable=True)
    run_until(clock, 32.0)
    assert wire.times == [0.0]
    assert user.timeouts == [txn]


def test_final_completes_and_absorbs_retransmissions() -> None:
    """Final -> Completed, to the TU once; retransmissions are absorbed."""
    txn, user, wire, clock = non_invite_transaction()
    reply(txn, 200)
    reply(txn, 200)
    reply(txn, 180)
    assert state_of(txn) is State.COMPLETED
    assert user.statuses == [200]
    clock.advance(10.0)
    assert wire.times == [0.0]


def test_timer_k_is_t4_over_udp() -> None:
    """Timer K: T4 for unreliable transports (§17.1.2.2)."""
    txn, _, _, clock = non_invite_transaction()
    reply(txn, 404)
    clock.advance(4.9)
    assert state_of(txn) is State.COMPLETED
    clock.advance(0.1)
    assert state_of(txn) is State.TERMINATED
    assert clock.getDelayedCalls() == []


def test_timer_k_is_zero_over_reliable() -> None:
    """Timer K: "zero seconds for reliable transports"."""
    txn, user, _, clock = non_invite_transaction(reliable=True)
    reply(txn, 200)
    assert state_of(txn) is State.TERMINATED
    assert user.statuses == [200]
    assert clock.getDelayedCalls() == []


def test_responses_after_termination_are_ignored() -> None:
    """A late response to a terminated transaction never reaches the TU."""
    txn, user, _, clock = non_invite_transaction()
    clock.advance(32.0)
    reply(txn, 200)
    assert user.statuses == []
