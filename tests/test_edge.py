"""The edge of the server as tap wires it: trusted networks, caps, redaction (issue 13).

Built on a MemoryReactorClock with UDP (sipproxy.testing): no sockets, no clock.
"""

from __future__ import annotations

import io
import json
from typing import Any

from twisted.logger import (
    LogLevel,
    LogPublisher,
    capturedLogs,
    formatEvent,
    textFileLogObserver,
)
from twisted.python.failure import Failure

from sipproxy.config import build_config
from sipproxy.location import LocationUnavailableError
from sipproxy.location.spec import redacted_spec, redacted_text
from sipproxy.logs import JSONLineObserver, PrintableOutput, event_line, printable
from sipproxy.server import SIPServerService, build_server
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
    return build_server(config, UDPMemoryReactor())


def test_a_trusted_network_is_never_rate_limited() -> None:
    """--trusted names networks; the transports ask the same object as the bans."""
    server = service(**{"trusted": ["198.51.100.0/24"], "rate-burst": 1})
    assert server.bans.exempt is server.trusted
    assert all(server.admission.admit("198.51.100.77") for _ in range(10))
    assert server.admission.admit("192.0.2.1")
    assert not server.admission.admit("192.0.2.1")


def test_ipv6_sources_are_rate_limited_per_64() -> None:
    """Issue 13: a /64 is one source; rotating addresses buys nothing."""
    server = service(**{"rate-burst": 2})
    assert server.admission.admit("2001:db8::1")
    assert server.admission.admit("2001:db8::2")
    assert not server.admission.admit("2001:db8::3")
    assert server.admission.admit("2001:db8:0:1::1")


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


# Logs that survive bytes that are not UTF-8 (issue 13 item 12)

BAD_CALL_ID = b"abc\xff\xfe\xc3".decode("utf-8", "surrogateescape")


def strict_stream() -> tuple[io.TextIOWrapper, io.BytesIO]:
    raw = io.BytesIO()
    return io.TextIOWrapper(raw, encoding="utf-8", errors="strict"), raw


def event(text: str, **fields: Any) -> dict[str, Any]:
    return {
        "log_format": text,
        "log_level": LogLevel.info,
        "log_time": 0.0,
        "log_namespace": "sipproxy.test",
        **fields,
    }


def test_printable_escapes_kept_bytes_and_leaves_text_alone() -> None:
    assert printable(BAD_CALL_ID) == "abc\\xff\\xfe\\xc3"
    assert printable("Grüße, 通话") == "Grüße, 通话"
    assert printable("\ud800") == "\\ud800"


def test_a_json_line_with_bad_bytes_is_valid_utf8_json() -> None:
    """Bytes a Call-ID carried appear as backslash-x escapes, in valid JSON."""
    line = event_line(event("INVITE {call_id}", call_id=BAD_CALL_ID, other=[1]))
    line.encode("utf-8")  # raises on a lone surrogate
    record = json.loads(line)
    assert record["call_id"] == "abc\\xff\\xfe\\xc3"
    assert record["text"] == "INVITE abc\\xff\\xfe\\xc3"


def test_the_json_observer_is_never_disabled_by_bad_bytes() -> None:
    """Twisted drops an observer that raises; every later line would be lost."""
    out, raw = strict_stream()
    publisher = LogPublisher()
    publisher.addObserver(JSONLineObserver(out))
    publisher(event("INVITE {call_id}", call_id=BAD_CALL_ID))
    publisher(event("sipproxy: banned {ip} for 600 s", ip="192.0.2.7"))
    lines = raw.getvalue().decode("utf-8").splitlines()
    assert len(lines) == 2
    assert json.loads(lines[1])["text"] == "sipproxy: banned 192.0.2.7 for 600 s"


def test_the_text_observer_is_never_disabled_by_bad_bytes() -> None:
    out, raw = strict_stream()
    publisher = LogPublisher()
    publisher.addObserver(textFileLogObserver(PrintableOutput(out)))  # type: ignore[arg-type]
    publisher(event("INVITE {call_id}", call_id=BAD_CALL_ID))
    publisher(event("sipproxy: banned {ip} for 600 s", ip="192.0.2.7"))
    text = raw.getvalue().decode("utf-8")
    assert "INVITE abc\\xff\\xfe\\xc3" in text
    assert "sipproxy: banned 192.0.2.7 for 600 s" in text
