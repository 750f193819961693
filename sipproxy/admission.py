"""Whether what a source sends is read at all: trusted, banned, or within its rate.

Asked by the listeners for every datagram and new connection, before any parsing,
so that a flood costs no more than reading it: sources in the --trusted networks
always pass, banned sources (failed authentications) never do, and every other
source within a token bucket of its own (:class:`sipproxy.guard.RateLimiter`),
so that one flooding source loses only its excess.
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.interfaces import IReactorTime

from sipproxy.config import Config
from sipproxy.guard import BanList, RateLimiter


class AdmissionObserver(Protocol):
    """Told of what admission drops (the metrics)."""

    def dropped_banned(self) -> None:
        """A message from a banned source was dropped unread."""

    def rate_limited(self) -> None:
        """A message over its source's rate was dropped unread."""


class Admission:
    """The admission rules of one server, reloaded in place.

    :param clock: the time bans and token buckets are measured against.
    :param observer: told of each message dropped.
    """

    def __init__(
        self, config: Config, clock: IReactorTime, observer: AdmissionObserver
    ) -> None:
        self._clock = clock
        self._observer = observer
        #: None when rate limiting is off (rate-limit 0)
        self.rate_limiter = (
            RateLimiter(config.rate_limit, config.rate_burst)
            if config.rate_limit
            else None
        )
        #: the --trusted networks: the one membership test ("ip in self.trusted")
        #: for everything that treats a source as trusted; one object for the
        #: process's life, reloaded in place (hand it out, don't copy it)
        self.trusted = config.trusted_networks()
        self.bans = BanList(exempt=self.trusted)

    def admit(self, source_ip: str) -> bool:
        """Whether to read what ``source_ip`` sent; counts what is dropped."""
        if source_ip in self.trusted:
            return True
        now = self._clock.seconds()
        if self.bans.is_banned(source_ip, now):
            self._observer.dropped_banned()
            return False
        if self.rate_limiter is None or self.rate_limiter.allow(source_ip, now):
            return True
        self._observer.rate_limited()
        return False

    def reconfigure(self, config: Config) -> None:
        """Apply a reloaded config's rate limit and trusted networks."""
        if not config.rate_limit:
            self.rate_limiter = None
        elif self.rate_limiter is None:
            self.rate_limiter = RateLimiter(config.rate_limit, config.rate_burst)
        else:
            # The buckets (who has spent what) stay; only the rules change.
            self.rate_limiter.rate = config.rate_limit
            self.rate_limiter.burst = config.rate_burst
            self.rate_limiter.refill_time = config.rate_burst / config.rate_limit
        self.trusted.reload(config.trusted)  # the same object everywhere
