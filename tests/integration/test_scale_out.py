"""Several processes, one Redis store, one phone: reachable from every process.

A phone on a TCP connection to one process is reached from a call arriving at
another (issue 8, scale-out).

The phone is a Python TCP client whose Contact names an address nobody can reach
(192.0.2.99, TEST-NET-1): only its connection to the process it registered at
leads to it, so a call arriving elsewhere must be routed through that process.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.conftest import (
    TWISTD,
    RunningServer,
    free_port,
    start_twistd,
    status_of,
    stop,
)
from tests.location.conftest import redis_server  # noqa: F401 - a shared fixture

pytestmark = pytest.mark.integration


class MessageReader:
    """SIP messages from a stream, one at a time: a read may hold several."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self, deadline: float) -> bool:
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = self.sock.recv(65535)
        self.buffer += chunk
        return bool(chunk)

    def read(self, timeout: float = 10.0) -> bytes:
        """The next message: headers, then Content-Length bytes of body."""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buffer:
            if time.monotonic() > deadline or not self._fill(deadline):
                raise TimeoutError(f"no whole message in {timeout}s: {self.buffer!r}")
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() in (b"content-length", b"l"):
                length = int(value.strip())
        while len(rest) < length:
            if time.monotonic() > deadline or not self._fill(deadline):
                raise TimeoutError(f"body cut short: {self.buffer!r}")
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
        self.buffer = rest[length:]
        return head + b"\r\n\r\n" + rest[:length]


def headers_named(message: bytes, name: str) -> list[str]:
    values = []
    for line in message.split(b"\r\n\r\n")[0].decode().split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            values.append(value.strip())
    return values


class TcpPhone:
    """A phone registered over one TCP connection; it answers INVITEs with 200."""

    def __init__(self, port: int, user: str) -> None:
        self.user = user
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.local = self.sock.getsockname()[1]
        self.reader = MessageReader(self.sock)

    def register(self) -> bytes:
        request = (
            f"REGISTER sip:example.test SIP/2.0\r\n"
            f"Via: SIP/2.0/TCP 127.0.0.1:{self.local}"
            f";branch=z9hG4bK-reg-{self.local}\r\n"
            f"Max-Forwards: 70\r\n"
            f"From: <sip:{self.user}@example.test>;tag=phone\r\n"
            f"To: <sip:{self.user}@example.test>\r\n"
            f"Call-ID: reg-{self.local}@phone\r\n"
            f"CSeq: 1 REGISTER\r\n"
            f"Contact: <sip:{self.user}@192.0.2.99:5060;transport=tcp>\r\n"
            f"Expires: 600\r\n"
            f"Content-Length: 0\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        return self.reader.read()

    def answer_invite(self) -> bytes:
        """Read the next INVITE on the connection and answer it 200; the INVITE."""
        invite = self.reader.read()
        assert invite.startswith(b"INVITE "), invite
        lines = [
            "SIP/2.0 200 OK",
            *(f"Via: {v}" for v in headers_named(invite, "via")),
            *(f"Record-Route: {v}" for v in headers_named(invite, "record-route")),
            f"From: {headers_named(invite, 'from')[0]}",
            f"To: {headers_named(invite, 'to')[0]};tag=callee",
            f"Call-ID: {headers_named(invite, 'call-id')[0]}",
            f"CSeq: {headers_named(invite, 'cseq')[0]}",
            f"Contact: <sip:{self.user}@192.0.2.99:5060;transport=tcp>",
            "Content-Length: 0",
        ]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return invite

    def respond(self, request: bytes, status: int) -> None:
        lines = [
            f"SIP/2.0 {status} OK",
            *(f"Via: {v}" for v in headers_named(request, "via")),
            *(
                f"{name}: {headers_named(request, name)[0]}"
                for name in ("from", "to", "call-id", "cseq")
            ),
            "Content-Length: 0",
        ]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())

    def close(self) -> None:
        self.sock.close()


def call(port: int, user: str, call_id: str) -> socket.socket:
    """Send an INVITE for ``user`` over UDP to ``port``; the caller's socket."""
    caller = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    caller.bind(("127.0.0.1", 0))
    local = caller.getsockname()[1]
    request = (
        f"INVITE sip:{user}@example.test SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bK-{local};rport\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: <sip:carol@example.test>;tag=caller\r\n"
        f"To: <sip:{user}@example.test>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: 1 INVITE\r\n"
        f"Contact: <sip:carol@127.0.0.1:{local}>\r\n"
        f"Content-Length: 0\r\n\r\n"
    )
    caller.sendto(request.encode(), ("127.0.0.1", port))
    return caller


def final_response(caller: socket.socket, timeout: float = 15.0) -> bytes:
    """The first final response the caller receives (provisionals skipped)."""
    caller.settimeout(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = caller.recv(65535)
        except TimeoutError:
            break
        status = status_of(data)
        if status is not None and status >= 200:
            return data
    return b""


def final_status(caller: socket.socket, timeout: float = 15.0) -> int | None:
    return status_of(final_response(caller, timeout))


def in_dialog(method: str, ok: bytes, caller: socket.socket, cseq: int) -> bytes:
    """ACK or BYE from the caller along the route set of the 200 (§12.1.2)."""
    local = caller.getsockname()[1]
    routes = list(reversed(headers_named(ok, "record-route")))
    contact = headers_named(ok, "contact")[0].strip("<>")
    lines = [
        f"{method} {contact} SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bK-{method}{local};rport",
        *(f"Route: {r}" for r in routes),
        "Max-Forwards: 70",
        f"From: {headers_named(ok, 'from')[0]}",
        f"To: {headers_named(ok, 'to')[0]}",
        f"Call-ID: {headers_named(ok, 'call-id')[0]}",
        f"CSeq: {cseq} {method}",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def start(tmp_path: Path, name: str, port: int, args: list[str]) -> RunningServer:
    return start_twistd(
        ["--domain", "example.test", "--rate-limit", "0", *args],
        port,
        tmp_path / f"{name}.log",
    )


def test_a_phone_on_a_connection_to_a_is_called_through_b(
    tmp_path: Path,
    redis_server: int,  # noqa: F811 - the fixture imported above
) -> None:
    """B finds the binding in Redis, sees A holds the connection, routes via A."""
    location = f"redis://127.0.0.1:{redis_server}/0?prefix=so{free_port()}:"
    port_a, port_b = free_port(), free_port()
    servers = []
    phone = None
    try:
        for name, port in (("a", port_a), ("b", port_b)):
            listen = [
                *("--listen", f"udp:{port}:interface=127.0.0.1"),
                *("--listen", f"tcp:{port}:interface=127.0.0.1"),
            ]
            servers.append(
                start(tmp_path, name, port, [*listen, "--location", location])
            )
        phone = TcpPhone(port_a, "erin")
        assert status_of(phone.register()) == 200
        caller = call(port_b, "erin", "through-a@caller")
        invite = phone.answer_invite()
        vias = headers_named(invite, "via")
        # The caller's Via, B's, then A's on top: B -> A -> the phone's connection.
        assert len(vias) == 3, invite
        assert f"127.0.0.1:{port_a}" in vias[0]
        assert f"127.0.0.1:{port_b}" in vias[1]
        assert invite.split(b" ", 2)[1] == b"sip:erin@192.0.2.99:5060;transport=tcp"
        ok = final_response(caller)
        assert status_of(ok) == 200, ok
        # The dialog's requests follow both processes' Record-Routes back to
        # the phone's connection: B first (the route set), then A.
        assert len(headers_named(ok, "record-route")) == 4, ok
        caller.sendto(in_dialog("ACK", ok, caller, 1), ("127.0.0.1", port_b))
        caller.sendto(in_dialog("BYE", ok, caller, 2), ("127.0.0.1", port_b))
        assert phone.reader.read().startswith(b"ACK sip:erin@192.0.2.99")
        bye = phone.reader.read()
        assert bye.startswith(b"BYE sip:erin@192.0.2.99"), bye
        assert len(headers_named(bye, "via")) == 3, bye
        phone.respond(bye, 200)
        assert final_status(caller) == 200
        caller.close()
    finally:
        if phone is not None:
            phone.close()
        for server in servers:
            stop(server.process)
    for server in servers:
        assert "Traceback" not in server.log_text(), server.log_text()


def test_processes_share_one_port_and_reach_each_others_phones(
    tmp_path: Path,
    redis_server: int,  # noqa: F811 - the fixture imported above
) -> None:
    """--reuse-port: two processes on one port; each delivers to the phone.

    The phone's connection lands on one of them (the kernel chooses); a call
    sent to each process's own port reaches the phone on that one connection,
    so one of the two calls necessarily crossed from one process to the other.
    """
    location = f"redis://127.0.0.1:{redis_server}/0?prefix=rp{free_port()}:"
    shared = free_port()
    # One key for the cluster's flow tokens and To tags (--secret-file).
    secret = tmp_path / "cluster.key"
    secret.write_bytes(b"0123456789abcdef0123456789abcdef")
    servers = []
    phone = None
    try:
        for name in ("p1", "p2"):
            own = free_port()
            args = [
                "--reuse-port",
                # Its own port first: it sends from it (docs/scale-out.md).
                *("--listen", f"udp:{own}:interface=127.0.0.1"),
                *("--listen", f"udp:{shared}:interface=127.0.0.1"),
                *("--listen", f"tcp:{shared}:interface=127.0.0.1"),
                *("--advertise", f"sip:127.0.0.1:{own}"),
                *("--location", location),
                *("--secret-file", str(secret)),
            ]
            servers.append((own, start(tmp_path, name, own, args)))
        phone = TcpPhone(shared, "frank")
        assert status_of(phone.register()) == 200
        for number, (own, _) in enumerate(servers):
            caller = call(own, "frank", f"reuse-{number}@caller")
            invite = phone.answer_invite()
            assert headers_named(invite, "call-id") == [f"reuse-{number}@caller"]
            assert final_status(caller) == 200
            caller.close()
    finally:
        if phone is not None:
            phone.close()
        for _, server in servers:
            stop(server.process)
    for _, server in servers:
        assert "Traceback" not in server.log_text(), server.log_text()


def test_without_reuse_port_a_second_process_cannot_share_the_port(
    tmp_path: Path,
) -> None:
    """The option is what makes sharing work: without it the bind fails cleanly."""
    shared = free_port()
    first = start(
        tmp_path, "first", shared, ["--listen", f"udp:{shared}:interface=127.0.0.1"]
    )
    try:
        second = subprocess.run(
            [
                TWISTD,
                *("-n", "--pidfile=", "sipproxy", "--domain", "example.test"),
                *("--listen", f"udp:{shared}:interface=127.0.0.1"),
            ],
            capture_output=True,
            timeout=60,
            check=False,
        )
        output = second.stdout + second.stderr
        assert second.returncode != 0
        assert b"cannot listen on udp" in output, output
    finally:
        stop(first.process)
