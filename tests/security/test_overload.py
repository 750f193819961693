"""Item 7: no global 503 by lingering transactions; 503 only for work, per source.

Before issue 13 the cap on pending transactions counted answered ones, kept 32 s
(Timer J) to absorb retransmissions, so anyone sending ~1,560 requests a second
made the server answer 503 to everyone. Here the budget is made small
(``--max-pending``) so that a few hundred requests over real sockets show it.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import (
    RunningServer,
    free_port,
    options_request,
    start_twistd,
    status_of,
    stop,
)

REALM = "example.test"

pytestmark = pytest.mark.integration


def statuses(sock: socket.socket, wait: float) -> list[int]:
    """Status codes of what arrives on ``sock`` within ``wait`` seconds (bounded)."""
    found: list[int] = []
    until = time.monotonic() + wait
    while (left := until - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        status = status_of(data)
        if status is not None:
            found.append(status)
    return found


def first_status(sock: socket.socket, wait: float) -> int | None:
    """The status of the first response to arrive within ``wait`` s, or None."""
    sock.settimeout(wait)
    try:
        return status_of(sock.recv(65536))
    except TimeoutError:
        return None


def udp_from(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    return sock


def invite(number: int, sock: socket.socket) -> bytes:
    host, port = sock.getsockname()
    return (
        f"INVITE sip:bob@{REALM} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK-ov{number};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:caller{number}@{host}>;tag=c{number}\r\n"
        f"To: <sip:bob@{REALM}>\r\n"
        f"Call-ID: overload-{number}\r\n"
        "CSeq: 1 INVITE\r\n"
        f"Contact: <sip:caller{number}@{host}:{port}>\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


@pytest.fixture
def small_budget(tmp_path: Path) -> Iterator[RunningServer]:
    """No users; 10 requests in flight in all, 3 per source; no rate limit."""
    port = free_port()
    running = start_twistd(
        [
            "--domain", REALM, "--listen", f"udp:{port}:interface=127.0.0.1",
            "--max-pending", "10", "--max-pending-per-source", "3",
            "--rate-limit", "0",
        ],
        port,
        tmp_path / "twistd.log",
    )  # fmt: skip
    yield running
    stop(running.process)
    assert "Traceback" not in running.log_text(), running.log_text()


def test_answered_requests_beyond_the_budget_get_no_503(
    small_budget: RunningServer,
) -> None:
    """300 OPTIONS answered at once, 30 times the budget: all 200, none 503.

    All 300 stay Completed for Timer J; only requests waiting for an answer count.
    """
    got: list[int | None] = []
    with udp_from("127.0.0.1") as sock:
        for number in range(300):  # bounded; one at a time, so none is dropped
            sock.sendto(
                options_request(f"sip:{REALM}", call_id=f"flood-{number}"),
                ("127.0.0.1", small_budget.port),
            )
            got.append(first_status(sock, 2.0))
    assert got.count(200) == 300, got
    with udp_from("127.0.0.2") as other:
        other.sendto(
            options_request(f"sip:{REALM}", call_id="another"),
            ("127.0.0.1", small_budget.port),
        )
        assert first_status(other, 2.0) == 200


def test_a_source_beyond_its_share_of_work_gets_503_others_do_not(
    small_budget: RunningServer,
) -> None:
    """Calls ringing a phone that never answers are work: 3 per source, then 503."""
    port = small_budget.port
    with (
        udp_from("127.0.0.3") as phone,
        udp_from("127.0.0.1") as caller,
        udp_from("127.0.0.2") as other,
    ):
        host, phone_port = phone.getsockname()
        register = (
            f"REGISTER sip:{REALM} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {host}:{phone_port};branch=z9hG4bK-reg;rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:bob@{REALM}>;tag=b1\r\n"
            f"To: <sip:bob@{REALM}>\r\n"
            "Call-ID: bob-reg\r\nCSeq: 1 REGISTER\r\n"
            f"Contact: <sip:bob@{host}:{phone_port}>\r\n"
            "Expires: 600\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        phone.sendto(register, ("127.0.0.1", port))
        assert first_status(phone, 2.0) == 200
        finals: list[list[int]] = []
        for number in range(4):
            caller.sendto(invite(number, caller), ("127.0.0.1", port))
            finals.append([s for s in statuses(caller, 0.5) if s >= 200])
        # Three ring the phone (which never answers); the fourth is refused.
        assert finals == [[], [], [], [503]]
        other.sendto(invite(10, other), ("127.0.0.1", port))
        assert [s for s in statuses(other, 0.5) if s >= 200] == []
        phone.settimeout(1.0)
        rung = {phone.recv(65536).split(b"\r\n", 1)[0] for _ in range(4)}
        assert rung == {f"INVITE sip:bob@{host}:{phone_port} SIP/2.0".encode()}
