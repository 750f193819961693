"""Attacks on authentication, over real sockets against a running twistd (issue 13).

- Item 4, ban by spoofing: failures count only with a nonce we issued to the
  sender's own address, so nobody gets an address banned by writing it on
  packets; a real guesser (a nonce from a real round trip) is still banned.
- Item 8: credentials for our realm are consumed, never forwarded.
- Item 12: one 407 per unauthenticated INVITE (no Timer G amplification); an
  outsider gets the same answer for unknown and unregistered users; a digest
  uri equivalent to the Request-URI (RFC 3261 §19.1.4) is accepted, another one
  gets 400 and is not counted.

Every source address is on 127.0.0.0/8; every wait has a deadline.
"""

from __future__ import annotations

import base64
import os
import socket
import string
import subprocess
import time
from pathlib import Path

import pytest

from sipproxy.auth.htdigest import format_line
from tests.integration.conftest import (
    ROOT,
    RunningServer,
    read_response,
    require_tool,
    status_of,
    stop,
)
from tests.integration.test_auth import REALM, register, request
from tests.security.conftest import PASSWORDS, serve_with_users
from tests.support import challenge_params, digest_answer, final_response

pytestmark = pytest.mark.integration

BAN = "sipproxy: banned {ip} for 600 s after 10 failed authentications"


def forged_nonce() -> str:
    """A nonce of the right shape that we never issued."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")


def udp_from(source: str, timeout: float = 2.0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source, 0))
    sock.settimeout(timeout)
    return sock


def fetch_challenge(
    port: int, source: str, *, method: str = "REGISTER", user: str = "alice"
) -> dict[str, str]:
    """The MD5 challenge a round trip from ``source`` gets."""
    with udp_from(source) as sock:
        local = sock.getsockname()[1]
        uri = f"sip:{REALM}" if method == "REGISTER" else f"sip:bob@{REALM}"
        sock.sendto(
            request(method, uri, user=user, local=local, call_id=f"fetch-{local}",
                    cseq=1),
            ("127.0.0.1", port),
        )  # fmt: skip
        response = final_response(sock)
    name = "WWW-Authenticate" if method == "REGISTER" else "Proxy-Authenticate"
    return next(c for c in challenge_params(response, name) if c["algorithm"] == "MD5")


def register_with(
    port: int,
    source: str,
    challenge: dict[str, str],
    *,
    password: str,
    digest_uri: str | None = None,
    request_uri: str = f"sip:{REALM}",
) -> bytes:
    """One REGISTER from ``source`` answering ``challenge``; its final response."""
    credentials = digest_answer(
        challenge,
        user="alice",
        password=password,
        method="REGISTER",
        uri=digest_uri or request_uri,
    )
    with udp_from(source) as sock:
        local = sock.getsockname()[1]
        sock.sendto(
            request("REGISTER", request_uri, user="alice", local=local,
                    call_id=f"reg-{local}", cseq=2,
                    extra=f"Authorization: {credentials}\r\n"),
            ("127.0.0.1", port),
        )  # fmt: skip
        return final_response(sock)


def failures_logged(server: RunningServer, ip: str) -> int:
    return server.log_text().count(f"authentication failed from {ip}:")


def test_a_nonce_we_never_issued_bans_nobody(secured: RunningServer) -> None:
    """Ten REGISTERs with a forged nonce "from" 127.0.0.5: it still registers."""
    for _ in range(10):
        forged = {"nonce": forged_nonce(), "opaque": "x", "algorithm": "MD5"}
        response = register_with(secured.port, "127.0.0.5", forged, password="guess")
        assert status_of(response) == 401
    _, ok = register(secured.port, "alice", "wonderland", source="127.0.0.5")
    assert status_of(ok) == 200
    assert failures_logged(secured, "127.0.0.5") == 0
    assert "banned 127.0.0.5" not in secured.log_text()


def test_a_real_guesser_is_banned(secured: RunningServer) -> None:
    """Ten wrong passwords, each on a nonce 127.0.0.6 fetched itself: banned."""
    for _ in range(10):
        challenge = fetch_challenge(secured.port, "127.0.0.6")
        response = register_with(secured.port, "127.0.0.6", challenge, password="guess")
        assert status_of(response) == 401
    with pytest.raises(TimeoutError):
        register(secured.port, "alice", "wonderland", source="127.0.0.6")
    stop(secured.process)
    assert BAN.format(ip="127.0.0.6") in secured.log_text()


def test_a_nonce_fetched_elsewhere_is_not_counted(secured: RunningServer) -> None:
    """A nonce 127.0.0.7 fetched, used by 127.0.0.8: no failure for either."""
    challenge = fetch_challenge(secured.port, "127.0.0.7")
    for _ in range(10):
        response = register_with(secured.port, "127.0.0.8", challenge, password="guess")
        assert status_of(response) == 401
    _, ok = register(secured.port, "alice", "wonderland", source="127.0.0.8")
    assert status_of(ok) == 200
    # The address it was issued to can still use it.
    mine = register_with(secured.port, "127.0.0.7", challenge, password="wonderland")
    assert status_of(mine) == 200
    log = secured.log_text()
    assert failures_logged(secured, "127.0.0.8") == 0, log
    assert failures_logged(secured, "127.0.0.7") == 0, log


def test_one_nonce_serves_one_guess(secured: RunningServer) -> None:
    """Guesses on a nonce after a wrong answer are refused unread, uncounted."""
    challenge = fetch_challenge(secured.port, "127.0.0.10")
    for password in ("guess", "guess2", "guess3", "wonderland"):
        response = register_with(
            secured.port, "127.0.0.10", challenge, password=password
        )
        assert status_of(response) == 401
    assert failures_logged(secured, "127.0.0.10") == 1


def test_a_respelt_nonce_serves_no_second_guess(secured: RunningServer) -> None:
    """The nonce's last base64url character carries two unused bits.

    Its four spellings decoded to the same bytes and passed the HMAC, so a
    nonce burnt by a wrong answer, respelt, was good for three more guesses.
    Now only the spelling we issued is a nonce: the others are refused
    uncounted, the right password included.
    """
    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
    challenge = fetch_challenge(secured.port, "127.0.0.13")
    nonce = challenge["nonce"]
    assert len(nonce) == 43  # 32 bytes, unpadded base64url
    first = register_with(secured.port, "127.0.0.13", challenge, password="guess")
    assert status_of(first) == 401
    last = alphabet.index(nonce[-1])
    respelt = [
        nonce[:-1] + alphabet[(last & ~3) | low] for low in range(4) if low != last & 3
    ]
    for spelling, password in zip(
        respelt, ("guess2", "guess3", "wonderland"), strict=True
    ):
        again = register_with(
            secured.port, "127.0.0.13", {**challenge, "nonce": spelling},
            password=password,
        )  # fmt: skip
        assert status_of(again) == 401, again
    assert failures_logged(secured, "127.0.0.13") == 1


def test_an_equivalent_digest_uri_is_accepted(secured: RunningServer) -> None:
    """§19.1.4: scheme and host case do not make another resource."""
    challenge = fetch_challenge(secured.port, "127.0.0.11")
    response = register_with(
        secured.port, "127.0.0.11", challenge, password="wonderland",
        digest_uri="SIP:EXAMPLE.test",
    )  # fmt: skip
    assert status_of(response) == 200


@pytest.mark.parametrize(
    "digest_uri",
    # "sip:a" and "sip:a:5060" are not equivalent (§19.1.4); SIPp's default
    # digest uri, sip:IP:PORT, names another resource than sip:example.test.
    [f"sip:{REALM}:5060", "sip:127.0.0.1:5060", f"sips:{REALM}"],
)
def test_another_digest_uri_gets_400_not_a_ban(
    secured: RunningServer, digest_uri: str
) -> None:
    """RFC 2617 §3.2.2.5: 400 naming the mismatch, right password or wrong.

    It is no password guess: never counted towards a ban.
    """
    for password in ["guess"] * 10 + ["wonderland"]:
        challenge = fetch_challenge(secured.port, "127.0.0.12")
        response = register_with(
            secured.port, "127.0.0.12", challenge, password=password,
            digest_uri=digest_uri,
        )  # fmt: skip
        assert status_of(response) == 400, response
        assert b"Digest URI" in response.split(b"\r\n")[0]
    _, ok = register(secured.port, "alice", "wonderland", source="127.0.0.12")
    assert status_of(ok) == 200
    assert failures_logged(secured, "127.0.0.12") == 0


def test_an_unauthenticated_invite_gets_one_407(secured: RunningServer) -> None:
    """No Timer G resends to a sender that proved nothing (~3 s watched).

    Its own INVITE retransmission gets the 407 again.
    """
    with udp_from("127.0.0.13", timeout=0.2) as sock:
        local = sock.getsockname()[1]
        data = request("INVITE", f"sip:bob@{REALM}", user="alice", local=local,
                       call_id="one-407", cseq=1)  # fmt: skip
        sock.sendto(data, ("127.0.0.1", secured.port))
        received: list[bytes] = []
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            try:
                received.append(sock.recv(65536))
            except TimeoutError:
                continue
        assert [status_of(r) for r in received] == [407]
        sock.sendto(data, ("127.0.0.1", secured.port))  # as Timer A would
        assert status_of(sock.recv(65536)) == 407


def outsider_invite(port: int, user: str) -> bytes:
    """An INVITE to ``user`` from a caller of another domain; its final answer."""
    with udp_from("127.0.0.14") as sock:
        local = sock.getsockname()[1]
        data = request("INVITE", f"sip:{user}@{REALM}", user="eve", local=local,
                       call_id=f"outsider-{user}", cseq=1)  # fmt: skip
        data = data.replace(f"<sip:eve@{REALM}>".encode(), b"<sip:eve@elsewhere.test>")
        data = data.replace(f"To: <sip:bob@{REALM}>".encode(),
                            f"To: <sip:{user}@{REALM}>".encode())  # fmt: skip
        sock.sendto(data, ("127.0.0.1", port))
        return final_response(sock)


def test_outsiders_get_one_answer_for_unknown_and_unregistered_users(
    secured: RunningServer,
) -> None:
    """An outsider calling bob (no phone) or carol (no such user) gets 480 both."""
    known, unknown = (outsider_invite(secured.port, user) for user in ("bob", "carol"))
    assert status_of(known) == status_of(unknown) == 480
    assert known.split(b"\r\n")[0] == unknown.split(b"\r\n")[0]


def test_our_credentials_do_not_reach_the_callee(secured: RunningServer) -> None:
    """An INVITE alice authenticated reaches bob without our realm's credentials."""
    port = secured.port
    with udp_from("127.0.0.1") as bob, udp_from("127.0.0.1") as alice:
        bob_port = bob.getsockname()[1]
        uri = f"sip:{REALM}"

        def register_bob(cseq: int, extra: str = "") -> bytes:
            bob.sendto(
                request("REGISTER", uri, user="bob", local=bob_port,
                        call_id="bob-reg", cseq=cseq, extra=extra),
                ("127.0.0.1", port),
            )  # fmt: skip
            return final_response(bob)

        md5 = next(
            c
            for c in challenge_params(register_bob(1), "WWW-Authenticate")
            if c["algorithm"] == "MD5"
        )
        creds = digest_answer(
            md5, user="bob", password="builder", method="REGISTER", uri=uri
        )
        assert status_of(register_bob(2, f"Authorization: {creds}\r\n")) == 200

        alice_port = alice.getsockname()[1]
        callee = f"sip:bob@{REALM}"

        def invite(cseq: int, extra: str = "") -> None:
            alice.sendto(
                request("INVITE", callee, user="alice", local=alice_port,
                        call_id="call-creds", cseq=cseq, extra=extra),
                ("127.0.0.1", port),
            )  # fmt: skip

        invite(1)
        challenge = next(
            c
            for c in challenge_params(final_response(alice), "Proxy-Authenticate")
            if c["algorithm"] == "MD5"
        )
        ours = digest_answer(
            challenge, user="alice", password="wonderland", method="INVITE", uri=callee
        )
        theirs = 'Digest username="a", realm="trunk.test", nonce="n", response="r"'
        invite(
            2,
            f"Proxy-Authorization: {ours}\r\nProxy-Authorization: {theirs}\r\n",
        )
        arrived = bob.recv(65536)
    assert arrived.startswith(b"INVITE "), arrived
    fields = [
        line
        for line in arrived.decode().split("\r\n")
        if line.lower().startswith(("proxy-authorization:", "authorization:"))
    ]
    assert fields == [f"Proxy-Authorization: {theirs}"], arrived
    assert f'realm="{REALM}"' not in arrived.decode()


def run_sipp_register(
    tmp_path: Path, port: int, expect: int, calls: int, *extra: str
) -> subprocess.CompletedProcess[bytes]:
    """The bench's register-auth scenario as alice, the second answer ``expect``."""
    sipp = require_tool("sipp")
    scenario = tmp_path / f"register-auth-{expect}.xml"
    text = (ROOT / "bench" / "scenarios" / "register-auth.xml").read_text()
    scenario.write_text(text.replace('response="200"', f'response="{expect}"'))
    users = tmp_path / "alice.csv"
    users.write_text(
        "SEQUENTIAL\nalice;[authentication username=alice password=wonderland]\n"
    )
    return subprocess.run(
        [
            sipp, f"127.0.0.1:{port}", "-sf", str(scenario), "-inf", str(users),
            "-i", "127.0.0.1", "-p", "0", "-t", "u1",
            "-key", "domain", REALM, "-key", "expires", "60",
            "-m", str(calls), "-r", "20", "-l", "1",
            "-timeout", "30", "-timeout_error", "-nostdin", *extra,
        ],
        capture_output=True,
        timeout=60,
        cwd=tmp_path,
    )  # fmt: skip


def test_sipp_default_digest_uri_gets_400_and_no_ban(tmp_path: Path) -> None:
    """SIPp digests uri="sip:127.0.0.1:PORT" unless given -auth_uri (SIPp 3.6).

    Against Request-URI sip:example.test that is another resource (§19.1.4): 400,
    twelve times, and no ban; with -auth_uri the same SIPp registers.
    """
    users = tmp_path / "users.htdigest"
    # MD5 HA1 only, as Apache's htdigest writes it: SIPp answers MD5 only.
    users.write_text(
        "".join(
            format_line(user, REALM, password).rsplit(":", 1)[0] + "\n"
            for user, password in PASSWORDS.items()
        )
    )
    server = serve_with_users(tmp_path, users)
    try:
        mismatch = run_sipp_register(tmp_path, server.port, 400, 12)
        assert mismatch.returncode == 0, mismatch.stdout.decode()[-2000:]
        right = run_sipp_register(tmp_path, server.port, 200, 1, "-auth_uri", REALM)
        assert right.returncode == 0, right.stdout.decode()[-2000:]
    finally:
        stop(server.process)
    log = server.log_text()
    assert "Traceback" not in log, log
    assert "banned 127.0.0.1" not in log, log
    assert "authentication failed" not in log, log
    assert "'sip:127.0.0.1:" in log and "is not the Request-URI" in log, log


def test_a_tcp_batch_on_one_nonce_is_one_guess(secured: RunningServer) -> None:
    """Twenty wrong answers on one nonce, pipelined in one TCP write: one failure.

    Issue 13 item 6, "one nonce serves every guess": the first wrong answer burns
    the nonce; the other nineteen are refused unread and not counted.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.15", 0))
        sock.settimeout(2)
        sock.connect(("127.0.0.1", secured.port))
        local = sock.getsockname()[1]
        uri = f"sip:{REALM}"

        def register_over_tcp(cseq: int, extra: str = "") -> bytes:
            data = request("REGISTER", uri, user="alice", local=local,
                           call_id="tcp-batch", cseq=cseq, extra=extra)  # fmt: skip
            return data.replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP")

        sock.sendall(register_over_tcp(1))
        first = read_response(sock)
        assert status_of(first) == 401
        md5 = next(
            c
            for c in challenge_params(first, "WWW-Authenticate")
            if c["algorithm"] == "MD5"
        )
        guesses = [
            digest_answer(
                md5, user="alice", password=f"guess{n}", method="REGISTER", uri=uri
            )
            for n in range(20)
        ]
        sock.sendall(
            b"".join(
                register_over_tcp(2 + n, f"Authorization: {creds}\r\n")
                for n, creds in enumerate(guesses)
            )
        )
        received = b""
        deadline = time.monotonic() + 5
        while received.count(b"SIP/2.0 ") < 20 and time.monotonic() < deadline:
            try:
                received += sock.recv(65536)
            except TimeoutError:
                break
    answers = [
        int(line.split(b" ")[1])
        for line in received.split(b"\r\n")
        if line.startswith(b"SIP/2.0 ")
    ]
    assert answers == [401] * 20
    assert failures_logged(secured, "127.0.0.15") == 1, secured.log_text()
