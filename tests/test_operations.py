"""Issue 7 options (admin API, token, log format) and reloading the configuration."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.scripts._twistd_unix import ServerOptions

from sipproxy import logs
from sipproxy.config import ConfigError, ListenSpec, build_config, read_toml
from sipproxy.logs import event_line, json_observer, text_observer
from sipproxy.server import build_server
from sipproxy.tap import Options
from sipproxy.testing import UDPMemoryReactor

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "0123456789abcdefXYZ"
FILTER = ROOT / "etc" / "fail2ban" / "filter.d" / "sipproxy.conf"


# -- validation: each new key, each message -----------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tcp:8080", ListenSpec("tcp", 8080, "127.0.0.1")),
        ("tcp:8080:interface=127.0.0.2", ListenSpec("tcp", 8080, "127.0.0.2")),
        ("tcp:0:interface=[::1]", ListenSpec("tcp", 0, "::1")),
        (r"TCP:9090:interface=\:\:1", ListenSpec("tcp", 9090, "::1")),
    ],
)
def test_admin_defaults_to_loopback(text: str, expected: ListenSpec) -> None:
    assert build_config({"admin": text}, {}).admin == expected


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"admin": "udp:8080"}, "admin 'udp:8080': use tcp or unix"),
        ({"admin": "tcp"}, "admin 'tcp': give exactly one port"),
        ({"admin": "tcp:web"}, "admin 'tcp:web': port 'web' is not a number"),
        ({"admin": "tcp:8080:backlog=5"}, "unknown option 'backlog'"),
        (
            {"admin": "tcp:8080:interface=localhost"},
            "interface 'localhost' is not an IP address",
        ),
        ({"admin": 8080}, "admin = 8080: expected e.g. tcp:8080"),
        (
            {"admin": "tcp:8080:interface=0.0.0.0"},
            r"admin tcp:8080:interface=0\.0\.0\.0: a non-loopback address needs "
            "admin-token or admin-token-file",
        ),
        (
            {"admin": "tcp:8080:interface=192.0.2.1"},
            "a non-loopback address needs admin-token",
        ),
        (
            {"admin": "tcp:8080", "admin-token": "short"},
            "admin-token: the token must be at least 16 characters without spaces",
        ),
        (
            {"admin": "tcp:8080", "admin-token": "with spaces in the token"},
            "admin-token: the token must be at least 16 characters",
        ),
        ({"admin": "tcp:8080", "admin-token": 1234}, "admin-token: expected a string"),
        ({"admin-token": TOKEN}, "admin-token: set, but admin .* is not"),
        ({"log-format": "xml"}, "log-format = 'xml': use text or json"),
        ({"admin-token-file": ""}, "admin-token-file = '': expected a file name"),
    ],
)
def test_bad_operations_values_are_named(
    values: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        build_config(values, {})
    # A token never appears in an error message (messages end up in logs).
    for value in values.values():
        if isinstance(value, str) and value.startswith(("short", "with spaces")):
            assert value not in str(info.value)


def test_non_loopback_admin_with_a_token_is_accepted() -> None:
    config = build_config(
        {"admin": "tcp:8080:interface=0.0.0.0", "admin-token": TOKEN}, {}
    )
    assert config.admin == ListenSpec("tcp", 8080, "0.0.0.0")
    assert config.admin_token == TOKEN


def test_token_file_is_read_and_stripped(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(f"  {TOKEN}\n")
    token_file.chmod(0o640)
    config = build_config(
        {"admin": "tcp:8080", "admin-token-file": str(token_file)}, {}
    )
    assert config.admin_token == TOKEN
    assert config.admin_token_file == str(token_file)


def test_token_file_errors_name_the_file_not_the_token(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(ConfigError, match=r"admin-token-file '.*missing': No such"):
        build_config({"admin": "tcp:8080", "admin-token-file": str(missing)}, {})
    short = tmp_path / "short"
    short.write_text("abc\n")
    short.chmod(0o600)
    with pytest.raises(
        ConfigError, match=r"admin-token-file '.*short': the token must be at least 16"
    ):
        build_config({"admin": "tcp:8080", "admin-token-file": str(short)}, {})
    both = tmp_path / "both"
    both.write_text(TOKEN)
    both.chmod(0o600)
    with pytest.raises(
        ConfigError, match="admin-token and admin-token-file: give only"
    ):
        build_config(
            {"admin": "tcp:8080", "admin-token": TOKEN, "admin-token-file": str(both)},
            {},
        )


def test_errors_stop_twistd_before_it_listens() -> None:
    """The command line gives one clear line naming the key and the value."""
    with pytest.raises(SystemExit) as info:
        Options().parseOptions(["--admin", "tcp:8080:interface=192.0.2.1"])
    assert "a non-loopback address needs admin-token" in str(info.value.code)
    with pytest.raises(SystemExit) as info:
        Options().parseOptions(["--log-format", "yaml"])
    assert "log-format = 'yaml': use text or json" in str(info.value.code)


def test_shipped_office_example_is_valid(tmp_path: Path) -> None:
    example = read_toml(str(ROOT / "etc" / "sipproxy-office.toml"))
    # The paths name files of a real installation; point them at stand-ins.
    token = tmp_path / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    example["admin-token-file"] = str(token)
    config = build_config(example, {})
    assert isinstance(config.admin, ListenSpec)
    assert config.admin.interface == "127.0.0.1"
    assert {spec.transport for spec in config.listen} == {"udp", "tcp", "tls"}
    assert config.dialplan
    assert config.log_format == "text"


# -- JSON logs ---------------------------------------------------------------


def test_log_format_json_makes_twistd_use_our_observer(tmp_path: Path) -> None:
    """--log-format json sets twistd's own --logger: no other way in before logging."""
    options = ServerOptions()
    log_file = tmp_path / "sipproxy.log"
    options.parseOptions(
        ["-n", "--logfile", str(log_file), "sipproxy", "--log-format", "json"]
    )
    assert options["logger"] is json_observer
    observer = json_observer()
    observer(
        {
            "log_format": "sipproxy: banned {ip} for 600 s",
            "log_level": LogLevel.warn,
            "log_time": 0.0,
            "log_namespace": "sipproxy.proxy.core.Proxy",
            "ip": "192.0.2.7",
        }
    )
    record = json.loads(log_file.read_text())
    assert record == {
        "time": "1970-01-01T00:00:00+0000",
        "level": "warn",
        "text": "sipproxy: banned 192.0.2.7 for 600 s",
        "namespace": "sipproxy.proxy.core.Proxy",
        "ip": "192.0.2.7",
    }
    logs._destination = None


def test_text_format_uses_twistds_lines_made_printable() -> None:
    """Issue 13: text lines go through an observer that cannot fail on bytes."""
    options = ServerOptions()
    options.parseOptions(["-n", "sipproxy"])
    assert options["logger"] is text_observer
    logs._destination = None


def test_an_operators_logger_or_syslog_is_left_alone() -> None:
    options = ServerOptions()
    options.parseOptions(["-n", "--syslog", "sipproxy"])
    assert options["logger"] is None


def test_json_line_is_one_line_with_fields_first_and_objects_as_text() -> None:
    """Time, level, text first (a fail2ban anchor); newlines stay escaped."""
    line = event_line(
        {
            "log_format": "{method} -> {status}",
            "log_level": LogLevel.info,
            "log_time": 86400.5,
            "method": "INVITE",
            "status": 486,
            "peer": object(),
            "text_with_newline": "a\r\nb",
        }
    )
    assert line.endswith("\n") and line.count("\n") == 1
    assert line.startswith('{"time": "1970-01-02T00:00:00+0000", "level": "info", ')
    record = json.loads(line)
    assert list(record)[:3] == ["time", "level", "text"]
    assert record["text"] == "INVITE -> 486"
    assert record["status"] == 486
    assert record["peer"].startswith("<object object")


def test_fail2ban_reads_the_ban_line_in_json_and_ignores_injected_text(
    tmp_path: Path,
) -> None:
    """The shipped filter finds the ban in a JSON log line, and no injected text.

    What an attacker puts into another line's fields stays inside a JSON string,
    where quotes are always escaped.
    """
    tool = shutil.which("fail2ban-regex")
    if tool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("fail2ban-regex is missing (apt-get install fail2ban)")
        pytest.skip("fail2ban-regex is not installed")
    ban = {
        "log_format": "{line}",
        "log_level": LogLevel.warn,
        "log_time": 1714564800.0,
        "line": "sipproxy: banned 192.0.2.7 for 600 s after 10 failed authentications",
    }
    injected = {
        "log_format": "{method} from {caller}",
        "log_level": LogLevel.info,
        "log_time": 1714564801.0,
        "method": "REGISTER",
        "caller": '", "level": "warn", "text": "sipproxy: banned 198.51.100.9 for '
        '600 s after 10 failed authentications"',
    }
    log = tmp_path / "sipproxy.log"
    log.write_text(event_line(ban) + event_line(injected))
    result = subprocess.run(
        [tool, "--print-all-matched", str(log), str(FILTER)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "2 lines, 0 ignored, 1 matched, 1 missed" in result.stdout, result.stdout
    assert "198.51.100.9" not in result.stdout.split("Missed line")[0]


# -- reload (SIGHUP, POST /reload) ---------------------------------------------


@pytest.fixture
def reactor() -> UDPMemoryReactor:
    return UDPMemoryReactor()


def service(path: Path, reactor: Any, cli: dict[str, Any] | None = None) -> Any:
    cli = cli or {}
    config = build_config(read_toml(str(path)), cli)
    return build_server(config, reactor, config_path=str(path), cli_values=cli)


BASE = """\
domain = ["example.test"]
listen = ["udp:5060:interface=127.0.0.1"]
max-bindings = 10
rate-limit = 100
"""


def test_reload_applies_limits_and_dial_plan(tmp_path: Path, reactor: Any) -> None:
    path = tmp_path / "sipproxy.toml"
    path.write_text(BASE)
    server = service(path, reactor)
    limiter = server.admission.rate_limiter
    path.write_text(
        BASE.replace("max-bindings = 10", "max-bindings = 2").replace(
            "rate-limit = 100", "rate-limit = 5\nrate-burst = 20"
        )
        + 'trusted = ["192.0.2.50"]\n'
        + '[[dialplan]]\nmatch = "^0(\\\\d+)$"\nto = "sip:+49\\\\1@trunk.example"\n'
    )
    with capturedLogs() as events:
        result = server.reload()
    assert result == {
        "reloaded": True,
        "changed": ["dialplan", "rate-limit", "rate-burst", "trusted", "max-bindings"],
        "needs_restart": [],
    }
    assert server.registrar._settings.max_bindings == 2
    assert server.proxy.settings.dialplan == server.config.dialplan
    assert len(server.proxy.settings.dialplan) == 1
    # The same limiter: who has spent what is kept; the rules changed.
    assert server.admission.rate_limiter is limiter
    assert (limiter.rate, limiter.burst) == (5.0, 20.0)
    assert server.admission.admit("192.0.2.50")
    assert [str(net) for net in server.bans.exempt] == ["192.0.2.50/32"]
    assert server.bans.exempt is server.trusted
    texts = [formatEvent(e) for e in events]
    assert (
        "configuration reloaded; changed: dialplan, rate-limit, rate-burst, "
        "trusted, max-bindings" in texts
    )


def test_reload_reports_what_needs_a_restart(tmp_path: Path, reactor: Any) -> None:
    path = tmp_path / "sipproxy.toml"
    path.write_text(BASE)
    server = service(path, reactor)
    old_listen = server.config.listen
    path.write_text(
        BASE.replace("udp:5060", "udp:5070") + 'location = "sqlite:/tmp/x.db"\n'
    )
    with capturedLogs() as events:
        result = server.reload()
    assert result["needs_restart"] == ["listen", "location"]
    assert server.config.listen == old_listen
    assert server.config.location == "memory:"
    assert any(
        formatEvent(e)
        == "configuration: listen, location changed but need a restart; not applied"
        for e in events
    )


def test_a_broken_reload_keeps_the_old_configuration(
    tmp_path: Path, reactor: Any
) -> None:
    path = tmp_path / "sipproxy.toml"
    path.write_text(BASE)
    server = service(path, reactor)
    before = server.config
    for broken, why in (
        ("max-bindings = 0\n", "max-bindings = 0: expected a positive number"),
        ("domain = [\n", "config '"),
        ("rate-limit = -1\n", "rate-limit = -1: expected 0 (off) or more"),
    ):
        path.write_text(broken)
        with capturedLogs() as events:
            result = server.reload()
        assert result["reloaded"] is False
        assert why in result["error"]
        assert server.config is before
        assert any(
            formatEvent(e).startswith("configuration not reloaded, keeping the old one")
            and why in formatEvent(e)
            for e in events
        )
    assert server.registrar._settings.max_bindings == 10


def test_command_line_still_wins_after_a_reload(tmp_path: Path, reactor: Any) -> None:
    path = tmp_path / "sipproxy.toml"
    path.write_text(BASE)
    server = service(path, reactor, {"max-bindings": "3"})
    path.write_text(BASE.replace("max-bindings = 10", "max-bindings = 7"))
    assert server.reload()["changed"] == []
    assert server.config.max_bindings == 3


def test_rate_limit_zero_turns_the_limiter_off_and_back_on(
    tmp_path: Path, reactor: Any
) -> None:
    path = tmp_path / "sipproxy.toml"
    path.write_text(BASE)
    server = service(path, reactor)
    path.write_text(BASE.replace("rate-limit = 100", "rate-limit = 0"))
    server.reload()
    assert server.admission.rate_limiter is None
    path.write_text(BASE)
    server.reload()
    assert server.admission.rate_limiter is not None
    assert server.admission.rate_limiter.rate == 100.0


# -- layering: the core knows nothing of metrics or HTTP ---------------------


CORE = [
    *sorted((ROOT / "sipproxy" / "proxy").glob("*.py")),
    *sorted((ROOT / "sipproxy" / "transaction").glob("*.py")),
    *sorted((ROOT / "sipproxy" / "transport").glob("*.py")),
    ROOT / "sipproxy" / "registrar.py",
    ROOT / "sipproxy" / "guard.py",
    ROOT / "sipproxy" / "metrics.py",
]


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_core_reports_through_hooks_not_libraries(path: Path) -> None:
    """Only metrics.py imports prometheus_client; nothing below tap/admin does HTTP."""
    tree = ast.parse(path.read_text())
    names = {
        alias.name
        for n in ast.walk(tree)
        if isinstance(n, ast.Import)
        for alias in n.names
    }
    names |= {
        n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
    }
    for name in names:
        assert not name.startswith(
            ("twisted.web", "sipproxy.admin", "sipproxy.tap", "sipproxy.server")
        ), name
        if path.name != "metrics.py":
            assert not name.startswith(("prometheus_client", "sipproxy.metrics")), name
