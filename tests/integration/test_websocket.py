"""SIP over WebSocket through a running twistd (RFC 7118).

Browser phones are played by tests/wsclient.py (wsproto over a plain or TLS
socket): they register with a Contact on a random ``.invalid`` host, as JsSIP
does, so the proxy can reach them only over their connection. UDP phones are
SIPp. Everything runs on 127.0.0.1 with bounded waits.
"""

from __future__ import annotations

import hashlib
import itertools
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from wsproto.frame_protocol import CloseReason

from sipproxy.auth.htdigest import write_user
from sipproxy.sip.message import Request, Response
from sipproxy.sip.parser import parse_message
from tests.integration.conftest import (
    ROOT,
    RunningServer,
    free_port,
    start_twistd,
    status_of,
    stop,
    udp_exchange,
)
from tests.integration.test_calls import SippRunner, assert_ok, register
from tests.support import SDP, challenge_params, digest_answer, in_dialog, uas_answer
from tests.tlsutil import TestCA
from tests.wsclient import RefusedError, WSClient

pytestmark = pytest.mark.integration

_n = itertools.count(1)


@dataclass
class WSServer:
    """The proxy under test and the ports of its listeners."""

    running: RunningServer
    ws_port: int
    wss_port: int
    ca: TestCA

    @property
    def port(self) -> int:
        """The UDP and TCP port."""
        return self.running.port

    def log_text(self) -> str:
        return self.running.log_text()


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def start(tmp_path: Path, ca: TestCA) -> Iterator[Callable[..., WSServer]]:
    """Start the proxy with UDP, TCP, ws and wss listeners (plus any arguments)."""
    started: list[RunningServer] = []
    proxy = ca.issue("proxy", dns=("example.test",), ips=("127.0.0.1",))

    def run(*extra: str) -> WSServer:
        port, ws_port, wss_port = free_port(), free_port(), free_port()
        args = [
            "--domain",
            "example.test",
            "--listen",
            f"udp:{port}:interface=127.0.0.1",
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            "--listen",
            f"ws:{ws_port}:interface=127.0.0.1",
            "--listen",
            f"wss:{wss_port}:interface=127.0.0.1:privateKey={proxy.key}"
            f":certKey={proxy.cert}",
            *extra,
        ]
        running = start_twistd(args, port, tmp_path / f"twistd-{len(started)}.log")
        started.append(running)
        return WSServer(running, ws_port, wss_port, ca)

    yield run
    for running in started:
        stop(running.process)
        assert "Traceback" not in running.log_text(), running.log_text()


@pytest.fixture
def sipp(tmp_path: Path) -> Iterator[SippRunner]:
    runner = SippRunner(tmp_path)
    yield runner
    runner.stop_all()


class WSPhone:
    """A browser phone on one WebSocket connection, speaking SIP by hand."""

    def __init__(
        self,
        server: WSServer,
        user: str,
        *,
        secure: bool = False,
        origin: str | None = "http://127.0.0.1",
    ) -> None:
        context = None
        if secure:
            context = ssl.create_default_context(cafile=str(server.ca.cert_path))
            # As browsers do on every wss:// connection (the listener must not
            # fail the handshake over it: transport/tls.py).
            context.set_alpn_protocols(["http/1.1"])
        self.client = WSClient(
            server.wss_port if secure else server.ws_port,
            context=context,
            origin=origin,
        )
        self.transport = "WSS" if secure else "WS"
        #: send SIP messages in binary WebSocket messages instead of text ones
        self.binary = False
        self.user = user
        # JsSIP's habit: a random host under .invalid (RFC 6761 §6.4).
        self.host = f"{hashlib.sha1(user.encode()).hexdigest()[:12]}.invalid"
        self.contact = f"<sip:{user}@{self.host};transport={self.transport.lower()}>"

    def close(self) -> None:
        self.client.close()

    def send(self, data: bytes) -> None:
        """One SIP message, as a text message (JsSIP's way) or a binary one."""
        self.client.send(data if self.binary else data.decode())

    def receive(self, timeout: float = 15.0) -> Request | Response:
        data = self.client.receive(timeout)
        if data is None:
            raise ConnectionError("the proxy closed the connection")
        return parse_message(data)

    def final(self) -> Response:
        while True:
            message = self.receive()
            assert isinstance(message, Response), message
            if message.status >= 200:
                return message

    def via(self) -> str:
        return (
            f"Via: SIP/2.0/{self.transport} {self.host};branch=z9hG4bKws{next(_n)}\r\n"
        )

    def register(
        self, *, authorization: str = "", call_id: str = "", instance: str = ""
    ) -> Response:
        """REGISTER our Contact; with ``instance``, as an RFC 5626 outbound UA."""
        n = next(_n)
        outbound = ""
        if instance:
            # JsSIP's way: +sip.instance and reg-id, Supported: outbound.
            outbound = f';+sip.instance="<urn:uuid:{instance}>";reg-id=1'
        self.send(
            (
                "REGISTER sip:example.test SIP/2.0\r\n"
                + self.via()
                + "Max-Forwards: 70\r\n"
                f"From: <sip:{self.user}@example.test>;tag=r{n}\r\n"
                f"To: <sip:{self.user}@example.test>\r\n"
                f"Call-ID: {call_id or f'ws-reg-{n}'}\r\n"
                f"CSeq: {n} REGISTER\r\n"
                f"Contact: {self.contact}{outbound};expires=600\r\n"
                + ("Supported: path, outbound\r\n" if instance else "")
                + authorization
                + "Content-Length: 0\r\n\r\n"
            ).encode()
        )
        return self.final()

    def answer(self, request: Request, status: int) -> None:
        """Answer ``request`` as its UAS (tests.support.uas_answer)."""
        self.send(uas_answer(request, status, self.contact, "wsphone").to_bytes())


def _in_dialog(
    method: str, phone: WSPhone, ok: Response, call_id: str, cseq: int
) -> bytes:
    """ACK or BYE inside the dialog ``ok`` set up: Route set and remote target."""
    return in_dialog(method, phone.via(), phone.user, ok, call_id, cseq)


def _users_file(tmp_path: Path, user: str, password: str) -> Path:
    path = tmp_path / "users.htdigest"
    write_user(path, user, "example.test", password)
    return path


# -- registration ------------------------------------------------------------


def test_register_over_ws(start: Callable[..., WSServer]) -> None:
    """The upgrade selects "sip"; REGISTER is answered on the connection.

    The browser's Via sent-by is a .invalid host: the proxy adds received
    (RFC 3261 §18.2.1, RFC 7118 §5.2.3) and the binding keeps the Contact.
    """
    server = start()
    phone = WSPhone(server, "alice")
    try:
        assert phone.client.subprotocol == "sip"
        ok = phone.register()
    finally:
        phone.close()
    assert ok.status == 200, ok
    assert "received=127.0.0.1" in (ok.headers.get("via") or "")
    assert "transport=ws" in (ok.headers.get("contact") or "")
    # No --ws-origin: any page may use the server, and the start says so.
    assert "no ws-origin: browser pages from any origin" in server.log_text()


def test_binary_frames_carry_sip_too(start: Callable[..., WSServer]) -> None:
    """RFC 7118 §4.2: a SIP message may come in a binary message as well."""
    server = start()
    phone = WSPhone(server, "alice")
    try:
        phone.binary = True
        ok = phone.register()
    finally:
        phone.close()
    assert ok.status == 200, ok


@pytest.mark.parametrize("secure", [False, True], ids=["ws", "wss"])
def test_register_with_digest(
    start: Callable[..., WSServer], tmp_path: Path, secure: bool
) -> None:
    """A 401 challenge, then 200 for the right password, over ws and wss."""
    users = _users_file(tmp_path, "alice", "secret")
    server = start("--users", str(users))
    phone = WSPhone(server, "alice", secure=secure)
    try:
        challenge = phone.register(call_id="digest-1")
        assert challenge.status == 401
        [params] = challenge_params(challenge.to_bytes(), "www-authenticate")
        auth = "Authorization: " + digest_answer(
            params, user="alice", password="secret", method="REGISTER",
            uri="sip:example.test",
        ) + "\r\n"  # fmt: skip
        ok = phone.register(authorization=auth, call_id="digest-1")
    finally:
        phone.close()
    assert ok.status == 200, ok
    assert f"transport={'wss' if secure else 'ws'}" in (ok.headers.get("contact") or "")


# -- calls -------------------------------------------------------------------


@pytest.mark.parametrize("secure", [False, True], ids=["ws", "wss"])
def test_udp_caller_reaches_ws_phone_over_its_connection(
    start: Callable[..., WSServer], sipp: SippRunner, secure: bool
) -> None:
    """The Contact's .invalid host is unreachable; the INVITE comes on the flow.

    Two Record-Route entries bridge UDP and WebSocket (RFC 3261 §16.6 step 4):
    the one facing the phone says transport=ws (or wss), the other none.
    """
    server = start()
    phone = WSPhone(server, "alice", secure=secure)
    kind = "wss" if secure else "ws"
    try:
        assert phone.register().status == 200
        caller = sipp.uac("caller", server.running, "alice")
        invite = phone.receive()
        assert isinstance(invite, Request)
        assert invite.method == "INVITE"
        record_routes = invite.headers.get_all("record-route")
        assert len(record_routes) == 2, record_routes
        assert f"transport={kind}" in record_routes[0]  # faces the browser
        assert "transport=" not in record_routes[1]  # faces the UDP caller
        assert invite.top_via.transport.upper() == kind.upper()
        phone.answer(invite, 180)
        phone.answer(invite, 200)
        ack = phone.receive()
        assert isinstance(ack, Request)
        assert ack.method == "ACK"
        bye = phone.receive()
        assert isinstance(bye, Request)
        assert bye.method == "BYE"
        phone.answer(bye, 200)
        assert_ok(caller)
    finally:
        phone.close()


def test_ws_caller_reaches_udp_phone(
    start: Callable[..., WSServer], sipp: SippRunner
) -> None:
    """INVITE, ACK and BYE from a browser reach a UDP phone and back."""
    server = start()
    bob_port = free_port()
    callee = sipp.uas("callee", bob_port)
    assert register(server.running, "bob", f"<sip:bob@127.0.0.1:{bob_port}>") == 200
    phone = WSPhone(server, "alice")
    call_id = f"ws-call-{next(_n)}"
    try:
        phone.send(
            (
                "INVITE sip:bob@example.test SIP/2.0\r\n"
                + phone.via()
                + "Max-Forwards: 70\r\n"
                "From: <sip:alice@example.test>;tag=caller\r\n"
                "To: <sip:bob@example.test>\r\n"
                f"Call-ID: {call_id}\r\n"
                "CSeq: 1 INVITE\r\n"
                f"Contact: {phone.contact}\r\n"
                "Content-Type: application/sdp\r\n"
                f"Content-Length: {len(SDP)}\r\n\r\n"
            ).encode()
            + SDP
        )
        ok = phone.final()
        assert ok.status == 200
        record_routes = ok.headers.get_all("record-route")
        assert len(record_routes) == 2, record_routes
        assert "transport=ws" in record_routes[1]  # faces the browser caller
        assert "transport=" not in record_routes[0]  # faces the UDP callee
        phone.send(_in_dialog("ACK", phone, ok, call_id, 1))
        phone.send(_in_dialog("BYE", phone, ok, call_id, 2))
        assert phone.final().status == 200
        assert_ok(callee)
    finally:
        phone.close()


def _options_to(user: str, port: int, *, scheme: str = "sip") -> int | None:
    """OPTIONS to ``user``@example.test over UDP: the status the proxy answers."""
    n = next(_n)
    request = (
        f"OPTIONS {scheme}:{user}@example.test SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKopt{n};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:probe@example.test>;tag=o{n}\r\n"
        f"To: <sip:{user}@example.test>\r\n"
        f"Call-ID: ws-options-{n}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    return status_of(udp_exchange(request, port, timeout=5))


def test_closed_connection_makes_the_phone_unreachable_until_it_registers_again(
    start: Callable[..., WSServer],
) -> None:
    """Connection gone: 480, no DNS for the .invalid host; a new connection works.

    The phone is an RFC 5626 outbound UA (+sip.instance, reg-id): registering
    again over the new connection replaces the binding of the old one.
    """
    server = start()
    instance = "6d1ad2a5-0c4b-4a43-9a2a-6c1f0e6c9b11"
    phone = WSPhone(server, "alice")
    first = phone.register(instance=instance)
    assert first.status == 200
    assert "outbound" in (first.headers.get("require") or "")
    phone.close()
    time.sleep(0.3)  # the proxy notices the close
    assert _options_to("alice", server.port) == 480
    again = WSPhone(server, "alice")
    try:
        ok = again.register(instance=instance)
        assert ok.status == 200
        assert len(ok.headers.get_all("contact")) == 1, ok  # replaced, not added
        # The OPTIONS reaches the phone over its new connection; it answers.
        found: list[int | None] = []

        def answer_one() -> None:
            request = again.receive()
            assert isinstance(request, Request)
            again.answer(request, 200)

        thread = threading.Thread(target=answer_one, daemon=True)
        thread.start()
        found.append(_options_to("alice", server.port))
        thread.join(10)
        assert found == [200]
    finally:
        again.close()
    assert "no SIP server found in DNS" not in server.log_text()


def test_sips_reaches_a_browser_only_over_wss(start: Callable[..., WSServer]) -> None:
    """RFC 3261 §26.2.2: a ws binding is no TLS path; a wss one is."""
    server = start()
    plain = WSPhone(server, "alice")
    secure = WSPhone(server, "bob", secure=True)
    try:
        assert plain.register().status == 200
        assert secure.register().status == 200
        assert _options_to("alice", server.port, scheme="sips") == 480
        found: list[int | None] = []
        received: list[Request] = []

        def answer_one() -> None:
            request = secure.receive()
            assert isinstance(request, Request)
            received.append(request)
            secure.answer(request, 200)

        thread = threading.Thread(target=answer_one, daemon=True)
        thread.start()
        found.append(_options_to("bob", server.port, scheme="sips"))
        thread.join(10)
        assert found == [200]
        assert received[0].top_via.transport.upper() == "WSS"
    finally:
        plain.close()
        secure.close()


# -- the upgrade and the frames ------------------------------------------------


def test_upgrade_without_the_sip_subprotocol_is_refused(
    start: Callable[..., WSServer],
) -> None:
    server = start()
    with pytest.raises(RefusedError) as refused:
        WSClient(server.ws_port, subprotocols=("chat",))
    assert refused.value.status == 400


def test_origin_not_allowed_is_refused(start: Callable[..., WSServer]) -> None:
    """--ws-origin: a page from another site gets 403; an allowed one gets in."""
    server = start("--ws-origin", "https://phone.example.test")
    with pytest.raises(RefusedError) as refused:
        WSClient(server.ws_port, origin="https://evil.example")
    assert refused.value.status == 403
    allowed = WSClient(server.ws_port, origin="https://phone.example.test")
    allowed.close()
    assert "refused ws upgrade" in server.log_text()
    assert "no ws-origin" not in server.log_text()


def test_oversize_message_closes_the_connection(
    start: Callable[..., WSServer],
) -> None:
    """A message over --max-message-size: close 1009, connection gone."""
    server = start("--max-message-size", "4096")
    client = WSClient(server.ws_port)
    try:
        client.send("x" * 5000)
        assert client.receive(5) is None
        assert client.closed_with == CloseReason.MESSAGE_TOO_BIG
        assert client.closed()
    finally:
        client.close()


def test_malformed_frame_closes_the_connection(
    start: Callable[..., WSServer],
) -> None:
    """An unmasked client frame (RFC 6455 §5.1): close 1002, connection gone."""
    server = start()
    client = WSClient(server.ws_port)
    try:
        client.send_raw(b"\x81\x05hello")  # FIN + text, no mask bit
        assert client.receive(5) is None
        assert client.closed_with == CloseReason.PROTOCOL_ERROR
        assert client.closed()
    finally:
        client.close()


def test_ping_is_answered(start: Callable[..., WSServer]) -> None:
    server = start()
    client = WSClient(server.ws_port)
    try:
        client.ping(b"are you there")
        client.send("\r\n\r\n")  # a CRLF keepalive comes back as CRLF
        assert client.receive(5) == b"\r\n"
        assert client.pongs == [b"are you there"]
    finally:
        client.close()


def test_total_connection_cap(start: Callable[..., WSServer]) -> None:
    """Beyond --max-connections the upgrade never happens: closed at once."""
    server = start("--max-connections", "2")
    first, second = WSClient(server.ws_port), WSClient(server.ws_port)
    try:
        with pytest.raises((RefusedError, ConnectionError, OSError)):
            WSClient(server.ws_port, timeout=5)
    finally:
        first.close()
        second.close()
    assert "refused 1 ws connection(s)" in server.log_text()


def test_per_source_connection_cap(start: Callable[..., WSServer]) -> None:
    """One source holds at most 500 connections (guard.ConnectionLimiter)."""
    server = start()
    held: list[socket.socket] = []
    try:
        for _ in range(499):
            held.append(socket.create_connection(("127.0.0.1", server.ws_port), 5))
        fivehundredth = WSClient(server.ws_port)  # within the cap: upgraded
        assert fivehundredth.subprotocol == "sip"
        with pytest.raises((RefusedError, ConnectionError, OSError)):
            WSClient(server.ws_port, timeout=5)  # the 501st: closed at once
        fivehundredth.close()
    finally:
        for sock in held:
            sock.close()
    assert "connections from this source already" in server.log_text()


def test_slow_upgrade_is_closed_at_the_deadline(
    start: Callable[..., WSServer],
) -> None:
    """--message-timeout covers the HTTP upgrade: a slowloris upgrade is cut off."""
    server = start("--message-timeout", "1")
    client = WSClient(server.ws_port, upgrade=False)
    try:
        client.send_raw(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        started = time.monotonic()
        assert client.closed(5)
        assert time.monotonic() - started < 4
    finally:
        client.close()
    assert "the WebSocket upgrade not finished within 1" in server.log_text()


def test_the_websocket_bench_runs() -> None:
    """bench/ws_ramp.py still drives the server (no timing asserted here)."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.ws_ramp", "--quick", "--transport", "ws"],
        cwd=ROOT, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "ws: highest clean 200/s" in done.stdout, done.stdout
