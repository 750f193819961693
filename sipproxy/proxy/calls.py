"""Calls from the event stream: live calls, and one call detail record per call.

Theory of operation. :class:`CallTracker` is an observer of ``Proxy.events``
(proxy/events.py) on both streams. A call is an INVITE that creates a dialog,
keyed by its Call-ID and From tag: every branch of a fork carries the caller's
tag, so forked branches collapse into one call, and the first 2xx names the
branch that answered (``answered_by``). What each event does:

- dialog CREATED (the INVITE was forwarded): a live call starts, stored with
  :meth:`~sipproxy.cdr.CallRecordStore.keep_live`;
- EARLY, CONFIRMED: ringing, then answered (the record kept again on answer);
- the final decision on the INVITE: a non-2xx ends the call with its
  disposition (busy, no answer, cancelled, failed); an INVITE we rejected
  ourselves (404) never became a call and is recorded at once, except for
  digest challenges (401, 407), which a caller answers with the same call;
- TERMINATED by a BYE: the answered call ends; ``hangup_by`` is the caller when
  the BYE's From tag is the INVITE's, else the callee. A BYE that ends another
  dialog of a forked call (a second 2xx the caller hangs up at once) does not
  end the call;
- a re-INVITE or UPDATE answered in the call keeps it alive; a call nothing is
  heard of for ``max_call_seconds`` is ended by a periodic sweep with
  ``hangup_by="timeout"`` (one sweep instead of a timer per call: a minute of
  slack on a limit counted in hours is cheaper than a DelayedCall per call).

A finished record is :meth:`~sipproxy.cdr.CallRecordStore.add`-ed, then its
live copy dropped: a crash in between records it twice rather than never. At
start, :meth:`CallTracker.start` closes the calls this process's previous run
left live as ``lost``; live records are keyed ``"<owner>:<Call-ID>:<From tag>"``
so that only this process's are closed.

Busy lamps (proxy/notifier.py) keep only the calls of watched users; a user
who becomes watched is seeded from :meth:`CallTracker.live_events`, each
live call replayed as its created, early and confirmed events.

Costs: the observers run on the message path. A decision that is not about an
INVITE or UPDATE costs one comparison; storage writes are Deferreds nobody
waits for; a store that fails is logged once and counted, never raised into
the proxy. Live calls are capped (``max_calls``); calls over the cap are
counted in :attr:`CallTracker.untracked` and recorded only if they fail.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Coroutine
from typing import Any, Protocol

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from sipproxy import eager
from sipproxy.cdr import CallRecordStore
from sipproxy.cdr.record import CHALLENGES, CallRecord
from sipproxy.cdr.record import disposition_of as disposition
from sipproxy.proxy.events import DialogEvent, DialogState, FinalDecision
from sipproxy.sip.errors import ParseError

__all__ = ["DEFAULT_MAX_CALL_SECONDS", "CallObserver", "CallTracker", "disposition"]

#: A call nothing is heard of for this long is over (``--max-call-seconds``).
DEFAULT_MAX_CALL_SECONDS = 14_400.0
#: Live calls kept at most: about 1 KiB each, so 100 MiB at worst.
DEFAULT_MAX_CALLS = 100_000


class CallObserver(Protocol):
    """Told of calls as they start and end (the metrics)."""

    def call_setup(self, seconds: float) -> None:
        """A call rang or was answered this many seconds after its INVITE."""

    def call_ended(self, disposition: str) -> None:
        """A call ended with this disposition."""


class _Call:
    """One live call: its record so far, and what matching needs."""

    __slots__ = (
        "created",
        "early",
        "heard",
        "ident",
        "key",
        "record",
        "set_up",
        "to_tag",
    )

    def __init__(
        self,
        ident: tuple[str, str],
        key: str,
        record: CallRecord,
        created: DialogEvent,
    ) -> None:
        #: Call-ID and the caller's From tag
        self.ident = ident
        #: the live key in the store
        self.key = key
        self.record = record
        #: the To tag of the dialog that answered
        self.to_tag: str | None = None
        #: when something of this call was last heard (clock seconds)
        self.heard = record.start
        self.set_up = False
        #: what busy lamps are seeded from (:meth:`events`): the event that
        #: made the call (a tuple already built), and the first early
        #: dialog's To tag and time; the answer is in the record
        self.created = created
        self.early: tuple[str | None, float] | None = None

    def events(self) -> tuple[DialogEvent, ...]:
        """The call's dialog events so far, in order: created, early, confirmed.

        Rebuilt from the created event (sharing its strings) rather than kept
        whole: a live call costs a tuple and a few references more, no more.
        """
        created = self.created
        events = [created]
        if self.early is not None:
            to_tag, at = self.early
            events.append(
                created._replace(state=DialogState.EARLY, to_tag=to_tag, at=at)
            )
        record = self.record
        if record.answer is not None:
            events.append(
                created._replace(
                    state=DialogState.CONFIRMED,
                    to_tag=self.to_tag,
                    at=record.answer,
                    status=record.status,
                    answered_by=record.answered_by,
                    forwarded=record.forwarded,
                )
            )
        return tuple(events)


class CallTracker:
    """Observes ``Proxy.events`` and writes a :class:`CallRecord` per call.

    :param store: an open store (or one opening: writes wait in its queue).
    :param clock: the time of events is theirs; the sweep runs on this clock.
    :param owner: this process's name in live keys, stable across restarts
        (server.py: ``--advertise``, else the first listener's address).
    :param max_call_seconds: a call silent this long ends as a timeout.
    :param max_calls: live calls kept at most.
    :param sweep_every: seconds between looks for timed-out calls.
    """

    log = Logger()

    def __init__(
        self,
        store: CallRecordStore,
        clock: IReactorTime,
        *,
        owner: str,
        max_call_seconds: float = DEFAULT_MAX_CALL_SECONDS,
        max_calls: int = DEFAULT_MAX_CALLS,
        sweep_every: float = 60.0,
        observer: CallObserver | None = None,
    ) -> None:
        self.store = store
        self.owner = owner
        self.max_call_seconds = max_call_seconds
        self.max_calls = max_calls
        self._clock = clock
        self._sweep_every = sweep_every
        self._observer = observer
        self._calls: dict[tuple[str, str], _Call] = {}
        self._sweep: IDelayedCall | None = None
        #: store writes sent and not yet done: stopping waits for them
        self._writing: set[Deferred[Any]] = set()
        #: calls not tracked because ``max_calls`` were live
        self.untracked = 0
        #: store operations that failed (the first one is logged)
        self.store_errors = 0
        #: ended calls by disposition, since start
        self.ended: Counter[str] = Counter()

    # -- life -------------------------------------------------------------------

    def start(self) -> Deferred[list[CallRecord]]:
        """Close what a previous run of this owner left live, and start sweeping."""
        self._schedule()
        lost = Deferred.fromCoroutine(
            self.store.close_lost(self.owner, self._clock.seconds())
        )
        self._track(lost.addErrback(self._store_failed))
        return lost

    def stop(self) -> Deferred[None]:
        """Stop sweeping; fires once the store writes already sent are done.

        Live calls stay live in the store (lost at the next start). The store
        may be closed when this fires: a call that ended just before a clean
        stop is then recorded once, as it ended, rather than failing its
        write against a closed store and coming back as ``lost``.
        """
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None
        return self.written()

    def pending_writes(self) -> int:
        """Store writes sent and not yet done."""
        return len(self._writing)

    def written(self) -> Deferred[None]:
        """Fires once the store writes sent so far are done (or failed)."""
        return DeferredList(list(self._writing)).addCallback(lambda _: None)

    def active(self) -> int:
        """Calls in progress."""
        return len(self._calls)

    def live(self) -> list[dict[str, Any]]:
        """Calls in progress, oldest first, for the admin API's ``/calls``."""
        calls = sorted(self._calls.values(), key=lambda call: call.record.start)
        out = []
        for call in calls:
            row = call.record.to_json()
            out.append(
                {
                    "call_id": row["call_id"],
                    "caller": row["caller"],
                    "callee": row["callee"],
                    "answered_by": row["answered_by"],
                    "state": "ringing" if row["answer"] is None else "answered",
                    "start": row["start"],
                    "answer": row["answer"],
                }
            )
        return out

    def live_events(self) -> list[tuple[DialogEvent, ...]]:
        """Each call in progress as its dialog events (see :meth:`events_of`).

        Busy lamps (proxy/notifier.py) replay them when a user is first watched,
        so a subscription made during a call sees it.
        """
        return [call.events() for call in self._calls.values()]

    def events_of(self, call_id: str, from_tag: str) -> tuple[DialogEvent, ...]:
        """The dialog events of one call in progress: created, early, confirmed.

        Only the first early and the first confirmed are kept; empty when the
        call is not in progress (or was not tracked).
        """
        call = self._calls.get((call_id, from_tag))
        return () if call is None else call.events()

    # -- the event stream ----------------------------------------------------------

    def decided(self, decision: FinalDecision) -> None:
        """A final answer went upstream; only INVITE and UPDATE matter here."""
        method = decision.request.method
        if method != "INVITE":
            if method == "UPDATE":
                self._heard(decision)
            return
        request = decision.request
        try:
            from_tag = request.from_addr.tag or ""
            if request.to_addr.tag is not None:
                self._heard(decision)  # a re-INVITE
                return
        except ParseError:
            return
        status = decision.status
        call = self._calls.get((decision.call_id or "", from_tag))
        if call is None:
            if status >= 300 and status not in CHALLENGES:
                # Rejected before it was forwarded (404, 403...): no dialog
                # event came, so the record is made whole here.
                record = CallRecord(
                    call_id=decision.call_id or "",
                    caller=decision.user or decision.caller,
                    callee=str(request.uri),
                    start=decision.started_at,
                    end=decision.ended_at,
                    disposition=disposition(status),
                    status=status,
                )
                self._count(record.disposition)
                self._write(self.store.add(record))
            return
        if status < 300:
            if call.record.answer is None:
                self._answered(call, decision.ended_at, None, status)
            return
        self._end(call, decision.ended_at, disposition(status), status=status)

    def dialog_changed(self, event: DialogEvent) -> None:
        """A dialog was created, became early or confirmed, or ended."""
        state = event.state
        if state is DialogState.CREATED:
            self._created(event)
            return
        if state is DialogState.TERMINATED:
            if event.status is None:
                self._bye(event)
            # A final non-2xx: the decision, told first, ended the call.
            return
        call = self._calls.get((event.call_id, event.from_tag or ""))
        if call is None:
            return
        call.heard = event.at
        if state is DialogState.EARLY:
            if call.early is None:
                call.early = (event.to_tag, event.at)
            self._set_up(call, event.at)
        elif call.record.answer is None:
            self._answered(call, event.at, event, event.status)

    # -- changes of one call -----------------------------------------------------------

    def _created(self, event: DialogEvent) -> None:
        key = (event.call_id, event.from_tag or "")
        if key in self._calls:
            return  # the office plan rings again: still the same call
        if len(self._calls) >= self.max_calls:
            self.untracked += 1
            return
        # Read once, and kept without the INVITE (see _Call.created).
        event = event.detached()
        record = CallRecord(
            call_id=event.call_id,
            caller=event.user or event.caller,
            callee=event.uri or event.callee,
            start=event.at,
            # What the record says should this process die before the call ends.
            disposition="lost",
        )
        call = _Call(key, f"{self.owner}:{key[0]}:{key[1]}", record, event)
        self._calls[key] = call
        self._write(self.store.keep_live(call.key, record))

    def _set_up(self, call: _Call, at: float) -> None:
        if not call.set_up:
            call.set_up = True
            if self._observer is not None:
                self._observer.call_setup(at - call.record.start)

    def _answered(
        self,
        call: _Call,
        at: float,
        confirmed: DialogEvent | None,
        status: int | None,
    ) -> None:
        self._set_up(call, at)
        call.heard = at
        record = call.record
        answered_by, forwarded = record.answered_by, record.forwarded
        if confirmed is not None:
            call.to_tag = confirmed.to_tag
            answered_by, forwarded = confirmed.answered_by, confirmed.forwarded
        # One copy of the record: each copy runs its checks again.
        call.record = dataclasses.replace(
            record,
            answer=at,
            status=status,
            answered_by=answered_by,
            forwarded=forwarded,
        )
        self._write(self.store.keep_live(call.key, call.record))

    def _bye(self, event: DialogEvent) -> None:
        call_id = event.call_id
        call = self._calls.get((call_id, event.from_tag or ""))
        if call is not None:
            hangup_by, other_tag = "caller", event.to_tag
        else:
            # From the callee: the tags the other way round.
            call = self._calls.get((call_id, event.to_tag or ""))
            if call is None:
                return
            hangup_by, other_tag = "callee", event.from_tag
        if call.to_tag is not None and other_tag != call.to_tag:
            return  # another branch's dialog of a forked call
        answered = call.record.answer is not None
        self._end(
            call,
            event.at,
            "answered" if answered else "cancelled",
            hangup_by=hangup_by if answered else None,
        )

    def _heard(self, decision: FinalDecision) -> None:
        """A request inside a call was answered: the call is alive."""
        request = decision.request
        try:
            from_tag, to_tag = request.from_addr.tag or "", request.to_addr.tag or ""
        except ParseError:
            return
        call_id = decision.call_id or ""
        call = self._calls.get((call_id, from_tag)) or self._calls.get(
            (call_id, to_tag)
        )
        if call is not None:
            call.heard = decision.ended_at

    def _end(
        self,
        call: _Call,
        at: float,
        disposition: str,
        *,
        status: int | None = None,
        hangup_by: str | None = None,
    ) -> None:
        record = call.record
        del self._calls[call.ident]
        record = dataclasses.replace(
            record,
            end=at,
            disposition=disposition,
            status=record.status if status is None else status,
            hangup_by=hangup_by,
        )
        self._count(disposition)
        self._write(self._finish(call.key, record))

    async def _finish(self, key: str, record: CallRecord) -> None:
        await self.store.add(record)
        await self.store.drop_live(key)

    def _count(self, disposition: str) -> None:
        self.ended[disposition] += 1
        if self._observer is not None:
            self._observer.call_ended(disposition)

    # -- time-outs ---------------------------------------------------------------

    def _schedule(self) -> None:
        self._sweep = self._clock.callLater(self._sweep_every, self.sweep)

    def sweep(self) -> None:
        """End the calls nothing was heard of for ``max_call_seconds``."""
        self._sweep = None
        deadline = self._clock.seconds() - self.max_call_seconds
        for call in [c for c in self._calls.values() if c.heard <= deadline]:
            answered = call.record.answer is not None
            self._end(
                call,
                call.heard + self.max_call_seconds,
                "answered" if answered else "no_answer",
                hangup_by="timeout",
            )
        self._schedule()

    # -- the store ---------------------------------------------------------------

    def _write(self, work: Coroutine[Any, Any, Any]) -> None:
        # Three or four writes a call; with the null store (--cdr none, what a
        # memory location runs) every one finishes at once: no Deferred then.
        written = eager.start(work)
        if written is not None:
            self._track(written.addErrback(self._store_failed))

    def _track(self, written: Deferred[Any]) -> None:
        """Count ``written`` among the writes stop() waits for, until it fires."""
        if not written.called:
            self._writing.add(written)

            def done(result: object) -> object:
                self._writing.discard(written)
                return result

            written.addBoth(done)

    def _store_failed(self, failure: Failure) -> None:
        self.store_errors += 1
        if self.store_errors == 1:
            # Once: a store that is down fails every call, and the log must
            # not become the next outage. Later failures are counted.
            self.log.failure("call records cannot be stored", failure)
