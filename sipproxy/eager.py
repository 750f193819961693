"""Run a coroutine's first step now; pay for a Deferred only if it waits.

``Deferred.fromCoroutine`` makes a Deferred and copies the context for every
coroutine it starts. On the hot path most coroutines finish in their first
step: a request handled against the memory store, a call record written to
the null store (``--cdr none``, what a server on a memory location runs). For
those, :func:`start` runs the step and makes nothing; one that waits goes on
as ``Deferred.fromCoroutine`` would have run it from there.
"""

from __future__ import annotations

from collections.abc import Coroutine, Generator
from typing import Any

from twisted.internet.defer import Deferred, fail

__all__ = ["start"]


def start(work: Coroutine[Any, Any, Any]) -> Deferred[Any] | None:
    """Run ``work`` up to its first wait.

    :returns: None when it finished in that step (its result is dropped: for
        callers that do not use it); else a Deferred that fires when it
        finishes, or has already failed with what its first step raised.
    """
    try:
        waiting = work.send(None)
    except StopIteration:
        return None
    except BaseException:
        return fail()
    return Deferred.fromCoroutine(_resumed(work, waiting))


def _resumed(work: Coroutine[Any, Any, Any], waiting: Any) -> Generator[Any, Any, None]:
    """The rest of a started coroutine, for Deferred.fromCoroutine.

    ``waiting`` is what it yielded first (the Deferred it awaits); from there on
    this hands every value and exception through, as ``yield from`` would.
    """
    while True:
        try:
            sent = yield waiting
        except GeneratorExit:
            # As yield from: closed (a waiting request collected), close it too.
            work.close()
            raise
        except BaseException as error:
            try:
                waiting = work.throw(error)
            except StopIteration:
                return
        else:
            try:
                waiting = work.send(sent)
            except StopIteration:
                return
