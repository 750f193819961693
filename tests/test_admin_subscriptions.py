"""Busy lamps for operators: GET /subscriptions, sipproxy-ctl subscriptions, metrics."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from prometheus_client import CollectorRegistry, generate_latest
from twisted.web.server import Site

from sipproxy.admin import AdminAPI
from sipproxy.metrics import SubscriptionMetrics
from tests.test_admin import TOKEN, FakeServer, Running, reactor
from tests.test_admin_calls import ctl

pytestmark = pytest.mark.filterwarnings("ignore:Using readBody:DeprecationWarning")

ROW = {
    "subscriber": "carol",
    "entity": "sip:102@example.test",
    "lamp": "bob",
    "flow": "udp:192.0.2.30:5080",
    "expires": 540,
    "version": 3,
    "state": "confirmed",
    "call_id": "blf-1",
}


class FakeNotifier:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def listing(self) -> list[dict[str, Any]]:
        return self.rows


@pytest.fixture
def blf_admin() -> Any:
    notifier = FakeNotifier()
    api = AdminAPI(FakeServer(), token=TOKEN, metrics=None, subscriptions=notifier)
    port = reactor.listenTCP(0, Site(api), interface="127.0.0.1")
    running = Running(FakeServer(), api, port)
    running.notifier = notifier  # type: ignore[attr-defined]
    yield running
    pytest_twisted.blockon(port.stopListening())


@pytest_twisted.ensureDeferred
async def test_subscriptions_need_the_token(blf_admin: Running) -> None:
    code, _body, _ = await blf_admin.fetch("GET", "/subscriptions", token=None)
    assert code == 401


@pytest_twisted.ensureDeferred
async def test_subscriptions_are_listed(blf_admin: Running) -> None:
    code, body = await blf_admin.json("GET", "/subscriptions")
    assert (code, body) == (200, {"count": 0, "subscriptions": []})
    blf_admin.notifier.rows.append(ROW)  # type: ignore[attr-defined]
    code, body = await blf_admin.json("GET", "/subscriptions")
    assert (code, body) == (200, {"count": 1, "subscriptions": [ROW]})


@pytest_twisted.ensureDeferred
async def test_ctl_subscriptions(
    blf_admin: Running, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await ctl(blf_admin, "subscriptions") == 0
    assert capsys.readouterr().out == "no subscriptions\n"
    blf_admin.notifier.rows.append(ROW)  # type: ignore[attr-defined]
    assert await ctl(blf_admin, "subscriptions") == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == [
        "SUBSCRIBER", "ENTITY", "STATE", "EXPIRES", "VERSION", "FLOW"
    ]  # fmt: skip
    assert row.split() == [
        "carol", "sip:102@example.test", "confirmed", "540", "3",
        "udp:192.0.2.30:5080",
    ]  # fmt: skip


def test_metrics_count_subscriptions_and_notify_results() -> None:
    registry = CollectorRegistry()
    served = [2]
    metrics = SubscriptionMetrics(registry, lambda: served[0])
    metrics.notify_result("ok")
    metrics.notify_result("ok")
    metrics.notify_result("timeout")
    metrics.notify_result("nonsense")
    text = generate_latest(registry).decode()
    assert "sipproxy_subscriptions 2.0" in text
    assert 'sipproxy_notify_total{result="ok"} 2.0' in text
    assert 'sipproxy_notify_total{result="timeout"} 1.0' in text
    assert 'sipproxy_notify_total{result="gone"} 0.0' in text
