"""What the proxy reports as it works, for metrics; the core imports no metrics library.

The service wiring passes an object with these methods (``sipproxy.metrics.Metrics``
is one) as ``Proxy(observer=...)``; without one the core reports nothing and pays
nothing but a ``None`` check.
"""

from __future__ import annotations

from typing import Protocol


class ProxyObserver(Protocol):
    """Events of the core, each called once per occurrence; must be cheap."""

    def request_received(self, method: str) -> None:
        """A new request (never a retransmission) arrived."""

    def final_sent(self, method: str, status: int, elapsed: float | None) -> None:
        """A final response went upstream ``elapsed`` seconds after the request."""

    def auth_failed(self) -> None:
        """Credentials were presented and were wrong."""

    def banned(self) -> None:
        """A source address was just banned."""
