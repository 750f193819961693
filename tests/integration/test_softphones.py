"""Real softphones (baresip) registering and calling each other on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
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
from tests.integration.softphone import Baresip

pytestmark = pytest.mark.integration

Softphones = Callable[[str, str], Baresip]


@pytest.fixture
def softphone(tmp_path: Path) -> Iterator[Softphones]:
    """Start a baresip as ``softphone(name, account)``; all stop at teardown."""
    executable = require_tool("baresip")
    started: list[Baresip] = []

    def start(name: str, account: str) -> Baresip:
        phone = Baresip(tmp_path / name, account, executable=executable)
        started.append(phone)
        phone.start()
        return phone

    yield start
    for phone in started:
        phone.quit()  # all at once: each may take a while to unregister
    for phone in started:
        phone.stop()


def test_baresip_direct_call(softphone: Softphones) -> None:
    """Baresip calling baresip directly, no proxy: ring, answer, talk, hang up.

    This checks the driver itself: when it passes, a failure of the test through
    the proxy is the proxy's.
    """
    a = softphone("a", "<sip:a@127.0.0.1>;regint=0")
    b = softphone("b", "<sip:b@127.0.0.1>;regint=0")

    a.dial(f"sip:b@127.0.0.1:{b.sip_port}")
    incoming = b.wait_event("CALL_INCOMING")
    assert incoming["peeruri"] == "sip:a@127.0.0.1"
    b.accept()
    answered = b.wait_event("CALL_ESTABLISHED", fail_on={"CALL_CLOSED"})
    established = a.wait_event("CALL_ESTABLISHED", fail_on={"CALL_CLOSED"})
    assert established["id"] == answered["id"] == incoming["id"]  # the Call-ID

    a.hangup()
    a.wait_event("CALL_CLOSED")
    closed = b.wait_event("CALL_CLOSED")
    assert closed["id"] == incoming["id"]


def test_two_softphones_call_through_the_proxy(
    server: RunningServer, softphone: Softphones
) -> None:
    """Alice and Bob register with the proxy; Alice calls sip:bob@example.test.

    Both REGISTERs succeed (RFC 3261 §10); the INVITE to Bob's address of record
    reaches his registered contact (§16.5), he answers, both sides see the call
    established, and Alice's BYE ends it on both sides.
    """
    outbound = f'outbound="sip:127.0.0.1:{server.port}"'
    alice = softphone(
        "alice", f"<sip:alice@example.test>;auth_pass=secret;{outbound};regint=600"
    )
    bob = softphone(
        "bob", f"<sip:bob@example.test>;auth_pass=secret;{outbound};regint=600"
    )
    alice.register_ok()
    bob.register_ok()

    alice.dial("sip:bob@example.test")
    incoming = bob.wait_event("CALL_INCOMING")
    assert incoming["peeruri"] == "sip:alice@example.test"
    bob.accept()
    answered = bob.wait_event("CALL_ESTABLISHED", fail_on={"CALL_CLOSED"})
    established = alice.wait_event("CALL_ESTABLISHED", fail_on={"CALL_CLOSED"})
    assert established["id"] == answered["id"] == incoming["id"]  # the Call-ID

    alice.hangup()
    alice.wait_event("CALL_CLOSED")
    closed = bob.wait_event("CALL_CLOSED")
    assert closed["id"] == incoming["id"]


def test_softphones_authenticate_against_a_users_file_of_sipproxy_passwd(
    tmp_path: Path, softphone: Softphones
) -> None:
    """The README's walk-through: users made by ``sipproxy-passwd``, two baresips.

    ``sipproxy-passwd`` stores an MD5 and a SHA-256 HA1. Widely deployed UAs
    (baresip 1.x on libre, many desk phones) give up on the whole challenge when
    any WWW-Authenticate names an algorithm they lack, even beside an MD5 one;
    by default the server offers MD5 only, so they register and call.
    """
    users = tmp_path / "users.htdigest"
    write_user(users, "alice", "example.test", "alice-secret")
    write_user(users, "bob", "example.test", "bob-secret")
    port = free_port()
    server = start_twistd(
        [
            "--domain", "example.test", "--users", str(users),
            "--listen", f"udp:{port}:interface=127.0.0.1",
        ],
        port,
        tmp_path / "twistd.log",
    )  # fmt: skip
    try:
        outbound = f'outbound="sip:127.0.0.1:{port}"'
        alice = softphone(
            "alice",
            f"<sip:alice@example.test>;auth_pass=alice-secret;{outbound};regint=600",
        )
        bob = softphone(
            "bob", f"<sip:bob@example.test>;auth_pass=bob-secret;{outbound};regint=600"
        )
        alice.register_ok()
        bob.register_ok()
        alice.dial("sip:bob@example.test")
        incoming = bob.wait_event("CALL_INCOMING")
        assert incoming["peeruri"] == "sip:alice@example.test"
        bob.accept()
        alice.wait_event("CALL_ESTABLISHED", fail_on={"CALL_CLOSED"})
        alice.hangup()
        bob.wait_event("CALL_CLOSED")
    finally:
        stop(server.process)
