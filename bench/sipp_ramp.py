"""SIPp load ramps against a freshly started sipproxy on loopback.

    python -m bench.sipp_ramp --scenario register --store memory --transport udp

Method (see README, "Benchmarks"): the server is pinned to CPU 0 and SIPp to CPU 1
(taskset, when there are two cores); the offered rate steps up, each step lasting
``--step-seconds``; a step is *clean* when fewer than 1% of calls failed AND SIPp
retransmitted at most 1% of its requests (over UDP a server that drops first
attempts still "passes" on failures alone, because SIPp retransmits). The ramp
stops at the first unclean step or at ``--max-rate``. Reported per step: offered
and achieved rate, failures, retransmissions, response time p50/p99 (SIPp rtd),
server CPU % and RSS. Every loop is bounded in count and time; only loopback
addresses are used.
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

    @property
    def clean(self) -> bool:
        """< 1% failed calls and <= 1% retransmitted requests."""
        return (
            self.calls > 0
            and self.failed < 0.01 * self.calls
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


def run_step(
    rate: int, seconds: float, port: int, transport: str, scenario: str,
    server: subprocess.Popen[bytes], workdir: Path, prefix: str,
) -> Step:  # fmt: skip
    calls = max(1, int(rate * seconds))
    stat = workdir / f"{prefix}-stat.csv"
    argv = [
        "sipp", f"127.0.0.1:{port}",
        "-sf", str(SCENARIOS / f"{scenario}.xml"),
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
    last = _last_row(stat)
    successful = int(last.get("SuccessfulCall(C)", 0))
    failed = int(last.get("FailedCall(C)", 0))
    retrans = int(last.get("Retransmissions(C)", 0))
    times = sorted(_rtts(workdir, scenario))
    return Step(
        offered=rate,
        achieved=successful / elapsed,
        calls=successful + failed,
        failed=failed,
        retransmissions=retrans,
        p50_ms=_percentile(times, 50),
        p99_ms=_percentile(times, 99),
        server_cpu_percent=cpu,
        server_rss_mib=rss_mib(server.pid),
    )


def _last_row(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    with path.open(newline="") as file:
        rows = list(csv.DictReader(file, delimiter=";"))
    return rows[-1] if rows else {}


def _rtts(workdir: Path, scenario: str) -> list[float]:
    values: list[float] = []
    for path in workdir.glob(f"{scenario}_*_rtt.csv"):
        with path.open(newline="") as file:
            for row in csv.DictReader(file, delimiter=";"):
                try:
                    values.append(float(row["rtt"]))
                except (KeyError, ValueError):
                    continue
        path.unlink()
    return values


def _percentile(values: list[float], pct: int) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(len(values) * pct / 100))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default="register")
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
    with tempfile.TemporaryDirectory(prefix="sipproxy-bench-") as tmp:
        workdir = Path(tmp)
        port = free_port()
        server = start_server(port, args.transport, args.store, workdir)
        best: Step | None = None
        try:
            rate = args.start_rate
            for index in range(100):  # bounded: at most 100 steps
                if rate > args.max_rate:
                    break
                step = run_step(
                    rate, args.step_seconds, port, args.transport, args.scenario,
                    server, workdir, f"s{index}x",
                )  # fmt: skip
                line = asdict(step) | {"clean": step.clean}
                print(json.dumps(line) if args.json else _format(step), flush=True)
                if not step.clean:
                    break
                best = step
                rate += args.step
        finally:
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


def _format(step: Step) -> str:
    return (
        f"offered {step.offered:6d}/s achieved {step.achieved:8.1f}/s "
        f"calls {step.calls:7d} failed {step.failed:6d} "
        f"retrans {step.retransmissions:6d} "
        f"p50 {step.p50_ms:7.2f} ms p99 {step.p99_ms:7.2f} ms "
        f"cpu {step.server_cpu_percent:5.1f}% rss {step.server_rss_mib:6.1f} MiB "
        f"{'clean' if step.clean else 'NOT CLEAN'}"
    )


if __name__ == "__main__":
    main()
