"""What the attack tests share: a server with users, and sinks that prove silence.

A sink is a loopback port (UDP and TCP on the same number) that nobody registered
and no configuration names. Whatever arrives there was sent by the server because
a request told it to: the attack succeeded. Tests assert that a sink stays empty.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sipproxy.auth.htdigest import write_user
from tests.integration.conftest import RunningServer, free_port, start_twistd, stop

REALM = "example.test"
PASSWORDS = {"alice": "wonderland", "bob": "builder"}


@dataclass
class Sink:
    """A UDP and a TCP listener on one loopback port; records all it receives."""

    host: str
    port: int
    received: list[tuple[str, bytes]] = field(default_factory=list)
    _sockets: list[socket.socket] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind((self.host, self.port))
        udp.settimeout(0.05)
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind((self.host, self.port))
        tcp.listen(16)
        tcp.settimeout(0.05)
        self._sockets = [udp, tcp]
        threading.Thread(target=self._udp, args=(udp,), daemon=True).start()
        threading.Thread(target=self._tcp, args=(tcp,), daemon=True).start()

    def _udp(self, sock: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                data = sock.recv(65536)
            except (TimeoutError, OSError):
                continue
            self.received.append(("udp", data))

    def _tcp(self, sock: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = sock.accept()
            except (TimeoutError, OSError):
                continue
            # A connection attempt alone is already a packet we must not get.
            self.received.append(("tcp-connect", b""))
            connection.settimeout(0.5)
            try:
                data = connection.recv(65536)
                if data:
                    self.received.append(("tcp", data))
            except (TimeoutError, OSError):
                pass
            finally:
                connection.close()

    def close(self) -> None:
        self._stop.set()
        for sock in self._sockets:
            sock.close()

    def quiet_for(self, seconds: float) -> bool:
        """Wait ``seconds`` (bounded); True when nothing arrived meanwhile or before."""
        time.sleep(seconds)
        return not self.received


@pytest.fixture
def sink() -> Iterator[Sink]:
    """A sink on 127.0.0.1 (the host an SSRF aims at)."""
    made = Sink("127.0.0.1", free_port())
    made.start()
    yield made
    made.close()


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    path = tmp_path / "users.htdigest"
    for user, password in PASSWORDS.items():
        write_user(path, user, REALM, password)
    return path


def serve_with_users(
    tmp_path: Path,
    users: Path,
    *extra: str,
    tcp: bool = True,
    dns_server: str | None = None,
) -> RunningServer:
    """Sipproxy for example.test with --users, UDP (and TCP) on one loopback port.

    ``dns_server`` (``IP:PORT``) replaces the shared test DNS server.
    """
    port = free_port()
    listen = ["--listen", f"udp:{port}:interface=127.0.0.1"]
    if tcp:
        listen += ["--listen", f"tcp:{port}:interface=127.0.0.1"]
    return start_twistd(
        ["--domain", REALM, "--users", str(users), *listen, *extra],
        port,
        tmp_path / "twistd.log",
        dns_server=dns_server,
    )


@pytest.fixture
def secured(tmp_path: Path, users_file: Path) -> Iterator[RunningServer]:
    """The server as an operator puts it on the internet: users, UDP and TCP."""
    running = serve_with_users(tmp_path, users_file)
    yield running
    stop(running.process)
    assert "Traceback" not in running.log_text(), running.log_text()
