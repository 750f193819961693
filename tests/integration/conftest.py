"""Real servers on loopback sockets, and the outside tools the tests drive."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import free_port as free_port

ROOT = Path(__file__).resolve().parents[2]
TWISTD = str(Path(sys.executable).with_name("twistd"))
SCENARIOS = Path(__file__).parent / "scenarios"


def require_tool(name: str) -> str:
    """The path of an outside tool; skip without it, but fail under CI=true."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (make system-deps installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


_branches = itertools.count(1)


def options_request(
    target: str,
    *,
    transport: str = "UDP",
    sent_by: str = "127.0.0.1:9",
    call_id: str = "probe",
    branch: str | None = None,
) -> bytes:
    """An OPTIONS request to ``target`` (e.g. ``sip:example.test``).

    Each gets a new branch (a new transaction) unless ``branch`` is given.
    """
    branch = branch or f"z9hG4bK{call_id}-{next(_branches)}"
    return (
        f"OPTIONS {target} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {sent_by};branch={branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:probe@example.test>;tag=probe\r\n"
        f"To: <{target}>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def udp_exchange(
    data: bytes, port: int, *, host: str = "127.0.0.1", timeout: float = 2.0
) -> bytes | None:
    """Send one datagram from a fresh socket; the first answer, or None."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(data, (host, port))
        try:
            return sock.recv(65536)
        except TimeoutError:
            return None


def tcp_exchange(
    data: bytes, port: int, *, host: str = "127.0.0.1", timeout: float = 2.0
) -> bytes:
    """Send on a fresh TCP connection; what arrives until a full response or close."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect((host, port))
        sock.sendall(data)
        return read_response(sock)


def read_response(sock: socket.socket) -> bytes:
    """Read one response (headers + Content-Length body) or until close/timeout."""
    buffer = b""
    while True:
        head, sep, rest = buffer.partition(b"\r\n\r\n")
        if sep:
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() in (b"content-length", b"l"):
                    length = int(value.strip())
            if len(rest) >= length:
                return buffer
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return buffer
        if not chunk:
            return buffer
        buffer += chunk


def status_of(response: bytes | None) -> int | None:
    """The status code of a raw response, or None."""
    if not response:
        return None
    parts = response.split(b" ", 2)
    return int(parts[1]) if parts[0] == b"SIP/2.0" and parts[1].isdigit() else None


@dataclass
class RunningServer:
    """A `twistd -n sipproxy` child process."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 10.0) -> None:
        """Until ``text`` is in the log (bounded): much is logged asynchronously."""
        deadline = time.monotonic() + timeout
        while text not in self.log_text():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{text!r} not logged within {timeout} s:\n{self.log_text()}"
                )
            time.sleep(0.05)


def wait_for_options(port: int, deadline: float = 20.0) -> None:
    """Poll over UDP until the server answers OPTIONS (bounded in time)."""
    until = time.monotonic() + deadline
    while time.monotonic() < until:
        if status_of(udp_exchange(options_request("sip:127.0.0.1"), port, timeout=0.2)):
            return
    raise TimeoutError(f"server on port {port} did not answer OPTIONS in {deadline}s")


_dns_port: int | None = None
_dns_processes: list[subprocess.Popen[bytes]] = []


def dns_server_port() -> int:
    """A twisted.names server on 127.0.0.1 (started once): every lookup goes there.

    The torture messages name foreign domains; a server under test must never
    send anything, DNS queries included, to another address.
    """
    global _dns_port
    if _dns_port is None:
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.dns_server", str(port)],
            stdout=subprocess.PIPE,
            cwd=ROOT,
        )
        assert process.stdout is not None
        if process.stdout.readline().strip() != b"ready":
            raise RuntimeError("the test DNS server did not start")
        _dns_processes.append(process)
        _dns_port = port
    return _dns_port


@pytest.fixture(scope="session", autouse=True)
def _stop_dns_server() -> Iterator[None]:
    yield
    for process in _dns_processes:
        process.kill()
        process.wait(10)


def start_twistd(
    args: list[str], port: int, log: Path, *, dns_server: str | None = None
) -> RunningServer:
    """Start ``twistd -n sipproxy ARGS`` and wait until it answers on ``port``.

    Its DNS server is the shared one, or ``dns_server`` (``IP:PORT``) if given.
    """
    dns = ["--dns", dns_server or f"127.0.0.1:{dns_server_port()}"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "sipproxy", *dns, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )
    server = RunningServer(process, port, log)
    try:
        wait_for_options(port)
    except TimeoutError:
        stop(process)
        raise AssertionError(f"server did not start:\n{server.log_text()}") from None
    return server


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a child (and its group) with SIGTERM, then SIGKILL after 10 s."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    """Sipproxy for example.test on 127.0.0.1, UDP and TCP on one free port."""
    port = free_port()
    running = start_twistd(
        [
            "--domain",
            "example.test",
            "--listen",
            f"udp:{port}:interface=127.0.0.1",
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
        ],
        port,
        tmp_path / "twistd.log",
    )
    yield running
    stop(running.process)
    # twistd re-raises the SIGTERM it handled after a clean shutdown.
    assert running.process.returncode in (0, -15), running.log_text()
    assert "Traceback" not in running.log_text(), running.log_text()
