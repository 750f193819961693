"""Server transactions (RFC 3261 §17.2, figures 7 and 8, as RFC 6026 amends them).

Theory of operation. The layer creates a server transaction for each new request
and hands both to the TU; retransmissions of the request are matched to it and
never reach the TU. The TU answers with :meth:`respond`, which sends the response
(on the request's connection, or over UDP to the address §18.2.2 names) and moves
the state machine:

* INVITE (figure 7 as RFC 6026 amends it): PROCEEDING -1xx-> PROCEEDING;
  -2xx-> ACCEPTED, where retransmitted INVITEs are absorbed, ACKs go to the TU and
  2xx retransmissions from the TU are sent, until Timer L; -300..699-> COMPLETED,
  where Timer G resends the response over UDP until the ACK (-> CONFIRMED, Timer
  I) or Timer H (no ACK came). A final response passed with ``retransmit=False``
  before any provisional one has no Timer G (see
  :meth:`ServerInviteTransaction.respond`).
* non-INVITE (figure 8): TRYING -1xx-> PROCEEDING -final-> COMPLETED -Timer J->
  TERMINATED.

A request retransmission is answered with the last response sent, if any. The
transaction never calls the TU: the layer decides what reaches it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from twisted.internet.interfaces import IReactorTime

from sipproxy.sip.addressing import Channel, Peer, response_destination
from sipproxy.sip.errors import ParseError
from sipproxy.sip.headers import Headers
from sipproxy.sip.message import Request, Response
from sipproxy.transaction.deadlines import TimerQueue
from sipproxy.transaction.keys import BranchKey, ServerKey, server_key
from sipproxy.transaction.state import State, TransactionMachine
from sipproxy.transaction.timers import Timers

__all__ = ["TRYING_DELAY", "ServerInviteTransaction", "ServerNonInviteTransaction"]

#: §17.2.1: "The server transaction MUST generate a 100 (Trying) response unless it
#: knows that the TU will generate a provisional or final response within 200 ms".
#: The transaction cannot know, so it waits this long for the TU and then sends one.
TRYING_DELAY = 0.2

_NO_FIELDS = Headers()


class _ServerTransaction(TransactionMachine):
    """What both server transactions share: the request, where answers go."""

    #: the state a new transaction of this kind starts in (figures 7 and 8)
    _initial_state: ClassVar[State]

    def __init__(
        self,
        request: Request,
        peer: Peer,
        channel: Channel,
        *,
        clock: IReactorTime,
        timers: Timers = Timers(),  # noqa: B008 - a frozen value
        key: ServerKey | None = None,
        on_terminated: Callable[[Any], None] | None = None,
        queue: TimerQueue | None = None,
    ) -> None:
        super().__init__(
            state=self._initial_state,
            clock=clock,
            timers=timers,
            reliable=peer.reliable,
            on_terminated=on_terminated,
            queue=queue,
        )
        self.request = request
        self.peer = peer
        self.channel = channel
        self.key = key if key is not None else server_key(request)
        #: when the request arrived: the start of its request-to-final time
        self.received_at = clock.seconds()
        # §18.2.2: reliable -> the connection the request came on; UDP -> the
        # address from the (stamped) top Via, received and rport included.
        self._destination = (
            peer if peer.reliable else response_destination(request.top_via, peer)
        )
        self._last: Response | None = None
        self._last_wire = b""
        self._started()

    def _started(self) -> None:
        """What a kind of transaction arms as it starts; nothing by default."""

    def _send(self, response: Response) -> None:
        self._last = response
        self._last_wire = response.to_bytes()
        self.channel.send(self._last_wire, self._destination)

    def _resend(self) -> None:
        # The bytes of the last response sent: a retransmission gets them again.
        if self._last_wire:
            self.channel.send(self._last_wire, self._destination)

    def _refuse(self, response: Response) -> None:
        self.log.info(
            "not sending {status} to {method}: server transaction is {state}",
            status=response.status,
            method=self.request.method,
            state=self.state.value,
        )


class ServerInviteTransaction(_ServerTransaction):
    """Answer one INVITE (RFC 3261 §17.2.1 and figure 7, as RFC 6026 amends them).

    Starts in PROCEEDING; a 100 (Trying) goes out after :data:`TRYING_DELAY`
    unless the TU has responded by then.
    """

    _initial_state = State.PROCEEDING

    def _started(self) -> None:
        self._interval = self._timers.timer_g
        self._arm("100", TRYING_DELAY, self._send_trying)

    def respond(self, response: Response, *, retransmit: bool = True) -> None:
        """Send ``response`` from the TU and run the state machine (§17.2.1).

        "So long as the server transaction is in the "Proceeding" state, each of
        these [provisional responses] MUST be passed to the transport layer for
        transmission." In ACCEPTED, "any retransmission of the 2xx response passed
        from the TU to the transaction while in the "Accepted" state MUST be passed
        to the transport layer for transmission" (§17.2.1 as RFC 6026 amends it).
        Anything else is not sent and is logged.

        :param retransmit: False for a non-2xx final response that goes out once
            over UDP: no Timer G. For a challenge or refusal to a sender that
            proved nothing: each Timer G resend is a datagram to an
            address that may be spoofed, ten for one INVITE. Reliability is kept
            by the client instead: a UAC that has had no response keeps
            retransmitting its INVITE (Timer A, §17.1.1.2), and each
            retransmission gets the response again (:meth:`receive_request`).
            So this holds only while no provisional response was sent (after
            one the client stops, and only Timer G can repair a loss): then the
            response is retransmitted as usual. Timer H still ends the
            transaction.
        """
        status = response.status
        if self.state is State.PROCEEDING:
            # Nothing sent yet (not even a 100): the client is still in Calling.
            silent = self._last is None
            self._disarm("100")
            if status < 200:
                self._send(response)
            elif status < 300:
                # §17.2.1 as RFC 6026 amends it: "the server transaction MUST
                # transition to the "Accepted" state" and start Timer L; 2xx
                # retransmissions are the TU's business, not the transaction's.
                self.state = State.ACCEPTED
                self._send(response)
                self._arm("L", self._timers.timer_l, self._terminate)
            else:
                self.state = State.COMPLETED
                self._send(response)
                if not self.reliable and (retransmit or not silent):
                    self._arm("G", self._interval, self._timer_g)
                self._arm("H", self._timers.timer_h, self._timer_h)
        elif self.state is State.ACCEPTED and 200 <= status < 300:
            self._send(response)
        else:
            self._refuse(response)

    def receive_request(self, request: Request) -> None:
        """A retransmission of the INVITE arrived (§17.2.1).

        In PROCEEDING "the most recent provisional response that was received from
        the TU MUST be passed to the transport layer for retransmission"; in
        COMPLETED the final response is; in CONFIRMED and ACCEPTED (RFC 6026)
        it is absorbed.
        """
        if self.state in (State.PROCEEDING, State.COMPLETED):
            self._resend()

    def acknowledged_by(self, ack: Request) -> bool:
        """Whether ``ack`` is for this transaction (§17.2.3).

        With an RFC 3261 branch the key matched already. For RFC 2543 peers "the
        To tag of the ACK matches the To tag of the response sent by the server
        transaction", so an ACK before any final response matches nothing.
        """
        if isinstance(self.key, BranchKey):
            return True
        if self._last is None or self._last.status < 200:
            return False
        try:
            return ack.to_addr.tag == self._last.to_addr.tag
        except ParseError:
            return False

    def receive_ack(self, ack: Request) -> bool:
        """An ACK matching this transaction arrived; return whether it is absorbed.

        In COMPLETED "the server transaction MUST transition to the "Confirmed"
        state" and start Timer I; ACK retransmissions in CONFIRMED are absorbed.
        In ACCEPTED the ACK acknowledges a 2xx, which is the TU's business (RFC
        6026 figure 7: "ACK / to TU"): False tells the layer to pass it on.
        """
        if self.state is State.ACCEPTED:
            return False
        if self.state is State.COMPLETED:
            self.state = State.CONFIRMED
            self._disarm("G", "H")
            self._arm("I", self._timers.timer_i, self._terminate)
        elif self.state is State.PROCEEDING:
            self.log.info("absorbed ACK before any final response")
        return True

    def _send_trying(self) -> None:
        if self.state is State.PROCEEDING and self._last is None:
            # §17.2.1: the To tag is "downgraded from MAY to SHOULD NOT" for 100.
            self._send(self.request.response(100))

    def _timer_g(self) -> None:
        # "If timer G fires, the response is passed to the transport layer once
        # more for retransmission, and timer G is set to fire in MIN(2*T1, T2)
        # seconds. From then on, when timer G fires, the timer is reset to a value
        # of MIN(4*T1, T2) ..."
        if self.state is not State.COMPLETED:
            return
        self._resend()
        self._interval = min(2 * self._interval, self._timers.t2)
        self._arm("G", self._interval, self._timer_g)

    def _timer_h(self) -> None:
        # "it implies that the ACK was never received"; the proxy has nothing to do
        # about it (its answer is final), so the failure is only logged.
        self.log.info(
            "no ACK for {status} within Timer H",
            status=self._last.status if self._last is not None else None,
        )
        self._terminate()


class ServerNonInviteTransaction(_ServerTransaction):
    """Answer one non-INVITE request, CANCEL included (§17.2.2, figure 8)."""

    _initial_state = State.TRYING
    #: Set by the owner (the layer) to keep the Completed state itself over UDP:
    #: told ``(key, response bytes, destination, channel)`` once the final
    #: response is sent, instead of this object arming its own Timer J. The
    #: object then stays Completed and does nothing more; the owner resends the
    #: bytes to retransmissions and forgets them after Timer J.
    on_completed: Callable[[ServerKey, bytes, Peer, Channel], None] | None = None

    def respond(self, response: Response, *, retransmit: bool = True) -> None:
        """Send ``response`` from the TU and run the state machine (§17.2.2).

        A 1xx moves TRYING to PROCEEDING; a final response moves either to
        COMPLETED, and Timer J starts (zero when reliable; over UDP, when
        :attr:`on_completed` is set, the owner keeps Completed from there). "Any
        other final responses passed by the TU to the server transaction MUST be
        discarded while in the "Completed" state."

        :param retransmit: as for INVITE; a non-INVITE server transaction never
            retransmits on its own (only when the request is), so it changes
            nothing here.
        """
        if self.state not in (State.TRYING, State.PROCEEDING):
            self._refuse(response)
            return
        if response.status < 200:
            self.state = State.PROCEEDING
            self._send(response)
            return
        self.state = State.COMPLETED
        self._send(response)
        if self.on_completed is not None and not self.reliable:
            # The owner keeps the bytes; a TU that holds on to this object (a
            # proxy's context, for Timer M) need not keep the parsed response.
            self._last = None
            wire, destination = self._last_wire, self._destination
            self.on_completed(self.key, wire, destination, self.channel)
            return
        # For Timer J (32 s over UDP) only the response's bytes are needed, for
        # retransmissions; the parsed request and response go (the request keeps
        # its start line). At a thousand requests a second these transactions
        # are most of the live heap every full collection walks
        # (docs/performance.md).
        self.request = Request(self.request.method, self.request.uri, _NO_FIELDS)
        self._last = None
        self._arm("J", self._timers.timer_j, self._terminate)

    def receive_request(self, request: Request) -> None:
        """A retransmission of the request arrived (§17.2.2).

        In TRYING it is discarded; in PROCEEDING and COMPLETED the last response
        "MUST be passed to the transport layer for retransmission".
        """
        if self.state in (State.PROCEEDING, State.COMPLETED):
            self._resend()
