"""/stats and /metrics tell work waiting from answered requests kept (issue 13)."""

from __future__ import annotations

from pathlib import Path

from sipproxy.config import build_config, read_toml
from sipproxy.server import build_server
from sipproxy.sip.parser import parse_message
from sipproxy.tap import Options
from sipproxy.testing import UDPMemoryReactor
from tests.transaction.support import UDP_PEER, TimedChannel, request


def test_stats_count_pending_and_completed_apart(tmp_path: Path) -> None:
    """An OPTIONS answered at once is kept (completed), not pending."""
    path = tmp_path / "sipproxy.toml"
    path.write_text('domain = ["example.test"]\nlisten = ["udp:5060"]\n')
    reactor = UDPMemoryReactor()
    server = build_server(
        build_config(read_toml(str(path)), {}), reactor, config_path=str(path)
    )
    assert (server.stats()["pending"], server.stats()["completed"]) == (0, 0)
    options = request("OPTIONS", uri="sip:example.test")
    server.proxy.layer.message_received(
        parse_message(options.to_bytes()), UDP_PEER, TimedChannel(reactor)
    )
    stats = server.stats()
    assert (stats["pending"], stats["completed"]) == (0, 1)


def test_max_pending_options_reach_the_proxy_and_reload(tmp_path: Path) -> None:
    """--max-pending and --max-pending-per-source set the budget; SIGHUP changes it."""
    argv = ["--domain", "example.test", "--listen", "udp:5060"]
    argv += ["--max-pending", "100", "--max-pending-per-source", "10"]
    options = Options()
    options.parseOptions(argv)
    assert options.config is not None
    server = build_server(
        options.config, UDPMemoryReactor(), cli_values=options.cli_values
    )
    settings = server.proxy.settings
    assert (settings.max_pending, settings.max_pending_per_source) == (100, 10)
    path = tmp_path / "sipproxy.toml"
    path.write_text('domain = ["example.test"]\nlisten = ["udp:5060"]\n')
    server = build_server(
        build_config(read_toml(str(path)), {}),
        UDPMemoryReactor(),
        config_path=str(path),
    )
    assert server.proxy.settings.max_pending == 50_000
    assert server.proxy.settings.max_pending_per_source == 5_000
    path.write_text(
        path.read_text() + "max-pending = 2000\nmax-pending-per-source = 50\n"
    )
    assert server.reload()["changed"] == ["max-pending", "max-pending-per-source"]
    settings = server.proxy.settings
    assert (settings.max_pending, settings.max_pending_per_source) == (2000, 50)
