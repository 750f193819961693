"""sipproxy.eager: a first step at once, a Deferred only for what waits."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from sipproxy import eager


def test_a_coroutine_that_never_waits_makes_no_deferred() -> None:
    ran: list[str] = []

    async def work() -> int:
        ran.append("all of it")
        return 7

    assert eager.start(work()) is None
    assert ran == ["all of it"]


def test_a_first_step_that_raises_gives_a_failed_deferred() -> None:
    async def work() -> None:
        raise ValueError("store is down")

    started = eager.start(work())
    assert started is not None
    failures: list[Failure] = []
    started.addErrback(failures.append)
    assert len(failures) == 1
    assert failures[0].check(ValueError)


def test_a_waiting_coroutine_goes_on_when_its_deferred_fires() -> None:
    gate: Deferred[str] = Deferred()
    steps: list[str] = []

    async def work() -> str:
        steps.append("before")
        got = await gate
        steps.append(got)
        second: Deferred[str] = Deferred()
        second.callback("again")
        steps.append(await second)
        return "done"

    started = eager.start(work())
    assert steps == ["before"]
    assert started is not None
    results: list[Any] = []
    started.addCallback(results.append)
    assert results == []
    gate.callback("after")
    assert steps == ["before", "after", "again"]
    # The rest ran as Deferred.fromCoroutine runs it: its result is dropped
    # by design only for coroutines that finish at once.
    assert results == [None]


def test_an_error_after_waiting_reaches_the_coroutine_and_the_caller() -> None:
    gate: Deferred[None] = Deferred()
    caught: list[str] = []

    async def work() -> None:
        try:
            await gate
        except KeyError:
            caught.append("inside")
            raise

    started = eager.start(work())
    assert started is not None
    failures: list[Failure] = []
    started.addErrback(failures.append)
    gate.errback(KeyError("gone"))
    assert caught == ["inside"]
    assert len(failures) == 1
    assert failures[0].check(KeyError)


def test_cancelling_the_deferred_cancels_what_the_coroutine_awaits() -> None:
    cancelled: list[bool] = []
    gate: Deferred[None] = Deferred(lambda d: cancelled.append(True))

    async def work() -> None:
        await gate

    started = eager.start(work())
    assert started is not None
    started.addErrback(lambda f: None)
    started.cancel()
    assert cancelled == [True]


@pytest.mark.parametrize("finishes", [True, False])
def test_the_first_step_runs_before_start_returns(finishes: bool) -> None:
    order: list[str] = []
    gate: Deferred[None] = Deferred()

    async def work() -> None:
        order.append("step")
        if not finishes:
            await gate

    eager.start(work())
    order.append("returned")
    assert order == ["step", "returned"]
