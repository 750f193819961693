"""A real client for messages and presence: two linphonec through the proxy.

Issue 16: MESSAGE works between registered users, and presence SUBSCRIBEs are
routed to the phones of the user watched. Debian's ``linphonec`` (package
``linphone-cli``) is the client; :mod:`tests.integration.linphone` drives it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from sipproxy.auth.htdigest import write_user
from tests.integration.conftest import (
    RunningServer,
    free_port,
    require_tool,
    start_twistd,
    stop,
)
from tests.integration.linphone import Linphonec

# The tool first: without it the test skips (fails under CI=true) before any
# server starts.
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("linphonec_path")]

REALM = "example.test"
PASSWORDS = {"alice": "alice-secret", "bob": "bob-secret"}
ALICE, BOB = f"sip:alice@{REALM}", f"sip:bob@{REALM}"

StartLinphonec = Callable[..., Linphonec]


@pytest.fixture
def linphonec_path() -> str:
    """Where linphonec is; skip without it, but fail under CI=true."""
    return require_tool("linphonec")


@pytest.fixture
def users_server(tmp_path: Path) -> Iterator[RunningServer]:
    """Sipproxy for example.test with alice and bob in a users file, UDP."""
    users = tmp_path / "users.htdigest"
    for user, password in PASSWORDS.items():
        write_user(users, user, REALM, password)
    port = free_port()
    server = start_twistd(
        [
            "--domain", REALM, "--users", str(users),
            "--listen", f"udp:{port}:interface=127.0.0.1",
        ],
        port,
        tmp_path / "twistd.log",
    )  # fmt: skip
    yield server
    stop(server.process)
    assert "Traceback" not in server.log_text(), server.log_text()


@pytest.fixture
def linphonec(
    tmp_path: Path, users_server: RunningServer, linphonec_path: str
) -> Iterator[StartLinphonec]:
    """``linphonec(user, **options)``: a registered linphonec; all stop at the end."""
    started: list[Linphonec] = []

    def start(
        user: str,
        *,
        subscribe_to: Sequence[str] = (),
        accept_from: Sequence[str] = (),
        publish: bool = False,
    ) -> Linphonec:
        phone = Linphonec(
            tmp_path / user,
            user,
            PASSWORDS[user],
            users_server.port,
            subscribe_to=subscribe_to,
            accept_from=accept_from,
            publish=publish,
            executable=linphonec_path,
        )
        started.append(phone)
        phone.start()
        phone.registered()
        return phone

    yield start
    for phone in started:
        phone.stop()


def log_line(server: RunningServer, pattern: str, timeout: float = 5.0) -> str:
    """The first line of the server's log matching ``pattern`` (waits for it)."""
    deadline = time.monotonic() + timeout
    while True:
        for line in server.log_text().splitlines():
            if re.search(pattern, line):
                return line
        if time.monotonic() >= deadline:
            raise AssertionError(f"no {pattern!r} in\n{server.log_text()}")
        time.sleep(0.1)


def test_linphonec_sends_a_message_through_the_proxy(
    users_server: RunningServer, linphonec: StartLinphonec
) -> None:
    """Alice's linphonec chats to sip:bob@example.test; Bob's linphonec shows it.

    Both register with digest credentials; the MESSAGE (RFC 3428) is challenged
    (407), sent again with credentials, routed to the contact Bob registered
    (RFC 3261 §16.5), and his 200 goes back.
    """
    bob = linphonec("bob")
    alice = linphonec("alice")

    alice.command(f'chat {BOB} "Lunch at one?"')
    bob.wait_for(rf'Message received from {re.escape(ALICE)}: "Lunch at one\?"')
    log_line(users_server, rf"MESSAGE \S+ {re.escape(BOB)} from .* -> 407 ")
    log_line(
        users_server,
        rf"MESSAGE \S+ {re.escape(BOB)} from {re.escape(ALICE)} to {re.escape(BOB)}"
        rf" -> 200 via udp:127\.0\.0\.1:{bob.sip_port} ",
    )


def test_linphonec_sees_its_friend_online_through_the_proxy(
    users_server: RunningServer, linphonec: StartLinphonec
) -> None:
    """Alice watches Bob's presence: her SUBSCRIBE reaches his linphonec.

    Bob's linphonec accepts alice as a watcher and its NOTIFY, inside the
    dialog the proxy record-routed (RFC 6665 §4.1), comes back to alice's
    linphonec, which shows Bob online.

    Bob also publishes his presence (RFC 3903): sipproxy keeps no presence
    state, so the PUBLISH to his own AOR goes to the phones he registered, his
    own linphonec among them, which refuses it with 405; his watchers learn
    his state from his NOTIFYs all the same.
    """
    bob = linphonec("bob", accept_from=[ALICE], publish=True)
    alice = linphonec("alice", subscribe_to=[BOB])

    alice.wait_for(rf"Friend .*<{re.escape(BOB)}> is Online", timeout=15)
    log_line(users_server, rf"SUBSCRIBE \S+ {re.escape(BOB)} from .* -> 407 ")
    log_line(
        users_server,
        rf"PUBLISH \S+ {re.escape(BOB)} from .* -> 405"
        rf" via udp:127\.0\.0\.1:{bob.sip_port} ",
    )
