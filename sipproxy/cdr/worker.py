"""One private worker thread for a store's blocking I/O, off the reactor thread.

A file store sends each operation here with ``deferToThreadPool`` and awaits it:
a slow disk never stalls SIP traffic, and the single thread runs operations in
the order they were sent (records are written in order) without locks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from sipproxy.cdr import CallRecordUnavailableError

__all__ = ["WorkerThread"]

_T = TypeVar("_T")


class WorkerThread:
    """A one-thread pool that turns the store's I/O errors into one error type.

    :param where: names the store in errors, e.g. ``"sqlite:/var/lib/cdr.db"``.
    :param errors: the exceptions that mean "the store failed", raised as
        :class:`~sipproxy.cdr.CallRecordUnavailableError`.
    :param reactor: runs the results back on the reactor thread.
    """

    def __init__(
        self,
        where: str,
        *,
        errors: tuple[type[BaseException], ...],
        reactor: Any,
    ) -> None:
        self.where = where
        self._errors = errors
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="sipproxy-cdr")
        self._shutdown_trigger: Any = None

    @property
    def started(self) -> bool:
        """Whether :meth:`run` may be called."""
        return bool(self._pool.started)

    def start(self) -> None:
        """Start the thread (again, after :meth:`stop`)."""
        if self._pool.started:
            return
        if self._pool.joined:
            # A stopped ThreadPool cannot be started again; a reopened store can.
            self._pool = ThreadPool(minthreads=1, maxthreads=1, name="sipproxy-cdr")
        self._pool.start()
        # A store nobody closed must not keep the process alive at exit.
        self._shutdown_trigger = self._reactor.addSystemEventTrigger(
            "during", "shutdown", self._pool.stop
        )

    def stop(self) -> None:
        """Stop the thread once the operations sent before have run."""
        if self._shutdown_trigger is not None:
            self._reactor.removeSystemEventTrigger(self._shutdown_trigger)
            self._shutdown_trigger = None
        if self._pool.started:
            self._pool.stop()

    async def run(self, function: Callable[..., _T], *args: object) -> _T:
        """``function(*args)`` on the thread; its result back here.

        :raises CallRecordUnavailableError: the thread is not running, or the
            function raised one of ``errors``.
        """
        if not self._pool.started:
            # A stopped pool would queue the call forever.
            raise CallRecordUnavailableError(f"{self.where} is not open")
        try:
            return await deferToThreadPool(self._reactor, self._pool, function, *args)
        except self._errors as error:
            raise CallRecordUnavailableError(f"{self.where}: {error}") from error
