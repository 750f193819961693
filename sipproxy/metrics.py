"""What the server counts, for ``/metrics`` in the Prometheus text format; no I/O.

Theory of operation. One :class:`Metrics` per server owns its own
``CollectorRegistry`` (never the process-global one, so two servers in one process,
or two tests, never share a count). Two kinds of numbers:

- *events* (requests by method, final responses by status class, latency,
  authentication failures, bans, messages dropped by the rate limiter or a ban) are
  counted as they happen, through the hook methods below, which the proxy and the
  service wiring call. They must stay cheap on the hot path: every label child is
  bound once in ``__init__``, so a hook is a dictionary lookup and an increment,
  with no string formatting per message.
- *state* (live transactions, requests pending and answered ones kept, pending
  proxy contexts, connections per transport, bans in force, registrations and
  bindings) is read when Prometheus scrapes, by a custom collector calling
  :attr:`Metrics.state`; nothing is updated per message. Counting registrations
  needs the (asynchronous) location store, so the admin API calls
  :meth:`Metrics.set_registrations` just before it renders a scrape.

The core does not import this module (nor prometheus_client): the proxy takes any
object with the hook methods (``sipproxy.proxy.observer.ProxyObserver``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "Metrics", "Snapshot", "SubscriptionMetrics"]

# A "_created" time stamp per label child doubles the output and says only when
# the process started, which sipproxy_uptime_seconds says once.
disable_created_metrics()  # type: ignore[no-untyped-call]

#: The Content-Type of the text exposition format, version 0.0.4.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Methods counted under their own label; anything else is "other", so a scanner
#: inventing methods cannot grow the number of time series.
_METHODS = (
    "INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE",
    "NOTIFY", "PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE",
)  # fmt: skip

#: Request to final response, seconds: a REGISTER takes milliseconds, an INVITE
#: rings for up to Timer C (181 s, RFC 3261 §16.6 step 11).
_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 120.0, 181.0,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The server's state at one moment, read on each scrape."""

    #: live transactions by kind ("server_invite", "client_non_invite", ...)
    transactions: Mapping[str, int] = field(default_factory=dict)
    #: proxied requests waiting for a final answer (RFC 3261 §16.7 contexts)
    proxy_contexts: int = 0
    #: requests waiting for a final answer: what overload compares (max_pending)
    pending: int = 0
    #: answered non-INVITE transactions kept for retransmissions (bounded)
    completed: int = 0
    #: open TCP, TLS and WebSocket connections by transport name
    connections: Mapping[str, int] = field(default_factory=dict)
    #: addresses banned right now
    bans: int = 0
    #: seconds since the server started
    uptime: float = 0.0


class Metrics:
    """The counters of one server and the collector of its state.

    :param state: called on every scrape for the numbers read then; None: only
        the event counters are exported.
    """

    def __init__(self, state: Callable[[], Snapshot] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.state = state
        #: (AORs, bindings) as of the last :meth:`set_registrations`; None: unknown
        self.registrations: tuple[int, int] | None = None
        registry = self.registry
        requests = Counter(
            "sipproxy_requests",
            "SIP requests received, retransmissions excluded, by method.",
            ["method"],
            registry=registry,
        )
        self._requests = {method: requests.labels(method) for method in _METHODS}
        self._other_requests = requests.labels("other")
        responses = Counter(
            "sipproxy_responses",
            "Final responses sent upstream (own answers and forwarded ones), "
            "by status class.",
            ["status_class"],
            registry=registry,
        )
        # Index n is class "nxx"; 0 is unused (no status below 100 is sent).
        self._responses = [responses.labels(f"{n}xx") for n in range(7)]
        latency = Histogram(
            "sipproxy_request_duration_seconds",
            "Time from a request's arrival to its final response, by method.",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self._latency = {method: latency.labels(method) for method in _METHODS}
        self._other_latency = latency.labels("other")
        self._auth_failures = Counter(
            "sipproxy_auth_failures",
            "Failed Digest authentications (wrong password or unknown user).",
            registry=registry,
        )
        self._bans = Counter(
            "sipproxy_bans",
            "Source addresses banned after failed authentications.",
            registry=registry,
        )
        dropped = Counter(
            "sipproxy_dropped_messages",
            "Messages dropped unread, by reason (rate_limited, banned).",
            ["reason"],
            registry=registry,
        )
        self._rate_limited = dropped.labels("rate_limited")
        self._banned_messages = dropped.labels("banned")
        registry.register(_StateCollector(self))

    # -- hooks: called per event, so each is one lookup and one increment --------

    def request_received(self, method: str) -> None:
        """A new request (not a retransmission) arrived."""
        self._requests.get(method, self._other_requests).inc()

    def final_sent(self, method: str, status: int, elapsed: float | None) -> None:
        """A final response to a ``method`` request went upstream after ``elapsed``."""
        if 100 <= status < 700:
            self._responses[status // 100].inc()
        if elapsed is not None:
            self._latency.get(method, self._other_latency).observe(elapsed)

    def auth_failed(self) -> None:
        """Credentials were presented and were wrong."""
        self._auth_failures.inc()

    def banned(self) -> None:
        """A source address was just banned."""
        self._bans.inc()

    def rate_limited(self) -> None:
        """A message was dropped because its source exceeded the rate limit."""
        self._rate_limited.inc()

    def dropped_banned(self) -> None:
        """A message was dropped because its source is banned."""
        self._banned_messages.inc()

    # -- scraping --------------------------------------------------------------

    def set_registrations(self, aors: int, bindings: int) -> None:
        """Record the store's counts, read asynchronously just before a scrape."""
        self.registrations = (aors, bindings)

    def text(self) -> bytes:
        """Everything, in the Prometheus text exposition format."""
        return generate_latest(self.registry)


class _StateCollector(Collector):
    """Gauges computed when scraped, from :attr:`Metrics.state`."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        # Describing by collecting would call the state callback at registration.
        return []

    def collect(self) -> Iterator[Metric]:
        metrics = self._metrics
        if metrics.registrations is not None:
            aors, bindings = metrics.registrations
            yield GaugeMetricFamily(
                "sipproxy_registrations",
                "Addresses-of-record with at least one unexpired binding.",
                value=aors,
            )
            yield GaugeMetricFamily(
                "sipproxy_bindings", "Unexpired contact bindings.", value=bindings
            )
        if metrics.state is None:
            return
        state = metrics.state()
        transactions = GaugeMetricFamily(
            "sipproxy_transactions",
            "Live SIP transactions by kind (RFC 3261 §17).",
            labels=["kind"],
        )
        for kind, count in sorted(state.transactions.items()):
            transactions.add_metric([kind], count)
        yield transactions
        yield GaugeMetricFamily(
            "sipproxy_proxy_contexts",
            "Proxied requests waiting for a final response.",
            value=state.proxy_contexts,
        )
        yield GaugeMetricFamily(
            "sipproxy_pending_requests",
            "Requests waiting for a final answer; beyond max_pending: 503.",
            value=state.pending,
        )
        yield GaugeMetricFamily(
            "sipproxy_completed_transactions",
            "Answered non-INVITE transactions kept to absorb retransmissions.",
            value=state.completed,
        )
        connections = GaugeMetricFamily(
            "sipproxy_connections",
            "Open TCP, TLS and WebSocket connections by transport.",
            labels=["transport"],
        )
        for transport, count in sorted(state.connections.items()):
            connections.add_metric([transport], count)
        yield connections
        yield GaugeMetricFamily(
            "sipproxy_banned_addresses", "Addresses banned right now.", value=state.bans
        )
        yield GaugeMetricFamily(
            "sipproxy_uptime_seconds",
            "Seconds since the server started.",
            value=state.uptime,
        )


#: INVITE to the first 180 or 200, seconds: post-dial delay.
_SETUP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0)  # fmt: skip


class CallMetrics:
    """Calls, in the registry of a :class:`Metrics`: a call tracker's observer.

    Apart from :class:`Metrics` because calls are counted only when call records
    are kept (``--cdr``), and by the tracker rather than per message.

    :param active: the number of live calls, read on each scrape.
    :param pending_writes: call-record writes sent to the store and not done,
        read on each scrape: a store that falls behind shows here first.
    :param store_errors: call-record writes that failed since start.
    :param untracked: calls not tracked because the live-call cap was reached.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        active: Callable[[], int],
        pending_writes: Callable[[], int] = lambda: 0,
        store_errors: Callable[[], int] = lambda: 0,
        untracked: Callable[[], int] = lambda: 0,
    ) -> None:
        ended = Counter(
            "sipproxy_calls",
            "Calls ended, by CDR disposition.",
            ["disposition"],
            registry=registry,
        )
        self._ended = {
            name: ended.labels(name)
            for name in ("answered", "busy", "no_answer", "cancelled", "failed", "lost")
        }
        self._setup = Histogram(
            "sipproxy_call_setup_seconds",
            "Time from a call's INVITE to its first ringing or answer.",
            buckets=_SETUP_BUCKETS,
            registry=registry,
        )
        registry.register(_ActiveCalls(active, pending_writes, store_errors, untracked))

    def call_setup(self, seconds: float) -> None:
        """A call rang or was answered ``seconds`` after its INVITE."""
        self._setup.observe(seconds)

    def call_ended(self, disposition: str) -> None:
        """A call ended with ``disposition``."""
        child = self._ended.get(disposition)
        if child is not None:
            child.inc()


class SubscriptionMetrics:
    """Busy-lamp subscriptions, in the registry of a :class:`Metrics`.

    The notifier's observer (proxy/notifier.py): ``sipproxy_notify_total`` by
    result, counted as each NOTIFY's transaction ends, and the
    ``sipproxy_subscriptions`` gauge, read on each scrape.

    :param count: the subscriptions served now.
    """

    RESULTS = ("ok", "timeout", "gone", "error")

    def __init__(self, registry: CollectorRegistry, count: Callable[[], int]) -> None:
        answered = Counter(
            "sipproxy_notify",
            "NOTIFYs of busy-lamp subscriptions by result: ok (2xx), timeout "
            "(no answer), gone (481), error (any other failure).",
            ["result"],
            registry=registry,
        )
        self._results = {name: answered.labels(name) for name in self.RESULTS}
        registry.register(_Subscriptions(count))

    def notify_result(self, result: str) -> None:
        """A NOTIFY's transaction ended with ``result``."""
        child = self._results.get(result)
        if child is not None:
            child.inc()


class _Subscriptions(Collector):
    def __init__(self, count: Callable[[], int]) -> None:
        self._count = count

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "sipproxy_subscriptions",
            "Busy-lamp (dialog event) subscriptions served.",
            value=self._count(),
        )


class _ActiveCalls(Collector):
    def __init__(
        self,
        active: Callable[[], int],
        pending_writes: Callable[[], int],
        store_errors: Callable[[], int],
        untracked: Callable[[], int],
    ) -> None:
        self._active = active
        self._untracked = untracked
        self._pending_writes = pending_writes
        self._store_errors = store_errors

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "sipproxy_cdr_pending_writes",
            "Call-record writes sent to the store and not yet done.",
            value=self._pending_writes(),
        )
        yield CounterMetricFamily(
            "sipproxy_cdr_store_errors",
            "Call-record writes that failed (the store is down or full).",
            value=self._store_errors(),
        )
        yield CounterMetricFamily(
            "sipproxy_calls_untracked",
            "Calls not tracked: the live-call cap was reached.",
            value=self._untracked(),
        )
        yield GaugeMetricFamily(
            "sipproxy_active_calls", "Calls in progress.", value=self._active()
        )
