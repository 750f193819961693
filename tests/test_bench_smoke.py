"""The benchmarks still run against the code as it is (no timing asserted here).

``bench/`` wires a whole server the way ``sipproxy.server`` does; a reshape that
renames a piece of the wiring breaks it without any other test noticing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("kind", "count", "expected"),
    [
        ("register", 20, "20 answered 200"),
        ("call", 5, "5 answered 200"),
        ("digest-register", 20, "20 answered 200"),
    ],
)
def test_hotpath_bench_runs(kind: str, count: int, expected: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.hotpath", "--kind", kind,
         "--messages", str(count)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert expected in done.stdout, done.stdout


def test_hotpath_bench_records_calls(tmp_path: Path) -> None:
    """--cdr wires the call tracker: every call played is a record in the file."""
    path = tmp_path / "cdr.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "bench.hotpath", "--kind", "call",
         "--messages", "12", "--cdr", f"jsonl:{path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "12 answered 200" in done.stdout, done.stdout
    assert len(path.read_text().splitlines()) == 12
