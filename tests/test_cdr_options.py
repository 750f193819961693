"""--cdr and --max-call-seconds, as the command line and the TOML file take them."""

from __future__ import annotations

import pytest

from sipproxy.config import ConfigError, build_config
from sipproxy.tap import Options


def test_defaults_record_beside_the_location_for_four_hours() -> None:
    config = build_config({}, {})
    assert (config.cdr, config.max_call_seconds) == ("auto", 14_400.0)


def test_the_command_line_and_the_file_set_them() -> None:
    options = Options()
    options.parseOptions(["--cdr", "jsonl:/tmp/cdr.jsonl", "--max-call-seconds", "60"])
    assert options.config is not None
    assert options.config.cdr == "jsonl:/tmp/cdr.jsonl"
    assert options.config.max_call_seconds == 60.0
    config = build_config({"cdr": "none", "max-call-seconds": 7200}, {})
    assert (config.cdr, config.max_call_seconds) == ("none", 7200.0)


@pytest.mark.parametrize("spec", ["bogus", "jsonl:", "sqlite://x", "redis://:pw@/0"])
def test_a_bad_spec_stops_the_start_in_one_line(spec: str) -> None:
    with pytest.raises(SystemExit, match="bad CDR spec") as info:
        Options().parseOptions(["--cdr", spec])
    assert "pw" not in str(info.value)


@pytest.mark.parametrize("value", [0, -1, "soon", ""])
def test_max_call_seconds_must_be_positive(value: object) -> None:
    with pytest.raises(ConfigError):
        build_config({"max-call-seconds": value}, {})
