"""The edge of the server as tap wires it: trusted networks, caps, redaction (issue 13).

Built on a MemoryReactorClock with UDP (sipproxy.testing): no sockets, no clock.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure

from sipproxy.config import build_config
from sipproxy.location import LocationUnavailableError, redacted_spec, redacted_text
from sipproxy.tap import SIPServerService
from sipproxy.testing import UDPMemoryReactor

SECRET_LOCATION = "redis://:secretpw@127.0.0.1:1/0"


def service(**values: Any) -> SIPServerService:
    config = build_config(
        {
            "domain": ["example.test"],
            "listen": ["udp:5060:interface=127.0.0.1", "tcp:5060:interface=127.0.0.1"],
            **values,
        },
        {},
    )
    return SIPServerService(config, UDPMemoryReactor())


def test_a_trusted_network_is_never_rate_limited() -> None:
    """--trusted names networks; the transports ask the same object as the bans."""
    server = service(**{"trusted": ["198.51.100.0/24"], "rate-burst": 1})
    assert server.bans.exempt is server.trusted
    assert all(server._admit("198.51.100.77") for _ in range(10))
    assert server._admit("192.0.2.1")
    assert not server._admit("192.0.2.1")


def test_ipv6_sources_are_rate_limited_per_64() -> None:
    """Issue 13: a /64 is one source; rotating addresses buys nothing."""
    server = service(**{"rate-burst": 2})
    assert server._admit("2001:db8::1")
    assert server._admit("2001:db8::2")
    assert not server._admit("2001:db8::3")
    assert server._admit("2001:db8:0:1::1")


def test_stream_listeners_get_the_caps_and_the_deadline() -> None:
    server = service(**{"max-connections": 7, "message-timeout": 3})
    server.privilegedStartService()
    factory = server.stream_factories["tcp"]
    assert factory.message_timeout == 3.0
    assert factory.limit is server.connection_limit
    assert server.connection_limit.max_total == 7


def test_a_store_that_cannot_open_is_logged_without_its_password() -> None:
    server = service(location=SECRET_LOCATION)
    error = LocationUnavailableError(f"{SECRET_LOCATION}: auth secretpw refused")
    with capturedLogs() as events:
        server._cannot_open(Failure(error))
    texts = [formatEvent(e) for e in events]
    assert texts
    assert all("secretpw" not in text for text in texts), texts
    assert "redis://***@127.0.0.1:1/0" in texts[0]
    assert all("secretpw" not in repr(event) for event in events)


def test_redaction_covers_the_url_and_the_bare_password() -> None:
    assert redacted_spec(SECRET_LOCATION) == "redis://***@127.0.0.1:1/0"
    assert redacted_spec("redis://127.0.0.1/0") == "redis://127.0.0.1/0"
    text = redacted_text(f"cannot reach {SECRET_LOCATION} (secretpw)", SECRET_LOCATION)
    assert "secretpw" not in text
    assert redacted_text("no password here", "memory:") == "no password here"
