"""Browser phones: two headless Chromiums with JsSIP call each other (RFC 7118).

The JavaScript side lives in tests/browser/: ``call.mjs`` (puppeteer-core)
serves etc/browser-phone/ on loopback, opens it in two browser contexts of one
Debian Chromium, registers Alice and Bob over the proxy's WebSocket listener,
makes Alice call Bob with audio, waits for RTP to arrive on both sides and has
Alice hang up; it prints one JSON object. ``make browser-deps`` installs it
(``npm ci``) and builds the JsSIP bundle.

The media goes browser to browser over loopback; the proxy only sees SIP.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sipproxy.auth.htdigest import write_user
from tests.integration.conftest import (
    ROOT,
    RunningServer,
    free_port,
    require_tool,
    start_twistd,
    stop,
)
from tests.tlsutil import TestCA

pytestmark = pytest.mark.integration

BROWSER = ROOT / "tests" / "browser"
DRIVER = BROWSER / "call.mjs"
DOMAIN = "example.test"
TOKEN = "browser-token-0123456789"
PASSWORDS = {"alice": "alice-in-the-browser", "bob": "bob-in-the-browser"}


def require_browser_deps() -> list[str]:
    """``node call.mjs`` ready to run; skip without it, but fail under CI=true."""
    node = require_tool("node")
    require_tool("chromium")
    missing = [
        path
        for path in (
            BROWSER / "node_modules" / "puppeteer-core",
            BROWSER / "build" / "jssip.min.js",
        )
        if not path.exists()
    ]
    if missing:
        message = f"{missing[0]} is missing (make browser-deps installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return [node, str(DRIVER)]


def trusting_home(ca: Path, home: Path) -> Path:
    """A HOME whose NSS database trusts ``ca`` to identify servers.

    Chromium on Linux reads $HOME/.pki/nssdb: wss:// to a server with a
    certificate of ``ca`` is accepted, no certificate error ignored.
    """
    certutil = require_tool("certutil")
    database = home / ".pki" / "nssdb"
    database.mkdir(parents=True)
    for args in (
        ["-N", "--empty-password"],
        ["-A", "-t", "C,,", "-n", "sipproxy test CA", "-i", str(ca)],
    ):
        subprocess.run(
            [certutil, "-d", f"sql:{database}", *args],
            check=True,
            capture_output=True,
            timeout=30,
        )
    return home


def drive(
    server: str,
    tmp_path: Path,
    *,
    scenario: str = "call",
    home: Path | None = None,
    page_port: int = 0,
    timeout: float = 45,
) -> dict[str, Any]:
    """Run the two browser phones against ``server``; what call.mjs reported.

    The page is served on 127.0.0.1 port ``page_port`` (0: any free port).
    """
    command = [
        *require_browser_deps(),
        "--server",
        server,
        "--caller",
        f"sip:alice@{DOMAIN}",
        "--caller-password",
        PASSWORDS["alice"],
        "--callee",
        f"sip:bob@{DOMAIN}",
        "--callee-password",
        PASSWORDS["bob"],
        "--scenario",
        scenario,
        "--page-port",
        str(page_port),
        "--profile",
        str(tmp_path / "chromium-profile"),
        "--timeout",
        str(timeout),
    ]
    env = dict(os.environ)
    env["HOME"] = str(home or tmp_path / "home")
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout + 15,
        env=env,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    assert lines, f"call.mjs printed nothing (exit {done.returncode}):\n{done.stderr}"
    result: dict[str, Any] = json.loads(lines[-1])
    result["stderr"] = done.stderr
    result["exit"] = done.returncode
    return result


@dataclass
class BrowserProxy:
    """A sipproxy with a WebSocket listener, Alice and Bob, and call records."""

    server: RunningServer
    ws_url: str
    admin: str
    #: the port the page must be served on, when the origin is checked
    page_port: int = 0

    def records(self, count: int = 1) -> list[dict[str, Any]]:
        """GET /cdr until it holds ``count`` records (writes are asynchronous)."""
        deadline = time.monotonic() + 10
        while True:
            request = urllib.request.Request(self.admin + "/cdr")
            request.add_header("Authorization", f"Bearer {TOKEN}")
            with urllib.request.urlopen(request, timeout=10) as response:
                found: list[dict[str, Any]] = json.loads(response.read())["records"]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.1)


def start_proxy(
    tmp_path: Path, listen: str, scheme: str, *, origin: str | None = None
) -> BrowserProxy:
    """Sipproxy on UDP (for the start-up probe) and the WebSocket ``listen``.

    :param origin: the one page origin the WebSocket listener accepts, with
        ``{page_port}`` for a free port chosen here (``BrowserProxy.page_port``).
    """
    users = tmp_path / "users.htdigest"
    for user, password in PASSWORDS.items():
        write_user(users, user, DOMAIN, password)
    token = tmp_path / "admin-token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    port, ws_port, admin_port = free_port(), free_port(), free_port()
    page_port = free_port() if origin else 0
    origin = origin and origin.format(page_port=page_port)
    config = tmp_path / "sipproxy.toml"
    config.write_text(
        f'domain = ["{DOMAIN}"]\n'
        f'listen = ["udp:{port}:interface=127.0.0.1", '
        f'"{listen.format(port=ws_port)}"]\n'
        f'users = "{users}"\n'
        f'cdr = "jsonl:{tmp_path / "cdr.jsonl"}"\n'
        f'admin = "tcp:{admin_port}:interface=127.0.0.1"\n'
        f'admin-token-file = "{token}"\n'
        + (f'ws-origin = ["{origin}"]\n' if origin else "")
    )
    server = start_twistd(["--config", str(config)], port, tmp_path / "twistd.log")
    return BrowserProxy(
        server,
        f"{scheme}://127.0.0.1:{ws_port}",
        f"http://127.0.0.1:{admin_port}",
        page_port,
    )


@pytest.fixture
def ws_proxy(tmp_path: Path) -> Iterator[BrowserProxy]:
    proxy = start_proxy(tmp_path, "ws:{port}:interface=127.0.0.1", "ws")
    yield proxy
    stop(proxy.server.process)
    log = proxy.server.log_text()
    assert "Traceback" not in log, log


@pytest.fixture
def wss_proxy(tmp_path: Path) -> Iterator[tuple[BrowserProxy, TestCA]]:
    ca = TestCA(tmp_path / "ca")
    cert = ca.issue("proxy", dns=("localhost",), ips=("127.0.0.1",))
    proxy = start_proxy(
        tmp_path,
        f"wss:{{port}}:interface=127.0.0.1:privateKey={cert.key}:certKey={cert.cert}",
        "wss",
        # As an operator would: only the site serving the phone page.
        origin="http://127.0.0.1:{page_port}",
    )
    yield proxy, ca
    stop(proxy.server.process)
    log = proxy.server.log_text()
    assert "Traceback" not in log, log


def assert_call_went_through(result: dict[str, Any], proxy: BrowserProxy) -> None:
    """Both browsers heard each other, Bob saw Alice's BYE, the proxy recorded it."""
    assert result["ok"], json.dumps(result, indent=1)
    assert result["caller"]["stats"]["bytesReceived"] > 0
    assert result["callee"]["stats"]["bytesReceived"] > 0
    assert result["caller"]["ended"]["originator"] == "local"
    assert result["callee"]["ended"]["originator"] == "remote"
    # The proxy carried INVITE, 200, ACK and BYE: one answered call that the
    # caller ended, and its log lines. No line names the ACK (it gets no
    # answer), but Bob's JsSIP saw it: it reported the call confirmed.
    [record] = proxy.records()
    assert record["caller"] == "alice"
    assert record["callee"] == f"sip:bob@{DOMAIN}"
    assert (record["disposition"], record["status"]) == ("answered", 200)
    assert record["hangup_by"] == "caller"
    lines = proxy.server.log_text().splitlines()
    call_id = record["call_id"]
    assert any(
        f"INVITE {call_id} " in line and "-> 200 " in line and "call answered" in line
        for line in lines
    ), "\n".join(lines)
    assert any(f"BYE {call_id} " in line and "-> 200 " in line for line in lines)


def test_browser_page_loads_jssip_and_names_a_dead_server(tmp_path: Path) -> None:
    """Without a proxy, the page loads JsSIP and names the dead server plainly.

    This checks the browser, the page and the driver: when it passes and the
    calls below fail, the fault is the proxy's.
    """
    dead = f"ws://127.0.0.1:{free_port()}"
    result = drive(dead, tmp_path, scenario="register", timeout=30)
    assert result["jssip"], result
    assert result["browser"].startswith(("Chrome/", "HeadlessChrome/")), result
    assert not result["ok"], result
    assert result["error"] == (
        f"caller: WebSocket {dead} could not be opened or was closed"
        " (code 1006, transport error)"
    ), result


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[str]:
    """tests/browser/relay.mjs on a free port: the ws:// URL of a dumb relay."""
    node = require_browser_deps()[0]
    port = free_port()
    with (tmp_path / "relay.log").open("wb") as log:
        process = subprocess.Popen(
            [node, str(BROWSER / "relay.mjs"), str(port)],
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,
        )
    assert process.stdout is not None
    try:
        readable, _, _ = select.select([process.stdout], [], [], 10)
        assert readable, "relay did not start in 10 s"
        assert process.stdout.readline().strip() == b"ready", "relay did not start"
        yield f"ws://127.0.0.1:{port}"
    finally:
        stop(process)


def test_two_browsers_call_each_other_over_a_dumb_relay(
    relay: str, tmp_path: Path
) -> None:
    """Without a proxy, two browser phones call each other and hear each other.

    A relay passes SIP between the two WebSockets untouched: this checks the
    browsers, the page, WebRTC on loopback and the driver. When it passes and
    the calls through the proxy fail, the fault is the proxy's.
    """
    result = drive(relay, tmp_path)
    assert result["ok"], json.dumps(result, indent=1)
    assert result["caller"]["stats"]["bytesReceived"] > 0
    assert result["callee"]["stats"]["bytesReceived"] > 0
    assert result["callee"]["ended"]["originator"] == "remote"


def test_two_browsers_call_each_other_over_ws(
    ws_proxy: BrowserProxy, tmp_path: Path
) -> None:
    """Two browsers register over ws:// and call each other (RFC 7118).

    Alice calls Bob with audio, Bob answers, both receive RTP from each other
    (browser to browser), and Alice hangs up.
    """
    result = drive(ws_proxy.ws_url, tmp_path)
    assert_call_went_through(result, ws_proxy)


def test_two_browsers_call_each_other_over_wss_trusting_the_ca(
    wss_proxy: tuple[BrowserProxy, TestCA], tmp_path: Path
) -> None:
    """The same over wss://, with the proxy's CA trusted by the browser.

    As an operator's browsers trust theirs (Chromium's NSS database): no
    certificate error is ignored (RFC 7118 §5: SIP over secure WebSocket).
    """
    proxy, ca = wss_proxy
    home = trusting_home(ca.cert_path, tmp_path / "home")
    result = drive(proxy.ws_url, tmp_path, home=home, page_port=proxy.page_port)
    assert_call_went_through(result, proxy)


def test_wss_with_an_untrusted_certificate_is_refused(
    wss_proxy: tuple[BrowserProxy, TestCA], tmp_path: Path
) -> None:
    """A browser that does not trust the proxy's CA cannot connect over wss://.

    The phone cannot register: the README's certificate note.
    """
    proxy, _ = wss_proxy
    result = drive(
        proxy.ws_url,
        tmp_path,
        scenario="register",
        page_port=proxy.page_port,
        timeout=30,
    )
    assert not result["ok"], result
    assert "could not be opened" in result["error"], result
    # Refused for the certificate, not for anything else in the handshake.
    assert "net::ERR_CERT_AUTHORITY_INVALID" in result["stderr"], result
