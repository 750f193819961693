"""Operating a live server: admin API, sipproxy-ctl, /metrics, SIGHUP, JSON logs.

Each test starts ``twistd -n sipproxy --config FILE`` on loopback, sends real SIP
over UDP and drives the admin API with ``sipproxy-ctl`` (a subprocess) or urllib.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sipproxy.auth.htdigest import write_user
from tests.integration.conftest import (
    ROOT,
    RunningServer,
    free_port,
    require_tool,
    start_twistd,
    status_of,
    stop,
)
from tests.integration.test_auth import REALM, register

pytestmark = pytest.mark.integration
CTL = str(Path(sys.executable).with_name("sipproxy-ctl"))
TOKEN = "integration-token-0123456789"


@dataclass
class Ops:
    """A running server with its admin API and its configuration file."""

    server: RunningServer
    admin: str
    config: Path
    token_file: Path
    tmp: Path

    def ctl(self, *args: str, token_file: Path | None = None) -> tuple[int, str, str]:
        """Run sipproxy-ctl against this server: (exit status, stdout, stderr)."""
        done = subprocess.run(
            [
                CTL,
                "--url",
                self.admin,
                "--token-file",
                str(token_file or self.token_file),
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return done.returncode, done.stdout, done.stderr

    def get(self, path: str, token: str | None = TOKEN) -> tuple[int, bytes]:
        request = urllib.request.Request(self.admin + path)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def wait_for_log(self, text: str, *, count: int = 1) -> None:
        deadline = time.monotonic() + 30
        while self.server.log_text().count(text) < count:
            assert time.monotonic() < deadline, self.server.log_text()
            time.sleep(0.05)


def config_text(
    port: int, admin_port: int, users: Path, token: Path, extra: str
) -> str:
    return (
        f'domain = ["{REALM}"]\n'
        f'listen = ["udp:{port}:interface=127.0.0.1"]\n'
        f'users = "{users}"\n'
        f'admin = "tcp:{admin_port}"\n'
        f'admin-token-file = "{token}"\n'
        f"{extra}"
    )


def start(tmp_path: Path, extra: str = "", args: tuple[str, ...] = ()) -> Ops:
    users = tmp_path / "users.htdigest"
    write_user(users, "alice", REALM, "wonderland")
    write_user(users, "bob", REALM, "builder")
    token = tmp_path / "admin-token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    port, admin_port = free_port(), free_port()
    config = tmp_path / "sipproxy.toml"
    config.write_text(config_text(port, admin_port, users, token, extra))
    server = start_twistd(
        ["--config", str(config), *args], port, tmp_path / "twistd.log"
    )
    return Ops(server, f"http://127.0.0.1:{admin_port}", config, token, tmp_path)


@pytest.fixture
def ops(tmp_path: Path) -> Iterator[Ops]:
    running = start(tmp_path, "max-bindings = 10\n")
    yield running
    stop(running.server.process)
    log = running.server.log_text()
    assert "Traceback" not in log, log
    # No secret ever reaches the log: not the admin token, not a password.
    for secret in (TOKEN, "wonderland", "builder", "Digest ", "response="):
        assert secret not in log


def registered(ops: Ops, user: str = "alice") -> None:
    first, ok = register(ops.server.port, user, {"alice": "wonderland"}[user])
    assert status_of(first) == 401
    assert status_of(ok) == 200


def test_ctl_lists_and_removes_registrations(ops: Ops) -> None:
    registered(ops)
    registered(ops)
    code, out, err = ops.ctl("registrations")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["AOR", "CONTACT", "EXPIRES", "FROM", "USER-AGENT"]
    assert len(lines) == 3
    assert all(
        line.startswith("sip:alice@example.test  sip:alice@127.0.0.1:")
        for line in lines[1:]
    )
    code, out, _ = ops.ctl("--json", "registrations", "alice@example.test")
    answer = json.loads(out)
    contacts = [b["contact"] for b in answer["registrations"][0]["bindings"]]
    assert len(contacts) == 2
    assert all(b["expires_in"] > 3500 for b in answer["registrations"][0]["bindings"])
    code, out, _ = ops.ctl("unregister", "sip:alice@example.test", contacts[0])
    assert (code, out) == (0, "removed 1 binding(s) of sip:alice@example.test\n")
    code, out, _ = ops.ctl("--json", "stats")
    assert json.loads(out)["bindings"] == 1
    code, out, _ = ops.ctl("unregister", "alice@example.test")
    assert (code, out) == (0, "removed 1 binding(s) of sip:alice@example.test\n")
    assert ops.ctl("registrations") == (0, "no registrations\n", "")
    code, out, err = ops.ctl("unregister", "alice@example.test")
    assert code == 1
    assert err == (
        "sipproxy-ctl: DELETE /registrations?aor=alice%40example.test: "
        "404 no registration for sip:alice@example.test\n"
    )
    ops.wait_for_log(
        "admin API: removed 1 binding(s) of sip:alice@example.test", count=2
    )


def test_ctl_errors_are_one_clear_line(ops: Ops, tmp_path: Path) -> None:
    """Wrong token and unreachable server: one line on stderr, exit status 1."""
    wrong = tmp_path / "wrong-token"
    wrong.write_text("not-the-token-0123456789\n")
    code, out, err = ops.ctl("stats", token_file=wrong)
    assert (code, out) == (1, "")
    assert err == (
        f"sipproxy-ctl: {ops.admin}: the token was refused (401); give the admin "
        "token with --token-file, --token or SIPPROXY_TOKEN\n"
    )
    nobody = f"http://127.0.0.1:{free_port()}"
    done = subprocess.run(
        [CTL, "--url", nobody, "--token", TOKEN, "bans"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (
        f"sipproxy-ctl: cannot reach the admin API at {nobody}: Connection refused "
        "(is sipproxy running with --admin?)\n"
    )
    # The token from the environment works too.
    done = subprocess.run(
        [CTL, "--url", ops.admin, "stats"],
        capture_output=True, text=True, timeout=60, check=False,
        env={"SIPPROXY_TOKEN": TOKEN, "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "bindings" in done.stdout


def test_bans_listed_and_lifted_and_metrics_after_real_traffic(ops: Ops) -> None:
    """A brute-force source is banned; ctl shows and lifts it; /metrics counted all."""
    port = ops.server.port
    for _ in range(10):
        register(port, "bob", "wrong", source="127.0.0.3")
    with pytest.raises(TimeoutError):
        register(port, "bob", "builder", source="127.0.0.3")
    registered(ops)
    code, out, _ = ops.ctl("bans")
    assert code == 0
    assert out.splitlines()[0].split() == ["ADDRESS", "SECONDS", "LEFT"]
    assert out.splitlines()[1].split()[0] == "127.0.0.3"
    assert 590 <= int(out.splitlines()[1].split()[1]) <= 600

    status, body = ops.get("/metrics")
    assert status == 200
    found = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    # 10 wrong answers + 10 first REGISTERs from .3, 2 from alice; the banned
    # one is dropped before it is counted as a request.
    assert found[("sipproxy_requests_total", (("method", "REGISTER"),))] == 22
    assert found[("sipproxy_auth_failures_total", ())] == 10
    assert found[("sipproxy_bans_total", ())] == 1
    assert found[("sipproxy_banned_addresses", ())] == 1
    assert found[("sipproxy_dropped_messages_total", (("reason", "banned"),))] >= 1
    # One 200 to alice, and one to each OPTIONS probe that found the server up.
    options = found[("sipproxy_requests_total", (("method", "OPTIONS"),))]
    assert options >= 1
    assert (
        found[("sipproxy_responses_total", (("status_class", "2xx"),))] == 1 + options
    )
    assert found[("sipproxy_responses_total", (("status_class", "4xx"),))] == 21
    latency = ("sipproxy_request_duration_seconds_count", (("method", "REGISTER"),))
    assert found[latency] == 22
    assert found[("sipproxy_registrations", ())] == 1
    assert found[("sipproxy_bindings", ())] == 1
    assert found[("sipproxy_transactions", (("kind", "server_non_invite"),))] >= 1
    assert found[("sipproxy_uptime_seconds", ())] > 0

    code, out, _ = ops.ctl("unban", "127.0.0.3")
    assert (code, out) == (0, "lifted the ban of 127.0.0.3\n")
    _, ok = register(port, "bob", "builder", source="127.0.0.3")
    assert status_of(ok) == 200
    assert ops.ctl("bans") == (0, "no bans\n", "")
    code, _, err = ops.ctl("unban", "127.0.0.3")
    assert code == 1
    assert "404 127.0.0.3 is not banned" in err


def test_health_and_info_over_http(ops: Ops) -> None:
    """/health needs no token (load balancers); everything else does."""
    assert ops.get("/health", token=None) == (200, b'{\n "status": "ok"\n}\n')
    status, body = ops.get("/info", token=None)
    assert status == 401
    status, body = ops.get("/info")
    info = json.loads(body)
    assert info["listeners"] == [f"udp 127.0.0.1:{ops.server.port}"]
    assert info["location"] == "memory:"
    assert info["domains"] == [REALM]


def test_sighup_keeps_registrations_and_applies_new_limits(ops: Ops) -> None:
    """Reload (SIGHUP, ctl reload): bindings stay, the new max-bindings applies.

    A broken file keeps the old configuration.
    """
    registered(ops)
    registered(ops)
    registered(ops)
    assert json.loads(ops.ctl("--json", "stats")[1])["bindings"] == 3
    text = ops.config.read_text()
    ops.config.write_text(text.replace("max-bindings = 10", "max-bindings = 2"))
    ops.server.process.send_signal(signal.SIGHUP)
    ops.wait_for_log("configuration reloaded; changed: max-bindings")
    # Nothing was dropped by the reload itself...
    assert json.loads(ops.ctl("--json", "stats")[1])["bindings"] == 3
    # ...and the next REGISTER is judged by the new limit: the oldest go.
    registered(ops)
    assert json.loads(ops.ctl("--json", "stats")[1])["bindings"] == 2

    # A broken file: the old configuration stays, the log says why.
    ops.config.write_text(text.replace("max-bindings = 10", "max-bindings = 0"))
    ops.server.process.send_signal(signal.SIGHUP)
    ops.wait_for_log("configuration not reloaded, keeping the old one")
    assert "max-bindings = 0: expected a positive number" in ops.server.log_text()
    registered(ops)
    assert json.loads(ops.ctl("--json", "stats")[1])["bindings"] == 2
    code, _, err = ops.ctl("reload")
    assert code == 1
    assert "409 max-bindings = 0: expected a positive number" in err

    # ctl reload does what SIGHUP does; what needs a restart is said, not done.
    ops.config.write_text(
        text.replace("max-bindings = 10", "max-bindings = 1").replace(
            "interface=127.0.0.1", "interface=127.0.0.2"
        )
    )
    assert ops.ctl("reload") == (
        0,
        "reloaded; changed: max-bindings; needs a restart: listen\n",
        "",
    )
    ops.wait_for_log("configuration: listen changed but need a restart; not applied")
    registered(ops)
    assert json.loads(ops.ctl("--json", "stats")[1])["bindings"] == 1
    assert ops.get("/health", token=None)[0] == 200


def test_json_logs_are_one_object_per_line_and_fail2ban_reads_them(
    tmp_path: Path,
) -> None:
    """--log-format json: every line parses, decisions carry their fields.

    The ban line matches the shipped fail2ban filter.
    """
    ops = start(tmp_path, 'log-format = "json"\n')
    try:
        port = ops.server.port
        for _ in range(10):
            register(port, "bob", "wrong", source="127.0.0.4")
        ops.wait_for_log("sipproxy: banned 127.0.0.4")
    finally:
        stop(ops.server.process)
    log = ops.server.log_text()
    for secret in (TOKEN, "builder", "Digest ", "response="):
        assert secret not in log
    records = [json.loads(line) for line in log.splitlines() if line]
    assert all(list(r)[:3] == ["time", "level", "text"] for r in records)
    refused = [
        r for r in records if r.get("method") == "REGISTER" and r.get("status") == 401
    ]
    assert refused
    assert refused[0]["caller"] == "sip:bob@example.test"
    assert refused[0]["route"] == "refused"
    bans = [r for r in records if r["text"].startswith("sipproxy: banned")]
    assert [r["level"] for r in bans] == ["warn"]
    fail2ban_regex = require_tool("fail2ban-regex")
    filter_file = ROOT / "etc" / "fail2ban" / "filter.d" / "sipproxy.conf"
    done = subprocess.run(
        [fail2ban_regex, str(ops.server.log), str(filter_file)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "127.0.0.4" in done.stdout or "Lines: " in done.stdout
    matched = [
        line for line in done.stdout.splitlines() if line.startswith("Failregex:")
    ]
    assert matched and matched[0].split()[1] == "1", done.stdout


def test_admin_without_a_token_option_keeps_one_and_requires_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No token option: the server makes one in its state directory (issue 13)."""
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    port, admin_port = free_port(), free_port()
    server = start_twistd(
        [
            "--domain", REALM, "--listen", f"udp:{port}:interface=127.0.0.1",
            "--admin", f"tcp:{admin_port}",
        ],
        port,
        tmp_path / "twistd.log",
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{admin_port}/stats"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=30)
        assert refused.value.code == 401
        token_file = tmp_path / "state" / "admin-token"
        request = urllib.request.Request(url)
        request.add_header("Authorization", f"Bearer {token_file.read_text().strip()}")
        with urllib.request.urlopen(request, timeout=30) as response:
            assert json.loads(response.read())["registrations"] == 0
        assert (
            f"admin API token written to {token_file} (mode 0600); sipproxy-ctl on "
            "this host reads it" in server.log_text()
        )
        assert "NO TOKEN" not in server.log_text()
    finally:
        stop(server.process)
