"""Server transactions (RFC 3261 §17.2, figures 7 and 8, as RFC 6026 amends them)."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from sipproxy.sip.addressing import Peer
from sipproxy.sip.message import Request
from sipproxy.transaction.server import (
    TRYING_DELAY,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
)
from sipproxy.transaction.state import State

from .support import (
    TCP_PEER,
    UDP_PEER,
    TimedChannel,
    ack_for_response,
    request,
    run_until,
    state_of,
)


def invite_server(
    *, peer: Peer = UDP_PEER, invite: Request | None = None
) -> tuple[ServerInviteTransaction, TimedChannel, Clock, list[object]]:
    clock = Clock()
    channel, ended = TimedChannel(clock), list[object]()
    transport = "TCP" if peer.reliable else "UDP"
    txn = ServerInviteTransaction(
        invite or request("INVITE", transport=transport),
        peer,
        channel,
        clock=clock,
        on_terminated=ended.append,
    )
    return txn, channel, clock, ended


def non_invite_server(
    *, peer: Peer = UDP_PEER
) -> tuple[ServerNonInviteTransaction, TimedChannel, Clock, list[object]]:
    clock = Clock()
    channel, ended = TimedChannel(clock), list[object]()
    transport = "TCP" if peer.reliable else "UDP"
    txn = ServerNonInviteTransaction(
        request("OPTIONS", transport=transport),
        peer,
        channel,
        clock=clock,
        on_terminated=ended.append,
    )
    return txn, channel, clock, ended


def respond(
    txn: ServerInviteTransaction | ServerNonInviteTransaction, status: int
) -> None:
    to_tag = None if status == 100 else "srv1"
    txn.respond(txn.request.response(status, to_tag=to_tag))


# -- INVITE: Proceeding ------------------------------------------------------------


def test_invite_starts_proceeding_and_sends_100_after_200ms() -> None:
    """§17.2.1: a 100 (Trying) unless the TU answers within 200 ms; no To tag."""
    txn, channel, clock, _ = invite_server()
    assert state_of(txn) is State.PROCEEDING
    clock.advance(TRYING_DELAY - 0.01)
    assert channel.sent == []
    clock.advance(0.01)
    assert channel.statuses == [100]
    assert channel.responses()[0].to_addr.tag is None


def test_no_100_when_the_tu_answers_in_time() -> None:
    """A response from the TU within 200 ms replaces the 100."""
    txn, channel, clock, _ = invite_server()
    respond(txn, 180)
    clock.advance(1.0)
    assert channel.statuses == [180]


def test_provisionals_are_sent_and_resent_on_retransmission() -> None:
    """In Proceeding the most recent provisional answers an INVITE retransmission."""
    txn, channel, _, _ = invite_server()
    txn.receive_request(txn.request)  # nothing sent yet: nothing to resend
    assert channel.sent == []
    respond(txn, 100)
    respond(txn, 183)
    txn.receive_request(txn.request)
    assert channel.statuses == [100, 183, 183]
    assert state_of(txn) is State.PROCEEDING


def test_udp_responses_go_to_received_and_rport() -> None:
    """§18.2.2 / RFC 3581: over UDP to the stamped received address and rport."""
    invite = request(sent_by="10.0.0.5:5060;rport=40000;received=192.0.2.10")
    txn, channel, _, _ = invite_server(invite=invite)
    respond(txn, 180)
    assert channel.sent[0][2] == Peer("udp", "192.0.2.10", 40000)


def test_reliable_responses_go_back_to_the_peer() -> None:
    """Over TCP the response goes on the connection the request came on."""
    txn, channel, _, _ = invite_server(peer=TCP_PEER)
    respond(txn, 180)
    assert channel.sent[0][2] == TCP_PEER


# -- INVITE: non-2xx, Completed, Confirmed -----------------------------------------


def test_timer_g_resends_final_until_timer_h() -> None:
    """Timer G: 0.5, 1, 2, 4, 4 ... s; Timer H (64*T1) ends it without ACK."""
    txn, channel, clock, ended = invite_server()
    respond(txn, 486)
    assert state_of(txn) is State.COMPLETED
    run_until(clock, 31.9)
    assert channel.times == [
        0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5,
    ]  # fmt: skip
    assert set(channel.statuses) == {486}
    assert state_of(txn) is State.COMPLETED
    clock.advance(0.1)
    assert state_of(txn) is State.TERMINATED
    assert ended == [txn]
    assert clock.getDelayedCalls() == []


def test_retransmitted_invite_in_completed_gets_the_final_again() -> None:
    """An INVITE retransmission in Completed gets the final response (§17.2.1)."""
    txn, channel, _, _ = invite_server()
    respond(txn, 404)
    txn.receive_request(txn.request)
    assert channel.statuses == [404, 404]


def test_a_challenge_sent_once_has_no_timer_g() -> None:
    """retransmit=False: one 407, no Timer G; a retransmitted INVITE gets it again.

    Issue 13: a challenge to an unauthenticated INVITE was resent ~11 times to a
    source that may be spoofed. The client retransmits its INVITE until it hears
    something (§17.1.1.2), so each retransmission is answered instead.
    """
    txn, channel, clock, ended = invite_server()
    txn.respond(txn.request.response(407, to_tag="srv1"), retransmit=False)
    assert state_of(txn) is State.COMPLETED
    run_until(clock, 3.0)
    assert channel.statuses == [407]
    assert [c for c in clock.getDelayedCalls() if c.active()], "Timer H runs"
    txn.receive_request(txn.request)
    assert channel.statuses == [407, 407]
    run_until(clock, 31.9)
    assert channel.times == [0.0, 3.0]
    clock.advance(0.1)  # Timer H still ends the transaction
    assert state_of(txn) is State.TERMINATED
    assert ended == [txn]
    assert clock.getDelayedCalls() == []


def test_a_challenge_sent_once_is_still_acknowledged() -> None:
    """The ACK for a once-sent final confirms the transaction as usual."""
    txn, channel, clock, _ = invite_server()
    challenge = txn.request.response(401, to_tag="srv1")
    txn.respond(challenge, retransmit=False)
    assert txn.receive_ack(ack_for_response(txn.request, challenge))
    assert state_of(txn) is State.CONFIRMED
    run_until(clock, 10.0)
    assert channel.statuses == [401]


def test_after_a_provisional_the_final_is_retransmitted_anyway() -> None:
    """A client that got a 1xx stops retransmitting: only Timer G can repair a loss."""
    txn, channel, clock, _ = invite_server()
    respond(txn, 100)
    txn.respond(txn.request.response(480, to_tag="srv1"), retransmit=False)
    run_until(clock, 2.0)
    assert channel.statuses == [100, 480, 480, 480]


def test_the_automatic_100_also_keeps_timer_g() -> None:
    """The 100 the transaction sent by itself after 200 ms counts as a provisional."""
    txn, channel, clock, _ = invite_server()
    clock.advance(TRYING_DELAY)
    txn.respond(txn.request.response(407, to_tag="srv1"), retransmit=False)
    run_until(clock, TRYING_DELAY + 0.6)
    assert channel.statuses == [100, 407, 407]


def test_non_invite_final_accepts_retransmit_false() -> None:
    """A non-INVITE server never resends on its own: the flag changes nothing."""
    txn, channel, _, _ = non_invite_server()
    txn.respond(txn.request.response(401, to_tag="srv1"), retransmit=False)
    txn.receive_request(txn.request)
    assert channel.statuses == [401, 401]


def test_ack_confirms_and_timer_i_terminates() -> None:
    """ACK in Completed -> Confirmed: G and H stop; Timer I (T4) -> Terminated."""
    txn, channel, clock, ended = invite_server()
    respond(txn, 486)
    ack = ack_for_response(txn.request, channel.responses()[0])
    assert txn.acknowledged_by(ack)
    assert txn.receive_ack(ack)
    assert state_of(txn) is State.CONFIRMED
    assert txn.receive_ack(ack)  # retransmitted ACK: absorbed
    txn.receive_request(txn.request)  # INVITE retransmission: absorbed
    clock.advance(4.9)
    assert state_of(txn) is State.CONFIRMED
    clock.advance(0.1)
    assert state_of(txn) is State.TERMINATED
    assert channel.statuses == [486]
    assert ended == [txn]
    assert clock.getDelayedCalls() == []


def test_reliable_invite_server_never_retransmits_and_i_is_zero() -> None:
    """Over TCP: no Timer G; the ACK ends the transaction at once (Timer I = 0)."""
    txn, channel, clock, ended = invite_server(peer=TCP_PEER)
    respond(txn, 486)
    clock.advance(10.0)
    assert channel.statuses == [486]
    txn.receive_ack(ack_for_response(txn.request, channel.responses()[0]))
    assert state_of(txn) is State.TERMINATED
    assert ended == [txn]
    assert clock.getDelayedCalls() == []


def test_reliable_timer_h_still_runs() -> None:
    """Timer H runs over any transport: no ACK in 64*T1 ends the transaction."""
    txn, _, clock, _ = invite_server(peer=TCP_PEER)
    respond(txn, 500)
    clock.advance(32.0)
    assert state_of(txn) is State.TERMINATED


def test_responding_after_the_final_is_a_no_op() -> None:
    """A second final response, or a late 1xx, is not sent (figure 7)."""
    txn, channel, _, _ = invite_server()
    respond(txn, 486)
    respond(txn, 200)
    respond(txn, 180)
    assert channel.statuses == [486]
    assert state_of(txn) is State.COMPLETED


# -- INVITE: 2xx, Accepted ---------------------------------------------------------


def test_2xx_accepts_and_timer_l_terminates() -> None:
    """RFC 6026: 2xx -> Accepted; Timer L (64*T1) -> Terminated; no resends."""
    txn, channel, clock, ended = invite_server()
    respond(txn, 200)
    assert state_of(txn) is State.ACCEPTED
    clock.advance(31.9)
    assert channel.statuses == [200]
    assert state_of(txn) is State.ACCEPTED
    clock.advance(0.1)
    assert state_of(txn) is State.TERMINATED
    assert ended == [txn]
    assert clock.getDelayedCalls() == []


def test_accepted_absorbs_invites_and_sends_2xx_from_the_tu() -> None:
    """In Accepted INVITE retransmissions are absorbed; the TU's 2xx are sent."""
    txn, channel, _, _ = invite_server()
    respond(txn, 200)
    txn.receive_request(txn.request)
    respond(txn, 200)  # the TU forwarding a 2xx retransmission
    respond(txn, 180)  # not allowed any more
    respond(txn, 486)  # nor this
    assert channel.statuses == [200, 200]


def test_ack_in_accepted_is_for_the_tu() -> None:
    """RFC 6026 figure 7: "ACK / to TU" - the transaction does not absorb it."""
    txn, channel, _, _ = invite_server()
    respond(txn, 200)
    ack = ack_for_response(txn.request, channel.responses()[0])
    assert not txn.receive_ack(ack)
    assert state_of(txn) is State.ACCEPTED


def test_rfc2543_ack_must_carry_the_response_to_tag() -> None:
    """§17.2.3: for RFC 2543 peers the ACK's To tag must be the response's."""
    invite = request("INVITE", branch=None)
    txn, _, _, _ = invite_server(invite=invite)
    assert not txn.acknowledged_by(request("ACK", branch=None, to_tag="srv1"))
    respond(txn, 486)
    assert txn.acknowledged_by(request("ACK", branch=None, to_tag="srv1"))
    assert not txn.acknowledged_by(request("ACK", branch=None, to_tag="other"))


# -- non-INVITE --------------------------------------------------------------------


def test_non_invite_retransmission_in_trying_is_absorbed() -> None:
    """In Trying a retransmission is discarded: nothing sent, and no 100 of its own."""
    txn, channel, clock, _ = non_invite_server()
    assert state_of(txn) is State.TRYING
    txn.receive_request(txn.request)
    clock.advance(1.0)
    assert channel.sent == []


def test_non_invite_proceeding_resends_provisional() -> None:
    """1xx -> Proceeding; a retransmission gets the last provisional again."""
    txn, channel, _, _ = non_invite_server()
    respond(txn, 100)
    assert state_of(txn) is State.PROCEEDING
    txn.receive_request(txn.request)
    assert channel.statuses == [100, 100]


@pytest.mark.parametrize("provisional", [False, True])
def test_non_invite_final_completes_and_timer_j_terminates(provisional: bool) -> None:
    """Final -> Completed; retransmissions get it again; Timer J (64*T1) ends it."""
    txn, channel, clock, ended = non_invite_server()
    original = txn.request
    if provisional:
        respond(txn, 100)
    respond(txn, 200)
    assert state_of(txn) is State.COMPLETED
    # Completed keeps the answer's bytes, not the parsed request (issue 8).
    assert txn.request.method == "OPTIONS" and len(txn.request.headers) == 0
    txn.receive_request(original)
    txn.respond(original.response(500, to_tag="srv1"))  # "MUST be discarded"
    assert channel.statuses[-2:] == [200, 200]
    clock.advance(31.9)
    assert state_of(txn) is State.COMPLETED
    clock.advance(0.1)
    assert state_of(txn) is State.TERMINATED
    assert ended == [txn]
    assert clock.getDelayedCalls() == []


def test_non_invite_reliable_timer_j_is_zero() -> None:
    """Timer J is zero over reliable transports: the final response ends it."""
    txn, channel, clock, ended = non_invite_server(peer=TCP_PEER)
    respond(txn, 200)
    assert state_of(txn) is State.TERMINATED
    assert ended == [txn]
    assert channel.statuses == [200]
    assert clock.getDelayedCalls() == []
