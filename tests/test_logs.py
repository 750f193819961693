"""The text log observer writes what Twisted's does, only cheaper (sipproxy.logs)."""

from __future__ import annotations

import io
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.logger import LogLevel, formatEvent, textFileLogObserver
from twisted.python.failure import Failure

from sipproxy.logs import PrintableOutput, TextLineObserver, event_text
from sipproxy.proxy.events import _LINE, _LINE_WITH_CALL

_WHEN = 1_796_000_000.25


def _decision(**fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "log_format": _LINE,
        "log_level": LogLevel.info,
        "log_namespace": "sipproxy.proxy.core.Proxy",
        "log_time": _WHEN,
        "call": None,
        "method": "REGISTER",
        "call_id": "1-1234@127.0.0.1",
        "uri": "sip:example.test",
        "caller": "sip:u1@example.test",
        "callee": "sip:u1@example.test",
        "status": 401,
        "route": "challenge",
        "ms": 0,
    }
    event.update(fields)
    return event


def _lines(observer_of: Any, events: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    observer = observer_of(out)
    for event in events:
        observer(dict(event))
    return out.getvalue()


def _twisteds(out: io.StringIO) -> Any:
    # What --log-format text wrote before: Twisted's observer, made printable.
    return textFileLogObserver(PrintableOutput(out))  # type: ignore[arg-type]


class _Odd:
    def __format__(self, spec: str) -> str:
        raise ValueError("no")

    def __repr__(self) -> str:
        return "<odd>"


EVENTS: list[dict[str, Any]] = [
    _decision(),
    _decision(log_format=_LINE_WITH_CALL, method="INVITE", status=200, call="answered"),
    _decision(caller="sip:\udcff@example.test"),  # a byte that was not UTF-8
    _decision(call_id="two\nlines"),  # continuation lines are indented
    _decision(log_time=_WHEN + 0.5),  # same second, cached stamp
    _decision(log_time=_WHEN + 1.0),  # next second
    _decision(log_time=_WHEN - 30.0),  # an older event after a newer one
    _decision(log_time=None),
    _decision(log_level=None),
    _decision(log_system="a system"),
    _decision(log_format="{missing}"),  # Twisted says it cannot format it
    _decision(log_format="{status!r} {uri!s:>20}"),
    _decision(log_format="{status()}"),  # Twisted's call syntax
    _decision(log_format="{}"),  # positional: unformattable
    _decision(log_format="{odd}", odd=_Odd()),
    _decision(log_format=""),  # nothing to write
    _decision(log_format=None),
    _decision(log_format=b"bytes {status}"),
    {"log_format": "no level, namespace or time"},
]


def test_text_lines_are_twisteds_lines() -> None:
    assert _lines(TextLineObserver, EVENTS) == _lines(_twisteds, EVENTS)


def test_a_failure_is_written_with_its_traceback() -> None:
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        failure = Failure()
    event = _decision(log_format="it broke", log_failure=failure)
    written = _lines(TextLineObserver, [event])
    assert written == _lines(_twisteds, [event])
    assert "ZeroDivisionError" in written


@given(
    fmt=st.text(alphabet="{}!:rsa0.[]()xyz ", max_size=20),
    value=st.one_of(st.integers(), st.text(max_size=5), st.none()),
)
def test_any_format_gives_twisteds_text(fmt: str, value: object) -> None:
    """Whatever the format, the fast path says what Twisted says, or defers to it."""
    event = {"log_format": fmt, "x": value, "y": [value], "z": {"a": value}}
    assert event_text(event) == formatEvent(event)


def test_a_plain_line_never_reaches_twisteds_formatter(monkeypatch: Any) -> None:
    """Twisted's formatter is the cost this observer exists to avoid."""

    def slow(event: Any) -> str:
        raise AssertionError("Twisted's formatter was used")

    monkeypatch.setattr("sipproxy.logs.formatEvent", slow)
    assert _lines(TextLineObserver, [_decision()]).endswith(
        "[sipproxy.proxy.core.Proxy#info] REGISTER 1-1234@127.0.0.1"
        " sip:example.test from sip:u1@example.test to sip:u1@example.test"
        " -> 401 via challenge in 0 ms\n"
    )
