"""Calls in /metrics: active calls, calls by disposition, setup time."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from sipproxy.metrics import CallMetrics, Metrics


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.text().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_calls_are_counted_by_disposition_with_setup_times() -> None:
    metrics = Metrics()
    active = [2]
    calls = CallMetrics(metrics.registry, lambda: active[0])
    calls.call_setup(0.4)
    calls.call_setup(2.5)
    calls.call_ended("answered")
    calls.call_ended("busy")
    calls.call_ended("busy")
    calls.call_ended("nonsense")
    seen = samples(metrics)
    assert seen[("sipproxy_active_calls", ())] == 2
    assert seen[("sipproxy_calls_total", (("disposition", "busy"),))] == 2
    assert seen[("sipproxy_calls_total", (("disposition", "answered"),))] == 1
    assert seen[("sipproxy_calls_total", (("disposition", "lost"),))] == 0
    assert seen[("sipproxy_call_setup_seconds_count", ())] == 2
    assert seen[("sipproxy_call_setup_seconds_bucket", (("le", "0.5"),))] == 1
    active[0] = 0
    assert samples(metrics)[("sipproxy_active_calls", ())] == 0


def test_a_store_falling_behind_shows_in_pending_writes_and_errors() -> None:
    metrics = Metrics()
    pending, errors, untracked = [0], [0], [0]
    CallMetrics(
        metrics.registry,
        lambda: 0,
        pending_writes=lambda: pending[0],
        store_errors=lambda: errors[0],
        untracked=lambda: untracked[0],
    )
    assert samples(metrics)[("sipproxy_cdr_pending_writes", ())] == 0
    pending[0], errors[0], untracked[0] = 120, 3, 7
    seen = samples(metrics)
    assert seen[("sipproxy_calls_untracked_total", ())] == 7
    assert seen[("sipproxy_cdr_pending_writes", ())] == 120
    assert seen[("sipproxy_cdr_store_errors_total", ())] == 3
