"""etc/sipproxy.service: a unit systemd accepts, running twistd with the config."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "etc" / "sipproxy.service"
TWISTD = str(Path(sys.executable).with_name("twistd"))


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser


def test_unit_runs_twistd_in_the_foreground_with_the_config() -> None:
    service = unit()["Service"]
    command = service["ExecStart"].split()
    assert command[0].endswith("/twistd")
    assert command[1:] == [
        "-n", "--pidfile=", "sipproxy", "--config", "/etc/sipproxy/sipproxy.toml",
    ]  # fmt: skip
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["Restart"] == "on-failure"


def test_unit_is_hardened_and_keeps_sqlite_in_its_state_directory() -> None:
    service = unit()["Service"]
    assert service["DynamicUser"] == "yes"
    assert service["StateDirectory"] == "sipproxy"
    assert service["WorkingDirectory"] == "/var/lib/sipproxy"
    assert service["ProtectSystem"] == "strict"
    assert service["NoNewPrivileges"] == "yes"
    assert service["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"
    assert service["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
    assert service["PrivateTmp"] == "yes"
    # The office example keeps registrations where the unit lets it write.
    office = (ROOT / "etc" / "sipproxy-office.toml").read_text()
    assert 'location = "sqlite:/var/lib/sipproxy/location.sqlite"' in office


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    """The checker of systemd accepts it (with this venv's twistd)."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is missing (apt-get install systemd)")
        pytest.skip("systemd-analyze is not installed")
    copy = tmp_path / "sipproxy.service"
    copy.write_text(UNIT.read_text().replace("/opt/sipproxy/bin/twistd", TWISTD))
    result = subprocess.run(
        [tool, "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == "", result.stderr
