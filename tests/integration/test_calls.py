"""Calls through the running proxy, driven by SIPp (RFC 3261 §16).

Alice's phone is a SIPp UAS on a port of its own; she is registered by a raw
REGISTER from a Python socket whose Contact names that port. Over UDP the
proxy trusts such a Contact (its IP is the REGISTER's source IP); over TCP it
uses the REGISTER's connection, so the test closes that connection and the proxy
falls back to the Contact. The caller is a SIPp UAC. Every SIPp run is bounded
(``-timeout``, ``-m``, subprocess timeouts) and uses only 127.0.0.1.
"""

from __future__ import annotations

import itertools
import re
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import (
    ROOT,
    RunningServer,
    free_port,
    read_response,
    require_tool,
    status_of,
)

pytestmark = pytest.mark.integration

BENCH = ROOT / "bench" / "scenarios"
#: SIPp's own limit per run; the subprocess limit is a little longer.
SIPP_TIMEOUT = 20
_calls = itertools.count(1)


def register(
    server: RunningServer,
    user: str,
    contact: str,
    *,
    transport: str = "udp",
    expires: int = 3600,
) -> int | None:
    """REGISTER ``user``@example.test with ``contact``; the status code.

    Over TCP the connection is closed after the answer, so the proxy can only
    reach the binding through the address its Contact names.
    """
    n = next(_calls)
    if transport == "udp":
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(5)
        sock.bind(("127.0.0.1", 0))
        local_port = sock.getsockname()[1]
        request = (
            "REGISTER sip:example.test SIP/2.0\r\n"
            f"Via: SIP/2.0/{transport.upper()} 127.0.0.1:{local_port}"
            f";branch=z9hG4bKreg{n};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:{user}@example.test>;tag=reg{n}\r\n"
            f"To: <sip:{user}@example.test>\r\n"
            f"Call-ID: register-{user}-{n}\r\n"
            "CSeq: 1 REGISTER\r\n"
            f"Contact: {contact}\r\n"
            f"Expires: {expires}\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        if transport == "udp":
            sock.sendto(request, ("127.0.0.1", server.port))
            return status_of(sock.recv(65536))
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(request)
        return status_of(read_response(sock))


def _port_taken(port: int, transport: str) -> bool:
    kind = socket.SOCK_DGRAM if transport == "u1" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


@dataclass
class Sipp:
    """One SIPp run: its process and the files it writes."""

    name: str
    process: subprocess.Popen[bytes]
    directory: Path

    @property
    def messages(self) -> str:
        """Everything it sent and received (``-trace_msg``)."""
        path = self.directory / f"{self.name}-messages.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def received(self, start_line: str) -> list[str]:
        """The messages it received whose first line starts with ``start_line``."""
        found: list[str] = []
        for block in self.messages.split("----------------------------------------"):
            _, marker, text = block.partition("message received")
            if not marker:
                continue
            message = text.split("\n", 1)[1].lstrip() if "\n" in text else ""
            if message.startswith(start_line):
                found.append(message)
        return found

    def wait(self, timeout: float = SIPP_TIMEOUT + 10) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise AssertionError(
                f"{self.name} did not finish\n{self.report()}"
            ) from None

    def report(self) -> str:
        """What to show when it failed: its output, errors and messages."""
        output = self.directory / f"{self.name}-output.log"
        out = output.read_bytes() if output.exists() else b""
        errors = self.directory / f"{self.name}-errors.log"
        error_text = errors.read_text(errors="replace") if errors.exists() else ""
        return (
            f"--- {self.name} output\n{out.decode(errors='replace')[-3000:]}\n"
            f"--- {self.name} errors\n{error_text[-3000:]}\n"
            f"--- {self.name} messages\n{self.messages[-6000:]}"
        )


class SippRunner:
    """Starts SIPp instances for one test and stops any left at the end."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.executable = require_tool("sipp")
        self.started: list[Sipp] = []

    def start(
        self,
        name: str,
        scenario: str,
        args: Sequence[str],
        *,
        transport: str = "u1",
        timeout: int = SIPP_TIMEOUT,
    ) -> Sipp:
        command = [
            self.executable,
            *args,
            "-sf",
            str(BENCH / scenario),
            "-t",
            transport,
            "-i",
            "127.0.0.1",
            "-timeout",
            str(timeout),
            "-timeout_error",
            "-nostdin",
            "-trace_msg",
            "-message_file",
            str(self.directory / f"{name}-messages.log"),
            "-trace_err",
            "-error_file",
            str(self.directory / f"{name}-errors.log"),
        ]
        # A file, not a pipe: SIPp redraws its screen while it runs, and a full
        # pipe nobody reads would stop it.
        with (self.directory / f"{name}-output.log").open("wb") as output:
            process = subprocess.Popen(
                command, stdout=output, stderr=subprocess.STDOUT, cwd=self.directory
            )
        sipp = Sipp(name, process, self.directory)
        self.started.append(sipp)
        return sipp

    def uas(
        self,
        name: str,
        port: int,
        *,
        scenario: str = "call-uas.xml",
        transport: str = "u1",
        timeout: int = SIPP_TIMEOUT,
    ) -> Sipp:
        """A callee listening on ``port``; returns once it is bound."""
        sipp = self.start(
            name,
            scenario,
            ["-p", str(port), "-m", "1"],
            transport=transport,
            timeout=timeout,
        )
        until = time.monotonic() + 10
        while not _port_taken(port, transport):
            if sipp.process.poll() is not None or time.monotonic() > until:
                raise AssertionError(f"{name} did not start\n{sipp.report()}")
            time.sleep(0.05)
        return sipp

    def uac(
        self,
        name: str,
        server: RunningServer,
        user: str,
        *,
        scenario: str = "call-uac.xml",
        transport: str = "u1",
    ) -> Sipp:
        """A caller calling ``user``@example.test through the proxy, once."""
        return self.start(
            name,
            scenario,
            [
                f"127.0.0.1:{server.port}",
                "-p",
                str(free_port()),
                "-s",
                user,
                "-key",
                "domain",
                "example.test",
                "-d",
                "200",
                "-m",
                "1",
            ],
            transport=transport,
        )

    def stop_all(self) -> None:
        for sipp in self.started:
            if sipp.process.poll() is None:
                sipp.process.kill()
                sipp.process.wait(10)


@pytest.fixture
def sipp(tmp_path: Path) -> Iterator[SippRunner]:
    runner = SippRunner(tmp_path)
    yield runner
    runner.stop_all()


def assert_ok(*runs: Sipp) -> None:
    """Every run exited 0 (its scenario completed); the reports otherwise."""
    codes = [run.wait() for run in runs]
    if any(codes):
        raise AssertionError(
            f"exit codes {codes}\n" + "\n".join(run.report() for run in runs)
        )


def header_values(message: str, name: str) -> list[str]:
    """Every value of header ``name`` in a traced message (one per line)."""
    head = message.split("\n\n", 1)[0].split("\r\n\r\n", 1)[0]
    values: list[str] = []
    for line in head.splitlines()[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            values.extend(v.strip() for v in re.split(r",(?![^<]*>)", value))
    return values


def test_basic_call_is_record_routed(server: RunningServer, sipp: SippRunner) -> None:
    """Alice registers; a call to her rings her phone, is answered and hung up.

    The INVITE the callee gets carries our Record-Route (§16.6 step 4) with the
    proxy's address and ``lr``, so the ACK and BYE come through the proxy too.
    """
    uas_port = free_port()
    contact = f"<sip:alice@127.0.0.1:{uas_port}>"
    assert register(server, "alice", contact) == 200
    callee = sipp.uas("callee", uas_port)
    caller = sipp.uac("caller", server, "alice")
    assert_ok(caller, callee)

    [invite] = callee.received("INVITE ")
    routes = header_values(invite, "Record-Route")
    assert routes, invite
    assert all(f"127.0.0.1:{server.port}" in r and ";lr" in r for r in routes), routes
    assert callee.received("ACK ")
    assert callee.received("BYE ")


def test_the_latest_registration_rings(server: RunningServer, sipp: SippRunner) -> None:
    """Two phones for alice: sequential forking tries the newest binding first.

    It answers, so the older phone never hears of the call.
    """
    old_port, new_port = free_port(), free_port()
    assert register(server, "alice", f"<sip:alice@127.0.0.1:{old_port}>") == 200
    assert register(server, "alice", f"<sip:alice@127.0.0.1:{new_port}>") == 200
    idle = sipp.uas("old-phone", old_port, timeout=8)
    callee = sipp.uas("new-phone", new_port)
    caller = sipp.uac("caller", server, "alice")
    assert_ok(caller, callee)
    assert callee.received("INVITE ")
    assert idle.wait() != 0, idle.report()  # timed out waiting for a call
    assert not idle.received("INVITE "), idle.messages
    assert idle.messages == ""


def test_unknown_user_gets_100_then_404(server: RunningServer) -> None:
    """An INVITE for a user nobody registered: 100 Trying at once, then 404.

    The ACK for the 404 is absorbed by the proxy's server transaction (§17.2.1):
    the 404 is not sent again.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        via = f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKnobody1;rport\r\n"
        common = (
            "Max-Forwards: 70\r\n"
            "From: <sip:caller@example.test>;tag=caller1\r\n"
            "To: <sip:nobody@example.test>{to_tag}\r\n"
            "Call-ID: unknown-user-1\r\n"
        )
        invite = (
            "INVITE sip:nobody@example.test SIP/2.0\r\n"
            + via
            + common.format(to_tag="")
            + "CSeq: 1 INVITE\r\n"
            f"Contact: <sip:caller@127.0.0.1:{port}>\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        sock.sendto(invite.encode(), ("127.0.0.1", server.port))
        responses = [sock.recv(65536) for _ in range(2)]
        assert [status_of(r) for r in responses] == [100, 404]
        to_tag = re.search(rb"\r\nTo:[^\r]*(;tag=[^;\r]+)", responses[1])
        assert to_tag is not None, responses[1]
        ack = (
            "ACK sip:nobody@example.test SIP/2.0\r\n"
            + via
            + common.format(to_tag=to_tag[1].decode())
            + "CSeq: 1 ACK\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        sock.sendto(ack.encode(), ("127.0.0.1", server.port))
        sock.settimeout(1.5)  # Timer G would resend the 404 after 0.5 s and 1 s
        with pytest.raises(TimeoutError):
            sock.recv(65536)


@pytest.mark.parametrize("transport", ["u1", "t1"], ids=["udp", "tcp"])
def test_cancel_before_answer_gets_487(
    server: RunningServer, sipp: SippRunner, transport: str
) -> None:
    """The caller gives up while the callee rings: its CANCEL gets 200 (§16.10).

    The callee gets a CANCEL of the proxy's own and answers 487, which reaches
    the caller.
    """
    uas_port = free_port()
    if transport == "u1":
        assert register(server, "alice", f"<sip:alice@127.0.0.1:{uas_port}>") == 200
    else:
        contact = f"<sip:alice@127.0.0.1:{uas_port};transport=tcp>"
        assert register(server, "alice", contact, transport="tcp") == 200
    callee = sipp.uas(
        "callee", uas_port, scenario="cancel-uas.xml", transport=transport
    )
    caller = sipp.uac(
        "caller", server, "alice", scenario="cancel-uac.xml", transport=transport
    )
    assert_ok(caller, callee)
    [cancel] = callee.received("CANCEL ")
    [invite] = callee.received("INVITE ")
    # §9.1: the proxy's CANCEL matches the INVITE it forwarded.
    assert header_values(cancel, "Via") == header_values(invite, "Via")[:1]
    assert header_values(cancel, "CSeq") == [
        header_values(invite, "CSeq")[0].replace("INVITE", "CANCEL")
    ]
    assert callee.received("ACK ")
    [final] = caller.received("SIP/2.0 487")
    assert header_values(final, "CSeq") == ["1 INVITE"]


@pytest.mark.parametrize(
    "caller_transport", ["u1", "t1"], ids=["udp-caller", "tcp-caller"]
)
def test_call_to_a_tcp_phone(
    server: RunningServer, sipp: SippRunner, caller_transport: str
) -> None:
    """Alice's phone takes calls over TCP; the caller comes over UDP or TCP.

    Her REGISTER's connection is closed, so the proxy opens a connection to the
    address her Contact names. Calls are record-routed twice, one entry facing
    each side (the callee's with ``transport=tcp``), and the ACK and BYE cross
    the proxy over those transports.
    """
    uas_port = free_port()
    contact = f"<sip:alice@127.0.0.1:{uas_port};transport=tcp>"
    assert register(server, "alice", contact, transport="tcp") == 200
    callee = sipp.uas("callee", uas_port, transport="t1")
    caller = sipp.uac("caller", server, "alice", transport=caller_transport)
    assert_ok(caller, callee)

    [invite] = callee.received("INVITE ")
    routes = header_values(invite, "Record-Route")
    assert len(routes) == 2, routes
    assert all(f"127.0.0.1:{server.port}" in r and ";lr" in r for r in routes)
    assert ";transport=tcp" in routes[0], routes
    caller_side = ";transport=tcp" in routes[1]
    assert caller_side == (caller_transport == "t1"), routes
    assert callee.received("ACK ")
    assert callee.received("BYE ")


@pytest.mark.parametrize(
    ("caller_transport", "callee_transport"),
    [("u1", "u1"), ("t1", "u1"), ("u1", "t1"), ("t1", "t1")],
    ids=["udp-udp", "tcp-udp", "udp-tcp", "tcp-tcp"],
)
def test_callee_hangs_up(
    server: RunningServer,
    sipp: SippRunner,
    caller_transport: str,
    callee_transport: str,
) -> None:
    """The callee's BYE follows its route set back through the proxy.

    Its last Route entry is the one facing the caller, carrying the caller's
    flow: over TCP that is the caller's own connection (RFC 5626 §5.3), since
    a phone's TCP source port takes no requests.
    """
    uas_port = free_port()
    if callee_transport == "u1":
        assert register(server, "alice", f"<sip:alice@127.0.0.1:{uas_port}>") == 200
    else:
        contact = f"<sip:alice@127.0.0.1:{uas_port};transport=tcp>"
        assert register(server, "alice", contact, transport="tcp") == 200
    callee = sipp.uas(
        "callee", uas_port, scenario="hangup-uas.xml", transport=callee_transport
    )
    caller = sipp.uac(
        "caller", server, "alice", scenario="hangup-uac.xml", transport=caller_transport
    )
    assert_ok(caller, callee)
    [bye] = caller.received("BYE ")
    assert header_values(bye, "Route") == []  # §16.4/§16.12: both ours, removed
    [ok] = callee.received("SIP/2.0 200")[-1:]
    assert header_values(ok, "CSeq") == ["1 BYE"]
