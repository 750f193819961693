"""Imports point inward (STYLE.md): the wire format and the core stay free of I/O."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sipproxy"


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports; ``from a import b`` gives ``a`` and ``a.b``."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def import_graph() -> dict[str, set[str]]:
    """Each sipproxy module -> the sipproxy modules it imports (typing-only too)."""
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return {
        name: {m for m in imports_of(path) if m in names and m != name}
        for name, path in names.items()
    }


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for name in graph[todo.pop()] - seen:
            seen.add(name)
            todo.append(name)
    return seen


def modules(folder: str) -> list[Path]:
    return sorted((PACKAGE / folder).glob("*.py"))


@pytest.mark.parametrize("path", modules("sip"), ids=lambda p: p.name)
def test_wire_format_imports_nothing_but_itself(path: Path) -> None:
    """sipproxy/sip/ is sans-IO: no Twisted, no other sipproxy layer."""
    for name in imports_of(path):
        assert not name.startswith("twisted"), name
        if name.startswith("sipproxy"):
            assert name.startswith("sipproxy.sip"), name


@pytest.mark.parametrize(
    "path",
    modules("transaction") + modules("proxy") + modules("auth")
    + [PACKAGE / "registrar.py"],
    ids=lambda p: p.name,
)  # fmt: skip
def test_core_never_touches_the_reactor_or_the_wall_clock(path: Path) -> None:
    """Time and I/O are injected: no global reactor, no time.time() (STYLE.md)."""
    source = path.read_text()
    assert "twisted.internet import reactor" not in source
    assert "time.time(" not in source


def test_nothing_imports_tap() -> None:
    for path in PACKAGE.rglob("*.py"):
        if path.name != "tap.py":
            assert "sipproxy.tap" not in imports_of(path), path


def test_no_import_cycle_runs_through_auth() -> None:
    """No auth module imports, even indirectly, a module that imports it back."""
    graph = import_graph()
    auth = sorted(name for name in graph if name.startswith("sipproxy.auth"))
    assert "sipproxy.auth.digest" in auth
    assert not [name for name in auth if name in reachable(graph, name)]


@pytest.mark.parametrize("path", modules("office"), ids=lambda p: p.name)
def test_office_never_imports_the_configuration(path: Path) -> None:
    """config.py imports the office model, so the office must not import config.

    The office raises ValueError; config wraps it in ConfigError (no cycle).
    """
    assert "sipproxy.config" not in imports_of(path), path


def test_only_tap_imports_the_wiring() -> None:
    """server.py imports every layer; no layer imports it back (STYLE.md)."""
    for path in PACKAGE.rglob("*.py"):
        if path.relative_to(PACKAGE).as_posix() not in ("tap.py", "server.py"):
            assert "sipproxy.server" not in imports_of(path), path


def test_no_import_cycle_anywhere() -> None:
    """No module imports, even indirectly, a module that imports it back.

    A cycle means two modules are one piece that pretends to be two; the house
    reads top-down only when every arrow points one way.
    """
    graph = import_graph()
    assert "sipproxy.proxy.core" in graph
    assert not sorted(name for name in graph if name in reachable(graph, name))


@pytest.mark.parametrize("path", modules("transaction"), ids=lambda p: p.name)
def test_transactions_stand_on_the_wire_format_only(path: Path) -> None:
    """transaction/ sits right above sip/: Peer and Channel come from there too."""
    for name in imports_of(path):
        if name.startswith("sipproxy"):
            assert name.startswith(("sipproxy.sip", "sipproxy.transaction")), name


@pytest.mark.parametrize("path", modules("transport"), ids=lambda p: p.name)
def test_transports_never_import_the_core(path: Path) -> None:
    """The Twisted edge hands messages up through a protocol; it imports no core."""
    for name in imports_of(path):
        assert not name.startswith(
            ("sipproxy.proxy", "sipproxy.registrar", "sipproxy.transaction")
        ), name


def test_method_handlers_do_their_io_through_the_context() -> None:
    """proxy/handlers.py imports nothing from Twisted: no reactor, no sockets.

    A handler answers, forwards and sends through its HandlerContext, so a new
    method is a function testable with a fake context.
    """
    for name in imports_of(PACKAGE / "proxy" / "handlers.py"):
        assert not name.startswith("twisted"), name
