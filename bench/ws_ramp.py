"""A REGISTER ramp over WebSocket (RFC 7118), and over TCP and UDP to compare.

    python -m bench.ws_ramp --transport ws
    python -m bench.ws_ramp --transport all --start-rate 250 --step 250
    python -m bench.ws_ramp --quick

SIPp speaks no WebSocket, so the load generator is this module: one Python
process (pinned to CPU 1, the server to CPU 0, as in bench.sipp_ramp) holding
``--connections`` connections (ws: upgraded with the sip subprotocol, wsproto as
the browser's side; tcp: Content-Length framing; udp: one socket each), sending
one REGISTER per call for a new AOR (like bench/scenarios/register.xml) at the
offered rate, spread over the connections, and timing each 200 by its Call-ID.
The same generator runs the tcp and udp ramps, so the three figures compare
the server's transports and not two load generators. A step is clean when
fewer than 1% of REGISTERs failed or went unanswered and the answers kept up
with the offered rate (>= 95%); the ramp stops at the first unclean step. Per
step: offered and achieved rate, failures, p50/p99 response time, server CPU %
and memory. Every loop is bounded in count and time; only loopback is used.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import selectors
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)

from bench.sipp_ramp import (
    DOMAIN,
    ROOT,
    TWISTD,
    Server,
    _percentile,
    _wait_serving,
    free_port,
    load_average,
    memory_mib,
    pinned,
)

_CALL_ID = re.compile(rb"\r\n(?:Call-ID|i)\s*:\s*([^\r\n]+)", re.IGNORECASE)
_LENGTH = re.compile(rb"\r\n(?:Content-Length|l)\s*:\s*(\d+)", re.IGNORECASE)
#: seconds after a step's last REGISTER that late answers are still waited for
DRAIN = 2.0


@dataclass
class Step:
    """What one rate step measured."""

    transport: str
    offered: int
    achieved: float
    sent: int
    answered: int
    failed: int
    p50_ms: float
    p99_ms: float
    server_cpu_percent: float
    server_pss_mib: float

    @property
    def clean(self) -> bool:
        """< 1% failed or unanswered, and answers at >= 95% of the offered rate."""
        lost = self.sent - self.answered
        return (
            self.sent > 0
            and self.failed + lost < 0.01 * self.sent
            and self.achieved >= 0.95 * self.offered
        )

    @property
    def cpu_ms_per_call(self) -> float:
        if not self.achieved:
            return 0.0
        return 10 * self.server_cpu_percent / self.achieved


def start_server(workdir: Path, port: int, ws_port: int) -> Server:
    """Sipproxy on CPU 0 with udp and tcp on ``port`` and ws on ``ws_port``."""
    argv = [
        TWISTD, "-n", "--pidfile=", "sipproxy",
        "--domain", DOMAIN,
        "--listen", f"udp:{port}:interface=127.0.0.1",
        "--listen", f"tcp:{port}:interface=127.0.0.1",
        "--listen", f"ws:{ws_port}:interface=127.0.0.1",
        "--location", "memory:",
        # The per-source limit protects a public server; the bench measures
        # the server itself, from one source address.
        "--rate-limit", "0",
    ]  # fmt: skip
    log = workdir / "server.log"
    process = subprocess.Popen(
        pinned(0, argv), stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT
    )
    _wait_serving(process, log, port)
    return Server("sipproxy", port, [process])


class Link:
    """One connection (or UDP socket) of the generator: whole messages out and in."""

    def __init__(self, transport: str, port: int) -> None:
        self.transport = transport
        kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
        self.sock = socket.socket(socket.AF_INET, kind)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        self.local_port = self.sock.getsockname()[1]
        self.buffer = b""
        self.ws: WSConnection | None = None
        if transport == "ws":
            self.ws = WSConnection(ConnectionType.CLIENT)
            self.sock.sendall(
                self.ws.send(
                    Request(host="127.0.0.1", target="/", subprotocols=["sip"])
                )
            )
            while True:  # bounded by the socket's timeout
                data = self.sock.recv(65536)
                if not data:
                    raise SystemExit("the server closed the WebSocket upgrade")
                self.ws.receive_data(data)
                events = list(self.ws.events())
                if any(isinstance(e, RejectConnection) for e in events):
                    raise SystemExit("the server refused the WebSocket upgrade")
                if any(isinstance(e, AcceptConnection) for e in events):
                    break
        self.sock.setblocking(False)

    def send(self, message: bytes) -> None:
        if self.ws is not None:
            message = self.ws.send(TextMessage(data=message.decode()))
        self.sock.setblocking(True)
        try:
            self.sock.sendall(message)
        finally:
            self.sock.setblocking(False)

    def receive(self) -> list[bytes]:
        """Whole messages read now (nothing if nothing is waiting)."""
        try:
            data = self.sock.recv(262144)
        except (BlockingIOError, InterruptedError):
            return []
        if self.transport == "udp":
            return [data]
        if self.ws is not None:
            self.ws.receive_data(data)
            out: list[bytes] = []
            for event in self.ws.events():
                if isinstance(event, TextMessage | BytesMessage):
                    payload = event.data
                    out.append(
                        payload.encode() if isinstance(payload, str) else bytes(payload)
                    )
                elif isinstance(event, Ping):
                    self.send_raw(self.ws.send(event.response()))
            return out
        self.buffer += data
        out = []
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                break
            found = _LENGTH.search(self.buffer, 0, head_end + 2)
            end = head_end + 4 + (int(found.group(1)) if found else 0)
            if len(self.buffer) < end:
                break
            out.append(self.buffer[:end])
            self.buffer = self.buffer[end:]
        return out

    def send_raw(self, data: bytes) -> None:
        self.sock.setblocking(True)
        try:
            self.sock.sendall(data)
        finally:
            self.sock.setblocking(False)

    def close(self) -> None:
        self.sock.close()


_users = itertools.count(1)


def register(link: Link) -> tuple[bytes, bytes]:
    """A REGISTER for a new AOR over ``link``, and its Call-ID."""
    n = next(_users)
    call_id = f"ws-bench-{n}".encode()
    via_host = (
        "df7jal23ls0d.invalid"
        if link.transport == "ws"
        else f"127.0.0.1:{link.local_port}"
    )
    contact = (
        f"<sip:u{n}@df7jal23ls0d.invalid;transport=ws>"
        if link.transport == "ws"
        else f"<sip:u{n}@127.0.0.1:{link.local_port};transport={link.transport}>"
    )
    message = (
        f"REGISTER sip:{DOMAIN} SIP/2.0\r\n"
        f"Via: SIP/2.0/{link.transport.upper()} {via_host};branch=z9hG4bK-b{n}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:u{n}@{DOMAIN}>;tag=b{n}\r\n"
        f"To: <sip:u{n}@{DOMAIN}>\r\n"
        f"Call-ID: ws-bench-{n}\r\n"
        "CSeq: 1 REGISTER\r\n"
        f"Contact: {contact}\r\n"
        "Expires: 3600\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    return message, call_id


def run_step(
    server: Server, links: list[Link], transport: str, rate: int, seconds: float
) -> Step:
    """Offer ``rate`` REGISTERs a second for ``seconds``; what came back."""
    selector = selectors.DefaultSelector()
    for link in links:
        selector.register(link.sock, selectors.EVENT_READ, link)
    pending: dict[bytes, float] = {}
    latencies: list[float] = []
    failed = sent = answered = 0
    first_answer = last_answer = 0.0
    cpu_before = server.cpu_seconds()[0]
    started = time.monotonic()
    end = started + seconds
    deadline = end + DRAIN
    cycle = itertools.cycle(links)
    while True:
        now = time.monotonic()
        if now >= deadline or (now >= end and not pending):
            break
        if now < end:
            due = int((now - started) * rate) - sent
            for _ in range(min(due, 1000)):  # bounded per turn
                link = next(cycle)
                message, call_id = register(link)
                pending[call_id] = time.monotonic()
                link.send(message)
                sent += 1
        for key, _ in selector.select(timeout=0.001):
            link = key.data
            for message in link.receive():
                found = _CALL_ID.search(message)
                if found is None:
                    continue
                call_id = found.group(1).strip()
                if message.startswith(b"SIP/2.0 1"):
                    continue
                at = pending.pop(call_id, None)
                if at is None:
                    continue
                received = time.monotonic()
                if not first_answer:
                    first_answer = received
                last_answer = received
                answered += 1
                if message.startswith(b"SIP/2.0 200"):
                    latencies.append(received - at)
                else:
                    failed += 1
    wall = time.monotonic() - started
    cpu = server.cpu_seconds()[0] - cpu_before
    selector.close()
    span = max(last_answer - first_answer, 1e-9)
    achieved = answered / span if answered > 1 else 0.0
    latencies.sort()
    return Step(
        transport=transport,
        offered=rate,
        achieved=round(min(achieved, answered / seconds * 1.05), 1),
        sent=sent,
        answered=answered,
        failed=failed,
        p50_ms=round(1000 * _percentile(latencies, 50), 2) if latencies else 0.0,
        p99_ms=round(1000 * _percentile(latencies, 99), 2) if latencies else 0.0,
        server_cpu_percent=round(100 * cpu / wall, 1),
        server_pss_mib=round(memory_mib(server.processes[0].pid), 1),
    )


def ramp(
    server: Server,
    transport: str,
    *,
    port: int,
    connections: int,
    rates: range,
    seconds: float,
    as_json: bool,
) -> Step | None:
    """Step the offered rate up until a step is unclean; the best clean one."""
    links = [Link(transport, port) for _ in range(connections)]
    best: Step | None = None
    try:
        for rate in rates:
            step = run_step(server, links, transport, rate, seconds)
            if as_json:
                print(json.dumps({**asdict(step), "clean": step.clean}), flush=True)
            else:
                print(_format(step), flush=True)
            if not step.clean:
                break
            best = step
            time.sleep(1.0)  # let the server settle between steps
    finally:
        for link in links:
            link.close()
    return best


def _format(step: Step) -> str:
    return (
        f"{step.transport:>3} offered {step.offered:>5}/s achieved "
        f"{step.achieved:>7.1f}/s sent {step.sent} answered {step.answered} "
        f"failed {step.failed} p50 {step.p50_ms} ms p99 {step.p99_ms} ms "
        f"cpu {step.server_cpu_percent}% pss {step.server_pss_mib} MiB "
        f"({step.cpu_ms_per_call:.2f} ms/call) {'clean' if step.clean else 'UNCLEAN'}"
    )


@contextmanager
def _server(workdir: Path) -> Iterator[tuple[Server, int]]:
    """A fresh server, and its ws port (udp and tcp: ``server.port``)."""
    port, ws_port = free_port(), free_port()
    server = start_server(workdir, port, ws_port)
    try:
        yield server, ws_port
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--transport", default="ws", choices=["ws", "tcp", "udp", "all"]
    )
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--start-rate", type=int, default=250)
    parser.add_argument("--step", type=int, default=250)
    parser.add_argument("--max-rate", type=int, default=8000)
    parser.add_argument("--step-seconds", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="two 2 s steps")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    transports = ["ws", "tcp", "udp"] if args.transport == "all" else [args.transport]
    if args.quick:
        rates = range(100, 201, 100)
        seconds = 2.0
    else:
        rates = range(args.start_rate, args.max_rate + 1, args.step)
        seconds = args.step_seconds
    cpus = os.cpu_count() or 1
    if cpus > 1:
        os.sched_setaffinity(0, {1})  # the server has CPU 0 (bench.sipp_ramp)
    summary: list[str] = []
    for transport in transports:
        print(f"# {transport}: load average {load_average()}", flush=True)
        with (
            tempfile.TemporaryDirectory(prefix="ws-ramp-") as tmp,
            _server(Path(tmp)) as (server, ws_port),
        ):
            best = ramp(
                server,
                transport,
                port=ws_port if transport == "ws" else server.port,
                connections=1 if transport == "udp" else args.connections,
                rates=rates,
                seconds=seconds,
                as_json=args.json,
            )
        summary.append(
            f"{transport}: highest clean {best.offered}/s (p99 {best.p99_ms} ms, "
            f"{best.server_cpu_percent}% CPU, {best.cpu_ms_per_call:.2f} ms/call)"
            if best is not None
            else f"{transport}: no clean step"
        )
    for line in summary:
        print(line)


if __name__ == "__main__":
    main()
