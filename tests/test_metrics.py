"""Metrics: the hooks count, the text parses, the proxy reports through its observer."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.logger import LogEvent, capturedLogs, formatEvent

from sipproxy.auth.digest import Authenticator
from sipproxy.metrics import Metrics, Snapshot
from sipproxy.sip.message import Request
from tests.proxy.harness import ALICE, BOB, Harness, answer, invite
from tests.support import user_db

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(metrics: Metrics) -> Samples:
    """Every sample of the text output, parsed by prometheus-client's own parser."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics.text().decode())
        for sample in family.samples
    }


def test_each_server_has_its_own_registry() -> None:
    """Two servers in one process (or two tests) never share a count."""
    first, second = Metrics(), Metrics()
    first.request_received("INVITE")
    assert samples(first)[("sipproxy_requests_total", (("method", "INVITE"),))] == 1
    assert samples(second)[("sipproxy_requests_total", (("method", "INVITE"),))] == 0


def test_requests_by_method_and_unknown_methods_as_other() -> None:
    """A scanner inventing methods adds no time series: they count as "other"."""
    metrics = Metrics()
    for method in ("REGISTER", "REGISTER", "OPTIONS", "FOO", "BAR"):
        metrics.request_received(method)
    found = samples(metrics)
    assert found[("sipproxy_requests_total", (("method", "REGISTER"),))] == 2
    assert found[("sipproxy_requests_total", (("method", "OPTIONS"),))] == 1
    assert found[("sipproxy_requests_total", (("method", "other"),))] == 2
    assert not any(labels == (("method", "FOO"),) for _, labels in found)


def test_final_responses_by_class_and_latency_by_method() -> None:
    metrics = Metrics()
    metrics.final_sent("INVITE", 200, 3.0)
    metrics.final_sent("INVITE", 486, 1.0)
    metrics.final_sent("REGISTER", 401, 0.002)
    metrics.final_sent("OPTIONS", 200, None)
    found = samples(metrics)
    assert found[("sipproxy_responses_total", (("status_class", "2xx"),))] == 2
    assert found[("sipproxy_responses_total", (("status_class", "4xx"),))] == 2
    assert found[("sipproxy_responses_total", (("status_class", "5xx"),))] == 0
    invite_count = ("sipproxy_request_duration_seconds_count", (("method", "INVITE"),))
    assert found[invite_count] == 2
    invite_sum = ("sipproxy_request_duration_seconds_sum", (("method", "INVITE"),))
    assert found[invite_sum] == 4.0
    bucket = (
        "sipproxy_request_duration_seconds_bucket",
        (("le", "0.0025"), ("method", "REGISTER")),
    )
    assert found[bucket] == 1
    count = ("sipproxy_request_duration_seconds_count", (("method", "OPTIONS"),))
    assert found[count] == 0


def test_abuse_counters() -> None:
    metrics = Metrics()
    metrics.auth_failed()
    metrics.auth_failed()
    metrics.banned()
    for _ in range(3):
        metrics.rate_limited()
    metrics.dropped_banned()
    found = samples(metrics)
    assert found[("sipproxy_auth_failures_total", ())] == 2
    assert found[("sipproxy_bans_total", ())] == 1
    assert (
        found[("sipproxy_dropped_messages_total", (("reason", "rate_limited"),))] == 3
    )
    assert found[("sipproxy_dropped_messages_total", (("reason", "banned"),))] == 1


def test_state_is_read_on_scrape_only() -> None:
    """Gauges come from the state callback when scraped, not per message."""
    calls: list[int] = []

    def state() -> Snapshot:
        calls.append(1)
        return Snapshot(
            transactions={"server_invite": 3, "client_invite": 2},
            proxy_contexts=4,
            connections={"tcp": 7, "tls": 1},
            bans=5,
            uptime=12.5,
        )

    metrics = Metrics(state)
    assert calls == []
    metrics.request_received("INVITE")
    assert calls == []
    found = samples(metrics)
    assert calls == [1]
    assert found[("sipproxy_transactions", (("kind", "server_invite"),))] == 3
    assert found[("sipproxy_proxy_contexts", ())] == 4
    assert found[("sipproxy_connections", (("transport", "tcp"),))] == 7
    assert found[("sipproxy_connections", (("transport", "tls"),))] == 1
    assert found[("sipproxy_banned_addresses", ())] == 5
    assert found[("sipproxy_uptime_seconds", ())] == 12.5
    assert ("sipproxy_registrations", ()) not in found
    metrics.set_registrations(10, 14)
    found = samples(metrics)
    assert found[("sipproxy_registrations", ())] == 10
    assert found[("sipproxy_bindings", ())] == 14


# -- the proxy's hooks ---------------------------------------------------------


@pytest.fixture
def logged() -> Iterator[Sequence[LogEvent]]:
    with capturedLogs() as events:
        yield events


def lines(events: Sequence[LogEvent]) -> list[str]:
    return [formatEvent(event) for event in events]


def test_proxy_reports_a_call_and_logs_its_final_decision(
    logged: Sequence[LogEvent],
) -> None:
    """Request, 2xx after 2.5 s, route taken and time spent: counted and logged."""
    metrics = Metrics()
    h = Harness(observer=metrics)
    h.register("bob", BOB)
    h.receive(invite(), ALICE)
    forwarded = next(m for m in h.sent_to(BOB) if isinstance(m, Request))
    h.clock.advance(2.5)
    h.receive(answer(forwarded, 200), BOB)
    found = samples(metrics)
    assert found[("sipproxy_requests_total", (("method", "INVITE"),))] == 1
    assert found[("sipproxy_responses_total", (("status_class", "2xx"),))] == 1
    invite_sum = ("sipproxy_request_duration_seconds_sum", (("method", "INVITE"),))
    assert found[invite_sum] == 2.5
    final = [line for line in lines(logged) if "-> 200" in line]
    assert final == [
        "INVITE call-1 sip:bob@example.test from sip:alice@example.test to "
        f"sip:bob@example.test -> 200 via udp:{BOB[0]}:{BOB[1]} in 2500 ms, "
        "call answered"
    ]
    event = next(e for e in logged if e.get("status") == 200)
    assert (event["caller"], event["callee"], event["ms"], event["call"]) == (
        "sip:alice@example.test",
        "sip:bob@example.test",
        2500,
        "answered",
    )


def test_own_refusals_are_counted_and_logged_with_who_decided(
    logged: Sequence[LogEvent],
) -> None:
    metrics = Metrics()
    h = Harness(observer=metrics)
    h.receive(invite("nobody"), ALICE)
    found = samples(metrics)
    assert found[("sipproxy_responses_total", (("status_class", "4xx"),))] == 1
    assert any(
        line.endswith("-> 404 via refused in 0 ms, call failed") and "call-1" in line
        for line in lines(logged)
    ), lines(logged)


def test_a_challenged_invite_names_no_call_disposition(
    logged: Sequence[LogEvent],
) -> None:
    """A 407 is no end of a call: the caller answers it with the same call."""
    h = Harness(
        auth=Authenticator(
            "example.test", user_db("example.test", alice="pw"), b"n" * 32
        )
    )
    h.receive(invite(), ALICE)
    challenged = [line for line in lines(logged) if "-> 407" in line]
    assert len(challenged) == 1, lines(logged)
    assert challenged[0].endswith(" ms"), challenged


def test_successful_options_is_counted_but_not_logged(
    logged: Sequence[LogEvent],
) -> None:
    """Keepalives are most of the traffic: a metric, never a log line."""
    metrics = Metrics()
    h = Harness(observer=metrics)
    h.receive(
        (
            "OPTIONS sip:127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {ALICE[0]}:{ALICE[1]};branch=z9hG4bKo1;rport\r\n"
            "Max-Forwards: 70\r\nFrom: <sip:alice@example.test>;tag=o\r\n"
            "To: <sip:127.0.0.1>\r\nCall-ID: keepalive-1\r\nCSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode(),
        ALICE,
    )
    found = samples(metrics)
    assert found[("sipproxy_requests_total", (("method", "OPTIONS"),))] == 1
    assert found[("sipproxy_responses_total", (("status_class", "2xx"),))] == 1
    assert not any("keepalive-1" in line for line in lines(logged))


def test_pending_and_completed_are_exported_apart() -> None:
    """Work waiting for an answer and answered requests kept are two gauges.

    Only the first is what overload compares (issue 13: a busy but healthy
    server keeps many answered requests for retransmissions).
    """
    metrics = Metrics(lambda: Snapshot(pending=12, completed=57_600))
    found = samples(metrics)
    assert found[("sipproxy_pending_requests", ())] == 12
    assert found[("sipproxy_completed_transactions", ())] == 57_600
