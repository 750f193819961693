"""Forwarding and do-not-disturb set with ``sipproxy-ctl`` on a live server (issue 9).

``twistd -n sipproxy`` with office sections, the admin API and a SQLite location
store; ``sipproxy-ctl`` (a subprocess) changes a user's settings, real SIP over
UDP (raw INVITEs, SIPp phones and a SIPp voicemail server) shows they apply, and
a restart on the same SQLite file shows they were kept.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.conftest import free_port, start_twistd, stop
from tests.integration.test_calls import SippRunner, assert_ok, header_values
from tests.integration.test_office import (
    BUSY,
    UAC,
    VOICEMAIL,
    invite_status,
    only_invite,
    phone,
)
from tests.integration.test_operations import TOKEN, Ops, start

pytestmark = pytest.mark.integration

CONFIG = """\
domain = ["example.test"]
listen = ["udp:{port}:interface=127.0.0.1"]
location = "sqlite:{database}"
admin = "tcp:{admin}"
admin-token-file = "{token}"

[extensions]
"101" = "alice"
"105" = "erin"

[forward.erin]
dnd = false
"""


def start_office(tmp_path: Path, port: int, admin: int, log: str) -> Ops:
    """The server on ``port`` (SIP) and ``admin``; the same files on every start."""
    token = tmp_path / "admin-token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    config = tmp_path / "office.toml"
    config.write_text(
        CONFIG.format(
            port=port, admin=admin, token=token, database=tmp_path / "office.sqlite"
        )
    )
    server = start_twistd(["--config", str(config)], port, tmp_path / log)
    return Ops(server, f"http://127.0.0.1:{admin}", config, token, tmp_path)


def ok(ops: Ops, *args: str) -> list[str]:
    """Run sipproxy-ctl, which must succeed silently on stderr; its output lines."""
    code, out, err = ops.ctl(*args)
    assert (code, err) == (0, ""), (args, out, err)
    return out.splitlines()


def row(lines: list[str], kind: str) -> list[str]:
    """The FORWARD table's row for ``kind``, split into its columns."""
    found = [line.split("  ") for line in lines if line.startswith(f"{kind} ")]
    assert len(found) == 1, lines
    return [cell.strip() for cell in found[0] if cell.strip()]


def busy_goes_to_voicemail(
    sipp: SippRunner, ops: Ops, alice_port: int, vm_port: int, run: str
) -> None:
    """Alice's phone answers 486; the call reaches her mailbox, Diversion says why."""
    alice = sipp.uas(f"alice-{run}", alice_port, scenario=BUSY)
    voicemail = sipp.uas(f"voicemail-{run}", vm_port, scenario=VOICEMAIL)
    caller = sipp.uac(f"caller-{run}", ops.server, "101", scenario=UAC)
    assert_ok(caller, alice, voicemail)
    invite = only_invite(voicemail)
    assert invite.startswith(f"INVITE sip:vm-alice@127.0.0.1:{vm_port} SIP/2.0")
    assert header_values(invite, "Diversion") == [
        "<sip:alice@example.test>;reason=user-busy;counter=1"
    ]


def test_ctl_forwarding_and_dnd_apply_at_once_and_survive_a_restart(
    tmp_path: Path,
) -> None:
    port, admin, vm_port = free_port(), free_port(), free_port()
    sipp = SippRunner(tmp_path)
    voicemail_uri = f"sip:vm-alice@127.0.0.1:{vm_port}"
    ops = start_office(tmp_path, port, admin, "1.log")
    try:
        # Erin: no phone, no DND: 404. `dnd erin on`: 486 at once, by name or
        # extension, since she has no busy target.
        assert invite_status(ops.server, "erin", "adm-1") == [100, 404]
        lines = ok(ops, "forward", "erin")
        assert lines[0] == "erin: do-not-disturb off (config)"
        assert lines[1].split() == ["FORWARD", "TARGET", "SOURCE"]
        assert row(lines, "busy") == ["busy", "-", "config"]
        assert ok(ops, "dnd", "erin", "on")[0] == "erin: do-not-disturb on (set here)"
        assert invite_status(ops.server, "erin", "adm-2") == [100, 486]
        assert invite_status(ops.server, "105", "adm-3") == [100, 486]

        # Alice's phone is busy and nothing is configured: the caller hears 486.
        alice_port = phone(ops.server, "alice")
        alice = sipp.uas("alice-0", alice_port, scenario=BUSY)
        assert invite_status(ops.server, "alice", "adm-4") == [100, 486]
        assert alice.wait() == 0, alice.report()
        # `forward alice busy URI`: the next busy call goes to her mailbox.
        lines = ok(ops, "forward", "alice", "busy", voicemail_uri)
        assert row(lines, "busy") == ["busy", voicemail_uri, "set here"]
        assert row(lines, "unconditional") == ["unconditional", "-", "config"]
        busy_goes_to_voicemail(sipp, ops, alice_port, vm_port, "1")

        # A loop is refused in one line and changes nothing.
        code, out, err = ops.ctl("forward", "alice", "unconditional", "101")
        assert (code, out) == (1, "")
        assert err == (
            "sipproxy-ctl: PUT /users/alice/forward/unconditional: 400 forwarding"
            " loop alice -> alice\n"
        )
        ops.wait_for_log(f"admin API: alice forwarding busy set to {voicemail_uri}")
        ops.wait_for_log("admin API: erin do-not-disturb on")
    finally:
        stop(ops.server.process)
    first_log = ops.server.log_text()

    # Restart on the same SQLite file: both settings are still in force.
    ops = start_office(tmp_path, port, admin, "2.log")
    try:
        assert invite_status(ops.server, "erin", "adm-5") == [100, 486]
        answer = json.loads(ops.ctl("--json", "forward", "alice")[1])
        assert answer["busy"] == voicemail_uri
        assert answer["set_at_run_time"] == ["busy"]
        busy_goes_to_voicemail(sipp, ops, alice_port, vm_port, "2")

        # forward-reset: the TOML applies again (erin: no DND, so 404 again);
        # "none" clears a forwarding.
        lines = ok(ops, "forward-reset", "erin")
        assert lines[0] == "erin: do-not-disturb off (config)"
        assert invite_status(ops.server, "erin", "adm-6") == [100, 404]
        lines = ok(ops, "forward", "alice", "busy", "none")
        assert row(lines, "busy") == ["busy", "-", "set here"]
        alice = sipp.uas("alice-3", alice_port, scenario=BUSY)
        assert invite_status(ops.server, "alice", "adm-7") == [100, 486]
        assert alice.wait() == 0, alice.report()
    finally:
        stop(ops.server.process)
        sipp.stop_all()
    for log in (first_log, ops.server.log_text()):
        assert "Traceback" not in log, log
        assert TOKEN not in log


def test_ctl_says_when_the_server_has_no_office(tmp_path: Path) -> None:
    """A server without office sections: one line saying so, exit status 1."""
    ops = start(tmp_path)
    try:
        code, out, err = ops.ctl("dnd", "alice", "on")
        assert (code, out) == (1, "")
        assert err.startswith(
            "sipproxy-ctl: PUT /users/alice/dnd: 409 no office configured: "
        )
        code, _, err = ops.ctl("forward", "alice")
        assert code == 1
        assert "409 no office configured" in err
    finally:
        stop(ops.server.process)
