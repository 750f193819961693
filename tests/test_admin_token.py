"""The admin API is never open on tcp (issue 13); a Unix socket's mode is its check.

Without a token option the server makes one at first start and keeps it.

Token file, config and service wiring without a network: the service runs on a
memory reactor and its admin resource is rendered with twisted.web's DummyRequest.
"""

from __future__ import annotations

import json
import os
import socketserver
import stat
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from twisted.web.test._util import _render
from twisted.web.test.requesthelper import DummyRequest
from typing_extensions import override

from sipproxy import tokenfile
from sipproxy.admin import AdminAPI
from sipproxy.config import ConfigError, UnixSocketSpec, build_config
from sipproxy.ctl import _token, main
from sipproxy.server import SIPServerService, build_server
from sipproxy.testing import UDPMemoryReactor
from sipproxy.tokenfile import TokenFileError, load_or_create, read_private

TOKEN = "0123456789abcdefXYZ"


# -- where the token is kept ----------------------------------------------------


def test_default_path_is_in_systemds_state_directory_else_var() -> None:
    """The unit's StateDirectory= sets STATE_DIRECTORY; the first one is ours."""
    assert tokenfile.default_path({}) == Path("var/admin-token")
    assert tokenfile.default_path({"STATE_DIRECTORY": ""}) == Path("var/admin-token")
    assert tokenfile.default_path(
        {"STATE_DIRECTORY": "/var/lib/sipproxy:/var/lib/other"}
    ) == Path("/var/lib/sipproxy/admin-token")


def test_ctl_looks_where_the_server_writes_then_in_the_units_directory() -> None:
    assert tokenfile.candidates({}) == [
        Path("var/admin-token"),
        Path("/var/lib/sipproxy/admin-token"),
    ]
    assert tokenfile.candidates({"STATE_DIRECTORY": "/var/lib/sipproxy"}) == [
        Path("/var/lib/sipproxy/admin-token")
    ]


def test_first_start_writes_a_private_random_token(tmp_path: Path) -> None:
    """Made 0600 whatever the umask, in a 0700 directory made for it."""
    path = tmp_path / "state" / "admin-token"
    old = os.umask(0)
    try:
        token, made = load_or_create(path)
    finally:
        os.umask(old)
    assert made
    assert len(token) >= 40
    assert path.read_text() == token + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    # Nothing else is left behind (the temporary file is gone).
    assert [p.name for p in path.parent.iterdir()] == ["admin-token"]


def test_later_starts_reuse_the_token(tmp_path: Path) -> None:
    path = tmp_path / "admin-token"
    first, _ = load_or_create(path)
    assert load_or_create(path) == (first, False)
    assert load_or_create(tmp_path / "other")[0] != first


def test_a_file_made_meanwhile_by_another_process_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes starting at once end up with one token, never a half file."""
    path = tmp_path / "admin-token"
    real = tokenfile.read_private
    calls = []

    def racing(target: Path) -> str:
        calls.append(target)
        if len(calls) == 1:
            target.write_text("the-other-process-token-0123\n")
            target.chmod(0o600)
            raise FileNotFoundError(target)
        return real(target)

    monkeypatch.setattr(tokenfile, "read_private", racing)
    assert load_or_create(path) == ("the-other-process-token-0123", False)
    assert path.read_text() == "the-other-process-token-0123\n"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o644, 0o660])
def test_a_token_file_others_may_use_is_refused(tmp_path: Path, mode: int) -> None:
    """As ssh with a private key: one line naming the file and its mode."""
    path = tmp_path / "admin-token"
    path.write_text(TOKEN + "\n")
    path.chmod(mode)
    with pytest.raises(TokenFileError) as info:
        load_or_create(path)
    message = str(info.value)
    assert message == (
        f"admin token file {str(path)!r}: group or others may use it (mode "
        f"{mode:04o}); chmod 600 it, or delete it to have a new one made"
    )
    assert TOKEN not in message
    assert path.read_text() == TOKEN + "\n"  # refused, not "fixed" or replaced


def test_a_token_file_of_another_user_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "admin-token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    if os.geteuid() != 0:
        pytest.skip("only root can give a file to another user")
    os.chown(path, 65534, -1)
    with pytest.raises(TokenFileError, match="owned by uid 65534, not by this user"):
        read_private(path)


@pytest.mark.parametrize("content", ["", "short\n", "with spaces in it 0123456\n"])
def test_a_token_file_without_a_token_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "admin-token"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(TokenFileError, match="holds no token of 16\\+ characters"):
        load_or_create(path)


def test_a_symlink_is_not_followed(tmp_path: Path) -> None:
    """Whoever can write the directory must not point the token file elsewhere."""
    target = tmp_path / "elsewhere"
    target.write_text(TOKEN)
    target.chmod(0o600)
    (tmp_path / "admin-token").symlink_to(target)
    with pytest.raises(TokenFileError, match="admin token file"):
        load_or_create(tmp_path / "admin-token")


# -- configuration ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("unix:/run/sipproxy/admin.sock", UnixSocketSpec("/run/sipproxy/admin.sock")),
        (
            "unix:address=/run/sipproxy/admin.sock:mode=0660:backlog=5:lockfile=0",
            UnixSocketSpec("/run/sipproxy/admin.sock", 0o660, 5, False),
        ),
        ("UNIX:var/admin.sock:mode=600", UnixSocketSpec("var/admin.sock", 0o600)),
        ("unix:/tmp/a\\:b.sock", UnixSocketSpec("/tmp/a:b.sock")),
    ],
)
def test_admin_on_a_unix_socket_takes_twisteds_syntax(
    text: str, expected: UnixSocketSpec
) -> None:
    """Twisted's unix: endpoint options; the mode defaults to 0600, not 0666."""
    config = build_config({"admin": text}, {})
    assert config.admin == expected
    assert config.admin_token is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("unix:", "give the socket's path"),
        ("unix:mode=0600", "give the socket's path"),
        ("unix:/a.sock:address=/b.sock", "give the socket's path once"),
        ("unix:/a.sock:mode=rw", "mode 'rw' is not an octal mode like 0600"),
        ("unix:/a.sock:mode=0666", "mode 0666 lets every user of the host in"),
        ("unix:/a.sock:mode=0602", "mode 0602 lets every user of the host in"),
        ("unix:/a.sock:backlog=x", "backlog 'x' is not a number"),
        ("unix:/a.sock:lockfile=yes", "lockfile is 0 or 1"),
        ("unix:/a.sock:interface=127.0.0.1", "unknown option 'interface' for unix"),
    ],
)
def test_bad_unix_admin_values_are_named(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config({"admin": text}, {})


def test_a_unix_socket_may_also_have_a_token() -> None:
    config = build_config({"admin": "unix:/a.sock", "admin-token": TOKEN}, {})
    assert config.admin_token == TOKEN


@pytest.mark.parametrize("mode", [0o604, 0o644, 0o602, 0o666])
def test_an_admin_token_file_others_may_use_is_refused(
    tmp_path: Path, mode: int
) -> None:
    """The operator's own file: group may read it (the systemd unit's way)."""
    path = tmp_path / "token"
    path.write_text(TOKEN)
    path.chmod(mode)
    with pytest.raises(ConfigError, match="other users may use it") as info:
        build_config({"admin": "tcp:8080", "admin-token-file": str(path)}, {})
    assert TOKEN not in str(info.value)
    path.chmod(0o640)
    config = build_config({"admin": "tcp:8080", "admin-token-file": str(path)}, {})
    assert config.admin_token == TOKEN


def test_a_non_loopback_admin_still_needs_a_token_the_operator_chose() -> None:
    """The token made at first start is for this host's sipproxy-ctl."""
    with pytest.raises(ConfigError, match="a non-loopback address needs admin-token"):
        build_config({"admin": "tcp:8080:interface=0.0.0.0"}, {})


# -- the service ---------------------------------------------------------------


def start_service(
    values: dict[str, Any], state: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[SIPServerService, UDPMemoryReactor]:
    monkeypatch.setenv("STATE_DIRECTORY", str(state))
    reactor = UDPMemoryReactor()
    config = build_config(
        {"domain": "example.test", "listen": "udp:5060", **values}, {}
    )
    server = build_server(config, reactor)
    server.privilegedStartService()
    return server, reactor


def ask(api: Any, method: str, path: str, token: str | None) -> int:
    """The status the admin resource answers to one request."""
    request: Any = DummyRequest([s.encode() for s in path.strip("/").split("/")])
    request.method = method.encode()
    request.path = path.encode()
    request.content = BytesIO()
    if token is not None:
        request.requestHeaders.addRawHeader(b"authorization", f"Bearer {token}")
    _render(api, request)
    return int(request.responseCode or 200)


def test_tcp_admin_without_a_token_makes_one_and_requires_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No token option: none of the API is open; the kept token opens it."""
    server, reactor = start_service({"admin": "tcp:8080"}, tmp_path, monkeypatch)
    path = tmp_path / "admin-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = path.read_text().strip()
    assert server.admin_token == token
    [(port, site, _, interface)] = reactor.tcpServers
    assert (port, interface) == (8080, "127.0.0.1")
    api = getattr(site, "resource", None)
    assert isinstance(api, AdminAPI)
    for method, route in [("GET", "/registrations"), ("GET", "/bans")]:
        assert ask(api, method, route, None) == 401
        assert ask(api, method, route, token + "x") == 401
        assert ask(api, method, route, token) == 200
    assert ask(api, "GET", "/health", None) in (200, 503)


def test_a_restart_keeps_the_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, _ = start_service({"admin": "tcp:8080"}, tmp_path, monkeypatch)
    second, _ = start_service({"admin": "tcp:8080"}, tmp_path, monkeypatch)
    assert first.admin_token is not None
    assert second.admin_token == first.admin_token


def test_a_configured_token_is_used_and_nothing_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, _ = start_service(
        {"admin": "tcp:8080", "admin-token": TOKEN}, tmp_path, monkeypatch
    )
    assert server.admin_token == TOKEN
    # Only the key of dialog tokens is kept there, never an admin token.
    assert [p.name for p in tmp_path.iterdir()] == ["dialog-secret"]


def test_an_unusable_token_file_stops_the_start_before_anything_listens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "admin-token"
    path.write_text(TOKEN)
    path.chmod(0o644)
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path))
    reactor = UDPMemoryReactor()
    config = build_config({"listen": "udp:5060", "admin": "tcp:8080"}, {})
    with pytest.raises(SystemExit) as info:
        build_server(config, reactor).privilegedStartService()
    assert str(info.value.code) == (
        f"sipproxy: error: admin token file {str(path)!r}: group or others may use "
        "it (mode 0644); chmod 600 it, or delete it to have a new one made"
    )
    assert reactor.udp == []
    assert reactor.tcpServers == []


def test_unix_admin_listens_with_its_mode_and_needs_no_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The socket file's permissions are the check; no token file is made."""
    socket_path = str(tmp_path / "admin.sock")
    server, reactor = start_service(
        {"admin": f"unix:{socket_path}"}, tmp_path, monkeypatch
    )
    [(address, site, backlog, mode, want_pid)] = reactor.unixServers
    assert (address, backlog, mode, want_pid) == (socket_path, 50, 0o600, True)
    assert server.admin_token is None
    assert [p.name for p in tmp_path.iterdir()] == ["dialog-secret"]
    assert ask(site.resource, "GET", "/bans", None) == 200


def test_unix_admin_with_a_token_still_checks_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, reactor = start_service(
        {"admin": "unix:/run/x.sock:mode=0660", "admin-token": TOKEN},
        tmp_path,
        monkeypatch,
    )
    [(_, site, _, mode, _)] = reactor.unixServers
    assert mode == 0o660
    assert ask(site.resource, "GET", "/bans", None) == 401
    assert ask(site.resource, "GET", "/bans", TOKEN) == 200


# -- sipproxy-ctl ----------------------------------------------------------------


def ctl_args(*argv: str) -> Any:
    from sipproxy.ctl import _parser

    return _parser().parse_args([*argv, "stats"])


def test_ctl_reads_the_servers_token_file_when_given_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SIPPROXY_TOKEN", raising=False)
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path))
    token, _ = load_or_create(tmp_path / "admin-token")
    assert _token(ctl_args()) == token
    # What is given explicitly wins.
    assert _token(ctl_args("--token", TOKEN)) == TOKEN
    monkeypatch.setenv("SIPPROXY_TOKEN", "from-the-environment")
    assert _token(ctl_args()) == "from-the-environment"


def test_ctl_without_any_token_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A server that answers 401 to a ctl that found no token: one line on why."""
    monkeypatch.delenv("SIPPROXY_TOKEN", raising=False)
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    args = ctl_args()
    if Path("/var/lib/sipproxy/admin-token").exists():
        pytest.skip("this host has a sipproxy state directory")
    assert _token(args) is None
    assert args.token_source is None
    assert main(["--url", "unix:" + str(tmp_path / "nothing.sock"), "bans"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        f"sipproxy-ctl: cannot reach the admin API at unix:{tmp_path}/nothing.sock: "
    )
    assert err.endswith("(is sipproxy running with --admin?)\n")


def test_ctl_skips_a_token_file_it_cannot_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Unix socket needs no token: an unreadable state directory is no error."""
    monkeypatch.delenv("SIPPROXY_TOKEN", raising=False)
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path))
    (tmp_path / "admin-token").mkdir()  # reading it fails (EISDIR)
    monkeypatch.setattr(
        "sipproxy.ctl.candidates", lambda environ: [tmp_path / "admin-token"]
    )
    args = ctl_args()
    assert _token(args) is None
    assert args.token_unreadable == [f"{tmp_path}/admin-token (Is a directory)"]


class _Recording(BaseHTTPRequestHandler):
    """An admin API stand-in: 401 unless the bearer token is ``TOKEN``."""

    def do_GET(self) -> None:
        authorization = self.headers.get("Authorization")
        SEEN.append(("GET", self.path, authorization))
        ok = authorization == f"Bearer {TOKEN}"
        body = json.dumps({"bans": []} if ok else {"error": "no"}).encode()
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    @override
    def address_string(self) -> str:
        return "unix"  # a Unix peer has no (host, port)

    @override
    def log_message(self, format: str, *args: Any) -> None:
        pass


#: what the stand-in was asked: method, path, Authorization
SEEN: list[tuple[str, str, str | None]] = []


@pytest.fixture
def unix_api(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "admin.sock"

    class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

    server = Server(str(path), _Recording)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    SEEN.clear()
    yield path
    server.shutdown()
    server.server_close()


def test_ctl_speaks_http_over_a_unix_socket(
    unix_api: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("SIPPROXY_TOKEN", raising=False)
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "none"))
    monkeypatch.setattr(
        "sipproxy.ctl.candidates", lambda environ: [tmp_path / "none" / "admin-token"]
    )
    url = f"unix:{unix_api}"
    assert main(["--url", url, "--token", TOKEN, "bans"]) == 0
    assert capsys.readouterr().out == "no bans\n"
    assert [("GET", "/bans", f"Bearer {TOKEN}")] == SEEN
    # No token anywhere: the 401 says where ctl looked.
    assert main(["--url", url, "bans"]) == 1
    assert capsys.readouterr().err == (
        f"sipproxy-ctl: {url}: a token is needed (401) and none was found in "
        f"{tmp_path}/none/admin-token; give it with --token-file, --token or "
        "SIPPROXY_TOKEN\n"
    )
    assert SEEN[-1] == ("GET", "/bans", None)
    # The server's kept token: a 401 names the file.
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    load_or_create(tmp_path / "state" / "admin-token")
    monkeypatch.setattr(
        "sipproxy.ctl.candidates", lambda environ: [tmp_path / "state" / "admin-token"]
    )
    assert main(["--url", url, "bans"]) == 1
    assert capsys.readouterr().err == (
        f"sipproxy-ctl: {url}: the token in {tmp_path}/state/admin-token was "
        "refused (401); give the admin token with --token-file, --token or "
        "SIPPROXY_TOKEN\n"
    )
