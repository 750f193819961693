"""IPv6: one subscriber's /64 is one source, for guesses and bans (issue 13, item 12).

An IPv6 subscriber holds at least a /64 and can send from any of its 2**64
addresses; counting by address would give it unlimited guesses. The test adds
addresses to the loopback interface of the test's own network namespace (never
to a real host's: it refuses unless loopback is the only interface there).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import (
    RunningServer,
    free_port,
    start_twistd,
    status_of,
    stop,
)
from tests.security.conftest import REALM
from tests.security.sipua import digest, header_values

pytestmark = pytest.mark.integration

SERVER = "fd00:13::1"
GUESSERS = [f"fd00:13::{n:x}" for n in range(0x10, 0x1B)]  # 11 addresses, one /64
NEIGHBOUR = "fd00:14::10"  # another /64


def _unavailable(why: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="module")
def ipv6_addresses() -> Iterator[None]:
    """SERVER, GUESSERS and NEIGHBOUR on lo, in an isolated namespace only."""
    if [name for _, name in socket.if_nameindex()] != ["lo"]:
        _unavailable("not in a loopback-only network namespace (make test runs one)")
    made: list[str] = []
    for address in [SERVER, *GUESSERS, NEIGHBOUR]:
        done = subprocess.run(
            ["ip", "-6", "addr", "add", f"{address}/64", "dev", "lo", "nodad"],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            _unavailable(f"cannot add {address} to lo: {done.stderr.strip()}")
        made.append(address)
    yield
    for address in made:
        subprocess.run(
            ["ip", "-6", "addr", "del", f"{address}/64", "dev", "lo"], check=False
        )


@pytest.fixture
def v6_server(
    ipv6_addresses: None, tmp_path: Path, users_file: Path
) -> Iterator[RunningServer]:
    port = free_port()
    server = start_twistd(
        [
            "--domain", REALM, "--users", str(users_file),
            "--listen", f"udp:{port}:interface=127.0.0.1",
            "--listen", f"udp:{port}:interface=[{SERVER}]",
        ],
        port,
        tmp_path / "twistd.log",
    )  # fmt: skip
    yield server
    stop(server.process)
    assert "Traceback" not in server.log_text(), server.log_text()


def register(
    sock: socket.socket, port: int, cseq: int, authorization: str = ""
) -> bytes | None:
    host, local = sock.getsockname()[:2]
    sock.sendto(
        (
            f"REGISTER sip:{REALM} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP [{host}]:{local};rport;branch=z9hG4bK{cseq}x{local}\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:alice@{REALM}>;tag=v6\r\nTo: <sip:alice@{REALM}>\r\n"
            f"Call-ID: v6-{local}\r\nCSeq: {cseq} REGISTER\r\n"
            f"Contact: <sip:alice@[{host}]:{local}>\r\n{authorization}"
            "Content-Length: 0\r\n\r\n"
        ).encode(),
        (SERVER, port),
    )
    try:
        return sock.recv(65536)
    except TimeoutError:
        return None


def guess_once(port: int, source: str) -> bytes | None:
    """A REGISTER from ``source``, then a wrong password on the nonce it got."""
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.settimeout(2.0)
        challenge = register(sock, port, 1)
        if challenge is None:
            return None
        assert status_of(challenge) == 401, challenge
        params = [
            dict(re.findall(r'(\w+)="?([^",]*)"?', value))
            for value in header_values(challenge, "WWW-Authenticate")
        ]
        md5 = next(p for p in params if p.get("algorithm") == "MD5")
        credentials = digest(
            md5, user="alice", password="guess", method="REGISTER", uri=f"sip:{REALM}"
        )
        return register(sock, port, 2, f"Authorization: {credentials}\r\n")


def test_guesses_from_one_64_add_up_to_one_ban(v6_server: RunningServer) -> None:
    """Ten wrong passwords from ten addresses of one /64 ban the whole /64."""
    for source in GUESSERS[:10]:
        assert status_of(guess_once(v6_server.port, source)) == 401
    # An eleventh address of the same /64 is ignored: no answer at all.
    assert guess_once(v6_server.port, GUESSERS[10]) is None
    # Another /64 is someone else: still answered.
    assert status_of(guess_once(v6_server.port, NEIGHBOUR)) == 401
