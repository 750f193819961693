"""Request validation a proxy does before anything else (RFC 3261 §16.3).

Each check is a pure function that raises :class:`RejectedError` with the status to
answer; the core turns that into a response in one place.
"""

from __future__ import annotations

from collections.abc import Collection

from sipproxy.sip.message import Request

#: Request-URI schemes we route (RFC 3261 §16.3 step 2); tel: goes to a dial plan.
SUPPORTED_SCHEMES = frozenset({"sip", "sips", "tel"})


class RejectedError(Exception):
    """A request the server refuses, and how: status, reason and extra header fields."""

    def __init__(
        self,
        status: int,
        reason: str | None = None,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(f"{status} {reason or ''}".strip())
        self.status = status
        self.reason = reason
        self.extra = extra


def check_uri_scheme(request: Request) -> None:
    """Refuse a Request-URI scheme we cannot route with 416 (RFC 3261 §16.3 step 2).

    "If the Request-URI has a URI whose scheme is not understood by the proxy, the
    proxy SHOULD reject the request with a 416 (Unsupported URI Scheme) response."
    """
    scheme = request.request_uri.scheme.lower()
    if scheme not in SUPPORTED_SCHEMES:
        raise RejectedError(416)


def check_max_forwards(request: Request, *, answering_here: bool) -> None:
    """RFC 3261 §16.3 step 3: a request with Max-Forwards 0 is not forwarded (483).

    "If the request does not contain a Max-Forwards header field, this check is
    passed." An OPTIONS request the proxy answers itself is exempt (§11 and
    §16.3: "the element MAY act as a UAS and respond to an OPTIONS request").
    """
    if request.max_forwards == 0 and not answering_here:
        raise RejectedError(483)


def check_proxy_require(request: Request, supported: Collection[str]) -> None:
    """RFC 3261 §16.3 step 5: unknown Proxy-Require options -> 420 with Unsupported."""
    _require(request.headers.get_all("proxy-require"), supported)


def check_require(request: Request, supported: Collection[str]) -> None:
    """RFC 3261 §8.2.2.3: as a UAS, unknown Require options -> 420 with Unsupported."""
    _require(request.headers.get_all("require"), supported)


def _require(options: list[str], supported: Collection[str]) -> None:
    unknown = [o for o in options if o and o.lower() not in supported]
    if unknown:
        raise RejectedError(420, extra=(("Unsupported", ", ".join(unknown)),))
