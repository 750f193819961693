"""The README's start command brings the server up as it promises."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time

import pytest

from tests.integration.conftest import (
    ROOT,
    options_request,
    status_of,
    tcp_exchange,
    udp_exchange,
)

pytestmark = pytest.mark.integration


def readme_start_command() -> str:
    """The first command of the README's first shell block: the one that starts it."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", text, re.DOTALL)
    assert block is not None
    commands = [
        line
        for line in block.group(1).splitlines()
        if line and not line.startswith("#")
    ]
    return commands[0]


def readme_check_command() -> str:
    """The README's check that the server answers: the shell block sending OPTIONS."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, re.DOTALL)
    checks: list[str] = [b for b in blocks if "OPTIONS sip:example.test" in b]
    assert len(checks) == 1, checks
    return checks[0]


def port_5060_free() -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind(("127.0.0.1", 5060))
            except OSError:
                return False
    return True


def test_readme_start_command_serves_options_on_5060() -> None:
    """`make run` serves 127.0.0.1:5060 over UDP and TCP; the README's check sees it."""
    command = readme_start_command()
    assert command == "make run"
    if not port_5060_free():
        if os.environ.get("CI") == "true":
            pytest.fail("127.0.0.1:5060 is taken")
        pytest.skip("127.0.0.1:5060 is taken on this machine")
    process = subprocess.Popen(
        command.split(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        answered = None
        while time.monotonic() < deadline and answered is None:
            assert process.poll() is None, (
                process.stdout.read() if process.stdout else b""
            )
            answered = udp_exchange(
                options_request("sip:example.test"), 5060, timeout=0.5
            )
        assert status_of(answered) == 200
        tcp = options_request("sip:example.test", transport="TCP")
        assert status_of(tcp_exchange(tcp, 5060)) == 200
        # The README's check works on a fresh Debian: python3, no nc.
        check = readme_check_command()
        assert not re.search(r"\bnc\b", check), check
        result = subprocess.run(
            ["sh", "-c", check],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.stdout.startswith("SIP/2.0 200 OK"), result
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
