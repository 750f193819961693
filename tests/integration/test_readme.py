"""The README's start command brings the server up as it promises."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time

import pytest

from sipproxy.cdr.record import CallRecord, parse_time
from sipproxy.ctl import _cdr_table
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


def readme_cdr_sample() -> str:
    """The output the walk-through shows for ``sipproxy-ctl cdr``."""
    text = (ROOT / "README.md").read_text()
    sample = re.search(
        r"```sh\n\.venv/bin/sipproxy-ctl cdr\n```\n```\n(.*?)```", text, re.DOTALL
    )
    assert sample is not None
    return sample.group(1)


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


def test_readme_cdr_sample_is_what_sipproxy_ctl_prints() -> None:
    """The walk-through's sample is what sipproxy-ctl prints for such a record.

    The record is rebuilt from the sample's row; printing it again must give
    the sample, so new columns, another time or number format, or a row out
    of line with its header fail here.
    """
    sample = readme_cdr_sample()
    [_header, row] = sample.splitlines()
    start, caller, callee, answered_by, disposition, seconds, billsec = row.split()
    end = parse_time(start) + float(seconds)
    record = CallRecord(
        call_id="e97c38cf04f96f21",
        caller=caller,
        callee=callee,
        answered_by=answered_by,
        start=parse_time(start),
        answer=end - float(billsec),
        end=end,
        disposition=disposition,
        status=200,
        hangup_by="caller",
    )
    assert _cdr_table({"records": [record.to_json()]}) + "\n" == sample
