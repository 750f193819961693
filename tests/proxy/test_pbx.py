"""The office PBX configuration and call plan (issue 9), as values: no I/O."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from twisted.internet.defer import Deferred

from sipproxy.config import ConfigError, build_config, read_toml
from sipproxy.location.memory import MemoryLocationService
from sipproxy.proxy.pbx import (
    CallPlan,
    Forward,
    Forwarding,
    GroupTarget,
    Hop,
    Office,
    OfficePreferences,
    Outcome,
    Refuse,
    Ring,
    Target,
    UriTarget,
    UserTarget,
    diversion_headers,
    history_info_headers,
    outcome_of,
    parse_office,
)
from tests.proxy.harness import run

USERS = frozenset({"alice", "bob", "carol"})
VM = "sip:vm@127.0.0.1:5070"
BASE: dict[str, Any] = {
    "extensions": {"101": "alice", "102": "bob"},
    "groups": [{"number": "200", "name": "sales", "members": ["alice", "bob"]}],
}


def office(**extra: Any) -> Office:
    return parse_office({**BASE, **extra}).with_users(USERS)


# -- configuration ----------------------------------------------------------------


def test_toml_sections_become_an_office() -> None:
    """The issue's TOML shape, read through build_config."""
    config = build_config(
        {
            **BASE,
            "forward": {"alice": {"busy": VM, "no_answer_seconds": 15}},
            "max-forward-depth": 3,
        },
        {},
    )
    assert config.office is not None
    assert config.office.extensions == {"101": "alice", "102": "bob"}
    sales = config.office.groups["200"]
    assert (sales.name, sales.members, sales.strategy, sales.ring_seconds) == (
        "sales",
        ("alice", "bob"),
        "parallel",
        20.0,
    )
    assert config.office.defaults("alice") == Forwarding(
        busy=VM, no_answer_seconds=15.0
    )
    assert config.office.max_depth == 3


def test_no_pbx_sections_means_no_office() -> None:
    assert build_config({}, {}).office is None


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"extensions": {"1x": "alice"}}, "extensions: '1x' is not a number"),
        ({"extensions": {"101": 7}}, "extensions: '101' = 7: expected a user"),
        ({"extensions": ["101"]}, "extensions: expected a table of number = user"),
        ({"groups": {"number": "200"}}, "groups: expected [[groups]] tables"),
        (
            {"groups": [{"number": "200", "members": ["a"]}]},
            "groups: entry 1: name must be a word",
        ),
        (
            {"groups": [{"number": "2x", "name": "s", "members": ["a"]}]},
            "groups: 's': number '2x' is not a number",
        ),
        (
            {"groups": [{"number": "200", "name": "s", "members": []}]},
            "groups: 's': members must be a non-empty list of users",
        ),
        (
            {"groups": [{"number": "200", "name": "s", "members": ["a", "a"]}]},
            "groups: 's': a member is listed twice",
        ),
        (
            {
                "groups": [
                    {"number": "200", "name": "s", "members": ["a"], "strategy": "x"}
                ]
            },
            "groups: 's': strategy 'x': use parallel or sequential",
        ),
        (
            {
                "groups": [
                    {"number": "200", "name": "s", "members": ["a"], "ring_seconds": 0}
                ]
            },
            "groups: 's': ring_seconds 0: expected 0 < s <= 600",
        ),
        (
            {"groups": [{"number": "200", "name": "s", "members": ["a"], "x": 1}]},
            "groups: 's': unknown key 'x'",
        ),
        (
            {
                "extensions": {"200": "alice"},
                "groups": [{"number": "200", "name": "s", "members": ["a"]}],
            },
            "groups: 's': number '200' is used twice",
        ),
        (
            {
                "groups": [
                    {"number": "200", "name": "s", "members": ["a"]},
                    {"number": "200", "name": "t", "members": ["a"]},
                ]
            },
            "groups: 't': number '200' is used twice",
        ),
        (
            {
                "groups": [
                    {"number": "200", "name": "s", "members": ["a"]},
                    {"number": "201", "name": "s", "members": ["a"]},
                ]
            },
            "groups: 's': the name is used twice",
        ),
        ({"forward": {"alice": "sip:x@y"}}, "forward: expected [forward.NAME] tables"),
        (
            {"forward": {"alice": {"busyy": VM}}},
            "forward.alice: unknown key 'busyy'",
        ),
        ({"forward": {"alice": {"busy": 5}}}, "forward.alice.busy = 5: expected a"),
        (
            {"forward": {"alice": {"dnd": "yes"}}},
            "forward.alice.dnd = 'yes': expected true or false",
        ),
        (
            {"forward": {"alice": {"no_answer_seconds": -1}}},
            "forward.alice.no_answer_seconds = -1: expected 0 < seconds <= 600",
        ),
        (
            {
                "forward": {
                    "alice": {"unconditional": "bob"},
                    "bob": {"unconditional": "alice"},
                }
            },
            "forward.alice.unconditional: forwarding loop alice -> bob -> alice",
        ),
        (
            {
                "extensions": {"101": "alice"},
                "forward": {
                    "alice": {"unconditional": "sales"},
                    "sales": {"unconditional": "101"},
                },
                "groups": [{"number": "200", "name": "sales", "members": ["bob"]}],
            },
            # "sales" is no user when users are unknown... it is taken for one
            "forward.alice.unconditional: forwarding loop",
        ),
        ({"max-forward-depth": 0}, "max-forward-depth = 0: expected a whole number"),
    ],
)
def test_bad_sections_are_refused_naming_the_entry(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as error:
        build_config(values, {})
    assert "\n" not in str(error.value)


def test_group_forwarding_loop_through_a_group_number() -> None:
    """Forwarding alice -> 200 (group sales) -> alice is a loop too."""
    with pytest.raises(
        ConfigError,
        match=re.escape("forwarding loop alice -> sales -> alice"),
    ):
        parse_office(
            {
                **BASE,
                "forward": {
                    "alice": {"unconditional": "200"},
                    "sales": {"unconditional": "101"},
                },
            }
        )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"extensions": {"101": "zed"}},
            "extensions: '101' = 'zed': 'zed' is not a user in the users file",
        ),
        (
            {"extensions": {"bob": "alice"}},
            "extensions: 'bob' is not a number",
        ),
        (
            {"groups": [{"number": "200", "name": "s", "members": ["alice", "zed"]}]},
            "groups: 's': member 'zed' is not a user in the users file",
        ),
        (
            {"groups": [{"number": "200", "name": "bob", "members": ["alice"]}]},
            "groups: 'bob': the name is also a user name",
        ),
        (
            {"forward": {"zed": {"busy": VM}}},
            "forward.zed: 'zed' is no user and no group name",
        ),
        (
            {"forward": {"alice": {"busy": "zed"}}},
            "forward.alice.busy: 'zed' is no user, extension, group number or sip: URI",
        ),
    ],
)
def test_names_are_checked_against_the_users_file(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_office(values).with_users(USERS)


def test_a_number_that_is_also_a_user_name_is_refused() -> None:
    with pytest.raises(
        ConfigError, match=re.escape("extensions: '101' is also a user name")
    ):
        parse_office({"extensions": {"101": "alice"}}).with_users(USERS | {"101"})
    with pytest.raises(
        ConfigError, match=re.escape("groups: 's': number '200' is also a user name")
    ):
        parse_office(
            {"groups": [{"number": "200", "name": "s", "members": ["alice"]}]}
        ).with_users(USERS | {"200"})


def test_targets_resolve_to_users_groups_and_uris() -> None:
    o = office()
    assert o.target("101") == UserTarget("alice")
    assert o.target("carol") == UserTarget("carol")
    assert isinstance(o.target("200"), GroupTarget)
    assert o.target(VM) == UriTarget(VM)
    assert o.destination("999") is None
    with pytest.raises(ValueError, match="no user"):
        o.target("999")


# -- the plan ---------------------------------------------------------------------


def test_outcomes_of_final_answers() -> None:
    """486/600 busy; 408/480/503 unavailable; our timer no answer; else as is."""
    assert outcome_of(486, rang_out=False) is Outcome.BUSY
    assert outcome_of(600, rang_out=False) is Outcome.BUSY
    for status in (408, 480, 503):
        assert outcome_of(status, rang_out=False) is Outcome.UNAVAILABLE
    assert outcome_of(487, rang_out=True) is Outcome.NO_ANSWER
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
    assert step == Forward(UserTarget("alice"), Outcome.UNCONDITIONAL)


def test_dnd_forwards_to_busy_else_refuses_486() -> None:
    plan = CallPlan(office(), "example.test")
    step = plan.enter(UserTarget("bob"), Forwarding(dnd=True, busy=VM))
    assert step == Forward(UriTarget(VM), Outcome.DND)
    assert plan.enter(UserTarget("bob"), Forwarding(dnd=True)) == Refuse(
        486, "Busy Here"
    )


def test_busy_no_answer_unavailable_pick_their_targets() -> None:
    forwarding = Forwarding(busy="101", no_answer=VM, unavailable="200")
    cases: list[tuple[Outcome, Target]] = [
        (Outcome.BUSY, UserTarget("alice")),
        (Outcome.NO_ANSWER, UriTarget(VM)),
        (Outcome.UNAVAILABLE, office().target("200")),
    ]
    for outcome, target in cases:
        plan = CallPlan(office(), "example.test")
        plan.enter(UserTarget("bob"), forwarding)
        assert plan.ended(outcome) == Forward(target, outcome)


def test_without_targets_the_answer_passes_up_or_is_480() -> None:
    plan = CallPlan(office(), "example.test")
    plan.enter(UserTarget("bob"), Forwarding())
    assert plan.ended(Outcome.BUSY) is None
    assert plan.ended(Outcome.UNAVAILABLE) is None
    assert plan.ended(Outcome.NO_ANSWER) == Refuse(480, "Temporarily Unavailable")
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
    assert plan.ended(Outcome.BUSY) == Ring(("bob",), seconds=2.0, newest_only=True)
    assert plan.ended(Outcome.NO_ANSWER) == Ring(
        ("carol",), seconds=2.0, newest_only=True
    )
    # Someone rang out: the group as a whole was not answered.
    assert plan.ended(Outcome.UNAVAILABLE) == Forward(UriTarget(VM), Outcome.NO_ANSWER)


def test_depth_beyond_the_maximum_is_482() -> None:
    o = office(**{"max-forward-depth": 2})
    plan = CallPlan(o, "example.test")
    plan.enter(UserTarget("alice"), Forwarding())
    step = Forward(UserTarget("bob"), Outcome.UNCONDITIONAL)
    assert plan.retarget(step) is None
    assert plan.retarget(step) is None
    assert plan.retarget(step) == Refuse(482, "Loop Detected")


def test_diversion_newest_first_rfc_5806() -> None:
    hops = [
        Hop("sip:alice@example.test", Outcome.UNCONDITIONAL),
        Hop("sip:bob@example.test", Outcome.BUSY),
    ]
    assert diversion_headers(hops) == [
        "<sip:bob@example.test>;reason=user-busy;counter=1",
        "<sip:alice@example.test>;reason=unconditional;counter=1",
    ]


def test_history_info_has_reason_cause_index_and_mp_rfc_7044() -> None:
    hops = [Hop("sip:bob@example.test", Outcome.NO_ANSWER)]
    values = history_info_headers(hops, VM)
    assert values == [
        "<sip:bob@example.test?Reason=SIP%3Bcause%3D408>;index=1",
        f"<{VM};cause=408>;index=1.1;mp=1",
    ]
    assert unquote(values[0]).endswith("Reason=SIP;cause=408>;index=1")
    assert history_info_headers([], VM) == []


# -- run-time settings --------------------------------------------------------------


def wait(coroutine: Any) -> Any:
    return run(coroutine)


def preferences(**extra: Any) -> tuple[OfficePreferences, MemoryLocationService]:
    store = MemoryLocationService()
    return OfficePreferences(office(**extra), store), store


def test_stored_values_win_key_by_key_over_the_toml() -> None:
    prefs, store = preferences(forward={"bob": {"busy": VM, "no_answer": VM}})
    wait(prefs.set_forward("bob", "busy", "101"))
    effective = wait(prefs.effective("bob"))
    assert (effective.busy, effective.no_answer) == ("101", VM)
    assert wait(store.preferences("bob")) == {"busy": "101"}
    wait(prefs.set_forward("bob", "no_answer", ""))
    assert wait(prefs.effective("bob")).no_answer == ""  # "" turns it off
    assert wait(prefs.reset("bob")) == Forwarding(busy=VM, no_answer=VM)
    assert wait(store.preferences("bob")) == {}


def test_dnd_and_seconds_are_stored() -> None:
    prefs, store = preferences()
    assert wait(prefs.set_dnd("carol", True)).dnd is True
    assert wait(prefs.set_no_answer_seconds("carol", 9)).no_answer_seconds == 9.0
    assert wait(store.preferences("carol")) == {"dnd": True, "no_answer_seconds": 9.0}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: p.set_forward("zed", "busy", VM), "'zed' is not a user"),
        (lambda p: p.set_forward("bob", "sometimes", VM), "unknown forwarding"),
        (lambda p: p.set_forward("bob", "busy", "999"), "no user, extension"),
        (lambda p: p.set_dnd("zed", True), "'zed' is not a user"),
        (lambda p: p.set_no_answer_seconds("bob", 0), "no_answer_seconds"),
        (lambda p: p.set_forward("bob", "unconditional", "102"), "forwarding loop"),
        (lambda p: p.set_forward("bob", "unconditional", "alice"), "forwarding loop"),
    ],
)
def test_bad_settings_are_refused(call: Any, message: str) -> None:
    prefs, store = preferences(forward={"alice": {"unconditional": "bob"}})
    failures: list[Any] = []
    Deferred.fromCoroutine(call(prefs)).addErrback(failures.append)
    assert len(failures) == 1
    assert message in str(failures[0].value)
    assert wait(store.preferences("bob")) == {}


def test_shipped_office_example_is_valid(tmp_path: Path) -> None:
    """etc/sipproxy-office.toml, as docs/office.md walks through it."""
    example = read_toml(str(Path(__file__).parents[2] / "etc" / "sipproxy-office.toml"))
    # The token file names a real installation's; point it at a stand-in.
    token = tmp_path / "token"
    token.write_text("a-token-of-sufficient-length\n")
    token.chmod(0o600)  # issue 13: a token file others can read is refused
    example["admin-token-file"] = str(token)
    config = build_config(example, {})
    assert config.office is not None
    checked = config.office.with_users(frozenset({"alice", "bob", "carol"}))
    assert checked.destination("103") == UserTarget("carol")
    assert checked.groups["200"].members == ("alice", "bob")
    assert checked.defaults("bob").busy == "103"
    assert checked.defaults("sales").no_answer == "sip:vm-sales@127.0.0.1:5070"


def test_a_loop_entered_from_outside_names_its_own_first_entry() -> None:
    """Chain carol -> alice -> bob -> alice: the message names the loop only."""
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "forward.alice.unconditional: forwarding loop alice -> bob -> alice"
        ),
    ):
        parse_office(
            {
                "forward": {
                    "carol": {"unconditional": "alice"},
                    "alice": {"unconditional": "bob"},
                    "bob": {"unconditional": "alice"},
                }
            }
        )
