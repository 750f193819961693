"""Which ``sipproxy.sip`` modules run: the ones mypyc compiled, or their sources.

``pip install -e .`` compiles ``sipproxy/sip/*.py`` in place when it can (setup.py)
and records each source's SHA-256 in ``sipproxy/sip/compiled.sha256``. A compiled
module shadows its source (an extension suffix comes first on the import path),
so a stale one would keep running the code as it was before an edit. Before any
``sipproxy.sip`` module is imported, :func:`choose` compares the sources with the
record; if one differs, or the record is missing, every ``sipproxy.sip`` module
loads from source, with one warning. All of them: the compiled modules call each
other inside one shared library, so a mix would hold two classes of each name.

``SIPPROXY_PURE=1`` in the environment loads the sources without a warning, to run
(or test) the pure Python the compiled modules must match. This module itself is
never compiled: it decides before there is anything compiled to ask.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import sys
import warnings
from collections.abc import Sequence
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

__all__ = ["MANIFEST", "SourceFinder", "choose", "stale_reason", "summary"]

PACKAGE = "sipproxy.sip"
#: Written by setup.py's build: ``<sha256>  <name>.py`` per compiled module.
MANIFEST = "compiled.sha256"
_SIP = Path(__file__).resolve().parent / "sip"


class SourceFinder(MetaPathFinder):
    """Find ``sipproxy.sip.*`` modules as ``.py`` sources, never as extensions."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> ModuleSpec | None:
        """A source spec for a module of ``sipproxy.sip``; None for any other."""
        if not fullname.startswith(PACKAGE + ".") or path is None:
            return None
        loader = (
            importlib.machinery.SourceFileLoader,
            importlib.machinery.SOURCE_SUFFIXES,
        )
        for entry in path:
            spec = importlib.machinery.FileFinder(entry, loader).find_spec(fullname)
            if spec is not None:
                return spec
        return None


def _compiled(folder: Path) -> list[Path]:
    return [
        p
        for p in folder.iterdir()
        if any(p.name.endswith(s) for s in importlib.machinery.EXTENSION_SUFFIXES)
    ]


def stale_reason(folder: Path) -> str | None:
    """Why the compiled modules in ``folder`` must not run, or None if they may.

    None too when nothing is compiled there: the sources run anyway.
    """
    if not _compiled(folder):
        return None
    try:
        recorded = (folder / MANIFEST).read_text().splitlines()
    except OSError:
        return f"{MANIFEST} is missing, so the sources they were built from are unknown"
    digests: dict[str, str] = {}
    for line in recorded:
        digest, _, name = line.partition("  ")
        digests[name] = digest
    sources = sorted(p for p in folder.glob("*.py") if p.name != "__init__.py")
    changed = [
        p.name
        for p in sources
        if digests.pop(p.name, None) != hashlib.sha256(p.read_bytes()).hexdigest()
    ]
    if changed or digests:
        return "changed since the build: " + ", ".join(changed + sorted(digests))
    return None


def _pure_asked() -> bool:
    return os.environ.get("SIPPROXY_PURE", "") not in ("", "0")


def choose() -> None:
    """Load ``sipproxy.sip`` from source if asked to, or if the build is stale."""
    if any(isinstance(f, SourceFinder) for f in sys.meta_path):
        return
    if _pure_asked():
        sys.meta_path.insert(0, SourceFinder())
        return
    reason = stale_reason(_SIP)
    if reason is not None:
        warnings.warn(
            f"running sipproxy/sip/ as pure Python, not its compiled modules: "
            f"{reason}; rebuild with `make venv` or `pip install -e .`",
            RuntimeWarning,
            stacklevel=2,
        )
        sys.meta_path.insert(0, SourceFinder())


def summary() -> str:
    """Whether ``sipproxy.sip`` runs compiled, in one line for the install (Makefile).

    pip shows what setup.py says about it only with ``-v``.
    """
    spec = importlib.util.find_spec(PACKAGE + ".parser")
    origin = spec.origin if spec is not None else None
    if origin is not None and not origin.endswith(".py"):
        return "sipproxy/sip/ runs compiled (mypyc)"
    if _pure_asked():
        why = "SIPPROXY_PURE is set"
    else:
        why = stale_reason(_SIP) or (
            "not compiled at install (SIPPROXY_PURE=1, or no C compiler or Python"
            " headers: `pip install -v -e .` says which)"
        )
    return f"sipproxy/sip/ runs as pure Python: {why}"
