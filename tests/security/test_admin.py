"""Issue 13, item 13: the admin API is no way in for another user of the host.

A running ``twistd sipproxy`` with ``--admin`` and no token option: every request
but ``/health`` is refused and changes nothing, while ``sipproxy-ctl`` on the same
host (as the server's user) still works, reading the token the server kept. With
``--admin unix:PATH`` the socket file's mode is the check and there is no TCP
admin port at all.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import RunningServer, free_port, status_of, stop
from tests.integration.test_auth import register
from tests.security.conftest import PASSWORDS, serve_with_users

pytestmark = pytest.mark.integration
CTL = str(Path(sys.executable).with_name("sipproxy-ctl"))
ALICE = "sip:alice@example.test"
OFFICE = """\
[extensions]
"101" = "alice"
"""
#: a user of the host other than the server's (root runs the tests)
NOBODY = 65534


def http(
    url: str, method: str = "GET", token: str | None = None, body: object = None
) -> tuple[int, bytes]:
    """One request over TCP: the status and the body."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def ctl(*args: str, cwd: Path) -> tuple[int, str, str]:
    done = subprocess.run(
        [CTL, *args], capture_output=True, text=True, timeout=60, check=False, cwd=cwd
    )
    return done.returncode, done.stdout, done.stderr


def listening_tcp_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on, from /proc (no outside tool)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as file:
            for line in file.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    ports.add(int(fields[1].rpartition(":")[2], 16))
    return ports


def ban(port: int, source: str) -> None:
    """Ten wrong passwords from ``source``: it is banned (issue 5)."""
    for _ in range(10):
        register(port, "bob", "wrong", source=source)


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The server's state directory, as systemd's StateDirectory= passes it."""
    directory = tmp_path / "state"
    monkeypatch.setenv("STATE_DIRECTORY", str(directory))
    monkeypatch.delenv("SIPPROXY_TOKEN", raising=False)
    return directory


@pytest.fixture
def office(tmp_path: Path) -> Path:
    path = tmp_path / "office.toml"
    path.write_text(OFFICE)
    return path


@pytest.fixture
def no_token(
    tmp_path: Path, users_file: Path, state: Path, office: Path
) -> Iterator[tuple[RunningServer, str]]:
    """``--admin tcp:PORT:interface=127.0.0.1`` and no token option at all."""
    admin = free_port()
    running = serve_with_users(
        tmp_path,
        users_file,
        "--config", str(office),
        "--admin", f"tcp:{admin}:interface=127.0.0.1",
    )  # fmt: skip
    yield running, f"http://127.0.0.1:{admin}"
    stop(running.process)
    log = running.log_text()
    assert "Traceback" not in log, log
    token = state / "admin-token"
    assert not token.exists() or token.read_text().strip() not in log


def test_nothing_but_health_answers_without_the_token(
    no_token: tuple[RunningServer, str], state: Path, tmp_path: Path
) -> None:
    """Listing, removing, unbanning, forwarding, reloading: 401, and nothing changes."""
    server, admin = no_token
    first, ok = register(server.port, "alice", PASSWORDS["alice"])
    assert (status_of(first), status_of(ok)) == (401, 200)
    ban(server.port, "127.0.0.3")
    attacks = [
        ("GET", "/registrations", None),
        ("GET", f"/registrations?aor={ALICE}", None),
        ("DELETE", f"/registrations?aor={ALICE}", None),
        ("GET", "/bans", None),
        ("DELETE", "/bans/127.0.0.3", None),
        ("GET", "/users/alice/forward", None),
        ("PUT", "/users/alice/forward/unconditional", {"target": "sip:x@192.0.2.66"}),
        ("POST", "/users/alice/forward/unconditional", {"target": "sip:x@192.0.2.6"}),
        ("PUT", "/users/alice/dnd", {"on": True}),
        ("DELETE", "/users/alice/forward", None),
        ("POST", "/reload", None),
        ("GET", "/metrics", None),
        ("GET", "/stats", None),
        ("GET", "/info", None),
        ("GET", "/no-such-route", None),
    ]
    for token in (None, "guessed-token-0123456789", ""):
        for method, path, body in attacks:
            status, answer = http(admin + path, method, token, body)
            assert status == 401, (method, path, token, answer)
            assert json.loads(answer) == {"error": "a valid bearer token is needed"}
    assert http(admin + "/health") == (200, b'{\n "status": "ok"\n}\n')

    # The token the server made: private, and what shows nothing changed.
    kept = state / "admin-token"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    token = kept.read_text().strip()
    status, answer = http(admin + "/registrations", token=token)
    assert status == 200
    [entry] = json.loads(answer)["registrations"]
    assert entry["aor"] == ALICE and len(entry["bindings"]) == 1
    status, answer = http(admin + "/bans", token=token)
    assert [b["address"] for b in json.loads(answer)["bans"]] == ["127.0.0.3"]
    status, answer = http(admin + "/users/alice/forward", token=token)
    forwarding = json.loads(answer)
    assert (status, forwarding["unconditional"], forwarding["dnd"]) == (200, "", False)
    assert forwarding["set_at_run_time"] == []
    assert "configuration reloaded" not in server.log_text()
    # The banned source is still ignored: its REGISTER gets no answer at all.
    with pytest.raises(TimeoutError):
        register(server.port, "bob", PASSWORDS["bob"], source="127.0.0.3")


def test_ctl_on_the_same_host_reads_the_kept_token(
    no_token: tuple[RunningServer, str], tmp_path: Path
) -> None:
    """No --token, no SIPPROXY_TOKEN: ctl finds the server's token file and works."""
    server, admin = no_token
    register(server.port, "alice", PASSWORDS["alice"])
    code, out, err = ctl("--url", admin, "registrations", cwd=tmp_path)
    assert (code, err) == (0, "")
    assert out.splitlines()[1].startswith(f"{ALICE}  sip:alice@127.0.0.1:")
    assert ctl("--url", admin, "unregister", "alice@example.test", cwd=tmp_path) == (
        0,
        f"removed 1 binding(s) of {ALICE}\n",
        "",
    )
    assert "admin API token written to" in server.log_text()


def test_a_restart_keeps_the_token_and_a_loose_file_stops_the_start(
    tmp_path: Path, users_file: Path, state: Path
) -> None:
    """Same token across restarts; a token file others could read: no start."""
    admin = free_port()
    args = ("--admin", f"tcp:{admin}")
    server = serve_with_users(tmp_path, users_file, *args)
    stop(server.process)
    token = (state / "admin-token").read_text()
    server = serve_with_users(tmp_path, users_file, *args)
    try:
        assert (state / "admin-token").read_text() == token
        status, _ = http(f"http://127.0.0.1:{admin}/stats", token=token.strip())
        assert status == 200
    finally:
        stop(server.process)
    (state / "admin-token").chmod(0o644)
    done = subprocess.run(
        [str(Path(sys.executable).with_name("twistd")), "-n", "--pidfile=",
         "sipproxy", "--listen", f"udp:{free_port()}:interface=127.0.0.1", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert (
        f"sipproxy: error: admin token file '{state}/admin-token': group or others "
        "may use it (mode 0644)"
    ) in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr


@pytest.fixture
def socket_directory() -> Iterator[Path]:
    """A directory every user may enter: only the socket's own mode keeps them out."""
    directory = Path(tempfile.mkdtemp(prefix="sipproxy-admin-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def test_a_unix_socket_admin_is_its_file_mode_and_no_tcp_port(
    tmp_path: Path, users_file: Path, state: Path, socket_directory: Path
) -> None:
    """--admin unix:PATH:mode=0600: ctl works over it; no TCP port, no token file."""
    path = socket_directory / "admin.sock"
    server = serve_with_users(
        tmp_path, users_file, "--admin", f"unix:{path}:mode=0600", tcp=False
    )
    try:
        register(server.port, "alice", PASSWORDS["alice"])
        mode = path.stat().st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        assert not (state / "admin-token").exists()
        code, out, err = ctl("--url", f"unix:{path}", "registrations", cwd=tmp_path)
        assert (code, err) == (0, "")
        assert out.splitlines()[1].startswith(f"{ALICE}  sip:alice@127.0.0.1:")
        code, out, _ = ctl("--url", f"unix:{path}", "--json", "stats", cwd=tmp_path)
        assert (code, json.loads(out)["bindings"]) == (0, 1)
        # The server listens on no TCP port at all (its SIP listener is UDP only).
        assert listening_tcp_ports(server.process.pid) == set()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(path))
            sock.sendall(b"GET /info HTTP/1.0\r\n\r\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert json.loads(answer.partition(b"\r\n\r\n")[2])["admin"] == f"unix:{path}"
        if os.geteuid() == 0 and Path("/usr/bin/python3").exists():
            # Another user of the host cannot even connect.
            probe = (
                "import socket,sys\n"
                "s=socket.socket(socket.AF_UNIX)\n"
                "try: s.connect(sys.argv[1])\n"
                "except PermissionError: print('refused')\n"
                "else: print('connected')\n"
            )
            done = subprocess.run(
                ["/usr/bin/python3", "-c", probe, str(path)],
                capture_output=True, text=True, timeout=60, check=False,
                user=NOBODY, group=NOBODY, cwd="/",
            )  # fmt: skip
            assert done.stdout == "refused\n", done.stdout + done.stderr
    finally:
        stop(server.process)
    assert "Traceback" not in server.log_text(), server.log_text()
