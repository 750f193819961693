"""Message builders and a recording TU for the transaction layer tests."""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.base import DelayedCall
from twisted.internet.task import Clock

from sipproxy.sip.addressing import Channel, Peer
from sipproxy.sip.message import Request, Response
from sipproxy.sip.parser import parse_message
from sipproxy.transaction.state import State

UDP_PEER = Peer("udp", "192.0.2.10", 5060)
TCP_PEER = Peer("tcp", "192.0.2.10", 40123)


def request(
    method: str = "INVITE",
    *,
    branch: str | None = "z9hG4bK-a1",
    transport: str = "UDP",
    sent_by: str = "192.0.2.10:5060",
    uri: str = "sip:bob@example.com",
    to_tag: str | None = None,
    from_tag: str = "alice1",
    call_id: str = "call-1@192.0.2.10",
    cseq: int = 1,
    cseq_method: str | None = None,
    extra: str = "",
) -> Request:
    """A valid request as it arrives from a phone, parsed from bytes."""
    via = f"SIP/2.0/{transport} {sent_by}"
    if branch is not None:
        via += f";branch={branch}"
    to = "<sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else "")
    data = (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: {via}\r\n"
        "Max-Forwards: 70\r\n"
        f"{extra}"
        f"From: Alice <sip:alice@example.com>;tag={from_tag}\r\n"
        f"To: {to}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} {cseq_method or method}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    message = parse_message(data)
    assert isinstance(message, Request)
    return message


def ack_for_response(invite: Request, response: Response, **kwargs: Any) -> Request:
    """The ACK a phone sends for a non-2xx: the INVITE's branch and the To tag."""
    tag = response.to_addr.tag
    return request(
        "ACK",
        cseq=invite.cseq.number,
        to_tag=tag,
        **kwargs,
    )


@dataclass
class RecordingUser:
    """A TransactionUser that notes every call; ``on_request`` may respond."""

    requests: list[tuple[Request, Any, Peer]] = field(default_factory=list)
    responses: list[tuple[Response, Any]] = field(default_factory=list)
    timeouts: list[Any] = field(default_factory=list)
    invalid: list[Exception] = field(default_factory=list)
    on_request: Any = None

    def request_received(
        self, request: Request, transaction: Any, peer: Peer, channel: Channel
    ) -> None:
        self.requests.append((request, transaction, peer))
        if self.on_request is not None:
            self.on_request(request, transaction)

    def response_received(
        self, response: Response, transaction: Any, peer: Peer, channel: Channel
    ) -> None:
        self.responses.append((response, transaction))

    def transaction_timed_out(self, transaction: Any) -> None:
        self.timeouts.append(transaction)

    def message_invalid(self, error: Exception, peer: Peer, channel: Channel) -> None:
        self.invalid.append(error)

    @property
    def statuses(self) -> list[int]:
        return [response.status for response, _ in self.responses]


class Wire:
    """A ``send`` that notes when each message left."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.sent: list[tuple[float, bytes]] = []

    def __call__(self, data: bytes) -> None:
        self.sent.append((self.clock.seconds(), data))

    @property
    def times(self) -> list[float]:
        return [at for at, _ in self.sent]

    def messages(self) -> list[Request]:
        out = []
        for _, data in self.sent:
            message = parse_message(data)
            assert isinstance(message, Request)
            out.append(message)
        return out


def run_until(clock: Clock, moment: float) -> None:
    """Advance to ``moment``, stopping at every timer so it fires on time."""
    while True:
        due = [call.getTime() for call in clock.getDelayedCalls()]
        upcoming = min((t for t in due if t <= moment), default=None)
        if upcoming is None:
            break
        clock.advance(max(upcoming - clock.seconds(), 0))
    clock.advance(max(moment - clock.seconds(), 0))


class TimedChannel:
    """A Channel that notes when each message left and where to."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.local = Peer("udp", "192.0.2.1", 5060)
        self.connection_id: str | None = None
        self.sent: list[tuple[float, bytes, Peer]] = []

    def send(self, data: bytes, peer: Peer) -> None:
        self.sent.append((self.clock.seconds(), data, peer))

    @property
    def times(self) -> list[float]:
        return [at for at, _, _ in self.sent]

    def responses(self) -> list[Response]:
        out = []
        for _, data, _ in self.sent:
            message = parse_message(data)
            assert isinstance(message, Response)
            out.append(message)
        return out

    @property
    def statuses(self) -> list[int]:
        return [response.status for response in self.responses()]


def state_of(transaction: Any) -> State:
    """The state now (a call, so that mypy does not narrow it between steps)."""
    state = transaction.state
    assert isinstance(state, State)
    return state


class SortedCalls:
    """Mixed in before Clock or MemoryReactorClock: timers for tens of thousands.

    Clock sorts every pending call again on each callLater and after each call it
    runs; this keeps the list in order as calls are added instead, so a test can
    hold 60,000 transactions. Calls moved by ``reset`` or ``delay`` are not
    supported (Clock re-sorts for them; this does not).
    """

    calls: list[DelayedCall]
    seconds: Callable[[], float]

    def callLater(  # noqa: N802 - Twisted's name
        self, delay: float, callable: Callable[..., object], *args: object, **kw: object
    ) -> DelayedCall:
        call = DelayedCall(
            self.seconds() + delay,
            callable,
            args,
            kw,
            self.calls.remove,
            lambda c: None,
            self.seconds,
        )
        bisect.insort_right(self.calls, call, key=DelayedCall.getTime)
        return call

    def _sortCalls(self) -> None:  # noqa: N802 - Twisted's name
        pass


class SortedClock(SortedCalls, Clock):
    """A Clock for tens of thousands of timers (see :class:`SortedCalls`)."""
