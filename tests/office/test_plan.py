"""The call plan of one office call, step by step; no I/O."""

from __future__ import annotations

from sipproxy.office.model import (
    Forwarding,
    Target,
    UriTarget,
    UserTarget,
)
from sipproxy.office.plan import (
    AttemptOutcome,
    CallPlan,
    Forward,
    Refuse,
    Ring,
    outcome_of,
)
from tests.office.examples import VM, office


def test_outcomes_of_final_answers() -> None:
    """486/600 busy; 408/480/503 unavailable; our timer no answer; else as is."""
    assert outcome_of(486, rang_out=False) is AttemptOutcome.BUSY
    assert outcome_of(600, rang_out=False) is AttemptOutcome.BUSY
    for status in (408, 480, 503):
        assert outcome_of(status, rang_out=False) is AttemptOutcome.UNAVAILABLE
    assert outcome_of(487, rang_out=True) is AttemptOutcome.NO_ANSWER
    assert outcome_of(603, rang_out=False) is None
    assert outcome_of(403, rang_out=False) is None


def test_user_rings_with_the_no_answer_timer_only_when_forwarding() -> None:
    plan = CallPlan(office(), "example.test")
    assert plan.enter(UserTarget("bob"), Forwarding()) == Ring(("bob",))
    forwarding = Forwarding(no_answer=VM, no_answer_seconds=7)
    assert plan.enter(UserTarget("bob"), forwarding) == Ring(("bob",), seconds=7)


def test_unconditional_comes_before_dnd_and_ringing() -> None:
    plan = CallPlan(office(), "example.test")
    step = plan.enter(
        UserTarget("bob"), Forwarding(unconditional="101", dnd=True, busy=VM)
    )
    assert step == Forward(UserTarget("alice"), AttemptOutcome.UNCONDITIONAL)


def test_dnd_forwards_to_busy_else_refuses_486() -> None:
    plan = CallPlan(office(), "example.test")
    step = plan.enter(UserTarget("bob"), Forwarding(dnd=True, busy=VM))
    assert step == Forward(UriTarget(VM), AttemptOutcome.DND)
    assert plan.enter(UserTarget("bob"), Forwarding(dnd=True)) == Refuse(
        486, "Busy Here"
    )


def test_busy_no_answer_unavailable_pick_their_targets() -> None:
    forwarding = Forwarding(busy="101", no_answer=VM, unavailable="200")
    cases: list[tuple[AttemptOutcome, Target]] = [
        (AttemptOutcome.BUSY, UserTarget("alice")),
        (AttemptOutcome.NO_ANSWER, UriTarget(VM)),
        (AttemptOutcome.UNAVAILABLE, office().target("200")),
    ]
    for outcome, target in cases:
        plan = CallPlan(office(), "example.test")
        plan.enter(UserTarget("bob"), forwarding)
        assert plan.ended(outcome) == Forward(target, outcome)


def test_without_targets_the_answer_passes_up_or_is_480() -> None:
    plan = CallPlan(office(), "example.test")
    plan.enter(UserTarget("bob"), Forwarding())
    assert plan.ended(AttemptOutcome.BUSY) is None
    assert plan.ended(AttemptOutcome.UNAVAILABLE) is None
    assert plan.ended(AttemptOutcome.NO_ANSWER) == Refuse(
        480, "Temporarily Unavailable"
    )
    assert plan.ended(None) is None


def test_parallel_group_rings_everyone_newest_binding() -> None:
    plan = CallPlan(office(), "example.test")
    step = plan.enter(office().target("200"), Forwarding())
    assert step == Ring(("alice", "bob"), seconds=20.0, newest_only=True, parallel=True)


def test_sequential_group_hunts_then_forwards() -> None:
    o = office(
        groups=[
            {"number": "300", "name": "hunt", "members": ["alice", "bob", "carol"],
             "strategy": "sequential", "ring_seconds": 2},
        ],
    )  # fmt: skip
    plan = CallPlan(o, "example.test")
    group = o.target("300")
    assert plan.enter(group, Forwarding(no_answer=VM)) == Ring(
        ("alice",), seconds=2.0, newest_only=True
    )
    assert plan.ended(AttemptOutcome.BUSY) == Ring(
        ("bob",), seconds=2.0, newest_only=True
    )
    assert plan.ended(AttemptOutcome.NO_ANSWER) == Ring(
        ("carol",), seconds=2.0, newest_only=True
    )
    # Someone rang out: the group as a whole was not answered.
    assert plan.ended(AttemptOutcome.UNAVAILABLE) == Forward(
        UriTarget(VM), AttemptOutcome.NO_ANSWER
    )


def test_depth_beyond_the_maximum_is_482() -> None:
    o = office(**{"max-forward-depth": 2})
    plan = CallPlan(o, "example.test")
    plan.enter(UserTarget("alice"), Forwarding())
    step = Forward(UserTarget("bob"), AttemptOutcome.UNCONDITIONAL)
    assert plan.retarget(step) is None
    assert plan.retarget(step) is None
    assert plan.retarget(step) == Refuse(482, "Loop Detected")
