"""The transaction layer end to end: matching, absorbing, handing on (RFC 3261 §17)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from twisted.internet.task import Clock

from sipproxy.sip.addressing import Peer
from sipproxy.sip.errors import ParseError
from sipproxy.sip.message import Request, Response
from sipproxy.sip.parser import parse_message
from sipproxy.transaction.layer import (
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    State,
    TransactionLayer,
)

from .support import (
    TCP_PEER,
    UDP_PEER,
    RecordingUser,
    TimedChannel,
    Wire,
    request,
    state_of,
)

ZERO = {
    "server_invite": 0,
    "server_non_invite": 0,
    "client_invite": 0,
    "client_non_invite": 0,
}
#: A phone behind NAT: its Via names a private address.
NAT_PEER = Peer("udp", "203.0.113.7", 41000)
DOWNSTREAM = "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-down1"


class Setup:
    """A layer with a recording TU, a clock and a channel."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.user = RecordingUser()
        self.channel = TimedChannel(self.clock)
        self.layer = TransactionLayer(self.user, self.clock)

    def receive(self, message: Request | Response, peer: Peer = UDP_PEER) -> None:
        # Through bytes, as a transport would deliver it.
        self.layer.message_received(
            parse_message(message.to_bytes()), peer, self.channel
        )

    def finish(self) -> None:
        """Let every timer run out: nothing may be left behind."""
        self.clock.advance(64.0)
        self.clock.advance(64.0)
        assert self.layer.counts() == ZERO
        assert self.clock.getDelayedCalls() == []

    @property
    def server(self) -> Any:
        return self.user.requests[-1][1]


@pytest.fixture
def s() -> Setup:
    return Setup()


def downstream_request(
    method: str = "INVITE", branch: str = "z9hG4bK-down1"
) -> Request:
    return request(method, branch=branch, sent_by="192.0.2.1:5060")


# -- requests ----------------------------------------------------------------------


def test_new_request_reaches_tu_with_its_transaction(s: Setup) -> None:
    """A new INVITE creates a server INVITE transaction and goes to the TU."""
    s.receive(request("INVITE"))
    [(got, txn, peer)] = s.user.requests
    assert isinstance(txn, ServerInviteTransaction)
    assert txn.request == got and peer == UDP_PEER and txn.channel is s.channel
    assert s.layer.counts() == {**ZERO, "server_invite": 1}
    txn.respond(got.response(404, to_tag="x"))
    s.receive(request("ACK", to_tag="x"))
    s.finish()


def test_request_is_stamped_before_the_transaction_sees_it(s: Setup) -> None:
    """§18.2.1: received/rport on the top Via; responses go to the source."""
    s.receive(request("OPTIONS", sent_by="10.0.0.5:5060;rport"), NAT_PEER)
    txn = s.server
    via = txn.request.top_via
    assert (via.received, via.rport) == ("203.0.113.7", "41000")
    txn.respond(txn.request.response(200, to_tag="x"))
    assert s.channel.sent[-1][2] == NAT_PEER
    s.finish()


def test_retransmissions_never_reach_the_tu(s: Setup) -> None:
    """Retransmissions are absorbed; the last response is sent again (§17.2)."""
    s.receive(request("INVITE"))
    s.receive(request("INVITE"))
    assert len(s.user.requests) == 1
    s.server.respond(s.server.request.response(180, to_tag="x"))
    s.receive(request("INVITE"))
    assert s.channel.statuses == [180, 180]
    s.receive(request("MESSAGE", branch="z9hG4bK-m1"))
    s.receive(request("MESSAGE", branch="z9hG4bK-m1"))
    assert [r.method for r, _, _ in s.user.requests] == ["INVITE", "MESSAGE"]
    s.server.respond(s.server.request.response(200, to_tag="y"))
    s.user.requests[0][1].respond(s.user.requests[0][0].response(200, to_tag="x"))
    s.finish()


def test_invalid_request_goes_to_message_invalid(s: Setup) -> None:
    """validate_request comes first: a ParseError makes no transaction."""
    s.receive(request("OPTIONS", cseq_method="INVITE"))
    assert s.user.requests == []
    [error] = s.user.invalid
    assert isinstance(error, ParseError) and error.headers is not None
    assert s.layer.counts() == ZERO


def test_unparseable_bytes_are_passed_to_the_tu(s: Setup) -> None:
    """message_invalid from the transports goes to the TU unchanged."""
    error = ParseError("garbage")
    s.layer.message_invalid(error, UDP_PEER, s.channel)
    assert s.user.invalid == [error]


def test_anything_else_is_ignored(s: Setup) -> None:
    """A value that is no SIP message is logged and dropped."""
    s.layer.message_received(b"junk", UDP_PEER, s.channel)
    assert s.user.requests == [] and s.user.responses == []


def test_ack_to_non_2xx_is_absorbed(s: Setup) -> None:
    """§17.2.1: the ACK to a non-2xx belongs to the transaction, not the TU."""
    s.receive(request("INVITE"))
    s.server.respond(s.server.request.response(486, to_tag="x"))
    s.receive(request("ACK", to_tag="x"))
    s.receive(request("ACK", to_tag="x"))
    assert [r.method for r, _, _ in s.user.requests] == ["INVITE"]
    assert state_of(s.server) is State.CONFIRMED
    s.clock.advance(5.0)  # Timer I
    assert s.layer.counts() == ZERO
    s.finish()


def test_ack_to_2xx_goes_to_tu_without_transaction(s: Setup) -> None:
    """An ACK for a 2xx (its own branch, or in Accepted) reaches the TU with None."""
    s.receive(request("INVITE"))
    invite: ServerInviteTransaction = s.server
    invite.respond(invite.request.response(200, to_tag="x"))
    s.receive(request("ACK", branch="z9hG4bK-ack2", to_tag="x"))
    s.receive(request("ACK", to_tag="x"))  # same branch: RFC 6026 "ACK / to TU"
    acks = [(r.method, t) for r, t, _ in s.user.requests[1:]]
    assert acks == [("ACK", None), ("ACK", None)]
    assert s.user.requests[1][0].top_via.received is None  # same address: no stamp
    s.finish()


def test_stray_ack_goes_to_tu(s: Setup) -> None:
    """An ACK that matches nothing is the TU's (a proxy forwards it)."""
    s.receive(request("ACK", to_tag="x"))
    assert s.user.requests[0][1] is None
    assert s.layer.counts() == ZERO


def test_tu_responding_inside_request_received(s: Setup) -> None:
    """The TU may answer at once; over TCP Timer J is 0 and the table empties."""
    s.user.on_request = lambda req, txn: txn.respond(req.response(200, to_tag="x"))
    s.receive(request("OPTIONS", transport="TCP"), TCP_PEER)
    assert s.channel.statuses == [200]
    assert s.channel.sent[0][2] == TCP_PEER
    assert s.layer.counts() == ZERO
    assert state_of(s.server) is State.TERMINATED
    s.finish()


# -- CANCEL --------------------------------------------------------------------------


def test_cancel_gets_its_own_transaction_and_finds_the_invite(s: Setup) -> None:
    """CANCEL is a non-INVITE transaction; matching_invite finds its INVITE (§9.2)."""
    s.receive(request("INVITE"))
    invite: ServerInviteTransaction = s.server
    s.receive(request("CANCEL"))
    cancel_request, cancel, _ = s.user.requests[-1]
    assert isinstance(cancel, ServerNonInviteTransaction)
    assert cancel.key != invite.key
    assert s.layer.matching_invite(cancel_request) is invite
    assert s.layer.counts() == {**ZERO, "server_invite": 1, "server_non_invite": 1}
    cancel.respond(cancel_request.response(200, to_tag="x"))
    invite.respond(invite.request.response(487, to_tag="x"))
    s.receive(request("ACK", to_tag="x"))
    s.finish()
    assert s.layer.matching_invite(cancel_request) is None


def test_cancel_for_nothing_matches_nothing(s: Setup) -> None:
    """A CANCEL for an unknown INVITE, or from another sender, finds none."""
    s.receive(request("INVITE"))
    assert s.layer.matching_invite(request("CANCEL", branch="z9hG4bK-zz")) is None
    other = request("CANCEL", sent_by="192.0.2.99:5060")
    assert s.layer.matching_invite(other) is None
    s.server.respond(s.server.request.response(200, to_tag="x"))
    s.finish()


def test_matching_invite_ignores_non_invites(s: Setup) -> None:
    """Only an INVITE server transaction is ever returned."""
    s.receive(request("OPTIONS"))
    assert s.layer.matching_invite(request("CANCEL")) is None
    s.server.respond(s.server.request.response(200, to_tag="x"))
    s.finish()


# -- RFC 2543 peers -------------------------------------------------------------------


def test_rfc2543_request_retransmission_and_ack(s: Setup) -> None:
    """Without a z9hG4bK branch, matching uses the §17.2.3 fields."""
    s.receive(request("INVITE", branch="old-1"))
    s.receive(request("INVITE", branch="old-1"))
    assert len(s.user.requests) == 1
    invite: ServerInviteTransaction = s.server
    s.receive(request("CANCEL", branch="old-1"))
    assert s.layer.matching_invite(s.user.requests[-1][0]) is invite
    s.server.respond(s.user.requests[-1][0].response(200, to_tag="srv"))
    invite.respond(invite.request.response(487, to_tag="srv"))
    s.receive(request("ACK", branch="old-1", to_tag="srv"))
    assert state_of(invite) is State.CONFIRMED
    assert [r.method for r, _, _ in s.user.requests] == ["INVITE", "CANCEL"]
    s.finish()


def test_rfc2543_ack_with_another_tag_is_not_absorbed(s: Setup) -> None:
    """An ACK whose To tag is not the response's is not this transaction's."""
    s.receive(request("INVITE", branch=None))
    invite: ServerInviteTransaction = s.server
    invite.respond(invite.request.response(486, to_tag="srv"))
    s.receive(request("ACK", branch=None, to_tag="nope"))
    assert s.user.requests[-1][1] is None
    assert state_of(invite) is State.COMPLETED
    s.finish()


def test_rfc2543_reinvite_ack(s: Setup) -> None:
    """A re-INVITE already has the To tag; its ACK carries the same one."""
    s.receive(request("INVITE", branch=None, to_tag="dlg", cseq=2))
    invite: ServerInviteTransaction = s.server
    invite.respond(invite.request.response(488))
    s.receive(request("ACK", branch=None, to_tag="dlg", cseq=2))
    assert state_of(invite) is State.CONFIRMED
    s.finish()


# -- client transactions -----------------------------------------------------------


def test_responses_reach_the_tu_with_their_client_transaction(s: Setup) -> None:
    """Responses match by top Via branch and CSeq method (§17.1.3)."""
    wire = Wire(s.clock)
    txn = s.layer.send_request(downstream_request(), wire, reliable=False)
    assert isinstance(txn, ClientInviteTransaction)
    assert txn.branch == "z9hG4bK-down1"
    assert wire.times == [0.0]
    s.receive(txn.request.response(180, to_tag="b"))
    s.receive(txn.request.response(486, to_tag="b"))
    s.receive(txn.request.response(486, to_tag="b"))
    assert [(r.status, t) for r, t in s.user.responses] == [(180, txn), (486, txn)]
    assert [m.method for m in wire.messages()] == ["INVITE", "ACK", "ACK"]
    s.finish()


def test_cancel_and_invite_client_transactions_share_a_branch(s: Setup) -> None:
    """Same branch, different CSeq method: two transactions, each its responses."""
    invite = s.layer.send_request(downstream_request(), Wire(s.clock), reliable=False)
    s.receive(invite.request.response(180, to_tag="b"))
    cancel = s.layer.send_request(
        downstream_request("CANCEL"), Wire(s.clock), reliable=False
    )
    assert isinstance(cancel, ClientNonInviteTransaction)
    s.receive(cancel.request.response(200, to_tag="b"))
    s.receive(invite.request.response(487, to_tag="b"))
    assert [(r.status, t) for r, t in s.user.responses[1:]] == [
        (200, cancel),
        (487, invite),
    ]
    s.finish()


def test_stray_and_late_2xx_go_to_tu_without_transaction(s: Setup) -> None:
    """A response for no transaction, e.g. a 2xx after Timer M, reaches the TU."""
    txn = s.layer.send_request(downstream_request(), Wire(s.clock), reliable=False)
    ok = txn.request.response(200, to_tag="b")
    s.receive(ok)
    s.clock.advance(32.0)  # Timer M
    assert s.layer.counts() == ZERO
    s.receive(ok)
    assert [(r.status, t) for r, t in s.user.responses] == [(200, txn), (200, None)]
    s.finish()


def test_response_without_branch_is_stray(s: Setup) -> None:
    """A response whose top Via has no branch matches no client transaction."""
    stray = request("OPTIONS", branch=None).response(200, to_tag="b")
    s.receive(stray)
    assert s.user.responses[0][1] is None


def test_malformed_response_is_dropped(s: Setup) -> None:
    """A response without Call-ID identifies nothing and is dropped silently."""
    ok = request("OPTIONS").response(200, to_tag="b")
    broken = replace(ok, headers=ok.headers.remove("call-id"))
    s.layer.message_received(broken, UDP_PEER, s.channel)
    assert s.user.responses == [] and s.user.invalid == []


def test_timeout_reaches_the_tu_and_the_table_empties(s: Setup) -> None:
    """Timer F: transaction_timed_out with a transaction already gone (§17.1.2.2)."""
    txn = s.layer.send_request(
        downstream_request("OPTIONS"), Wire(s.clock), reliable=True
    )
    assert s.layer.counts() == {**ZERO, "client_non_invite": 1}
    s.clock.advance(32.0)
    assert s.user.timeouts == [txn]
    assert state_of(txn) is State.TERMINATED
    s.finish()


def test_send_request_timeout_overrides_timer_b(s: Setup) -> None:
    """``timeout`` replaces 64*T1."""
    txn = s.layer.send_request(
        downstream_request(), Wire(s.clock), reliable=True, timeout=2.0
    )
    s.clock.advance(2.0)
    assert s.user.timeouts == [txn]
    s.finish()


def test_send_request_refuses_ack_and_duplicates(s: Setup) -> None:
    """ACK is never a client transaction; one branch+method is one transaction."""
    with pytest.raises(ValueError, match="ACK"):
        s.layer.send_request(downstream_request("ACK"), Wire(s.clock), reliable=True)
    s.layer.send_request(downstream_request(), Wire(s.clock), reliable=True)
    with pytest.raises(ValueError, match="exists"):
        s.layer.send_request(downstream_request(), Wire(s.clock), reliable=True)
    with pytest.raises(ValueError, match="branch"):
        s.layer.send_request(
            request("OPTIONS", branch=None), Wire(s.clock), reliable=True
        )
    s.finish()


# -- a proxy on top -----------------------------------------------------------------


class ForwardingUser(RecordingUser):
    """A minimal stateful proxy: forward each INVITE, relay the answers back."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.layer: TransactionLayer | None = None
        self.wire = Wire(clock)
        self.pairs: dict[int, Any] = {}

    def request_received(
        self, request: Request, transaction: Any, peer: Peer, channel: Any
    ) -> None:
        super().request_received(request, transaction, peer, channel)
        assert self.layer is not None
        if transaction is None or request.method != "INVITE":
            return
        transaction.respond(request.response(100))
        headers = request.headers.prepend("Via", DOWNSTREAM)
        client = self.layer.send_request(
            replace(request, headers=headers), self.wire, reliable=False
        )
        self.pairs[id(client)] = transaction

    def response_received(
        self, response: Response, transaction: Any, peer: Peer, channel: Any
    ) -> None:
        super().response_received(response, transaction, peer, channel)
        if transaction is None or response.status == 100:
            return
        _, headers = response.headers.pop_first_value("via")
        self.pairs[id(transaction)].respond(replace(response, headers=headers))

    def transaction_timed_out(self, transaction: Any) -> None:
        super().transaction_timed_out(transaction)
        server = self.pairs[id(transaction)]
        server.respond(server.request.response(408, to_tag="p"))


@pytest.mark.parametrize("status", [486, 200])
def test_proxy_flow_reentrant_and_leak_free(status: int) -> None:
    """INVITE in, forwarded out, answer relayed back from inside the callbacks."""
    clock = Clock()
    user = ForwardingUser(clock)
    channel = TimedChannel(clock)
    layer = TransactionLayer(user, clock)
    user.layer = layer
    invite = request("INVITE")
    layer.message_received(invite, UDP_PEER, channel)
    clock.advance(1.0)  # Timer A resends downstream once
    [forwarded, _] = user.wire.messages()
    layer.message_received(forwarded.response(180, to_tag="b"), UDP_PEER, channel)
    layer.message_received(forwarded.response(status, to_tag="b"), UDP_PEER, channel)
    assert channel.statuses == [100, 180, status]
    if status >= 300:
        layer.message_received(request("ACK", to_tag="b"), UDP_PEER, channel)
        assert user.wire.messages()[-1].method == "ACK"  # hop-by-hop ACK downstream
    clock.advance(64.0)
    assert layer.counts() == ZERO
    assert clock.getDelayedCalls() == []


def test_proxy_flow_timeout_answers_408() -> None:
    """Timer B downstream: the TU answers 408 upstream from inside the callback."""
    clock = Clock()
    user = ForwardingUser(clock)
    channel = TimedChannel(clock)
    layer = TransactionLayer(user, clock)
    user.layer = layer
    layer.message_received(request("INVITE"), UDP_PEER, channel)
    clock.advance(32.0)
    assert channel.statuses == [100, 408]
    layer.message_received(request("ACK", to_tag="p"), UDP_PEER, channel)
    assert len(user.timeouts) == 1
    clock.advance(64.0)
    assert layer.counts() == ZERO
