"""Transaction states and the timer bookkeeping every transaction shares.

A transaction arms named timers (``"A"``, ``"B"``, ...) on a
:class:`~sipproxy.transaction.deadlines.TimerQueue` over an injected
:class:`IReactorTime` (the layer's, shared by all its transactions; else one of
its own), each at its exact time; entering :attr:`State.TERMINATED` cancels
whatever is still armed and tells the owner (the layer) once, so that it can drop
the transaction from its tables. A timer of zero seconds (D, I, J, K over a
reliable transport) fires at once, without a round trip through the clock (RFC 3261
§17.1.1.2: "zero seconds for reliable transports").

The owner may also watch every change of state (:attr:`TransactionMachine.on_state`):
the layer counts requests still waiting for a final answer that way, in O(1), as
they are answered rather than by scanning its tables.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from sipproxy.transaction.deadlines import Entry, TimerQueue
from sipproxy.transaction.timers import Timers

__all__ = ["State", "TransactionMachine"]


class State(enum.Enum):
    """The states of figures 5-8 of RFC 3261 and RFC 6026 (``ACCEPTED``)."""

    TRYING = "Trying"
    CALLING = "Calling"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


class TransactionMachine:
    """State, named timers and the termination notice shared by all transactions."""

    log = Logger()

    def __init__(
        self,
        *,
        state: State,
        clock: IReactorTime,
        timers: Timers,
        reliable: bool,
        on_terminated: Callable[[Any], None] | None,
        queue: TimerQueue | None = None,
    ) -> None:
        self._state = state
        #: told ``(transaction, previous_state)`` after each change of state; set
        #: by the owner after construction (the initial state is no change)
        self.on_state: Callable[[Any, State], None] | None = None
        self.reliable = reliable
        self._clock = clock
        self._timers = timers.over(reliable=reliable)
        self._on_terminated = on_terminated
        self._queue = queue if queue is not None else TimerQueue(clock)
        self._armed: dict[str, Entry] = {}

    @property
    def state(self) -> State:
        """Where the transaction is in its figure (RFC 3261 figures 5-8)."""
        return self._state

    @state.setter
    def state(self, state: State) -> None:
        previous = self._state
        self._state = state
        if self.on_state is not None and state is not previous:
            self.on_state(self, previous)

    def terminate(self) -> None:
        """End the transaction now, as its last timer would (the owner's bound).

        For an owner that must bound how many transactions it keeps.
        """
        self._terminate()

    @property
    def terminated(self) -> bool:
        """Whether the transaction reached :attr:`State.TERMINATED`."""
        return self.state is State.TERMINATED

    def _arm(self, name: str, delay: float, fire: Callable[[], None]) -> None:
        """Start (or restart) timer ``name``; zero fires it now."""
        self._disarm(name)
        if delay <= 0:
            fire()
            return

        def expired() -> None:
            del self._armed[name]
            fire()

        self._armed[name] = self._queue.call_later(delay, expired)

    def _disarm(self, *names: str) -> None:
        for name in names:
            entry = self._armed.pop(name, None)
            if entry is not None:
                self._queue.cancel(entry)

    def _terminate(self) -> None:
        """Enter Terminated: cancel every timer, then tell the owner once."""
        if self.state is State.TERMINATED:
            return
        self.state = State.TERMINATED
        self._disarm(*list(self._armed))
        if self._on_terminated is not None:
            self._on_terminated(self)
