"""``--log-format json``: one JSON object per log line, for log shippers.

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
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import ILogObserver, LogEvent, formatEvent
from twisted.python.logfile import LogFile
from zope.interface import implementer

__all__ = ["JSONLineObserver", "json_observer", "use_json_logs"]

_destination: str | None = None


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
    if _destination in (None, "-"):
        return JSONLineObserver(sys.stdout)
    return JSONLineObserver(LogFile.fromFullPath(_destination))


@implementer(ILogObserver)
class JSONLineObserver:
    """Write each event as one line of JSON to ``out`` and flush it."""

    def __init__(self, out: IO[str] | LogFile) -> None:
        self._out = out

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
        "text": formatEvent(event),
        "namespace": event.get("log_namespace"),
    }
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    for key, value in event.items():
        if key.startswith("log_") or key in record or key in ("format", "message"):
            continue
        record[key] = _plain(value)
    return json.dumps(record, ensure_ascii=False) + "\n"


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)
