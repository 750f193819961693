"""The compiled sip/ modules run only when fresh; SIPPROXY_PURE=1 runs the sources."""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sipproxy import native

SIP = Path(native.__file__).parent / "sip"
MODULES = sorted(p.stem for p in SIP.glob("*.py") if p.name != "__init__.py")
EXTENSION = importlib.machinery.EXTENSION_SUFFIXES[0]


def is_pure() -> bool:
    return os.environ.get("SIPPROXY_PURE", "") not in ("", "0")


def test_tests_run_on_the_build_they_mean_to() -> None:
    """SIPPROXY_PURE=1 runs every sip/ module from source, CI=true every compiled one.

    So CI cannot test one of the two twice and call it both; and never a mix.
    """
    files = [
        importlib.import_module(f"sipproxy.sip.{m}").__file__ or "" for m in MODULES
    ]
    compiled = [f for f in files if not f.endswith(".py")]
    if is_pure():
        assert compiled == []
    elif os.environ.get("CI") == "true":
        assert compiled == files, "CI=true: sipproxy/sip/ is not compiled (make venv)"
    else:
        assert compiled in ([], files)


def test_the_pure_switch_loads_sources() -> None:
    """With SIPPROXY_PURE=1 the parser imports from its .py, without a warning."""
    env = {**os.environ, "SIPPROXY_PURE": "1"}
    code = "import sipproxy.sip.parser as p; print(p.__file__)"
    run = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert run.stdout.strip() == str(SIP / "parser.py")


def test_the_source_finder_finds_only_sip_sources() -> None:
    finder = native.SourceFinder()
    spec = finder.find_spec("sipproxy.sip.uri", [str(SIP)])
    assert spec is not None
    assert spec.origin == str(SIP / "uri.py")
    assert finder.find_spec("sipproxy.registrar", [str(SIP.parent)]) is None


def built(folder: Path, sources: dict[str, bytes]) -> Path:
    """``folder`` as an in-place build leaves it: sources, modules, digests."""
    folder.mkdir()
    lines = []
    for name, text in sources.items():
        (folder / name).write_bytes(text)
        (folder / name).with_suffix(EXTENSION).write_bytes(b"\x7fELF")
        lines.append(f"{hashlib.sha256(text).hexdigest()}  {name}\n")
    (folder / native.MANIFEST).write_text("".join(lines))
    return folder


def test_a_fresh_build_may_run(tmp_path: Path) -> None:
    folder = built(tmp_path / "sip", {"parser.py": b"A = 1\n", "uri.py": b"B = 2\n"})
    assert native.stale_reason(folder) is None


def test_nothing_compiled_is_nothing_stale(tmp_path: Path) -> None:
    (tmp_path / "parser.py").write_text("A = 1\n")
    assert native.stale_reason(tmp_path) is None


def test_an_edited_source_makes_the_build_stale(tmp_path: Path) -> None:
    """The developer's edit runs, not the module compiled before it."""
    folder = built(tmp_path / "sip", {"parser.py": b"A = 1\n", "uri.py": b"B = 2\n"})
    (folder / "uri.py").write_bytes(b"B = 3\n")
    assert native.stale_reason(folder) == "changed since the build: uri.py"


@pytest.mark.parametrize("change", ["added", "removed"])
def test_a_module_added_or_removed_makes_the_build_stale(
    tmp_path: Path, change: str
) -> None:
    folder = built(tmp_path / "sip", {"parser.py": b"A = 1\n", "uri.py": b"B = 2\n"})
    if change == "added":
        (folder / "via.py").write_text("C = 3\n")
        assert native.stale_reason(folder) == "changed since the build: via.py"
    else:
        (folder / "uri.py").unlink()
        assert native.stale_reason(folder) == "changed since the build: uri.py"


def test_modules_without_digests_are_stale(tmp_path: Path) -> None:
    """Compiled modules no build of ours recorded (say, a hand-run mypyc) never run."""
    folder = built(tmp_path / "sip", {"parser.py": b"A = 1\n"})
    (folder / native.MANIFEST).unlink()
    reason = native.stale_reason(folder)
    assert reason is not None
    assert native.MANIFEST in reason


def test_the_summary_says_what_runs() -> None:
    parser = importlib.import_module("sipproxy.sip.parser")
    compiled = not (parser.__file__ or "").endswith(".py")
    assert native.summary().startswith(
        "sipproxy/sip/ runs compiled" if compiled else "sipproxy/sip/ runs as pure"
    )
