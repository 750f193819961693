"""The office configuration: TOML sections to an Office, names checked; no I/O."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from sipproxy.config import ConfigError, build_config, read_toml
from sipproxy.office.model import (
    Forwarding,
    GroupTarget,
    UriTarget,
    UserTarget,
    parse_office,
)
from tests.office.examples import BASE, USERS, VM, office


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
        ValueError,
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
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_office(values).with_users(USERS)


def test_a_number_that_is_also_a_user_name_is_refused() -> None:
    with pytest.raises(
        ValueError, match=re.escape("extensions: '101' is also a user name")
    ):
        parse_office({"extensions": {"101": "alice"}}).with_users(USERS | {"101"})
    with pytest.raises(
        ValueError, match=re.escape("groups: 's': number '200' is also a user name")
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
        ValueError,
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
