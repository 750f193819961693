"""One option table (options.OPTIONS): the command line, TOML, reload and docs agree."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from sipproxy.config import Config, build_config, reloaded
from sipproxy.options import OPTIONS, RELOADABLE, RESTART_ONLY
from sipproxy.tap import Options

ROOT = Path(__file__).resolve().parents[1]


def docs_text() -> str:
    """The README and the operator's manual, wherever the option tables live."""
    paths = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return "\n".join(path.read_text(encoding="utf-8") for path in paths)


def test_every_option_is_documented() -> None:
    text = docs_text()
    for option in OPTIONS:
        if option.cli:
            assert f"`--{option.name}" in text, option.name
        else:
            forms = (f"`{option.name}`", f"[{option.name}]", f"[{option.name}.")
            assert any(form in text for form in forms), option.name


def test_every_config_field_has_an_option() -> None:
    fields = {field.name for field in dataclasses.fields(Config)}
    assert {option.config_field for option in OPTIONS} == fields


def test_each_field_is_reloaded_or_restart_only_once() -> None:
    assert not set(RELOADABLE) & set(RESTART_ONLY)
    assert len(set(RELOADABLE)) == len(RELOADABLE)
    assert {option.reload for option in OPTIONS} <= {
        "apply", "restart", "office", "ignored"
    }  # fmt: skip


def test_the_command_line_offers_the_table() -> None:
    options = Options()
    long_names = {name for name, *_ in options.optParameters}
    long_names |= {name for name, *_ in options.optFlags}
    long_names |= {
        name.removeprefix("opt_").replace("_", "-")
        for name in dir(options)
        if name.startswith("opt_") and len(name) > 5
    }
    for option in OPTIONS:
        assert (option.name in long_names) == bool(option.cli), option.name


def test_a_reload_applies_reloadable_fields_and_keeps_restart_only_ones() -> None:
    old = build_config({}, {"listen": ["udp:5060"], "max-bindings": "5"})
    new = build_config({}, {"listen": ["tcp:5070"], "max-bindings": "7"})
    config, changed, restart = reloaded(old, new, authenticating=False)
    assert (changed, restart) == (["max_bindings"], ["listen"])
    assert config.max_bindings == 7
    assert config.listen == old.listen


def test_turning_authentication_on_or_off_needs_a_restart(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text("")
    without = build_config({}, {})
    with_users = build_config({}, {"users": str(users)})
    config, changed, restart = reloaded(without, with_users, authenticating=False)
    assert (changed, restart, config.users) == ([], ["users"], None)
    config, changed, restart = reloaded(with_users, without, authenticating=True)
    assert (changed, restart, config.users) == ([], ["users"], str(users))
