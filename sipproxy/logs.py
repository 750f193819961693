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

from twisted.logger import ILogObserver, LogEvent, formatEvent, textFileLogObserver
from twisted.python.logfile import LogFile
from zope.interface import implementer

__all__ = [
    "JSONLineObserver",
    "PrintableOutput",
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
    return textFileLogObserver(PrintableOutput(_open(_destination)))  # type: ignore[arg-type]


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
        "text": printable(formatEvent(event)),
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
