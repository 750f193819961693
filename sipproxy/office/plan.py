"""The plan of one office call: what to ring, where to forward, what to answer.

A :class:`CallPlan` is a sans-IO state machine. The proxy core enters a
destination with its effective forwarding and gets a :class:`Step`: ring users
(:class:`Ring`), retarget (:class:`Forward`) or answer (:class:`Refuse`). When a
Ring ends unanswered the core reports why (:class:`AttemptOutcome`, from
:func:`outcome_of`) and gets the next step. The core does the I/O: binding
lookups, branches, timers, CANCELs. Each retargeting is recorded as a
:class:`Hop`, from which :mod:`sipproxy.office.headers` builds Diversion and
History-Info.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sipproxy.office.model import (
    Forwarding,
    GroupTarget,
    Office,
    Target,
    UriTarget,
    name_of,
)

__all__ = [
    "AttemptOutcome",
    "CallPlan",
    "Forward",
    "Hop",
    "Refuse",
    "Ring",
    "Step",
    "outcome_of",
]


class AttemptOutcome(enum.Enum):
    """Why an attempt ended without an answer; the Diversion reason (RFC 5806)."""

    UNCONDITIONAL = "unconditional"
    BUSY = "user-busy"
    NO_ANSWER = "no-answer"
    UNAVAILABLE = "unavailable"
    DND = "do-not-disturb"

    @property
    def cause(self) -> int:
        """The RFC 4458 §3.4 cause: 486 busy, 408 no reply, 302, 404 not available."""
        return _CAUSES[self]


_CAUSES = {
    AttemptOutcome.UNCONDITIONAL: 302,
    AttemptOutcome.BUSY: 486,
    AttemptOutcome.NO_ANSWER: 408,
    AttemptOutcome.UNAVAILABLE: 404,
    AttemptOutcome.DND: 486,
}


def outcome_of(status: int, *, rang_out: bool) -> AttemptOutcome | None:
    """Classify a final non-2xx answer; None: pass it to the caller as it is.

    :param rang_out: our own no-answer timer ended the attempt.
    """
    if rang_out:
        return AttemptOutcome.NO_ANSWER
    if status in (486, 600):
        return AttemptOutcome.BUSY
    if status in (408, 480, 503):
        return AttemptOutcome.UNAVAILABLE
    return None


def forwarding_target(forwarding: Forwarding, outcome: AttemptOutcome) -> str:
    """The target ``forwarding`` names for ``outcome``, or "" (none)."""
    if outcome in (AttemptOutcome.BUSY, AttemptOutcome.DND):
        return forwarding.busy
    if outcome is AttemptOutcome.NO_ANSWER:
        return forwarding.no_answer
    if outcome is AttemptOutcome.UNAVAILABLE:
        return forwarding.unavailable
    return forwarding.unconditional


@dataclass(frozen=True, slots=True)
class Hop:
    """One retargeting: from ``uri`` for ``outcome`` (History-Info, Diversion)."""

    uri: str
    outcome: AttemptOutcome


@dataclass(frozen=True, slots=True)
class Ring:
    """Ring these users now; end the attempt after ``seconds`` (None: never).

    ``newest_only``: each member's newest binding only (ring groups); otherwise
    every binding, as for a call to the user (the proxy's forking setting).
    """

    users: tuple[str, ...] = ()
    uri: str | None = None
    seconds: float | None = None
    newest_only: bool = False
    parallel: bool | None = None


@dataclass(frozen=True, slots=True)
class Forward:
    """Retarget the call to ``target`` (already resolved) for ``outcome``."""

    target: Target
    outcome: AttemptOutcome


@dataclass(frozen=True, slots=True)
class Refuse:
    """Answer the caller with ``status``."""

    status: int
    reason: str | None = None


Step = Ring | Forward | Refuse


class CallPlan:
    """Decides, for one call, what to ring and where to go when nobody answers.

    No I/O: the caller looks up bindings and stored forwarding and reports each
    attempt's :class:`AttemptOutcome`. Sequence: :meth:`enter` a destination with
    its effective forwarding; it answers Ring, Forward or Refuse. After a Ring the
    caller reports :meth:`ended`, which answers another Ring (the next member of
    a sequential group), a Forward, a Refuse or None (pass the answer up). After
    a Forward the caller checks :meth:`retarget` (depth) and enters the target.
    """

    def __init__(self, office: Office, domain: str) -> None:
        """:param domain: the host of the Request-URI, for Diversion URIs."""
        self.office = office
        self.domain = domain
        self.hops: list[Hop] = []
        self.current: Target | None = None
        self.forwarding = Forwarding()
        self._waiting: list[str] = []
        self._outcomes: list[AttemptOutcome] = []

    def uri_of(self, target: Target) -> str:
        """The URI a target is called at (Diversion, History-Info, Request-URI)."""
        if isinstance(target, UriTarget):
            return target.uri
        if isinstance(target, GroupTarget):
            return f"sip:{target.group.number}@{self.domain}"
        return f"sip:{target.name}@{self.domain}"

    def name_of(self, target: Target) -> str | None:
        """The user or group name whose forwarding applies; None for a URI."""
        return name_of(target)

    def enter(self, target: Target, forwarding: Forwarding) -> Step:
        """Start calling ``target`` whose effective forwarding is ``forwarding``."""
        self.current = target
        self.forwarding = forwarding
        self._outcomes = []
        if isinstance(target, UriTarget):
            return Ring(uri=target.uri)
        if forwarding.unconditional:
            return self._forward(forwarding.unconditional, AttemptOutcome.UNCONDITIONAL)
        if forwarding.dnd:
            if forwarding.busy:
                return self._forward(forwarding.busy, AttemptOutcome.DND)
            return Refuse(486, "Busy Here")
        if isinstance(target, GroupTarget):
            group = target.group
            if group.strategy == "parallel":
                return Ring(
                    group.members, seconds=group.ring_seconds, newest_only=True,
                    parallel=True,
                )  # fmt: skip
            self._waiting = list(group.members[1:])
            return Ring(group.members[:1], seconds=group.ring_seconds, newest_only=True)
        seconds = forwarding.no_answer_seconds if forwarding.no_answer else None
        return Ring((target.name,), seconds=seconds)

    def ended(self, outcome: AttemptOutcome | None) -> Step | None:
        """The current Ring ended unanswered; what next (None: pass it up)."""
        if outcome is not None:
            self._outcomes.append(outcome)
        if isinstance(self.current, UriTarget):
            return None
        if self._waiting:
            member = self._waiting.pop(0)
            assert isinstance(self.current, GroupTarget)
            return Ring(
                (member,), seconds=self.current.group.ring_seconds, newest_only=True
            )
        if isinstance(self.current, GroupTarget):
            # The whole group: nobody answered if anyone rang out, else busy if
            # anyone was busy, else nobody could be reached.
            outcome = next(
                (
                    o
                    for o in (
                        AttemptOutcome.NO_ANSWER,
                        AttemptOutcome.BUSY,
                        AttemptOutcome.UNAVAILABLE,
                    )
                    if o in self._outcomes
                ),
                None,
            )
        if outcome is None:
            return None
        text = forwarding_target(self.forwarding, outcome)
        if text:
            return self._forward(text, outcome)
        if outcome is AttemptOutcome.NO_ANSWER:
            # Our own CANCEL made the 487s; the caller hears nobody answered.
            return Refuse(480, "Temporarily Unavailable")
        return None

    def retarget(self, step: Forward) -> Refuse | None:
        """Record the hop away from the current target; 482 beyond the depth."""
        assert self.current is not None
        self.hops.append(Hop(self.uri_of(self.current), step.outcome))
        if len(self.hops) > self.office.max_depth:
            return Refuse(482, "Loop Detected")
        return None

    def _forward(self, text: str, outcome: AttemptOutcome) -> Step:
        try:
            return Forward(self.office.target(text), outcome)
        except ValueError:
            # A stored target whose user has since gone from the users file.
            return Refuse(480, "Temporarily Unavailable")
