r"""``--log-format json``: one JSON object per log line, for log shippers.

twistd chooses its log observer before our service starts, from its own
``--logger`` option; ``tap.Options`` sets that option to :func:`json_observer`
(via :func:`use_json_logs`) when the format is ``json``. The observer writes where
twistd would have written its text lines: ``--logfile``, or standard output with
``-n``.

Each line is one object whose first keys are always ``time``, ``level`` and
``text`` (the formatted message), in that order, then the event's own fields
(``method``, ``call_id``, ``status``, ...), so a shipper can index them without
parsing the text. A fail2ban filter can anchor on that fixed beginning: what an
attacker sends only ever appears inside a JSON string, escaped.

Whatever the format, the lines are always valid UTF-8. Header values keep bytes
that are not UTF-8 as lone surrogates (``surrogateescape``, so that forwarding
restores them); written as they are, they make the encoder raise, and Twisted then
disables the observer for good: every later line, ban lines for fail2ban
included, is lost. :func:`printable` turns each such byte into a
``\xNN`` escape (``backslashreplace``) on the way out: in every JSON value, and in
every line of the text format, which ``--log-format text`` routes through
:func:`text_observer` for that reason.
"""

from __future__ import annotations

import json
import re
import signal
import sys
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import (
    ILogObserver,
    LogEvent,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
    timeFormatRFC3339,
)
from twisted.python.logfile import LogFile
from zope.interface import implementer

__all__ = [
    "JSONLineObserver",
    "PrintableOutput",
    "TextLineObserver",
    "event_text",
    "json_observer",
    "printable",
    "text_observer",
    "use_json_logs",
    "use_text_logs",
]

_destination: str | None = None

_SURROGATE = re.compile("[\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match[0])
    if 0xDC80 <= code <= 0xDCFF:  # a byte that surrogateescape kept
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}"


def printable(text: str) -> str:
    r"""``text`` made encodable as UTF-8: undecodable bytes become ``\xNN``.

    >>> printable(b"call-\xff".decode("utf-8", "surrogateescape"))
    'call-\\xff'

    Linear, and free for text without lone surrogates (nearly every line).
    """
    if text.isascii() or _SURROGATE.search(text) is None:
        return text
    return _SURROGATE.sub(_escape, text)


class PrintableOutput:
    """A log destination that never raises on text it cannot encode."""

    def __init__(self, out: IO[str] | LogFile) -> None:
        self._out = out

    def write(self, text: str) -> None:
        """Write ``text`` with any lone surrogate escaped (see :func:`printable`)."""
        self._out.write(printable(text))

    def flush(self) -> None:
        """Flush the destination."""
        self._out.flush()


def _open(destination: str | None) -> IO[str] | LogFile:
    if destination in (None, "-"):
        return sys.stdout
    log_file: LogFile = LogFile.fromFullPath(destination)
    # As twistd does for its own log file: SIGUSR1 reopens it (logrotate).
    if hasattr(signal, "SIGUSR1") and not signal.getsignal(signal.SIGUSR1):

        def rotate(*_: object) -> None:
            # Like twistd's: the log file is set up before any service exists.
            from twisted.internet import reactor  # noqa: TID251

            reactor.callFromThread(log_file.rotate)  # type: ignore[attr-defined]

        signal.signal(signal.SIGUSR1, rotate)
    return log_file


def use_text_logs(logfile: str | None, *, nodaemon: bool) -> str:
    """Like :func:`use_json_logs`, for twistd's text lines (made printable)."""
    use_json_logs(logfile, nodaemon=nodaemon)
    return f"{__name__}.text_observer"


def text_observer() -> ILogObserver:
    """The factory twistd's ``--logger`` names: twistd's text lines, printable."""
    return TextLineObserver(_open(_destination))


def event_text(event: LogEvent) -> str:
    """``formatEvent(event)``, at a fraction of its cost for plain formats.

    Twisted formats with a pure-Python ``string.Formatter`` that looks every
    field up through wrappers (for its ``{f()}`` call syntax): some 20 us per
    line here, as much as handling a REGISTER. ``str.format_map`` gives the
    same text for the formats we write (``{name}``, ``{name!r}``, ``{a.b}``);
    anything it cannot do (a call, a missing key, a flattened event) raises or
    is excluded, and then Twisted formats the event as it always did.
    """
    fmt = event.get("log_format")
    if type(fmt) is str and "log_flattened" not in event:
        try:
            return fmt.format_map(event)
        except Exception:
            # Twisted's formatter writes why this event cannot be formatted.
            pass
    return formatEvent(event)


@implementer(ILogObserver)
class TextLineObserver:
    """twistd's classic text lines (``textFileLogObserver``), made cheaper.

    Each line is ``{time} [{system}] {text}``, byte for byte what Twisted's
    observer writes (tests/test_logs.py compares them), printable (see
    :class:`PrintableOutput`) and flushed; the time is formatted once per
    second and the text by :func:`event_text`. Events with a traceback go
    through Twisted's formatter unchanged: they are rare and it knows them.
    """

    def __init__(self, out: IO[str] | LogFile) -> None:
        self._out = PrintableOutput(out)
        self._second: int | None = None
        self._stamp = "-"

    def __call__(self, event: LogEvent) -> None:
        """Write ``event`` (twisted.logger calls this for every event)."""
        if "log_failure" in event:
            line = formatEventAsClassicLogText(event, formatTime=formatTime)
        else:
            line = self._line(event)
        if line:
            self._out.write(line)
            self._out.flush()

    def _line(self, event: LogEvent) -> str | None:
        text = event_text(event)
        if not text:
            return None
        system = event.get("log_system")
        if system is None:
            level = event.get("log_level")
            name = "-" if level is None else level.name
            system = f"{event.get('log_namespace', '-')}#{name}"
        else:
            try:
                system = str(system)
            except Exception:
                system = "UNFORMATTABLE"
        line = f"{self._time(event.get('log_time'))} [{system}] {text}"
        return line.replace("\n", "\n\t") + "\n"

    def _time(self, when: object) -> str:
        if type(when) is not float:
            return formatTime(when, timeFormatRFC3339)  # type: ignore[arg-type]
        second = int(when)
        if second != self._second:
            # The format has no fraction of a second: one strftime a second.
            # A line stamped in the past (a queued event) is formatted afresh.
            self._stamp = formatTime(float(second), timeFormatRFC3339)
            self._second = second
        return self._stamp


def use_json_logs(logfile: str | None, *, nodaemon: bool) -> str:
    """Remember where to write; the name to give twistd's ``--logger``.

    :param logfile: twistd's ``--logfile`` (None or "-": standard output when
        running in the foreground, ``twistd.log`` when daemonised).
    """
    global _destination
    if logfile in (None, "", "-"):
        logfile = "-" if nodaemon else "twistd.log"
    _destination = logfile
    return f"{__name__}.json_observer"


def json_observer() -> ILogObserver:
    """The factory twistd's ``--logger`` names: JSON lines to the destination."""
    return JSONLineObserver(_open(_destination))


@implementer(ILogObserver)
class JSONLineObserver:
    """Write each event as one line of JSON to ``out`` and flush it."""

    def __init__(self, out: IO[str] | LogFile) -> None:
        self._out = PrintableOutput(out)

    def __call__(self, event: LogEvent) -> None:
        """Write ``event`` (twisted.logger calls this for every event)."""
        self._out.write(event_line(event))
        self._out.flush()


def event_line(event: LogEvent) -> str:
    """One event as a line of JSON, ``time``, ``level`` and ``text`` first."""
    moment = event.get("log_time")
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": (
            datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S%z")
            if isinstance(moment, int | float)
            else None
        ),
        "level": getattr(level, "name", "info"),
        "text": printable(event_text(event)),
        "namespace": event.get("log_namespace"),
    }
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = printable(failure.getTraceback())
    for key, value in event.items():
        if key.startswith("log_") or key in record or key in ("format", "message"):
            continue
        record[key] = _plain(value)
    return json.dumps(record, ensure_ascii=False) + "\n"


def _plain(value: Any) -> Any:
    if isinstance(value, str):
        return printable(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    return printable(str(value))
