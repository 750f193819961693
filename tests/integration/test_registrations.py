"""Registrations from outside: SIPp load, crash survival, a store shared by servers."""

from __future__ import annotations

import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.conftest import (
    ROOT,
    RunningServer,
    free_port,
    require_tool,
    start_twistd,
    status_of,
    stop,
)
from tests.location.conftest import redis_server  # noqa: F401 - a shared fixture

pytestmark = pytest.mark.integration

REGISTER_SCENARIO = ROOT / "bench" / "scenarios" / "register.xml"
_cseq = iter(range(1, 1_000_000))


def register(
    port: int, user: str, *, contact: str | None = None, expires: int | None = None
) -> bytes:
    """Send one REGISTER for user@example.test (no Contact: a query); the answer."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        local = sock.getsockname()[1]
        number = next(_cseq)
        lines = [
            "REGISTER sip:example.test SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bKreg{number};rport",
            "Max-Forwards: 70",
            f"From: <sip:{user}@example.test>;tag=t{number}",
            f"To: <sip:{user}@example.test>",
            f"Call-ID: query-{user}-{number}@127.0.0.1",
            f"CSeq: {number} REGISTER",
        ]
        if contact is not None:
            lines.append(f"Contact: {contact}")
        if expires is not None:
            lines.append(f"Expires: {expires}")
        lines += ["Content-Length: 0", "", ""]
        sock.settimeout(3)
        sock.sendto("\r\n".join(lines).encode(), ("127.0.0.1", port))
        while True:
            data = sock.recv(65536)
            if status_of(data) != 100:
                return data


def contacts(response: bytes) -> list[str]:
    head = response.split(b"\r\n\r\n")[0].decode()
    return [
        line.split(":", 1)[1].strip()
        for line in head.split("\r\n")[1:]
        if line.split(":", 1)[0].strip().lower() in ("contact", "m")
    ]


def start(tmp_path: Path, port: int, location: str, name: str) -> RunningServer:
    return start_twistd(
        [
            "--domain", "example.test",
            "--listen", f"udp:{port}:interface=127.0.0.1",
            "--listen", f"tcp:{port}:interface=127.0.0.1",
            "--location", location,
        ],
        port,
        tmp_path / f"{name}.log",
    )  # fmt: skip


def test_register_query_and_remove_over_the_network(tmp_path: Path) -> None:
    """§10.3 end to end: two contacts listed with expires, Expires 0 and * remove."""
    port = free_port()
    server = start(tmp_path, port, f"sqlite:{tmp_path / 'loc.sqlite'}", "server")
    try:
        first = register(port, "carol", contact="<sip:carol@127.0.0.1:5071>")
        assert status_of(first) == 200
        assert b"\r\nDate: " in first
        register(port, "carol", contact="<sip:carol@127.0.0.1:5072>", expires=600)
        listed = contacts(register(port, "carol"))
        assert sorted(c.split(";")[0] for c in listed) == [
            "<sip:carol@127.0.0.1:5071>",
            "<sip:carol@127.0.0.1:5072>",
        ]
        assert all(";expires=" in c for c in listed)
        gone = register(port, "carol", contact="<sip:carol@127.0.0.1:5071>", expires=0)
        assert [c.split(";")[0] for c in contacts(gone)] == [
            "<sip:carol@127.0.0.1:5072>"
        ]
        assert (
            status_of(register(port, "carol", contact="<sip:x@127.0.0.1>", expires=30))
            == 423
        )
        assert contacts(register(port, "carol", contact="*", expires=0)) == []
    finally:
        stop(server.process)


def test_1000_registrations_survive_kill_9(tmp_path: Path) -> None:
    """A registration answered 200 is not lost when the process is killed (SQLite)."""
    sipp = require_tool("sipp")
    port = free_port()
    database = tmp_path / "location.sqlite"
    server = start(tmp_path, port, f"sqlite:{database}", "first")
    try:
        result = subprocess.run(
            [
                sipp, f"127.0.0.1:{port}", "-sf", str(REGISTER_SCENARIO),
                "-i", "127.0.0.1", "-p", "0", "-t", "u1",
                "-key", "domain", "example.test", "-key", "prefix", "u",
                "-key", "expires", "3600",
                "-m", "1000", "-r", "250", "-l", "200",
                "-timeout", "60", "-timeout_error", "-nostdin",
                "-trace_err", "-error_file", str(tmp_path / "sipp-errors.log"),
            ],
            capture_output=True,
            timeout=120,
            cwd=tmp_path,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout.decode()[-2000:]
    finally:
        # No clean shutdown: SIGKILL, as a crash would.
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(10)
    assert server.process.returncode == -signal.SIGKILL
    with sqlite3.connect(database) as db:
        (count,) = db.execute(
            "SELECT COUNT(DISTINCT aor) FROM binding WHERE expires_at > ?",
            (time.time(),),
        ).fetchone()
    assert count == 1000
    restarted = start(tmp_path, port, f"sqlite:{database}", "second")
    try:
        for user in ("u1", "u500", "u1000"):
            listed = contacts(register(port, user))
            assert len(listed) == 1, (user, listed)
            assert listed[0].startswith(f"<sip:{user}@127.0.0.1:")
    finally:
        stop(restarted.process)


def test_two_servers_share_one_redis_store(
    tmp_path: Path,
    redis_server: int,  # noqa: F811 - the fixture imported above
) -> None:
    """Registered on one server, found at once by another on the same Redis."""
    location = f"redis://127.0.0.1:{redis_server}/0?prefix=it{free_port()}:"
    port_a, port_b = free_port(), free_port()
    a = start(tmp_path, port_a, location, "a")
    b = start(tmp_path, port_b, location, "b")
    try:
        assert (
            status_of(register(port_a, "dave", contact="<sip:dave@127.0.0.1:5090>"))
            == 200
        )
        listed = contacts(register(port_b, "dave"))
        assert [c.split(";")[0] for c in listed] == ["<sip:dave@127.0.0.1:5090>"]
        register(port_b, "dave", contact="*", expires=0)
        assert contacts(register(port_a, "dave")) == []
    finally:
        stop(a.process)
        stop(b.process)
