"""Client transactions (RFC 3261 §17.1, figures 5 and 6, as RFC 6026 amends them).

Theory of operation. The TU (through the layer) creates a client transaction with
the request and a ``send`` callable for its next hop, then :meth:`start` sends it.
Over UDP the transaction retransmits (Timer A for INVITE, doubling without bound;
Timer E for the rest, doubling up to T2, then every T2 in PROCEEDING); over a
reliable transport it never does. Responses matched to it by the layer come in
through :meth:`receive_response`; the ones the TU must see go to
``user.response_received``, and Timer B or F expiring goes to
``user.transaction_timed_out``.

* INVITE (figure 5, as RFC 6026 amends it): CALLING -1xx-> PROCEEDING;
  -300..699-> COMPLETED, where the transaction itself sends the ACK and resends
  it for each retransmitted final response until Timer D; -2xx-> ACCEPTED, where
  every 2xx goes to the TU (a proxy forwards each one) until Timer M.
* non-INVITE (figure 6): TRYING -1xx-> PROCEEDING -final-> COMPLETED, where
  response retransmissions are absorbed until Timer K.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Protocol

from twisted.internet.interfaces import IReactorTime

from sipproxy.sip.addressing import Channel, Peer
from sipproxy.sip.headers import Header, Headers, split_values
from sipproxy.sip.message import Request, Response
from sipproxy.transaction.deadlines import TimerQueue
from sipproxy.transaction.keys import ClientKey, client_key
from sipproxy.transaction.state import State, TransactionMachine
from sipproxy.transaction.timers import Timers

__all__ = [
    "ClientInviteTransaction",
    "ClientNonInviteTransaction",
    "ClientTransactionUser",
    "ack_for",
]


class ClientTransactionUser(Protocol):
    """What a client transaction tells its TU."""

    def response_received(
        self,
        response: Response,
        transaction: Any,
        peer: Peer,
        channel: Channel,
    ) -> None:
        """A response the TU must see arrived on ``transaction``."""

    def transaction_timed_out(self, transaction: Any) -> None:
        """Timer B or F fired: no final response in time."""


def ack_for(request: Request, response: Response) -> Request:
    """The ACK a client INVITE transaction sends for a non-2xx final response.

    RFC 3261 §17.1.1.3: the ACK "MUST contain values for the Call-ID, From, and
    Request-URI that are equal to the values of those header fields in the
    request passed to the transport by the client transaction"; "The To header
    field in the ACK MUST equal the To header field in the response being
    acknowledged"; "The ACK MUST contain a single Via header field, and this MUST
    be equal to the top Via header field of the original request"; "The CSeq
    header field in the ACK MUST contain the same value for the sequence number
    [...] but the method parameter MUST be equal to "ACK""; "If the INVITE request
    whose response is being acknowledged had Route header fields, those header
    fields MUST appear in the ACK."
    """
    original = request.headers
    top_via = split_values(original.get("via") or "")[0]
    fields: list[Header] = [Header("Via", top_via), Header("Max-Forwards", "70")]
    fields += (h for h in original if h.key == "route")
    fields += _first(original, "from")
    fields += _first(response.headers, "to")
    fields += _first(original, "call-id")
    fields.append(Header("CSeq", f"{request.cseq.number} ACK"))
    fields.append(Header("Content-Length", "0"))
    return Request("ACK", request.uri, Headers(tuple(fields)))


def _first(headers: Headers, key: str) -> list[Header]:
    # The field itself, raw bytes included: "equal" is safest as the very bytes.
    return next(([h] for h in headers if h.key == key), [])


class _ClientTransaction(TransactionMachine):
    """What both client transactions share: the request, its wire form, the TU.

    Each kind names its first state and the timer of its first retransmission
    interval; the constructor is the same for both.
    """

    _initial_state: ClassVar[State]
    _first_interval: ClassVar[str]

    def __init__(
        self,
        request: Request,
        user: ClientTransactionUser,
        *,
        send: Callable[[bytes], None],
        clock: IReactorTime,
        reliable: bool,
        timers: Timers = Timers(),  # noqa: B008 - a frozen value
        timeout: float | None = None,
        on_terminated: Callable[[Any], None] | None = None,
        queue: TimerQueue | None = None,
    ) -> None:
        super().__init__(
            state=self._initial_state,
            clock=clock,
            timers=timers,
            reliable=reliable,
            on_terminated=on_terminated,
            queue=queue,
        )
        self.request = request
        self.key: ClientKey = client_key(request)
        self._user = user
        self._send = send
        self._wire = request.to_bytes()
        self._timeout = timeout
        self._interval: float = getattr(self._timers, self._first_interval)

    @property
    def branch(self) -> str:
        """The branch of our top Via: the transaction identifier (§17.1.3)."""
        return self.key.branch

    def _timed_out(self) -> None:
        # Timer B/F: "the client transaction SHOULD inform the TU that a timeout
        # has occurred" and enter Terminated; leave the tables before the TU runs.
        self._terminate()
        self._user.transaction_timed_out(self)

    def _deliver(self, response: Response, peer: Peer, channel: Channel) -> None:
        self._user.response_received(response, self, peer, channel)


class ClientInviteTransaction(_ClientTransaction):
    """Send one INVITE and see it through (RFC 3261 §17.1.1, figure 5; RFC 6026).

    ``timeout`` replaces Timer B (64*T1) when given.
    """

    _initial_state = State.CALLING
    _first_interval = "timer_a"
    #: the ACK of a non-2xx final response, resent for its retransmissions
    _ack: bytes | None = None

    def start(self) -> None:
        """Send the INVITE; arm Timer A (UDP only) and Timer B (§17.1.1.2).

        "If an unreliable transport is being used, the client transaction MUST
        start timer A with a value of T1. [...] For any transport, the client
        transaction MUST start timer B with a value of 64*T1 seconds".
        """
        self._arm("B", self._timeout or self._timers.timer_b, self._timer_b)
        if not self.reliable:
            self._arm("A", self._interval, self._timer_a)
        self._send(self._wire)

    def receive_response(
        self, response: Response, peer: Peer, channel: Channel
    ) -> None:
        """A response matched to this transaction arrived (§17.1.1.2, RFC 6026)."""
        status = response.status
        state = self.state
        if state in (State.CALLING, State.PROCEEDING):
            # Any response stops retransmissions, and Timer B belongs to Calling.
            self._disarm("A", "B")
            if status < 200:
                self.state = State.PROCEEDING
                self._deliver(response, peer, channel)
            elif status < 300:
                # §17.1.1.2 as RFC 6026 amends it: "the client transaction MUST
                # transition to the "Accepted" state, and Timer M MUST be started"
                self.state = State.ACCEPTED
                try:
                    self._deliver(response, peer, channel)
                finally:
                    self._arm("M", self._timers.timer_m, self._terminate)
            else:
                self.state = State.COMPLETED
                self._ack = ack_for(self.request, response).to_bytes()
                self._send(self._ack)
                try:
                    self._deliver(response, peer, channel)
                finally:
                    self._arm("D", self._timers.timer_d, self._terminate)
        elif state is State.COMPLETED and status >= 300:
            # "Any retransmissions of the final response that are received while
            # in the "Completed" state MUST cause the ACK to be re-passed to the
            # transport layer for retransmission, but the newly received response
            # MUST NOT be passed up to the TU."
            assert self._ack is not None
            self._send(self._ack)
        elif state is State.ACCEPTED and 200 <= status < 300:
            # §17.1.1.2 as RFC 6026 amends it: "Any 2xx responses that match this
            # client transaction and that are received while in the "Accepted"
            # state MUST be passed up to the TU."
            self._deliver(response, peer, channel)

    def _timer_a(self) -> None:
        # "When timer A fires, the client transaction MUST retransmit the request
        # [...] and MUST reset the timer with a value of 2*T1" - doubling each time.
        if self.state is not State.CALLING:
            return
        self._send(self._wire)
        self._interval *= 2
        self._arm("A", self._interval, self._timer_a)

    def _timer_b(self) -> None:
        if self.state is State.CALLING:
            self._timed_out()


class ClientNonInviteTransaction(_ClientTransaction):
    """See one non-INVITE request through (RFC 3261 §17.1.2, figure 6).

    TRYING -1xx-> PROCEEDING -final-> COMPLETED -Timer K-> TERMINATED; F: timeout.
    ``timeout`` replaces Timer F (64*T1) when given.
    """

    _initial_state = State.TRYING
    _first_interval = "timer_e"
    #: Set by the owner (the layer) to keep the Completed state itself over UDP:
    #: told the transaction once its final response is delivered, instead of
    #: this object arming its own Timer K. The object then stays Completed and
    #: does nothing more; the owner absorbs retransmitted responses until Timer
    #: K.
    on_completed: Callable[[ClientNonInviteTransaction], None] | None = None

    def start(self) -> None:
        """Send the request and arm Timers E (UDP only) and F (§17.1.2.2)."""
        self._arm("F", self._timeout or self._timers.timer_f, self._timer_f)
        if not self.reliable:
            self._arm("E", self._interval, self._timer_e)
        self._send(self._wire)

    def receive_response(
        self, response: Response, peer: Peer, channel: Channel
    ) -> None:
        """A response matched to this transaction arrived (§17.1.2.2).

        In COMPLETED "any retransmissions of the final response that are received
        [...] are buffered"; here they are simply absorbed.
        """
        if self.state not in (State.TRYING, State.PROCEEDING):
            return
        if response.status < 200:
            self.state = State.PROCEEDING
            self._deliver(response, peer, channel)
            return
        self.state = State.COMPLETED
        self._disarm("E", "F")
        try:
            self._deliver(response, peer, channel)
        finally:
            # "The client transaction MUST start timer K [...] T4 seconds for
            # unreliable transports, and zero seconds for reliable transports."
            if self.on_completed is not None and not self.reliable:
                self.on_completed(self)
            else:
                self._arm("K", self._timers.timer_k, self._terminate)

    def _timer_e(self) -> None:
        if self.state not in (State.TRYING, State.PROCEEDING):
            return
        self._send(self._wire)
        # §17.1.2.2: in Trying the interval doubles up to T2; in Proceeding it is T2.
        if self.state is State.TRYING:
            self._interval = min(2 * self._interval, self._timers.t2)
        else:
            self._interval = self._timers.t2
        self._arm("E", self._interval, self._timer_e)

    def _timer_f(self) -> None:
        if self.state in (State.TRYING, State.PROCEEDING):
            self._timed_out()
