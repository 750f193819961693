"""/stats and /metrics tell work waiting from answered requests kept (issue 13)."""

from __future__ import annotations

from pathlib import Path

from sipproxy.config import build_config, read_toml
from sipproxy.sip.parser import parse_message
from sipproxy.tap import SIPServerService
from sipproxy.testing import UDPMemoryReactor
from tests.transaction.support import UDP_PEER, TimedChannel, request


def test_stats_count_pending_and_completed_apart(tmp_path: Path) -> None:
    """An OPTIONS answered at once is kept (completed), not pending."""
    path = tmp_path / "sipproxy.toml"
    path.write_text('domain = ["example.test"]\nlisten = ["udp:5060"]\n')
    reactor = UDPMemoryReactor()
    server = SIPServerService(
        build_config(read_toml(str(path)), {}), reactor, config_path=str(path)
    )
    assert (server.stats()["pending"], server.stats()["completed"]) == (0, 0)
    options = request("OPTIONS", uri="sip:example.test")
    server.proxy.layer.message_received(
        parse_message(options.to_bytes()), UDP_PEER, TimedChannel(reactor)
    )
    stats = server.stats()
    assert (stats["pending"], stats["completed"]) == (0, 1)
