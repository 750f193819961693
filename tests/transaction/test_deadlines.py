"""TimerQueue: many timers on one reactor call, each at its exact deadline."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.task import Clock

from sipproxy.sip.addressing import Peer
from sipproxy.transaction.deadlines import Entry, TimerQueue
from sipproxy.transaction.layer import TransactionLayer
from tests.transaction.support import (
    RecordingUser,
    TimedChannel,
    Wire,
    request,
    run_until,
)


def test_each_timer_runs_at_its_own_deadline_in_order() -> None:
    """Nothing is rounded: a timer runs when the clock reaches its time, not later."""
    clock = Clock()
    queue = TimerQueue(clock)
    ran: list[tuple[str, float]] = []

    def timer(name: str) -> Callable[[], None]:
        return lambda: ran.append((name, clock.seconds()))

    for name, delay in (("b", 32.0), ("a", 0.5), ("100", 0.2), ("a2", 0.5)):
        queue.call_later(delay, timer(name))
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(0.2)
    clock.advance(0.3)
    assert ran == [("100", 0.2), ("a", 0.5), ("a2", 0.5)]
    clock.advance(31.4)
    assert len(ran) == 3
    clock.advance(0.1)
    assert ran[-1] == ("b", 32.0)
    assert (len(queue), clock.getDelayedCalls()) == (0, [])


def test_cancelled_timers_never_run_and_leave_nothing_armed() -> None:
    """Cancelling the last live timer cancels the reactor call as well."""
    clock = Clock()
    queue = TimerQueue(clock)
    ran: list[str] = []
    first = queue.call_later(1.0, lambda: ran.append("first"))
    second = queue.call_later(2.0, lambda: ran.append("second"))
    queue.cancel(first)
    queue.cancel(first)  # twice is once
    clock.advance(1.0)
    assert ran == []
    assert len(clock.getDelayedCalls()) == 1
    queue.cancel(second)
    assert (len(queue), clock.getDelayedCalls()) == (0, [])
    clock.advance(5.0)
    assert ran == []


def test_an_earlier_timer_rearms_the_call() -> None:
    """A timer due before the armed call moves the call forward."""
    clock = Clock()
    queue = TimerQueue(clock)
    ran: list[float] = []
    queue.call_later(10.0, lambda: ran.append(clock.seconds()))
    queue.call_later(1.0, lambda: ran.append(clock.seconds()))
    assert [c.getTime() for c in clock.getDelayedCalls()] == [1.0]
    clock.pump([1.0, 9.0])
    assert ran == [1.0, 10.0]


def test_a_timer_armed_while_running_runs_at_its_time() -> None:
    """Timer A re-arms itself from inside the queue: doubling, as §17.1.1.2 wants."""
    clock = Clock()
    queue = TimerQueue(clock)
    sent: list[float] = []
    interval = [0.5]

    def timer_a() -> None:
        sent.append(clock.seconds())
        interval[0] *= 2
        queue.call_later(interval[0], timer_a)

    queue.call_later(interval[0], timer_a)
    clock.pump([0.5, 1.0, 2.0, 4.0])
    assert sent == [0.5, 1.5, 3.5, 7.5]
    assert len(clock.getDelayedCalls()) == 1


def test_a_timer_may_cancel_another_due_at_the_same_time() -> None:
    """A transaction that terminates cancels its other timers, even ones due now."""
    clock = Clock()
    queue = TimerQueue(clock)
    ran: list[str] = []
    later: list[Entry] = []

    def first() -> None:
        ran.append("first")
        queue.cancel(later[0])

    queue.call_later(1.0, first)
    later.append(queue.call_later(1.0, lambda: ran.append("second")))
    clock.advance(1.0)
    assert ran == ["first"]
    assert clock.getDelayedCalls() == []


def test_many_cancelled_timers_do_not_pile_up() -> None:
    """Dead entries are dropped once they are most of the heap."""
    clock = Clock()
    queue = TimerQueue(clock)
    queue.call_later(100.0, lambda: None)
    for _ in range(1000):
        queue.cancel(queue.call_later(32.0, lambda: None))
    assert len(queue) == 1
    assert len(queue._heap) < 200


def test_a_layers_transactions_share_one_reactor_call() -> None:
    """An INVITE in and one out arm 100 Trying, L-to-be, A and B: one call."""
    clock = Clock()
    user = RecordingUser()
    layer = TransactionLayer(user, clock)
    channel = TimedChannel(clock)
    invite = request("INVITE")
    layer.message_received(invite, Peer("udp", "192.0.2.10", 5060), channel)
    out = request("INVITE", branch="z9hG4bK-out1", sent_by="192.0.2.1:5060")
    wire = Wire(clock)
    layer.send_request(out, wire, reliable=False)
    assert len(clock.getDelayedCalls()) == 1
    run_until(clock, 0.5)
    # Timer A on time, and the 100 Trying at 200 ms.
    assert wire.times == [0.0, 0.5]
    assert channel.statuses == [100]
