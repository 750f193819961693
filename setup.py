"""Packaging entry point; the metadata lives in setup.cfg.

The wire format (``sipproxy/sip/``) is compiled with mypyc when this machine can
build C extensions: a quarter less CPU per message (docs/performance.md). Without
a C compiler or Python's headers, or with ``SIPPROXY_PURE=1``, the install is pure
Python and says so in one line; it never fails for want of a compiler.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import sysconfig
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext
from setuptools.extension import Extension

ROOT = Path(__file__).resolve().parent
SIP = Path("sipproxy", "sip")
# The package's __init__ stays Python: it is empty, and keeping it importable from
# source lets sipproxy/native.py choose between the compiled modules and these.
SOURCES = sorted(p for p in (ROOT / SIP).glob("*.py") if p.name != "__init__.py")
#: Must match sipproxy/native.py: a build records what it compiled, and an import
#: loads the compiled modules only while every source still has that digest.
MANIFEST = "compiled.sha256"


def _say(line: str) -> None:
    # pip shows a build backend's output only with -v (three times: setup.py runs
    # for each build hook); the Makefile prints native.summary() for that reason.
    print(f"sipproxy: {line}", file=sys.stderr)


def _why_pure() -> str | None:
    """Why this machine installs pure Python, or None if it can compile sip/."""
    if os.environ.get("SIPPROXY_PURE", "") not in ("", "0"):
        return "SIPPROXY_PURE is set"
    if sys.implementation.name != "cpython":
        return f"mypyc needs CPython, not {sys.implementation.name}"
    include = sysconfig.get_paths()["include"]
    if not Path(include, "Python.h").is_file():
        return f"no Python headers in {include} (Debian: python3-dev)"
    # distutils compiles with $CC if set, else with the compiler Python was built with
    command = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    compiler = command.split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler {compiler!r} (Debian: gcc)"
    try:
        import mypyc.build  # noqa: F401
    except ImportError:
        return "mypyc is not installed (it comes with mypy)"
    return None


def _remove_compiled() -> None:
    """Drop compiled modules an earlier in-place build left next to the sources."""
    for path in [*(ROOT / SIP).glob("*.so"), *(ROOT / SIP).glob("*.pyd")]:
        path.unlink()
    (ROOT / SIP / MANIFEST).unlink(missing_ok=True)


class BuildSip(build_ext):
    """Build the compiled sip/ modules, or fall back to pure Python on any failure.

    A failed compile must not fail the install (a laptop with a broken toolchain
    still runs the pure modules), and a successful one writes the digests of the
    sources it compiled next to the modules, for sipproxy/native.py to compare.
    """

    def run(self) -> None:
        """Compile, then record the sources compiled; on failure, build nothing."""
        try:
            super().run()
        except Exception as error:  # a compiler error has no common base class
            _say(f"compiling sip/ failed, installing pure Python ({error})")
            self.extensions = []
            _remove_compiled()
            return
        # inplace: setuptools' editable install copies the modules into the tree
        target = ROOT if self.inplace else Path(self.build_lib)
        lines = [
            f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in SOURCES
        ]
        (target / SIP / MANIFEST).write_text("".join(lines))
        _say("compiled sipproxy/sip/ with mypyc")


def _extensions() -> list[Extension]:
    reason = _why_pure()
    if reason is not None:
        _say(f"installing pure Python: {reason}")
        _remove_compiled()
        return []
    from mypyc.build import mypycify

    try:
        # No config file: pyproject's [tool.mypy] loads the mypy_zope plugin, which
        # the isolated build environment lacks and sip/ does not need. Naming the
        # group puts mypyc's shared library in sipproxy/sip/ (compiled__mypyc)
        # rather than in the project root under a hash for a name.
        return mypycify(
            ["--config-file=", *(str(p.relative_to(ROOT)) for p in SOURCES)],
            group_name="sipproxy.sip.compiled",
        )
    except (Exception, SystemExit) as error:  # mypy exits on a type error
        _say(f"mypyc cannot compile sip/, installing pure Python ({error})")
        _remove_compiled()
        return []


# twisted/plugins is a namespace directory shared with Twisted itself: it is
# listed explicitly (no __init__.py) so that twistd finds our plugin.
setup(
    packages=[*find_packages(include=["sipproxy", "sipproxy.*"]), "twisted.plugins"],
    package_dir={"": "."},
    package_data={"sipproxy": ["py.typed"], "twisted.plugins": ["sipproxy_plugin.py"]},
    ext_modules=_extensions(),
    cmdclass={"build_ext": BuildSip},
)
