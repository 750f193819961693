"""SIPp load ramps against a freshly started sipproxy on loopback.

    python -m bench.sipp_ramp --scenario register --store memory --transport udp
    python -m bench.sipp_ramp --scenario call --store memory --transport udp

Method (see README, "Benchmarks"): the server is pinned to CPU 0 and SIPp to CPU 1
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
server CPU % and RSS, and (UDP) datagrams the kernel dropped on the server's
socket because its receive buffer was full. Every loop is bounded in count and
time; only loopback addresses are used.

``--scenario call`` also starts a SIPp UAS (``call-uas.xml``, pinned to CPU 1 like
the UAC, bounded by ``-timeout``), registers the callee ``bob`` at the proxy with a
raw UDP REGISTER whose Contact is the UAS (the proxy trusts a UDP Contact whose IP
is the REGISTER's source IP), then ramps ``call-uac.xml -s bob -d 500``. The UAS's
retransmissions (of its 200 OK, when the ACK is late) count towards the 1% too.
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
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = Path(__file__).resolve().parent / "scenarios"
TWISTD = str(Path(sys.executable).with_name("twistd"))


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
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        return int(udp.getsockname()[1])


def pinned(cpu: int, argv: list[str]) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(cpu), *argv]
    return argv


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_server(
    port: int, transport: str, store: str, workdir: Path
) -> subprocess.Popen[bytes]:
    location = {
        "memory": "memory:",
        "sqlite": f"sqlite:{workdir / 'location.sqlite'}",
        "redis": os.environ.get("SIPPROXY_BENCH_REDIS", "redis://127.0.0.1:6379/15"),
    }[store]
    argv = [
        TWISTD, "-n", "--pidfile=", "sipproxy",
        "--domain", "example.test",
        "--listen", f"{transport}:{port}:interface=127.0.0.1",
        "--location", location,
        # The per-source limit protects a public server; the bench measures the
        # server itself, from one source address.
        "--rate-limit", "0",
    ]  # fmt: skip
    log = (workdir / "server.log").open("wb")
    process = subprocess.Popen(
        pinned(0, argv), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if b"serving" in (workdir / "server.log").read_bytes():
            return process
        if process.poll() is not None:
            break
        time.sleep(0.1)
    process.kill()
    raise SystemExit(f"server did not start: {(workdir / 'server.log').read_text()}")


def udp_drops(port: int) -> int:
    """Datagrams the kernel dropped on the loopback UDP socket bound to ``port``."""
    wanted = f":{port:04X}"
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(wanted):
            return int(fields[-1])
    return 0


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


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


def start_uas(workdir: Path, lifetime: int) -> Uas:
    port = free_port()
    stat = workdir / "uas-stat.csv"
    argv = [
        "sipp", "-sf", str(SCENARIOS / "call-uas.xml"),
        "-t", "u1", "-i", "127.0.0.1", "-p", str(port),
        "-timeout", str(lifetime), "-nostdin",
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


def register_callee(proxy_port: int, user: str, contact_port: int) -> None:
    """REGISTER ``user`` at the proxy over UDP with the UAS as its Contact."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        udp.settimeout(2.0)
        local = udp.getsockname()[1]
        for attempt in range(3):  # bounded: three tries, 2 s each
            request = (
                f"REGISTER sip:example.test SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{local}"
                f";branch=z9hG4bK-bench-{attempt};rport\r\n"
                f"Max-Forwards: 70\r\n"
                f"From: <sip:{user}@example.test>;tag=bench{attempt}\r\n"
                f"To: <sip:{user}@example.test>\r\n"
                f"Call-ID: bench-register-{user}-{local}@127.0.0.1\r\n"
                f"CSeq: {attempt + 1} REGISTER\r\n"
                f"Contact: <sip:{user}@127.0.0.1:{contact_port}>\r\n"
                f"Expires: 3600\r\n"
                f"Content-Length: 0\r\n\r\n"
            )  # fmt: skip
            udp.sendto(request.encode(), ("127.0.0.1", proxy_port))
            try:
                while True:  # ends on a final response or the socket timeout
                    reply = udp.recv(65535).decode(errors="replace")
                    status = reply.split(" ", 2)[1]
                    if status.startswith("1"):
                        continue
                    if status == "200":
                        return
                    first = reply.splitlines()[0]
                    raise SystemExit(f"REGISTER {user} refused: {first}")
            except TimeoutError:
                continue
    raise SystemExit(f"REGISTER {user}: no answer from the proxy")


def run_step(
    rate: int, seconds: float, port: int, transport: str, scenario: str,
    server: subprocess.Popen[bytes], workdir: Path, prefix: str,
    uas: Uas | None = None,
) -> Step:  # fmt: skip
    calls = max(1, int(rate * seconds))
    stat = workdir / f"{prefix}-stat.csv"
    scenario_file = SCENARIOS / (f"{scenario}-uac.xml" if uas else f"{scenario}.xml")
    argv = [
        "sipp", f"127.0.0.1:{port}",
        "-sf", str(scenario_file),
        "-t", {"udp": "u1", "tcp": "t1"}[transport],
        "-i", "127.0.0.1", "-p", "0",
        "-key", "domain", "example.test",
        "-key", "prefix", prefix,
        "-key", "expires", "3600",
        "-r", str(rate), "-rp", "1000", "-m", str(calls),
        "-l", str(max(rate * 4, 100)),
        "-timeout", str(int(seconds * 3 + 30)),
        "-max_socket", "1000",
        "-nostdin", "-trace_stat", "-stf", str(stat), "-fd", "1",
        "-trace_rtt", "-rtt_freq", "1", "-trace_err",
        "-error_file", str(workdir / f"{prefix}-errors.log"),
    ]  # fmt: skip
    if uas:
        argv += ["-s", "bob", "-d", "500"]
    uas_before = uas.counters() if uas else (0, 0)
    drops_before = udp_drops(port) if transport == "udp" else 0
    cpu_before, started = cpu_seconds(server.pid), time.monotonic()
    subprocess.run(
        pinned(1, argv),
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=seconds * 3 + 60,
        check=False,
    )
    elapsed = time.monotonic() - started
    cpu = 100 * (cpu_seconds(server.pid) - cpu_before) / elapsed
    drops = (udp_drops(port) if transport == "udp" else 0) - drops_before
    uas_retrans = uas_failed = 0
    if uas:
        time.sleep(3.0)  # the UAS's calls end 2 s after the BYE; its stats every 1 s
        after = uas.counters()
        uas_retrans, uas_failed = after[0] - uas_before[0], after[1] - uas_before[1]
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
        server_cpu_percent=cpu,
        server_rss_mib=rss_mib(server.pid),
        udp_drops=drops,
        uas_failed=uas_failed,
    )


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=["register", "call"], default="register")
    parser.add_argument(
        "--store", choices=["memory", "sqlite", "redis"], default="memory"
    )
    parser.add_argument("--transport", choices=["udp", "tcp"], default="udp")
    parser.add_argument("--start-rate", type=int, default=500)
    parser.add_argument("--step", type=int, default=500)
    parser.add_argument("--max-rate", type=int, default=12000)
    parser.add_argument("--step-seconds", type=float, default=10.0)
    parser.add_argument("--json", action="store_true", help="print steps as JSON lines")
    args = parser.parse_args()
    if shutil.which("sipp") is None:
        raise SystemExit("sipp is not installed (apt-get install sip-tester)")
    if args.scenario == "call" and args.transport != "udp":
        raise SystemExit("--scenario call registers its UAS over UDP: use udp")
    if args.start_rate < 1 or args.step < 1 or args.step_seconds <= 0:
        raise SystemExit("--start-rate and --step must be >= 1, --step-seconds > 0")
    steps = min(100, max(1, (args.max_rate - args.start_rate) // args.step + 1))
    print(f"load average at start: {load_average()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="sipproxy-bench-") as tmp:
        workdir = Path(tmp)
        port = free_port()
        server = start_server(port, args.transport, args.store, workdir)
        uas: Uas | None = None
        best: Step | None = None
        try:
            if args.scenario == "call":
                lifetime = int(steps * (args.step_seconds * 3 + 70) + 60)
                uas = start_uas(workdir, lifetime)
                register_callee(port, "bob", uas.port)
            rate = args.start_rate
            for index in range(steps):  # bounded: at most 100 steps
                if rate > args.max_rate:
                    break
                step = run_step(
                    rate, args.step_seconds, port, args.transport, args.scenario,
                    server, workdir, f"s{index}x", uas,
                )  # fmt: skip
                line = asdict(step) | {"clean": step.clean}
                print(json.dumps(line) if args.json else _format(step), flush=True)
                if not step.clean:
                    break
                best = step
                rate += args.step
        finally:
            if uas:
                uas.process.terminate()
                try:
                    uas.process.wait(10)
                except subprocess.TimeoutExpired:
                    uas.process.kill()
                    uas.process.wait(10)
            server.send_signal(signal.SIGTERM)
            server.wait(20)
        summary = (
            f"highest clean rate: {best.offered}/s "
            f"(p50 {best.p50_ms:.1f} ms, p99 {best.p99_ms:.1f} ms, "
            f"CPU {best.server_cpu_percent:.0f}%, RSS {best.server_rss_mib:.0f} MiB)"
            if best
            else "no clean step"
        )
        print(f"{args.scenario} {args.transport} {args.store}: {summary}")
        print(f"load average at end: {load_average()}", flush=True)


def _format(step: Step) -> str:
    return (
        f"offered {step.offered:6d}/s achieved {step.achieved:8.1f}/s "
        f"calls {step.calls:7d} failed {step.failed + step.uas_failed:6d} "
        f"retrans {step.retransmissions:6d} drops {step.udp_drops:6d} "
        f"p50 {step.p50_ms:7.2f} ms p99 {step.p99_ms:7.2f} ms "
        f"cpu {step.server_cpu_percent:5.1f}% rss {step.server_rss_mib:6.1f} MiB "
        f"{'clean' if step.clean else 'NOT CLEAN'}"
    )


if __name__ == "__main__":
    main()
