"""SIPp load ramps against freshly started servers on loopback: sipproxy, Kamailio.

    python -m bench.sipp_ramp --scenario register --store memory --transport udp
    python -m bench.sipp_ramp --scenario all --transport all --server both
    python -m bench.sipp_ramp --quick --scenario all --transport all --server both
    python -m bench.sipp_ramp --scenario register --store redis --processes 2

Method (see docs/performance.md): the server is pinned to CPU 0 and SIPp to CPU 1
(taskset, when there are two cores); the offered rate steps up, each step lasting
``--step-seconds``; a step is *clean* when fewer than 1% of calls failed AND SIPp
retransmitted at most 1% of its requests (over UDP a server that drops first
attempts still "passes" on failures alone, because SIPp retransmits) AND SIPp
started calls at >= 95% of the offered rate (over TCP nothing is retransmitted
and nothing fails when the server falls behind: calls queue in SIPp). The
achieved rate is answers per second (the call's response-time measurement:
REGISTER->200, INVITE->200) between the first and the last answer. The ramp
stops at the first unclean step or at ``--max-rate``. Reported per step: offered
and achieved rate, failures, retransmissions, response time p50/p99 (SIPp rtd),
server CPU % and memory, and (UDP) datagrams the kernel dropped on the server's
sockets because their receive buffers were full. Every loop is bounded in count
and time; only loopback addresses are used.

Scenarios:

- ``register``: one REGISTER per call for a new AOR (no authentication).
- ``register-auth``: REGISTER, 401, REGISTER with digest credentials, 200, for
  a population of ``--users`` users (100,000): the bench writes an htdigest file
  for sipproxy (``sipproxy.auth.htdigest.format_line``) and a SIPp injection file; each
  step walks the users from the first, so from the second step on every
  REGISTER refreshes an existing binding.
- ``call``: a SIPp UAS (``call-uas.xml``, pinned to CPU 1 like the UAC, bounded
  by ``-timeout``) registered as ``bob`` (a raw REGISTER whose Contact is the
  UAS), and ``call-uac.xml -s bob -d 500`` through the proxy: INVITE, 100, 180,
  200, ACK, 0.5 s hold, BYE, 200. The UAS's retransmissions (of its 200 OK, when
  the ACK is late) count towards the 1% too.

``--server kamailio`` runs the same ramps against Kamailio 5.6 configured by
bench/kamailio/kamailio.cfg (in-memory usrloc, one UDP and one TCP worker, its
whole process tree pinned to CPU 0); ``--server both`` runs sipproxy, then
Kamailio, and prints the ratio of their highest clean rates. Kamailio keeps its
registrations in memory whatever ``--store`` says.

``--processes N`` starts N sipproxy processes sharing one port (``--reuse-port``)
and one Redis store; SIPp then uses one socket (UDP) or connection (TCP) per
call, so that the kernel spreads calls over the processes by source port.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = Path(__file__).resolve().parent / "scenarios"
KAMAILIO_CFG = Path(__file__).resolve().parent / "kamailio" / "kamailio.cfg"
TWISTD = str(Path(sys.executable).with_name("twistd"))
DOMAIN = "example.test"
#: (start, step, max) offered rates per scenario, and the same for --quick
RATES = {
    "register": (500, 500, 12000),
    "register-auth": (500, 500, 8000),
    "call": (100, 100, 2000),
}
QUICK_RATES = {
    "register": (200, 200, 400),
    "register-auth": (200, 200, 400),
    "call": (20, 20, 40),
}


@dataclass
class Step:
    """What one rate step measured."""

    offered: int
    achieved: float
    calls: int
    failed: int
    retransmissions: int
    p50_ms: float
    p99_ms: float
    server_cpu_percent: float
    server_rss_mib: float
    udp_drops: int = 0
    uas_failed: int = 0
    #: 503 answers SIPp got (the overload guard refusing; issue 13 wants none)
    refused: int = 0
    #: --processes N: each process's CPU %, in start order
    per_process_cpu: list[float] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """< 1% failed calls, <= 1% retransmitted requests, and SIPp kept up.

        Over TCP SIPp never retransmits and nothing fails when the server falls
        behind: the calls queue up in SIPp (``-l``) and the rate of answers falls
        below the offered one, so that is checked too (>= 95%).
        """
        return (
            self.calls > 0
            and self.achieved >= 0.95 * self.offered
            and self.failed + self.uas_failed < 0.01 * self.calls
            and self.retransmissions <= 0.01 * self.calls
        )


def free_port() -> int:
    """A port free for UDP and TCP on 127.0.0.1 (both are bound by the servers)."""
    for _ in range(50):  # bounded: a port free for one protocol but not the other
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise SystemExit("no free port on 127.0.0.1")


def pinned(cpu: int, argv: list[str]) -> list[str]:
    cpus = os.cpu_count() or 1
    if shutil.which("taskset") and cpus > 1:
        return ["taskset", "-c", str(cpu % cpus), *argv]
    return argv


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (Kamailio forks its workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo and len(found) < 10_000:  # bounded
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its descendants."""
    total = 0.0
    for each in process_tree(pid):
        with suppress(OSError):
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def memory_mib(pid: int) -> float:
    """Proportional set size (PSS) of ``pid`` and its descendants, in MiB.

    PSS, not RSS: Kamailio's processes share one shared-memory segment, which
    summed RSS would count once per process; for one Python process PSS is its
    RSS less its share of the shared libraries.
    """
    total = 0
    for each in process_tree(pid):
        with suppress(OSError):
            for line in Path(f"/proc/{each}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
    return total / 1024


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def udp_drops(port: int) -> int:
    """Datagrams the kernel dropped on the loopback UDP sockets bound to ``port``."""
    wanted = f":{port:04X}"
    total = 0
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(wanted):
            total += int(fields[-1])
    return total


# -- servers -------------------------------------------------------------------


@dataclass
class Server:
    """One or more server processes answering on ``port``."""

    name: str
    port: int
    processes: list[subprocess.Popen[bytes]]

    def cpu_seconds(self) -> list[float]:
        return [cpu_seconds(p.pid) for p in self.processes]

    def memory_mib(self) -> float:
        return sum(memory_mib(p.pid) for p in self.processes)

    def stop(self) -> None:
        for process in self.processes:
            with suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def _wait_serving(process: subprocess.Popen[bytes], log: Path, port: int) -> None:
    """Until the server answers an OPTIONS over UDP (any status will do)."""
    deadline = time.monotonic() + 30
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        udp.settimeout(0.5)
        local = udp.getsockname()[1]
        attempt = 0
        while time.monotonic() < deadline and process.poll() is None:
            attempt += 1
            request = (
                f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bK-up-{attempt}\r\n"
                f"Max-Forwards: 70\r\nFrom: <sip:bench@{DOMAIN}>;tag=up\r\n"
                f"To: <sip:127.0.0.1:{port}>\r\nCall-ID: up-{local}@127.0.0.1\r\n"
                f"CSeq: {attempt} OPTIONS\r\nContent-Length: 0\r\n\r\n"
            )
            udp.sendto(request.encode(), ("127.0.0.1", port))
            try:
                if udp.recv(65535).startswith(b"SIP/2.0 "):
                    return
            except TimeoutError:
                continue
    process.kill()
    raise SystemExit(f"server did not start: {log.read_text(errors='replace')}")


def start_sipproxy(
    port: int, store: str, workdir: Path, *, users: Path | None, processes: int
) -> Server:
    location = {
        "memory": "memory:",
        "sqlite": f"sqlite:{workdir / 'location.sqlite'}",
        "redis": os.environ.get("SIPPROXY_BENCH_REDIS", "redis://127.0.0.1:6379/15"),
    }[store]
    started: list[subprocess.Popen[bytes]] = []
    for index in range(processes):
        own = port
        listen: list[str] = []
        if processes > 1:
            # Each process first listens on a port of its own: it sends from
            # it and names it in Via and Record-Route, so responses and
            # in-dialog requests come back to the process that sent the request
            # (on the shared port, the kernel would pick a process by the
            # peer's address). It also records it in the bindings of its TCP
            # connections (--advertise) for the others to route by.
            own = free_port()
            listen += [
                "--reuse-port",
                "--listen", f"udp:{own}:interface=127.0.0.1",
                "--listen", f"tcp:{own}:interface=127.0.0.1",
                "--advertise", f"sip:127.0.0.1:{own};transport=tcp",
            ]  # fmt: skip
        argv = [
            TWISTD, "-n", "--pidfile=", "sipproxy",
            "--domain", DOMAIN,
            *listen,
            "--listen", f"udp:{port}:interface=127.0.0.1",
            "--listen", f"tcp:{port}:interface=127.0.0.1",
            "--location", location,
            # The per-source limit protects a public server; the bench measures
            # the server itself, from one source address.
            "--rate-limit", "0",
        ]  # fmt: skip
        if users is not None:
            argv += ["--users", str(users)]
        log = workdir / f"server-{index}.log"
        process = subprocess.Popen(
            pinned(index, argv),
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        started.append(process)
        # The shared port may be answered by a process started earlier.
        _wait_serving(process, log, own if processes > 1 else port)
    return Server("sipproxy", port, started)


def start_kamailio(port: int, workdir: Path, *, auth: bool) -> Server:
    kamailio = shutil.which("kamailio") or "/usr/sbin/kamailio"
    if not Path(kamailio).exists():
        raise SystemExit("kamailio is not installed (make bench-deps)")
    argv = [
        kamailio, "-f", str(KAMAILIO_CFG), "-DD", "-E",
        "-Y", str(workdir), "-w", str(workdir),
        "-l", f"udp:127.0.0.1:{port}", "-l", f"tcp:127.0.0.1:{port}",
        # shared memory for 100,000 registrations and the transactions of a ramp
        "-m", "512", "-M", "16",
    ]  # fmt: skip
    if auth:
        argv += ["-A", "WITH_AUTH"]
    log = workdir / "kamailio.log"
    process = subprocess.Popen(
        pinned(0, argv), stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=workdir
    )
    _wait_serving(process, log, port)
    return Server("kamailio", port, [process])


@contextmanager
def redis_for_bench(workdir: Path) -> Iterator[None]:
    """A redis-server of the bench's own, unless SIPPROXY_BENCH_REDIS names one."""
    if os.environ.get("SIPPROXY_BENCH_REDIS"):
        yield
        return
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    process = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=(workdir / "redis.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    os.environ["SIPPROXY_BENCH_REDIS"] = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        yield
    finally:
        del os.environ["SIPPROXY_BENCH_REDIS"]
        process.terminate()
        process.wait(10)


# -- the population for register-auth -------------------------------------------


def write_users(workdir: Path, count: int) -> tuple[Path, Path]:
    """An htdigest file (sipproxy) and a SIPp injection file for ``count`` users.

    User ``u<N>`` has the password ``secret-u<N>``: the rule bench/kamailio
    computes its passwords by, so both servers know the same users.
    """
    from sipproxy.auth.htdigest import format_line

    htdigest = workdir / "users.htdigest"
    injection = workdir / "users.csv"
    with htdigest.open("w") as users, injection.open("w") as fields:
        fields.write("SEQUENTIAL\n")
        for number in range(1, count + 1):
            user = f"u{number}"
            # SIPp 3.6 answers only MD5 challenges, and takes the first one
            # offered: MD5-only lines (Apache's own form) make sipproxy offer only
            # MD5, as Kamailio does. The SHA-256 HA1 is the line's last field.
            line = format_line(user, DOMAIN, f"secret-{user}").rsplit(":", 1)[0]
            users.write(line + "\n")
            # SIPp expands a keyword read from a field, not one nested in a
            # keyword's arguments: the whole [authentication] goes in the file.
            auth = f"[authentication username={user} password=secret-{user}]"
            fields.write(f"{user};{auth}\n")
    return htdigest, injection


# -- the callee for calls ---------------------------------------------------------


@dataclass
class Uas:
    """The SIPp UAS answering calls for ``bob``, and its cumulative counters."""

    process: subprocess.Popen[bytes]
    port: int
    stat: Path

    def counters(self) -> tuple[int, int]:
        """(retransmissions, failed calls) so far, from its -trace_stat file."""
        row = _last_row(self.stat)
        return int(row.get("Retransmissions(C)", 0)), int(row.get("FailedCall(C)", 0))

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def start_uas(workdir: Path, lifetime: int, transport: str) -> Uas:
    port = free_port()
    stat = workdir / "uas-stat.csv"
    stat.unlink(missing_ok=True)
    argv = [
        "sipp", "-sf", str(SCENARIOS / "call-uas.xml"),
        "-t", {"udp": "u1", "tcp": "t1"}[transport],
        "-i", "127.0.0.1", "-p", str(port),
        "-timeout", str(lifetime), "-nostdin", "-max_socket", "1000",
        "-trace_stat", "-stf", str(stat), "-fd", "1",
        "-trace_err", "-error_file", str(workdir / "uas-errors.log"),
    ]  # fmt: skip
    process = subprocess.Popen(
        pinned(1, argv),
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "uas.log").open("wb"),
    )
    time.sleep(0.5)
    if process.poll() is not None:
        raise SystemExit(f"SIPp UAS did not start: {(workdir / 'uas.log').read_text()}")
    return Uas(process, port, stat)


def register_callee(
    proxy_port: int, user: str, contact_port: int, transport: str
) -> None:
    """REGISTER ``user`` at the proxy with the UAS as its Contact.

    Over TCP the REGISTER goes on a connection that is closed at once, so the
    server reaches the UAS at its Contact (a new connection to the UAS's
    listening port), not on the REGISTER's flow.
    """
    for attempt in range(3):  # bounded: three tries, 2 s each
        kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
        with socket.socket(socket.AF_INET, kind) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(2.0)
            local = sock.getsockname()[1]
            param = "" if transport == "udp" else ";transport=tcp"
            request = (
                f"REGISTER sip:{DOMAIN} SIP/2.0\r\n"
                f"Via: SIP/2.0/{transport.upper()} 127.0.0.1:{local}"
                f";branch=z9hG4bK-bench-{attempt};rport\r\n"
                f"Max-Forwards: 70\r\n"
                f"From: <sip:{user}@{DOMAIN}>;tag=bench{attempt}\r\n"
                f"To: <sip:{user}@{DOMAIN}>\r\n"
                f"Call-ID: bench-register-{user}-{local}@127.0.0.1\r\n"
                f"CSeq: {attempt + 1} REGISTER\r\n"
                f"Contact: <sip:{user}@127.0.0.1:{contact_port}{param}>\r\n"
                f"Expires: 3600\r\n"
                f"Content-Length: 0\r\n\r\n"
            )  # fmt: skip
            try:
                if transport == "udp":
                    sock.sendto(request.encode(), ("127.0.0.1", proxy_port))
                else:
                    sock.connect(("127.0.0.1", proxy_port))
                    sock.sendall(request.encode())
                while True:  # ends on a final response or the socket timeout
                    reply = sock.recv(65535).decode(errors="replace")
                    status = reply.split(" ", 2)[1]
                    if status.startswith("1"):
                        continue
                    if status == "200":
                        return
                    first = reply.splitlines()[0]
                    raise SystemExit(f"REGISTER {user} refused: {first}")
            except (TimeoutError, ConnectionError, IndexError):
                continue
    raise SystemExit(f"REGISTER {user}: no answer from the proxy")


# -- one step ------------------------------------------------------------------


@dataclass
class Run:
    """What every step of one ramp shares."""

    scenario: str
    transport: str
    server: Server
    workdir: Path
    uas: Uas | None = None
    injection: Path | None = None
    #: SIPp uses one socket per call, so SO_REUSEPORT spreads the calls
    many_sockets: bool = False


def run_step(run: Run, rate: int, seconds: float, prefix: str) -> Step:
    calls = max(1, int(rate * seconds))
    workdir, server = run.workdir, run.server
    stat = workdir / f"{prefix}-stat.csv"
    scenario_file = SCENARIOS / (
        f"{run.scenario}-uac.xml" if run.scenario == "call" else f"{run.scenario}.xml"
    )
    mode = {"udp": "u", "tcp": "t"}[run.transport]
    mode += "n" if run.many_sockets else "1"
    argv = [
        "sipp", f"127.0.0.1:{server.port}",
        "-sf", str(scenario_file),
        "-t", mode,
        "-i", "127.0.0.1", "-p", "0",
        "-key", "domain", DOMAIN,
        "-key", "prefix", prefix,
        "-key", "expires", "3600",
        "-r", str(rate), "-rp", "1000", "-m", str(calls),
        "-l", str(max(rate * 4, 100)),
        "-timeout", str(int(seconds * 3 + 30)),
        "-max_socket", "10000" if run.many_sockets else "1000",
        "-nostdin", "-trace_stat", "-stf", str(stat), "-fd", "1",
        "-trace_rtt", "-rtt_freq", "1", "-trace_err",
        "-error_file", str(workdir / f"{prefix}-errors.log"),
    ]  # fmt: skip
    if run.injection is not None:
        # SIPp digests the URI sip:<remote ip:port> unless told: the Request-URI.
        argv += ["-inf", str(run.injection), "-auth_uri", DOMAIN]
    if run.uas:
        argv += ["-s", "bob", "-d", "500"]
    uas_before = run.uas.counters() if run.uas else (0, 0)
    drops_before = udp_drops(server.port) if run.transport == "udp" else 0
    cpu_before, started = server.cpu_seconds(), time.monotonic()
    subprocess.run(
        pinned(1, argv),
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=seconds * 3 + 60,
        check=False,
    )
    elapsed = time.monotonic() - started
    cpu = [
        100 * (after - before) / elapsed
        for before, after in zip(cpu_before, server.cpu_seconds(), strict=True)
    ]
    drops = (udp_drops(server.port) if run.transport == "udp" else 0) - drops_before
    uas_retrans = uas_failed = 0
    if run.uas:
        time.sleep(3.0)  # the UAS's calls end 2 s after the BYE; its stats every 1 s
        after = run.uas.counters()
        uas_retrans, uas_failed = after[0] - uas_before[0], after[1] - uas_before[1]
    refused = _count_503(workdir / f"{prefix}-errors.log")
    last = _last_row(stat)
    successful = int(last.get("SuccessfulCall(C)", 0))
    failed = int(last.get("FailedCall(C)", 0))
    retrans = int(last.get("Retransmissions(C)", 0))
    samples = _rtts(workdir, scenario_file.stem)
    times = sorted(rtt for _, rtt in samples)
    return Step(
        offered=rate,
        achieved=_throughput(samples),
        calls=successful + failed,
        failed=failed,
        retransmissions=retrans + uas_retrans,
        p50_ms=_percentile(times, 50),
        p99_ms=_percentile(times, 99),
        server_cpu_percent=sum(cpu),
        server_rss_mib=server.memory_mib(),
        udp_drops=drops,
        uas_failed=uas_failed,
        refused=refused,
        per_process_cpu=cpu if len(cpu) > 1 else [],
    )


def _count_503(errors: Path) -> int:
    """503s in SIPp's -trace_err file.

    SIPp logs each unexpected message whole: "... while expecting '200' (index
    1), received 'SIP/2.0 503 Service Unavailable" and the rest of it.
    """
    if not errors.exists():
        return 0
    count = 0
    with errors.open("rb") as file:
        for line in file:  # bounded by the file, which SIPp has finished writing
            count += b"received 'SIP/2.0 503 " in line
    return count


def _last_row(path: Path) -> dict[str, str]:
    """The last row of a SIPp 3.6 -trace_stat file (';'-separated, header first)."""
    if not path.exists():
        return {}
    with path.open(newline="") as file:
        rows = list(csv.DictReader(file, delimiter=";"))
    return rows[-1] if rows else {}


def _rtts(workdir: Path, stem: str) -> list[tuple[float, float]]:
    """(when, response time) in ms from SIPp's ``<file stem>_<pid>_rtt.csv``.

    SIPp 3.6.1 writes ``Date_ms;response_time_ms;rtd_no``, one row per measured
    response (``Date_ms`` counts from SIPp's start), with a 1 ms clock.
    """
    values: list[tuple[float, float]] = []
    for path in workdir.glob(f"{stem}_*_rtt.csv"):
        with path.open(newline="") as file:
            for row in csv.DictReader(file, delimiter=";"):
                try:
                    when = float(row["Date_ms"])
                    values.append((when, float(row["response_time_ms"])))
                except (KeyError, TypeError, ValueError):
                    continue
        path.unlink()
    return values


def _throughput(samples: list[tuple[float, float]]) -> float:
    """Answered calls per second between the first and the last answer."""
    if len(samples) < 2:
        return 0.0
    whens = [when for when, _ in samples]
    span = (max(whens) - min(whens)) / 1000
    return (len(samples) - 1) / span if span > 0 else 0.0


def _percentile(values: list[float], pct: int) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(len(values) * pct / 100))]


# -- one ramp --------------------------------------------------------------------


@dataclass
class Ramp:
    """How the offered rate steps up."""

    start: int
    step: int
    max_rate: int
    seconds: float

    @property
    def steps(self) -> int:
        return min(100, max(1, (self.max_rate - self.start) // self.step + 1))


def ramp(
    server_name: str, scenario: str, transport: str, store: str, ramp: Ramp,
    *, users: int, processes: int, as_json: bool,
) -> Step | None:  # fmt: skip
    """Start a server, step the load up until a step is not clean; the best step."""
    print(
        f"== {server_name} {scenario} {transport} "
        f"{'memory (usrloc)' if server_name == 'kamailio' else store}"
        f"{f' x{processes} processes' if processes > 1 else ''}"
        f"; load average {load_average()}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="sipproxy-bench-") as tmp:
        workdir = Path(tmp)
        htdigest = injection = None
        if scenario == "register-auth":
            htdigest, injection = write_users(workdir, users)
        port = free_port()
        if server_name == "kamailio":
            server = start_kamailio(port, workdir, auth=htdigest is not None)
        else:
            server = start_sipproxy(
                port, store, workdir, users=htdigest, processes=processes
            )
        run = Run(
            scenario, transport, server, workdir,
            injection=injection, many_sockets=processes > 1,
        )  # fmt: skip
        best: Step | None = None
        try:
            if scenario == "call":
                lifetime = int(ramp.steps * (ramp.seconds * 3 + 70) + 60)
                run.uas = start_uas(workdir, lifetime, transport)
                register_callee(port, "bob", run.uas.port, transport)
            rate = ramp.start
            for index in range(ramp.steps):  # bounded: at most 100 steps
                if rate > ramp.max_rate:
                    break
                step = run_step(run, rate, ramp.seconds, f"s{index}x")
                line = asdict(step) | {"clean": step.clean}
                print(json.dumps(line) if as_json else _format(step), flush=True)
                if not step.clean:
                    break
                best = step
                rate += ramp.step
        finally:
            if run.uas:
                run.uas.stop()
            server.stop()
        print(f"{server_name} {scenario} {transport}: {_summary(best, processes)}")
        return best


def _summary(best: Step | None, processes: int = 1) -> str:
    if best is None:
        return "no clean step"
    text = (
        f"highest clean rate {best.offered}/s "
        f"(p50 {best.p50_ms:.1f} ms, p99 {best.p99_ms:.1f} ms, "
        f"CPU {best.server_cpu_percent:.0f}%, {_cpu_ms(best):.2f} ms CPU per call, "
        f"memory {best.server_rss_mib:.0f} MiB)"
    )
    if processes > 1:
        text += f", {best.offered / processes:.0f}/s per process"
    return text


def _cpu_ms(step: Step) -> float:
    """Server CPU time per answered call, in ms.

    Less sensitive to a busy machine than the rates, and comparable when both
    servers reach --max-rate.
    """
    return 10 * step.server_cpu_percent / step.achieved if step.achieved else 0.0


def _format(step: Step) -> str:
    text = (
        f"offered {step.offered:6d}/s achieved {step.achieved:8.1f}/s "
        f"calls {step.calls:7d} failed {step.failed + step.uas_failed:6d} "
        f"retrans {step.retransmissions:6d} drops {step.udp_drops:6d} "
        f"503s {step.refused:6d} "
        f"p50 {step.p50_ms:7.2f} ms p99 {step.p99_ms:7.2f} ms "
        f"cpu {step.server_cpu_percent:5.1f}% mem {step.server_rss_mib:6.1f} MiB "
        f"{'clean' if step.clean else 'NOT CLEAN'}"
    )
    if step.per_process_cpu:
        text += " per-process cpu " + "/".join(
            f"{c:.0f}%" for c in step.per_process_cpu
        )
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scenario", choices=[*RATES, "all"], default="register",
        help="all: register, register-auth, call",
    )  # fmt: skip
    parser.add_argument(
        "--store", default="memory",
        help="memory, sqlite, redis, or a comma-separated list (sipproxy only)",
    )  # fmt: skip
    parser.add_argument("--transport", choices=["udp", "tcp", "all"], default="udp")
    parser.add_argument(
        "--server", choices=["sipproxy", "kamailio", "both"], default="sipproxy"
    )
    parser.add_argument("--start-rate", type=int)
    parser.add_argument("--step", type=int)
    parser.add_argument("--max-rate", type=int)
    parser.add_argument("--step-seconds", type=float)
    parser.add_argument(
        "--quick", action="store_true",
        help="smoke run: two short steps at low rates per ramp (checks it works)",
    )  # fmt: skip
    parser.add_argument(
        "--users", type=int, default=100_000, help="register-auth population"
    )
    parser.add_argument(
        "--processes", type=int, default=1,
        help="N sipproxy processes on one port (--reuse-port), Redis store",
    )  # fmt: skip
    parser.add_argument(
        "--pause", type=float, default=5.0, help="seconds between ramps"
    )
    parser.add_argument("--json", action="store_true", help="print steps as JSON lines")
    args = parser.parse_args()
    if shutil.which("sipp") is None:
        raise SystemExit("sipp is not installed (apt-get install sip-tester)")
    scenarios = list(RATES) if args.scenario == "all" else [args.scenario]
    transports = ["udp", "tcp"] if args.transport == "all" else [args.transport]
    stores = [s.strip() for s in args.store.split(",") if s.strip()]
    if any(s not in ("memory", "sqlite", "redis") for s in stores) or not stores:
        raise SystemExit("--store: memory, sqlite, redis, or a comma-separated list")
    if not 1 <= args.processes <= 16:
        raise SystemExit("--processes: 1 to 16")
    if args.processes > 1 and (stores != ["redis"] or args.server != "sipproxy"):
        raise SystemExit("--processes N needs --store redis --server sipproxy")
    if args.users < 1 or args.users > 1_000_000:
        raise SystemExit("--users: 1 to 1,000,000")
    servers = ["sipproxy", "kamailio"] if args.server == "both" else [args.server]
    results: dict[tuple[str, str, str, str], Step | None] = {}
    with (
        tempfile.TemporaryDirectory(prefix="sipproxy-bench-redis-") as tmp,
        redis_for_bench(Path(tmp))
        if "redis" in stores and "sipproxy" in servers
        else _nothing(),
    ):
        for scenario in scenarios:
            start, step, max_rate = (QUICK_RATES if args.quick else RATES)[scenario]
            steps = Ramp(
                args.start_rate or start,
                args.step or step,
                args.max_rate or max_rate,
                args.step_seconds or (2.0 if args.quick else 10.0),
            )
            if steps.start < 1 or steps.step < 1 or steps.seconds <= 0:
                raise SystemExit("rates must be >= 1, --step-seconds > 0")
            for transport in transports:
                for server in servers:
                    # Kamailio has one store: its ramp runs once per transport.
                    for store in stores if server == "sipproxy" else ["memory"]:
                        results[(scenario, transport, server, store)] = ramp(
                            server, scenario, transport, store, steps,
                            users=args.users, processes=args.processes,
                            as_json=args.json,
                        )  # fmt: skip
                        time.sleep(args.pause)
    print(f"\nsummary (load average at end {load_average()}):")
    for (scenario, transport, server, store), best in results.items():
        print(
            f"  {server:8} {scenario:13} {transport} {store:6}: "
            f"{_summary(best, args.processes)}"
        )
    if len(servers) == 2:
        for (scenario, transport, server, store), best in results.items():
            theirs = results.get((scenario, transport, "kamailio", "memory"))
            if server == "sipproxy":
                ratio = (
                    f"{best.offered / theirs.offered:.2f} (CPU per call "
                    f"{_cpu_ms(best):.2f} / {_cpu_ms(theirs):.2f} ms)"
                    if best and theirs
                    else "n/a (a side had no clean step)"
                )
                print(
                    f"ratio sipproxy/kamailio {scenario} {transport} {store}: {ratio}"
                )


@contextmanager
def _nothing() -> Iterator[None]:
    yield


if __name__ == "__main__":
    main()
