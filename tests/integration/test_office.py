"""Office PBX calls through the running proxy, driven by SIPp (issue 9).

Phones are SIPp UASes registered by raw REGISTERs (as in test_calls.py); the
voicemail server is a SIPp UAS that answers only an INVITE carrying Diversion
and History-Info, and the test reads their exact values from its trace. The
caller is a SIPp UAC that accepts any number of provisional answers (a group
rings several phones; a forwarded call rings again). Timers are 2 s.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest

from tests.integration.conftest import (
    ROOT,
    SCENARIOS,
    TWISTD,
    RunningServer,
    free_port,
    start_twistd,
    status_of,
    stop,
)
from tests.integration.test_calls import (
    Sipp,
    SippRunner,
    assert_ok,
    header_values,
    register,
)

pytestmark = pytest.mark.integration

UAC = str(SCENARIOS / "office-uac.xml")
BUSY = str(SCENARIOS / "busy-uas.xml")
VOICEMAIL = str(SCENARIOS / "voicemail-uas.xml")

OFFICE_TOML = """\
domain = ["example.test"]

[extensions]
"101" = "alice"
"102" = "bob"
"103" = "carol"

[[groups]]
number = "200"
name = "sales"
members = ["bob", "carol"]
strategy = "parallel"
ring_seconds = 2

[[groups]]
number = "300"
name = "support"
members = ["bob", "carol"]
strategy = "sequential"
ring_seconds = 2

[forward.bob]
busy = "sip:vm-bob@127.0.0.1:{vm}"
no_answer = "sip:vm-bob@127.0.0.1:{vm}"
no_answer_seconds = 2
unavailable = "sip:vm-bob@127.0.0.1:{vm}"

[forward.dave]
dnd = true
busy = "sip:vm-dave@127.0.0.1:{vm}"

[forward.erin]
dnd = true
"""


@pytest.fixture
def office(tmp_path: Path) -> Iterator[tuple[RunningServer, int]]:
    """Sipproxy with the office sections above; yields it and the voicemail port."""
    port, vm_port = free_port(), free_port()
    config = tmp_path / "office.toml"
    config.write_text(OFFICE_TOML.format(vm=vm_port))
    running = start_twistd(
        ["--config", str(config), "--listen", f"udp:{port}:interface=127.0.0.1"],
        port,
        tmp_path / "twistd.log",
    )
    yield running, vm_port
    stop(running.process)
    assert running.process.returncode in (0, -15), running.log_text()
    assert "Traceback" not in running.log_text(), running.log_text()


@pytest.fixture
def sipp(tmp_path: Path) -> Iterator[SippRunner]:
    runner = SippRunner(tmp_path)
    yield runner
    runner.stop_all()


def phone(server: RunningServer, user: str) -> int:
    """Register ``user`` at a fresh port of 127.0.0.1; the port."""
    port = free_port()
    assert register(server, user, f"<sip:{user}@127.0.0.1:{port}>") == 200
    return port


def call(sipp: SippRunner, server: RunningServer, number: str) -> Sipp:
    return sipp.uac("caller", server, number, scenario=UAC)


def only_invite(run: Sipp) -> str:
    invites = run.received("INVITE ")
    assert len(invites) == 1, run.report()
    return invites[0]


def history(invite: str) -> list[str]:
    return [unquote(v) for v in header_values(invite, "History-Info")]


def test_extension_dial_rings_the_user(
    office: tuple[RunningServer, int], sipp: SippRunner
) -> None:
    """Dialling 102 rings Bob's phone, as a call to bob would; no diversion."""
    server, _ = office
    bob = sipp.uas("bob", phone(server, "bob"))
    caller = call(sipp, server, "102")
    assert_ok(caller, bob)
    invite = only_invite(bob)
    assert invite.startswith("INVITE sip:bob@127.0.0.1:")
    assert header_values(invite, "Diversion") == []


def test_parallel_group_rings_both_first_answer_wins(
    office: tuple[RunningServer, int], sipp: SippRunner
) -> None:
    """Group 200 rings Bob and Carol at once; Bob answers, Carol gets CANCEL."""
    server, _ = office
    bob = sipp.uas("bob", phone(server, "bob"))
    carol = sipp.uas("carol", phone(server, "carol"), scenario="cancel-uas.xml")
    caller = call(sipp, server, "200")
    assert_ok(caller, bob, carol)
    only_invite(bob)
    only_invite(carol)
    assert len(carol.received("CANCEL ")) == 1
    assert bob.received("BYE ")


def test_sequential_group_rings_one_member_after_the_other(
    office: tuple[RunningServer, int], sipp: SippRunner
) -> None:
    """Group 300: Bob rings 2 s and is CANCELled; then Carol rings and answers."""
    server, _ = office
    bob = sipp.uas("bob", phone(server, "bob"), scenario="cancel-uas.xml")
    carol = sipp.uas("carol", phone(server, "carol"))
    caller = call(sipp, server, "300")
    assert_ok(caller, bob, carol)
    only_invite(bob)
    assert len(bob.received("CANCEL ")) == 1
    only_invite(carol)
    assert carol.received("BYE ")


def test_busy_goes_to_voicemail_with_history_info_and_diversion(
    office: tuple[RunningServer, int], sipp: SippRunner
) -> None:
    """Bob answers 486: the call goes to his mailbox, which learns who and why."""
    server, vm_port = office
    bob = sipp.uas("bob", phone(server, "bob"), scenario=BUSY)
    voicemail = sipp.uas("voicemail", vm_port, scenario=VOICEMAIL)
    caller = call(sipp, server, "102")
    assert_ok(caller, bob, voicemail)
    invite = only_invite(voicemail)
    assert invite.startswith(f"INVITE sip:vm-bob@127.0.0.1:{vm_port} SIP/2.0")
    assert header_values(invite, "Diversion") == [
        "<sip:bob@example.test>;reason=user-busy;counter=1"
    ]
    assert history(invite) == [
        "<sip:bob@example.test?Reason=SIP;cause=486>;index=1",
        f"<sip:vm-bob@127.0.0.1:{vm_port};cause=486>;index=1.1;mp=1",
    ]


def test_no_answer_goes_to_voicemail_after_no_answer_seconds(
    office: tuple[RunningServer, int], sipp: SippRunner
) -> None:
    """Bob's phone rings 2 s (no_answer_seconds), is CANCELled, voicemail answers."""
    server, vm_port = office
    bob = sipp.uas("bob", phone(server, "bob"), scenario="cancel-uas.xml")
    voicemail = sipp.uas("voicemail", vm_port, scenario=VOICEMAIL)
    caller = call(sipp, server, "bob")
    assert_ok(caller, bob, voicemail)
    assert len(bob.received("CANCEL ")) == 1
    invite = only_invite(voicemail)
    assert header_values(invite, "Diversion") == [
        "<sip:bob@example.test>;reason=no-answer;counter=1"
    ]
    assert "cause=408" in history(invite)[-1]


def test_unavailable_goes_to_voicemail(
    office: tuple[RunningServer, int], sipp: SippRunner
) -> None:
    """Bob has no registered phone: the call goes straight to his mailbox."""
    server, vm_port = office
    voicemail = sipp.uas("voicemail", vm_port, scenario=VOICEMAIL)
    caller = call(sipp, server, "102")
    assert_ok(caller, voicemail)
    invite = only_invite(voicemail)
    assert header_values(invite, "Diversion") == [
        "<sip:bob@example.test>;reason=unavailable;counter=1"
    ]


def test_do_not_disturb_goes_to_the_busy_target(
    office: tuple[RunningServer, int], sipp: SippRunner
) -> None:
    """Dave has DND on: his phone never rings; his busy target (voicemail) answers."""
    server, vm_port = office
    dave = sipp.uas("dave", phone(server, "dave"), timeout=6)
    voicemail = sipp.uas("voicemail", vm_port, scenario=VOICEMAIL)
    caller = call(sipp, server, "dave")
    assert_ok(caller, voicemail)
    invite = only_invite(voicemail)
    assert invite.startswith(f"INVITE sip:vm-dave@127.0.0.1:{vm_port} SIP/2.0")
    assert header_values(invite, "Diversion") == [
        "<sip:dave@example.test>;reason=do-not-disturb;counter=1"
    ]
    assert dave.wait() != 0  # timed out waiting: no call came
    assert dave.messages == ""


def test_do_not_disturb_without_busy_target_is_486(
    office: tuple[RunningServer, int],
) -> None:
    """Erin has DND on and no busy target: the caller hears 486 Busy Here."""
    server, _ = office
    phone(server, "erin")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        invite = (
            "INVITE sip:erin@example.test SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKdnd1;rport\r\n"
            "Max-Forwards: 70\r\n"
            "From: <sip:caller@example.test>;tag=c1\r\n"
            "To: <sip:erin@example.test>\r\n"
            "Call-ID: dnd-1\r\n"
            "CSeq: 1 INVITE\r\n"
            f"Contact: <sip:caller@127.0.0.1:{port}>\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        sock.sendto(invite.encode(), ("127.0.0.1", server.port))
        assert [status_of(sock.recv(65536)) for _ in range(2)] == [100, 486]


def invite_status(server: RunningServer, user: str, call_id: str) -> list[int | None]:
    """A raw INVITE for ``user``@example.test: the statuses of the first two answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        invite = (
            f"INVITE sip:{user}@example.test SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{call_id};rport\r\n"
            "Max-Forwards: 70\r\n"
            "From: <sip:caller@example.test>;tag=c1\r\n"
            f"To: <sip:{user}@example.test>\r\n"
            f"Call-ID: {call_id}\r\n"
            "CSeq: 1 INVITE\r\n"
            f"Contact: <sip:caller@127.0.0.1:{port}>\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        sock.sendto(invite.encode(), ("127.0.0.1", server.port))
        return [status_of(sock.recv(65536)) for _ in range(2)]


def test_sighup_reloads_the_office_sections_and_keeps_them_on_errors(
    tmp_path: Path,
) -> None:
    """SIGHUP re-reads [forward.*] and friends; a file with a loop changes nothing."""
    config = tmp_path / "office.toml"
    config.write_text('domain = ["example.test"]\n[forward.erin]\ndnd = true\n')
    port = free_port()
    server = start_twistd(
        ["--config", str(config), "--listen", f"udp:{port}:interface=127.0.0.1"],
        port,
        tmp_path / "twistd.log",
    )
    try:
        assert invite_status(server, "erin", "reload-1") == [100, 486]
        config.write_text(
            'domain = ["example.test"]\n[forward.erin]\ndnd = false\n'
            '[extensions]\n"105" = "erin"\n'
        )
        server.process.send_signal(signal.SIGHUP)
        server.wait_for_log("office configuration reloaded: 1 extensions")
        # Erin is no longer on DND; she has no phone registered.
        assert invite_status(server, "105", "reload-2") == [100, 404]
        config.write_text(
            'domain = ["example.test"]\n[forward.erin]\ndnd = true\n'
            'unconditional = "105"\n[extensions]\n"105" = "erin"\n'
        )
        server.process.send_signal(signal.SIGHUP)
        server.wait_for_log("configuration not reloaded, keeping the old")
        assert "forwarding loop erin -> erin" in server.log_text()
        assert invite_status(server, "erin", "reload-3") == [100, 404]
    finally:
        stop(server.process)
    assert "Traceback" not in server.log_text(), server.log_text()


def test_dnd_stored_in_sqlite_wins_over_the_toml_after_a_restart(
    tmp_path: Path,
) -> None:
    """A setting in the store (as the admin API writes it) outlives a restart.

    The TOML says erin has no DND; the stored value says she has: after a
    restart on the same SQLite file, calls to her get 486.
    """
    config = tmp_path / "office.toml"
    database = tmp_path / "office.sqlite"
    config.write_text(
        'domain = ["example.test"]\n'
        f'location = "sqlite:{database}"\n'
        "[forward.erin]\ndnd = false\n"
    )
    args = ["--config", str(config)]
    port = free_port()
    server = start_twistd(
        [*args, "--listen", f"udp:{port}:interface=127.0.0.1"], port, tmp_path / "1.log"
    )
    try:
        assert invite_status(server, "erin", "store-1") == [100, 404]
    finally:
        stop(server.process)
    with sqlite3.connect(database) as db:
        db.execute(
            "INSERT INTO preference (user, prefs) VALUES (?, ?)",
            ("erin", json.dumps({"dnd": True})),
        )
    server = start_twistd(
        [*args, "--listen", f"udp:{port}:interface=127.0.0.1"], port, tmp_path / "2.log"
    )
    try:
        assert invite_status(server, "erin", "store-2") == [100, 486]
    finally:
        stop(server.process)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            '[forward.alice]\nunconditional = "bob"\n'
            '[forward.bob]\nunconditional = "101"\n'
            '[extensions]\n"101" = "alice"\n',
            "forward.alice.unconditional: forwarding loop alice -> bob -> alice",
        ),
        (
            '[[groups]]\nnumber = "200"\nname = "sales"\nmembers = ["alice", "zed"]\n',
            "groups: 'sales': member 'zed' is not a user in the users file",
        ),
    ],
    ids=["forwarding-loop", "unknown-member"],
)
def test_bad_office_configuration_is_refused_at_start(
    tmp_path: Path, toml: str, message: str
) -> None:
    """The server exits non-zero with one line naming the entry; nothing listens."""
    config = tmp_path / "office.toml"
    config.write_text(toml)
    port = free_port()
    result = subprocess.run(
        [
            *(TWISTD, "-n", "--pidfile=", "sipproxy", "--config", str(config)),
            *("--users", str(ROOT / "etc" / "users.htdigest.example")),
            *("--domain", "example.test", "--listen", f"udp:{port}"),
        ],
        capture_output=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode != 0
    output = (result.stdout + result.stderr).decode().strip().splitlines()
    assert len(output) == 1, output
    assert re.search(re.escape(message), output[0]), output
