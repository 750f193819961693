"""Digest authentication and its defences, from outside (RFC 3261 §22, issue 5)."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipproxy.auth.htdigest import write_user
from tests.integration.conftest import (
    RunningServer,
    free_port,
    start_twistd,
    status_of,
    stop,
)
from tests.support import challenge_params, digest_answer, final_response

pytestmark = pytest.mark.integration
REALM = "example.test"
_numbers = iter(range(1, 1_000_000))


def serve(tmp_path: Path, users: Path, *extra: str) -> RunningServer:
    """Sipproxy for example.test with ``users`` and default limits, UDP only."""
    port = free_port()
    return start_twistd(
        [
            "--domain", REALM, "--users", str(users),
            "--listen", f"udp:{port}:interface=127.0.0.1", *extra,
        ],
        port,
        tmp_path / "twistd.log",
    )  # fmt: skip


@pytest.fixture
def auth_server(tmp_path: Path) -> Iterator[RunningServer]:
    users = tmp_path / "users.htdigest"
    write_user(users, "alice", REALM, "wonderland")
    write_user(users, "bob", REALM, "builder")
    server = serve(tmp_path, users)
    yield server
    stop(server.process)
    assert "Traceback" not in server.log_text(), server.log_text()


def request(
    method: str,
    uri: str,
    *,
    user: str,
    local: int,
    call_id: str,
    cseq: int,
    extra: str = "",
) -> bytes:
    number = next(_numbers)
    contact = (
        f"Contact: <sip:{user}@127.0.0.1:{local}>\r\n" if method != "OPTIONS" else ""
    )
    return (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bKauth{number};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:{user}@{REALM}>;tag=f{number}\r\n"
        f"To: <sip:{'bob' if method == 'INVITE' else user}@{REALM}>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n{contact}{extra}"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def register(
    port: int, user: str, password: str | None, *, source: str = "127.0.0.1"
) -> tuple[bytes, bytes | None]:
    """REGISTER, then answer the 401 with ``password``; both final answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.settimeout(2)
        local = sock.getsockname()[1]
        call_id = f"reg-{user}-{local}"
        uri = f"sip:{REALM}"
        first_register = request(
            "REGISTER", uri, user=user, local=local, call_id=call_id, cseq=1
        )
        sock.sendto(first_register, ("127.0.0.1", port))
        first = final_response(sock)
        if password is None or status_of(first) != 401:
            return first, None
        offered = challenge_params(first, "WWW-Authenticate")[0]
        credentials = digest_answer(
            offered, user=user, password=password, method="REGISTER", uri=uri
        )
        sock.sendto(
            request("REGISTER", uri, user=user, local=local, call_id=call_id, cseq=2,
                    extra=f"Authorization: {credentials}\r\n"),
            ("127.0.0.1", port),
        )  # fmt: skip
        return first, final_response(sock)


def test_register_is_challenged_then_accepted(auth_server: RunningServer) -> None:
    """401 offers MD5 by default, qop=auth; the right password gets 200."""
    first, second = register(auth_server.port, "alice", "wonderland")
    assert status_of(first) == 401
    challenges = challenge_params(first, "WWW-Authenticate")
    assert [c["algorithm"] for c in challenges] == ["MD5"]
    assert all(c["qop"] == "auth" and c["realm"] == REALM for c in challenges)
    assert status_of(second) == 200


def test_sha256_is_offered_first_when_configured(tmp_path: Path) -> None:
    """--digest-algorithms SHA-256 MD5: both, SHA-256 first (RFC 8760); it works."""
    users = tmp_path / "users.htdigest"
    write_user(users, "alice", REALM, "wonderland")
    server = serve(
        tmp_path, users, "--digest-algorithms", "SHA-256", "--digest-algorithms", "MD5"
    )
    try:
        first, second = register(server.port, "alice", "wonderland")
    finally:
        stop(server.process)
    challenges = challenge_params(first, "WWW-Authenticate")
    assert [c["algorithm"] for c in challenges] == ["SHA-256", "MD5"]
    assert status_of(second) == 200  # answered with the first, SHA-256


def test_wrong_password_and_unknown_user_look_the_same(
    auth_server: RunningServer,
) -> None:
    """No user oracle: same status and headers (but the nonce) for both."""
    _, wrong = register(auth_server.port, "alice", "guess")
    _, unknown = register(auth_server.port, "mallory", "guess")
    assert wrong is not None and unknown is not None
    assert status_of(wrong) == status_of(unknown) == 401

    def shape(response: bytes) -> list[str]:
        names = []
        for line in response.decode().split("\r\n")[1:]:
            name = line.partition(":")[0]
            names.append(name)
        return names

    assert shape(wrong) == shape(unknown)

    def without_nonce(response: bytes) -> list[dict[str, str]]:
        challenges = challenge_params(response, "WWW-Authenticate")
        return [{k: v for k, v in c.items() if k != "nonce"} for c in challenges]

    assert without_nonce(wrong) == without_nonce(unknown)


def test_invite_from_our_domain_needs_proxy_authorization(
    auth_server: RunningServer,
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(2)
        local = sock.getsockname()[1]
        sock.sendto(
            request("INVITE", f"sip:bob@{REALM}", user="alice", local=local,
                    call_id="inv-1", cseq=1),
            ("127.0.0.1", auth_server.port),
        )  # fmt: skip
        response = final_response(sock)
    assert status_of(response) == 407
    assert challenge_params(response, "Proxy-Authenticate")


def test_not_an_open_relay(auth_server: RunningServer) -> None:
    """A stranger's request for another domain gets 403."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(2)
        local = sock.getsockname()[1]
        data = request(
            "MESSAGE", "sip:someone@elsewhere.example",
            user="x", local=local, call_id="relay-1", cseq=1,
        )  # fmt: skip
        sock.sendto(data.replace(b"@example.test>;tag", b"@stranger.example>;tag"),
                    ("127.0.0.1", auth_server.port))  # fmt: skip
        assert status_of(final_response(sock)) == 403


def test_brute_force_source_is_banned_others_are_not(
    auth_server: RunningServer,
) -> None:
    """10 wrong passwords from 127.0.0.3: then silence; 127.0.0.1 still registers."""
    for _ in range(10):
        register(auth_server.port, "bob", "wrong", source="127.0.0.3")
    with pytest.raises(TimeoutError):
        register(auth_server.port, "bob", "builder", source="127.0.0.3")
    _, ok = register(auth_server.port, "bob", "builder")
    assert status_of(ok) == 200
    stop(auth_server.process)
    assert "sipproxy: banned 127.0.0.3 for 600 s after 10 failed authentications" in (
        auth_server.log_text()
    )


def test_sighup_reloads_users_and_a_broken_file_keeps_the_old(tmp_path: Path) -> None:
    """Users are re-read on SIGHUP without a restart; a broken file changes nothing."""
    users = tmp_path / "users.htdigest"
    write_user(users, "alice", REALM, "wonderland")
    server = serve(tmp_path, users)
    port = server.port
    try:
        assert status_of(register(port, "carol", "c4rol")[1]) == 401
        write_user(users, "carol", REALM, "c4rol")
        server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "users file reloaded" not in server.log_text():
            assert time.monotonic() < deadline, server.log_text()
            time.sleep(0.05)
        assert status_of(register(port, "carol", "c4rol")[1]) == 200
        # A broken file: the old users stay, and the log says why.
        users.write_text(users.read_text() + "this line is broken\n")
        server.process.send_signal(signal.SIGHUP)
        while "users file not reloaded" not in server.log_text():
            assert time.monotonic() < deadline + 10, server.log_text()
            time.sleep(0.05)
        assert status_of(register(port, "alice", "wonderland")[1]) == 200
        # No password ever reaches the log.
        assert b"c4rol" not in server.log_text().encode()
    finally:
        stop(server.process)
