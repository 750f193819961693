"""SIP over TLS through a running twistd (RFC 3261 §26, RFC 5922, RFC 5630).

A test CA and certificates are made at test time (tests/tlsutil.py). Phones on
TLS are Python ``ssl`` clients driving the SIP exchange by hand (Debian's SIPp
is built without TLS); UDP phones are SIPp. Trunks are Python ``ssl`` servers
in a thread. Everything runs on 127.0.0.1 with bounded waits.
"""

from __future__ import annotations

import itertools
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sipproxy.sip.message import Request, Response
from sipproxy.sip.parser import parse_message
from tests.integration.conftest import (
    RunningServer,
    free_port,
    require_tool,
    start_twistd,
    stop,
)
from tests.integration.test_calls import SippRunner, assert_ok, register
from tests.support import SDP, in_dialog, uas_answer
from tests.tlsutil import Issued, TestCA

pytestmark = pytest.mark.integration

_n = itertools.count(1)


@dataclass
class TLSServer:
    """The proxy under test and the port of its TLS listener."""

    running: RunningServer
    tls_port: int
    ca: TestCA

    def log_text(self) -> str:
        return self.running.log_text()


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def start(tmp_path: Path, ca: TestCA) -> Iterator[Callable[..., TLSServer]]:
    """Start the proxy with UDP, TCP and TLS listeners (plus any arguments)."""
    started: list[RunningServer] = []
    proxy = ca.issue("proxy", dns=("example.test",), ips=("127.0.0.1",))

    def run(*extra: str, config: str | None = None, tls_options: str = "") -> TLSServer:
        port, tls_port = free_port(), free_port()
        args = [
            "--domain",
            "example.test",
            "--listen",
            f"udp:{port}:interface=127.0.0.1",
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            "--listen",
            f"tls:{tls_port}:interface=127.0.0.1:privateKey={proxy.key}"
            f":certKey={proxy.cert}{tls_options}",
            "--tls-ca",
            str(ca.cert_path),
            *extra,
        ]
        if config is not None:
            path = tmp_path / "sipproxy.toml"
            path.write_text(config)
            args += ["--config", str(path)]
        running = start_twistd(args, port, tmp_path / f"twistd-{len(started)}.log")
        started.append(running)
        return TLSServer(running, tls_port, ca)

    yield run
    for running in started:
        stop(running.process)
        assert "Traceback" not in running.log_text(), running.log_text()


@pytest.fixture
def sipp(tmp_path: Path) -> Iterator[SippRunner]:
    runner = SippRunner(tmp_path)
    yield runner
    runner.stop_all()


class TLSPhone:
    """A phone on one TLS connection to the proxy, speaking SIP by hand."""

    def __init__(
        self, server: TLSServer, user: str, certificate: Issued | None = None
    ) -> None:
        context = ssl.create_default_context(cafile=str(server.ca.cert_path))
        if certificate is not None:
            context.load_cert_chain(str(certificate.cert), str(certificate.key))
        raw = socket.create_connection(("127.0.0.1", server.tls_port), timeout=10)
        self.sock = context.wrap_socket(raw, server_hostname="example.test")
        self.sock.settimeout(15)
        self.user = user
        self.local_port = self.sock.getsockname()[1]
        self.buffer = b""

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def receive(self) -> Request | Response:
        """The next whole message on the connection (Content-Length framing)."""
        while True:
            self.buffer = self.buffer.lstrip(b"\r\n")
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if sep:
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() in (b"content-length", b"l"):
                        length = int(value.strip())
                if len(rest) >= length:
                    self.buffer = rest[length:]
                    return parse_message(head + sep + rest[:length], stream=True)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the proxy closed the connection")
            self.buffer += chunk

    def final(self) -> Response:
        """Skip provisional responses; the first final one."""
        while True:
            message = self.receive()
            assert isinstance(message, Response), message
            if message.status >= 200:
                return message

    def via(self) -> str:
        return (
            f"Via: SIP/2.0/TLS 127.0.0.1:{self.local_port}"
            f";branch=z9hG4bKtls{next(_n)};rport\r\n"
        )

    def register(self, contact: str) -> Response:
        n = next(_n)
        self.send(
            (
                "REGISTER sip:example.test SIP/2.0\r\n"
                + self.via()
                + "Max-Forwards: 70\r\n"
                f"From: <sip:{self.user}@example.test>;tag=r{n}\r\n"
                f"To: <sip:{self.user}@example.test>\r\n"
                f"Call-ID: tls-reg-{n}\r\n"
                "CSeq: 1 REGISTER\r\n"
                f"Contact: {contact}\r\n"
                "Expires: 600\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode()
        )
        return self.final()

    def answer(self, request: Request, status: int, contact: str) -> None:
        """Answer ``request`` as its UAS (tests.support.uas_answer)."""
        self.send(uas_answer(request, status, contact, "tlsphone").to_bytes())


def _in_dialog(
    method: str, phone: TLSPhone, ok: Response, call_id: str, cseq: int
) -> bytes:
    """ACK or BYE inside the dialog ``ok`` set up: Route set and remote target."""
    return in_dialog(method, phone.via(), phone.user, ok, call_id, cseq)


def test_register_over_tls(start: Callable[..., TLSServer]) -> None:
    """A phone registers over TLS; the proxy's certificate verifies for its name."""
    server = start()
    phone = TLSPhone(server, "alice")
    try:
        ok = phone.register(f"<sip:alice@127.0.0.1:{free_port()};transport=tls>")
    finally:
        phone.close()
    assert ok.status == 200
    assert "transport=tls" in (ok.headers.get("contact") or "")


def test_udp_phone_calls_tls_phone_behind_nat(
    start: Callable[..., TLSServer], sipp: SippRunner
) -> None:
    """The callee's Contact is dead; the call reaches it over its TLS connection.

    The flow it registered on carries the INVITE, ACK and BYE (RFC 5626 §5.3);
    the proxy bridges UDP and TLS with two Record-Route entries (§16.6 step 4).
    """
    server = start()
    phone = TLSPhone(server, "alice")
    contact = f"<sip:alice@127.0.0.1:{free_port()};transport=tls>"  # nobody there
    try:
        assert phone.register(contact).status == 200
        caller = sipp.uac("caller", server.running, "alice")
        invite = phone.receive()
        assert isinstance(invite, Request)
        assert invite.method == "INVITE"
        record_routes = invite.headers.get_all("record-route")
        assert len(record_routes) == 2, record_routes
        assert "transport=tls" in record_routes[0]  # faces the TLS callee
        assert "transport=" not in record_routes[1]  # faces the UDP caller
        assert invite.top_via.transport.upper() == "TLS"
        phone.answer(invite, 180, contact)
        phone.answer(invite, 200, contact)
        ack = phone.receive()
        assert isinstance(ack, Request)
        assert ack.method == "ACK"
        bye = phone.receive()
        assert isinstance(bye, Request)
        assert bye.method == "BYE"
        phone.answer(bye, 200, contact)
        assert_ok(caller)
    finally:
        phone.close()


def test_tls_phone_calls_udp_phone(
    start: Callable[..., TLSServer], sipp: SippRunner
) -> None:
    """INVITE, ACK and BYE from a TLS phone reach a UDP phone and back."""
    server = start()
    bob_port = free_port()
    callee = sipp.uas("callee", bob_port)
    assert register(server.running, "bob", f"<sip:bob@127.0.0.1:{bob_port}>") == 200
    phone = TLSPhone(server, "alice")
    call_id = f"tls-call-{next(_n)}"
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
                f"Contact: <sip:alice@127.0.0.1:{phone.local_port};transport=tls>\r\n"
                "Content-Type: application/sdp\r\n"
                f"Content-Length: {len(SDP)}\r\n\r\n"
            ).encode()
            + SDP
        )
        ok = phone.final()
        assert ok.status == 200
        record_routes = ok.headers.get_all("record-route")
        assert len(record_routes) == 2, record_routes
        assert "transport=tls" in record_routes[1]  # faces the TLS caller
        phone.send(_in_dialog("ACK", phone, ok, call_id, 1))
        phone.send(_in_dialog("BYE", phone, ok, call_id, 2))
        assert phone.final().status == 200
        assert_ok(callee)
    finally:
        phone.close()


@dataclass
class TLSTrunk:
    """A TLS server with a given certificate; it answers every INVITE with 486."""

    issued: Issued
    sock: socket.socket = field(init=False)
    received: list[bytes] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(self.issued.cert), str(self.issued.key))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(5)
        self.sock.settimeout(20)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            raw, _ = self.sock.accept()
        except OSError:
            return
        with raw:
            raw.settimeout(10)
            try:
                conn = self.context.wrap_socket(raw, server_side=True)
                data = conn.recv(65536)
            except (OSError, ssl.SSLError) as error:
                self.errors.append(str(error))
                return
            self.received.append(data)
            request = parse_message(data, stream=True)
            assert isinstance(request, Request)
            conn.sendall(request.response(486, to_tag="trunk").to_bytes())
            conn.recv(65536)  # the proxy's ACK

    def close(self) -> None:
        self.sock.close()
        self.thread.join(15)


def _call_out(server: TLSServer) -> tuple[list[int], bytes]:
    """A UDP phone dials 9123 (routed to the trunk); the statuses it gets."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(20)
        local = sock.getsockname()[1]
        n = next(_n)
        sock.sendto(
            (
                "INVITE sip:9123@example.test SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bKout{n};rport\r\n"
                "Max-Forwards: 70\r\n"
                "From: <sip:carol@example.test>;tag=out\r\n"
                "To: <sip:9123@example.test>\r\n"
                f"Call-ID: out-{n}\r\n"
                "CSeq: 1 INVITE\r\n"
                f"Contact: <sip:carol@127.0.0.1:{local}>\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode(),
            ("127.0.0.1", server.running.port),
        )
        statuses: list[int] = []
        while not statuses or statuses[-1] < 200:
            data = sock.recv(65536)
            response = parse_message(data)
            assert isinstance(response, Response)
            statuses.append(response.status)
        return statuses, data


def _trunk_config(port: int) -> str:
    return (
        "[[dialplan]]\n"
        "match = '^9(\\d+)$'\n"
        f"to = 'sip:\\1@trunk.example.test:{port};transport=tls'\n"
    )


def test_trunk_with_the_right_certificate_gets_the_call_over_tls(
    start: Callable[..., TLSServer], ca: TestCA
) -> None:
    """Outbound TLS: verified for the name we resolved, the INVITE goes through."""
    trunk = TLSTrunk(ca.issue("trunk", dns=("trunk.example.test",)))
    try:
        server = start(config=_trunk_config(trunk.port))
        statuses, _ = _call_out(server)
    finally:
        trunk.close()
    assert statuses[-1] == 486, server.log_text()
    assert trunk.received, trunk.errors
    assert b"Via: SIP/2.0/TLS " in trunk.received[0]


def test_trunk_with_a_certificate_for_another_name_is_refused(
    start: Callable[..., TLSServer], ca: TestCA
) -> None:
    """RFC 5922: the certificate must name trunk.example.test; the call fails fast."""
    trunk = TLSTrunk(ca.issue("wrong", dns=("wrong.example.test",)))
    try:
        server = start(config=_trunk_config(trunk.port))
        statuses, _ = _call_out(server)
    finally:
        trunk.close()
    assert statuses[-1] == 480, server.log_text()
    assert not trunk.received
    assert "certificate is for wrong.example.test, not trunk.example.test" in (
        server.log_text()
    )


def test_verification_off_is_explicit_and_warned(
    start: Callable[..., TLSServer], ca: TestCA
) -> None:
    """--tls-verify no: a wrong-name trunk gets the call, and the log says so."""
    trunk = TLSTrunk(ca.issue("wrong2", dns=("wrong.example.test",)))
    try:
        server = start("--tls-verify", "no", config=_trunk_config(trunk.port))
        statuses, _ = _call_out(server)
    finally:
        trunk.close()
    assert statuses[-1] == 486, server.log_text()
    assert "tls-verify is off" in server.log_text()


def test_mutual_tls_listener_requires_a_client_certificate(
    start: Callable[..., TLSServer], ca: TestCA
) -> None:
    """caCerts= on the listener: no certificate, no SIP; one from the CA: served."""
    server = start(tls_options=f":caCerts={ca.cert_path}")
    anonymous = TLSPhone(server, "alice")
    try:
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            anonymous.register(f"<sip:alice@127.0.0.1:{free_port()};transport=tls>")
    finally:
        anonymous.close()
    client = ca.issue("sbc", dns=("sbc.example.test",))
    trusted = TLSPhone(server, "alice", certificate=client)
    try:
        contact = f"<sip:alice@127.0.0.1:{free_port()};transport=tls>"
        assert trusted.register(contact).status == 200
    finally:
        trusted.close()


def test_trunk_with_an_expired_certificate_is_refused(
    start: Callable[..., TLSServer], ca: TestCA
) -> None:
    trunk = TLSTrunk(ca.issue("old", dns=("trunk.example.test",), expired=True))
    try:
        server = start(config=_trunk_config(trunk.port))
        statuses, _ = _call_out(server)
    finally:
        trunk.close()
    assert statuses[-1] == 480, server.log_text()
    assert not trunk.received
    assert "certificate has expired" in server.log_text()


def test_sips_request_is_never_downgraded(
    start: Callable[..., TLSServer], sipp: SippRunner
) -> None:
    """RFC 3261 §26.2.2: sips:bob, registered over UDP only, is not called (480)."""
    server = start()
    bob_port = free_port()
    assert register(server.running, "bob", f"<sip:bob@127.0.0.1:{bob_port}>") == 200
    phone = TLSPhone(server, "alice")
    try:
        phone.send(
            (
                "INVITE sips:bob@example.test SIP/2.0\r\n"
                + phone.via()
                + "Max-Forwards: 70\r\n"
                "From: <sips:alice@example.test>;tag=caller\r\n"
                "To: <sips:bob@example.test>\r\n"
                "Call-ID: sips-1\r\n"
                "CSeq: 1 INVITE\r\n"
                f"Contact: <sips:alice@127.0.0.1:{phone.local_port}>\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode()
        )
        assert phone.final().status == 480
    finally:
        phone.close()


def _handshake(port: int, version: ssl.TLSVersion) -> str:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    # Let this client offer old versions at all; the refusal must be the server's.
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.minimum_version = version
    context.maximum_version = version
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw) as tls,
    ):
        return str(tls.version())


def test_only_tls_1_2_and_newer_are_accepted(start: Callable[..., TLSServer]) -> None:
    server = start()
    assert _handshake(server.tls_port, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    assert _handshake(server.tls_port, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
    for old in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        with pytest.raises(ssl.SSLError):
            _handshake(server.tls_port, old)


def test_openssl_s_client_sees_tls_1_2_and_newer_only(
    start: Callable[..., TLSServer],
) -> None:
    openssl = require_tool("openssl")
    server = start()

    def s_client(flag: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                openssl,
                "s_client",
                "-connect",
                f"127.0.0.1:{server.tls_port}",
                flag,
                "-cipher",
                "DEFAULT:@SECLEVEL=0",
                "-CAfile",
                str(server.ca.cert_path),
                "-brief",
            ],
            input="",
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    old = s_client("-tls1_1")
    assert old.returncode != 0, old.stdout + old.stderr
    for flag, name in (("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")):
        done = s_client(flag)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"Protocol version: {name}" in done.stdout + done.stderr
        assert "Verification: OK" in done.stdout + done.stderr
