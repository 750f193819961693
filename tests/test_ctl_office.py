"""sipproxy-ctl's office commands without a server: usage errors and the table.

What the commands send and what the server does with it is checked against a
live server in tests/integration/test_office_admin.py.
"""

from __future__ import annotations

import pytest

from sipproxy.ctl import _forwarding_table, main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["forward", "alice", "busy"], "forward busy: give the TARGET (or none)"),
        (["forward", "alice", "busy", "101", "5"], "SECONDS goes with no_answer only"),
        (["forward", "alice", "sideways", "101"], "invalid choice: 'sideways'"),
        (["forward", "alice", "no_answer", "101", "soon"], "invalid float value"),
        (["dnd", "alice", "maybe"], "invalid choice: 'maybe'"),
        (["dnd", "alice"], "the following arguments are required: state"),
        (["forward-reset"], "the following arguments are required: user"),
    ],
)
def test_usage_errors_exit_2_before_any_request(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # An address nothing listens on: a request would fail with status 1.
    with pytest.raises(SystemExit) as exit_info:
        main(["--url", "http://127.0.0.1:9", "--token", "t", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err, err


def test_the_table_says_what_applies_and_where_it_comes_from() -> None:
    answer = {
        "user": "alice",
        "busy": "sip:vm-alice@127.0.0.1:5070",
        "no_answer": "102",
        "no_answer_seconds": 12.5,
        "unavailable": "",
        "unconditional": "",
        "dnd": True,
        "set_at_run_time": ["dnd", "no_answer_seconds"],
    }
    assert _forwarding_table(answer).splitlines() == [
        "alice: do-not-disturb on (set here)",
        "FORWARD        TARGET                       SOURCE",
        "unconditional  -                            config",
        "busy           sip:vm-alice@127.0.0.1:5070  config",
        "no_answer      102 (after 12.5 s)           set here",
        "unavailable    -                            config",
    ]
