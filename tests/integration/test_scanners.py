"""Real attack tools and a real office against a live server on loopback (issue 5).

- sipvicious' ``svwar`` (extension enumeration) learns no user, and ``svcrack``
  (password guessing) is banned before it reaches the right password while a
  legitimate user on another address still registers.
- 200 phones behind one NAT address (one source IP, 200 source ports)
  re-register at once with correct credentials: all 200 OK, nobody banned.
- An authenticated caller gets 480 for a known user with no registration and
  404 for a user that does not exist.

Everything is bounded in count (a few dozen guesses, 200 phones) and in time
(deadlines on every wait, timeouts on every tool run), and stays on 127.0.0.0/8.

sipvicious 0.3.8 notes, read from its source (``sipvicious/svwar.py``,
``svcrack.py``, ``libs/svhelper.py``):

- ``-b BINDINGIP`` is parsed but never passed to the scanner classes, so both
  tools always send from 127.0.0.1 here; the legitimate user therefore
  registers from 127.0.0.4.
- svwar first asks for a random extension: if that is challenged (401/407) it
  stops with "SIP server replied with an authentication request for an unknown
  extension". With ``--force`` it takes that answer as the "bad user"
  fingerprint (status line, and for INVITE the Reason header); an extension
  whose answer differs is reported ("extension 'x' exists ...", a result table
  on stdout, exit status 40); one that answers like the bad user ends the scan
  ("We got an unknown response"). So ``--force`` tests one extension per run.
- svcrack answers the first challenge only and computes MD5 only: against a
  SHA-256-first challenge it crashes ("Unknown algorithm: sha-256"). It is run
  against a users file as Apache ``htdigest`` writes it (MD5 HA1 only), for
  which the server offers only MD5. A cracked password is logged as "The
  password for USER is PW" with exit status 40.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import selectors
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipproxy.auth.htdigest import write_user
from tests.integration.conftest import (
    RunningServer,
    free_port,
    options_request,
    status_of,
    stop,
    udp_exchange,
)
from tests.integration.test_auth import REALM, register, serve
from tests.support import challenge_params, digest_answer

pytestmark = pytest.mark.integration

BAN_LINE = "sipproxy: banned {ip} for 600 s after 10 failed authentications"
PHONES = 200
_sequence = itertools.count(1)


def sipvicious(tool: str) -> str:
    """The path of sipvicious' ``tool`` ("svwar", "svcrack"); skip, or fail under CI.

    pip installs the entry points as ``sipvicious_svwar`` etc. next to the
    interpreter; older packagings and Debian's call them ``svwar``.
    """
    candidates = [str(Path(sys.executable).with_name(f"sipvicious_{tool}"))]
    candidates += [f"sipvicious_{tool}", tool]
    for candidate in candidates:
        found = shutil.which(candidate)
        if found:
            return found
    message = f"sipvicious {tool} is not installed (pip install -e '.[test]')"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def run_tool(args: list[str], cwd: Path) -> tuple[int, str]:
    """Run a tool (bounded: 90 s at most); its exit status and all it printed."""
    done = subprocess.run(
        args,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=90,
        check=False,
    )
    print("$", " ".join(args), f"-> exit {done.returncode}\n{done.stdout}")
    return done.returncode, done.stdout


def finish(server: RunningServer) -> None:
    stop(server.process)
    assert "Traceback" not in server.log_text(), server.log_text()


@pytest.fixture
def auth_server(tmp_path: Path) -> Iterator[RunningServer]:
    """alice/wonderland and bob/builder, MD5 and SHA-256 HA1 (sipproxy-passwd)."""
    users = tmp_path / "users.htdigest"
    write_user(users, "alice", REALM, "wonderland")
    write_user(users, "bob", REALM, "builder")
    server = serve(tmp_path, users)
    yield server
    finish(server)


@pytest.fixture
def htdigest_server(tmp_path: Path) -> Iterator[RunningServer]:
    """The same users in a file as Apache ``htdigest`` writes it: MD5 HA1 only."""
    users = tmp_path / "users.htdigest"
    lines = [
        f"{user}:{REALM}:{hashlib.md5(f'{user}:{REALM}:{pw}'.encode()).hexdigest()}\n"
        for user, pw in (("alice", "wonderland"), ("bob", "builder"))
    ]
    users.write_text("".join(lines))
    server = serve(tmp_path, users)
    yield server
    finish(server)


@pytest.fixture
def office_server(tmp_path: Path) -> Iterator[RunningServer]:
    """alice, bob and phone1..phone200 (password ``secret-N``)."""
    users = tmp_path / "users.htdigest"
    write_user(users, "alice", REALM, "wonderland")
    write_user(users, "bob", REALM, "builder")
    for number in range(1, PHONES + 1):
        write_user(users, f"phone{number}", REALM, f"secret-{number}")
    server = serve(tmp_path, users)
    yield server
    finish(server)


# -- svwar -------------------------------------------------------------------


def svwar(
    server: RunningServer, tmp_path: Path, method: str, *guesses: str
) -> tuple[int, str]:
    """Run svwar from 127.0.0.1: 10 ms between requests, stop after 3 s of silence."""
    return run_tool(
        [
            sipvicious("svwar"), "-v", "-x", "127.0.0.1", "-P", str(free_port()),
            "-t", "0.01", "--maximumtime", "3", "--domain", REALM, "-m", method,
            "-p", str(server.port), *guesses, "127.0.0.1",
        ],
        tmp_path,
    )  # fmt: skip


def assert_found_nothing(code: int, output: str) -> None:
    assert code == 0, output  # 40 when an answer differed from the bad user's
    assert "exists" not in output, output
    assert "found nothing" in output, output


@pytest.mark.parametrize("method", ["REGISTER", "INVITE"])
def test_svwar_learns_no_extension(
    auth_server: RunningServer, tmp_path: Path, method: str
) -> None:
    """It gives up at its sanity check; forced, it sees users as it sees strangers."""
    dictionary = tmp_path / "extensions.txt"
    names = ["alice", "bob", "carol", "mallory", "admin", "100", "1000"]
    dictionary.write_text("".join(f"{name}\n" for name in names))
    for guesses in (["-d", str(dictionary)], ["-e", "100-130"]):
        code, output = svwar(auth_server, tmp_path, method, *guesses)
        assert_found_nothing(code, output)
        assert "authentication request for an unknown extension" in output, output
    # --force: one extension per run (see the module docstring): each of these
    # answered exactly like svwar's random non-existent extension.
    for name in ["alice", "bob", "carol", "mallory", "100"]:
        only = tmp_path / f"only-{name}.txt"
        only.write_text(f"{name}\n")
        code, output = svwar(auth_server, tmp_path, method, "--force", "-d", str(only))
        assert_found_nothing(code, output)
        assert "We got an unknown response" in output, output
        assert f"<sip:{name}@{REALM}>" in output, output  # the answer it compared


# -- svcrack ----------------------------------------------------------------


def test_svcrack_is_banned_before_it_finds_the_password(
    htdigest_server: RunningServer, tmp_path: Path
) -> None:
    """50 wrong passwords, the right one 41st: banned after 10; others unaffected."""
    wrong = [f"guess{number:02d}" for number in range(50)]
    dictionary = tmp_path / "passwords.txt"
    dictionary.write_text("".join(f"{pw}\n" for pw in [*wrong[:40], "wonderland",
                                                         *wrong[40:]]))  # fmt: skip
    started = time.monotonic()
    code, output = run_tool(
        [
            sipvicious("svcrack"), "-v", "-x", "127.0.0.1", "-P", str(free_port()),
            "-t", "0.01", "--maximumtime", "3", "--domain", REALM,
            "-u", "alice", "-d", str(dictionary),
            "-p", str(htdigest_server.port), "127.0.0.1",
        ],
        tmp_path,
    )  # fmt: skip
    assert code != 40, output
    assert "The password for" not in output, output
    assert "wonderland" not in output, output
    assert "found nothing" in output, output
    # It stopped because the server fell silent, not because it ran out of words.
    assert "since we last received a response - stopping" in output, output
    assert "no more passwords" not in output, output
    assert time.monotonic() - started < 60
    # 127.0.0.1 is ignored now; alice herself, from another address, is not.
    with pytest.raises(TimeoutError):
        register(htdigest_server.port, "alice", "wonderland")
    _, ok = register(htdigest_server.port, "alice", "wonderland", source="127.0.0.4")
    assert status_of(ok) == 200
    stop(htdigest_server.process)
    log = htdigest_server.log_text()
    assert BAN_LINE.format(ip="127.0.0.1") in log, log
    assert "banned 127.0.0.4" not in log, log
    # Ten guesses were checked; the rest, the right password among them, were
    # dropped unread.
    assert log.count("authentication failed from 127.0.0.1") == 10, log


# -- an office behind one NAT --------------------------------------------------


def phone_register(number: int, local: int, cseq: int, authorization: str) -> bytes:
    user = f"phone{number}"
    header = f"Authorization: {authorization}\r\n" if authorization else ""
    return (
        f"REGISTER sip:{REALM} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.168.1.{number % 250 + 2}:5060;"
        f"branch=z9hG4bKoffice{number}-{cseq};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:{user}@{REALM}>;tag=office{number}\r\n"
        f"To: <sip:{user}@{REALM}>\r\n"
        f"Call-ID: office-{number}@192.168.1.{number % 250 + 2}\r\n"
        f"CSeq: {cseq} REGISTER\r\n"
        f"Contact: <sip:{user}@192.168.1.{number % 250 + 2}:5060>\r\n"
        f"Expires: 3600\r\n{header}"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def exchange_all(
    socks: dict[int, socket.socket],
    requests: dict[int, bytes],
    port: int,
    *,
    deadline: float = 15.0,
) -> dict[int, bytes]:
    """Send every request at once, retransmit like a phone; each final answer.

    Requests unanswered are sent again after 0.5 s, 1 s, 2 s, 4 s (RFC 3261
    Timer E), as the phones would; nothing is waited for beyond ``deadline``.
    """
    answers: dict[int, bytes] = {}
    with selectors.DefaultSelector() as selector:
        for number, sock in socks.items():
            selector.register(sock, selectors.EVENT_READ, number)
        start = time.monotonic()
        interval, next_resend = 0.5, start + 0.5
        for number, data in requests.items():
            socks[number].sendto(data, ("127.0.0.1", port))
        while len(answers) < len(requests):
            now = time.monotonic()
            if now - start > deadline:
                break
            if now >= next_resend:
                for number, data in requests.items():
                    if number not in answers:
                        socks[number].sendto(data, ("127.0.0.1", port))
                interval = min(interval * 2, 4.0)
                next_resend = now + interval
            for key, _ in selector.select(timeout=min(0.1, next_resend - now)):
                number = key.data
                try:
                    data = socks[number].recv(65536)
                except BlockingIOError:
                    continue
                status = status_of(data)
                if status is not None and status >= 200:
                    answers.setdefault(number, data)
    return answers


def test_office_of_200_phones_behind_one_nat_reregisters_at_once(
    office_server: RunningServer,
) -> None:
    """200 phones, one source IP, own ports: challenged, then all 200 OK, no ban."""
    socks: dict[int, socket.socket] = {}
    try:
        for number in range(1, PHONES + 1):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks[number] = sock
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
        locals_ = {n: int(s.getsockname()[1]) for n, s in socks.items()}
        first = exchange_all(
            socks,
            {n: phone_register(n, locals_[n], 1, "") for n in socks},
            office_server.port,
        )
        assert sorted(first) == sorted(socks)
        assert {status_of(reply) for reply in first.values()} == {401}
        second_requests = {}
        for number, reply in first.items():
            challenge = challenge_params(reply, "WWW-Authenticate")[0]  # preferred
            credentials = digest_answer(
                challenge, user=f"phone{number}", password=f"secret-{number}",
                method="REGISTER", uri=f"sip:{REALM}",
            )  # fmt: skip
            second_requests[number] = phone_register(
                number, locals_[number], 2, credentials
            )
        second = exchange_all(socks, second_requests, office_server.port)
        statuses = {n: status_of(reply) for n, reply in second.items()}
        assert len(second) == PHONES, f"{PHONES - len(second)} phones got no answer"
        assert set(statuses.values()) == {200}, statuses
    finally:
        for sock in socks.values():
            sock.close()
    # The office's address is still served, and nothing was banned.
    alive = udp_exchange(options_request(f"sip:{REALM}"), office_server.port)
    assert status_of(alive) == 200
    stop(office_server.process)
    assert "banned" not in office_server.log_text(), office_server.log_text()


# -- 480 and 404 for an authenticated caller -------------------------------------


def invite_as_alice(port: int, target: str) -> int | None:
    """An INVITE from alice to ``target``, answered 407 then authenticated; status."""
    uri = f"sip:{target}@{REALM}"
    number = next(_sequence)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        local = sock.getsockname()[1]

        def invite(cseq: int, extra: str = "") -> bytes:
            via = f"SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bKsc{number}-{cseq};rport"
            common = (
                f"Via: {via}\r\nMax-Forwards: 70\r\n"
                f"From: <sip:alice@{REALM}>;tag=sc{number}\r\n"
            )
            tail = f"Call-ID: scan-invite-{number}\r\n"
            sock.sendto(
                (
                    f"INVITE {uri} SIP/2.0\r\n{common}To: <{uri}>\r\n{tail}"
                    f"CSeq: {cseq} INVITE\r\nContact: <sip:alice@127.0.0.1:{local}>\r\n"
                    f"{extra}Content-Length: 0\r\n\r\n"
                ).encode(),
                ("127.0.0.1", port),
            )
            while True:
                response = sock.recv(65536)
                if (status_of(response) or 0) >= 200:
                    break
            # A non-2xx final answer is acknowledged in its transaction (§17.1.1.3).
            to = next(
                line for line in response.decode().split("\r\n")
                if line.lower().startswith(("to:", "t:"))
            )  # fmt: skip
            sock.sendto(
                (
                    f"ACK {uri} SIP/2.0\r\n{common}{to}\r\n{tail}"
                    f"CSeq: {cseq} ACK\r\nContent-Length: 0\r\n\r\n"
                ).encode(),
                ("127.0.0.1", port),
            )
            return response

        challenged = invite(1)
        assert status_of(challenged) == 407
        challenge = challenge_params(challenged, "Proxy-Authenticate")[0]
        credentials = digest_answer(
            challenge, user="alice", password="wonderland", method="INVITE", uri=uri
        )
        return status_of(invite(2, f"Proxy-Authorization: {credentials}\r\n"))


def test_known_user_not_registered_480_unknown_user_404(
    auth_server: RunningServer,
) -> None:
    """Told only to an authenticated caller: bob exists but is away, carol does not."""
    assert invite_as_alice(auth_server.port, "bob") == 480
    assert invite_as_alice(auth_server.port, "carol") == 404
