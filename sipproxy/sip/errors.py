"""The one error type of the wire format, and what the receiver should do with it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sipproxy.sip.headers import Headers


class ParseError(ValueError):
    """Bytes that are not an acceptable SIP message.

    ``status`` is the response a server should send (400, 505, 416, 420, 483, 501,
    ...) and ``headers`` are the header fields that could be read, set only when the
    start line looked like a request. A server answers when ``headers`` carries
    enough to address a response (Via, From, To, Call-ID, CSeq) and drops the
    message otherwise; responses are always dropped (RFC 3261 §16.7).
    """

    def __init__(
        self,
        reason: str,
        *,
        status: int = 400,
        headers: Headers | None = None,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.headers = headers
        #: header fields the error response must carry, e.g. ("Unsupported", "foo")
        self.extra = extra
