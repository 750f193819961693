"""One call detail record (CDR): who called whom, when, and how the call ended.

A :class:`CallRecord` is a value: the proxy builds one when a call starts,
replaces it (``dataclasses.replace``) as the call is answered and ends, and
hands the finished one to a :class:`~sipproxy.cdr.CallRecordStore`. Times are
epoch seconds, kept to the millisecond (the resolution of the JSON form), so a
record read back from any store equals the one written.

This module does no I/O: JSON and CSV are built as values here, and the stores
decide where they go.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

__all__ = [
    "CHALLENGES",
    "CSV_FIELDS",
    "DISPOSITIONS",
    "HANGUP_BY",
    "CallRecord",
    "disposition_of",
    "format_time",
    "parse_time",
    "to_csv",
    "user_part",
]

DISPOSITIONS = frozenset(
    {"answered", "busy", "no_answer", "cancelled", "failed", "lost"}
)
"""How a call ended. ``lost``: the process died while the call was in progress
(:meth:`~sipproxy.cdr.CallRecordStore.close_lost`), so its end is when that was
noticed, not when the call really ended."""

HANGUP_BY = frozenset({"caller", "callee", "timeout"})
"""Who ended an answered call: a BYE from either side, or a session timer."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CallRecord:
    """One call, in progress or finished.

    :raises ValueError: an unknown ``disposition`` or ``hangup_by``, a time that
        is not a finite number, or a status outside 100-699.
    """

    call_id: str
    """The Call-ID of the INVITE that started the call."""
    caller: str
    """The authenticated user, or else the From URI."""
    callee: str
    """The URI dialled: the Request-URI of the first INVITE."""
    answered_by: str | None = None
    """The URI (or user) whose branch answered, after any forking or forwarding."""
    start: float
    """When the INVITE arrived."""
    answer: float | None = None
    """When the 2xx was sent upstream; None while (or if never) answered."""
    end: float | None = None
    """When the call ended (BYE, final non-2xx, CANCEL); None while in progress."""
    disposition: str
    """One of :data:`DISPOSITIONS`."""
    status: int | None = None
    """The final SIP status sent upstream, if one was."""
    hangup_by: str | None = None
    """One of :data:`HANGUP_BY`, for an answered call that ended."""
    forwarded: str | None = None
    """Where the call was forwarded to, if it was."""

    def __post_init__(self) -> None:
        if self.disposition not in DISPOSITIONS:
            raise ValueError(
                f"disposition {self.disposition!r} is not one of"
                f" {', '.join(sorted(DISPOSITIONS))}"
            )
        if self.hangup_by is not None and self.hangup_by not in HANGUP_BY:
            raise ValueError(
                f"hangup_by {self.hangup_by!r} is not one of"
                f" {', '.join(sorted(HANGUP_BY))} or None"
            )
        if self.status is not None and not (
            isinstance(self.status, int) and 100 <= self.status <= 699
        ):
            raise ValueError(f"status {self.status!r} is not a SIP status code")
        # Millisecond resolution here, not only in to_json(): then a record equals
        # itself read back from JSON lines, SQLite and Redis alike.
        object.__setattr__(self, "start", _to_millisecond("start", self.start))
        for name in ("answer", "end"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _to_millisecond(name, value))

    @property
    def duration(self) -> float:
        """Seconds from start to end, to the millisecond; 0 while in progress."""
        return 0.0 if self.end is None else round(self.end - self.start, 3)

    @property
    def billsec(self) -> float:
        """Seconds from answer to end, to the millisecond; 0 if never answered."""
        if self.answer is None or self.end is None:
            return 0.0
        return round(self.end - self.answer, 3)

    def to_json(self) -> dict[str, Any]:
        """The record as JSON-ready values: times as ISO 8601 UTC with milliseconds.

        ``duration`` and ``billsec`` are included for readers; :meth:`from_json`
        ignores them.
        """
        return {
            "call_id": self.call_id,
            "caller": self.caller,
            "callee": self.callee,
            "answered_by": self.answered_by,
            "start": format_time(self.start),
            "answer": None if self.answer is None else format_time(self.answer),
            "end": None if self.end is None else format_time(self.end),
            "disposition": self.disposition,
            "status": self.status,
            "hangup_by": self.hangup_by,
            "forwarded": self.forwarded,
            "duration": self.duration,
            "billsec": self.billsec,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CallRecord:
        """The record :meth:`to_json` gave ``data`` for.

        :raises ValueError: a field is missing, of the wrong type, or invalid.
        """
        try:
            answer, end = data["answer"], data["end"]
            record = cls(
                call_id=_text(data["call_id"]),
                caller=_text(data["caller"]),
                callee=_text(data["callee"]),
                answered_by=_optional_text(data.get("answered_by")),
                start=parse_time(data["start"]),
                answer=None if answer is None else parse_time(answer),
                end=None if end is None else parse_time(end),
                disposition=_text(data["disposition"]),
                status=data.get("status"),
                hangup_by=_optional_text(data.get("hangup_by")),
                forwarded=_optional_text(data.get("forwarded")),
            )
        except (KeyError, TypeError) as error:
            raise ValueError(f"not a call record: {error!r}") from None
        return record

    def matches(
        self,
        user: str | None = None,
        since: float | None = None,
        until: float | None = None,
        dispositions: frozenset[str] | None = None,
    ) -> bool:
        """Whether a query with these filters selects this record; None: any.

        :param user: a user name or a SIP URI; it matches when its user part is
            the user part of :attr:`caller`, :attr:`callee` or :attr:`answered_by`.
        :param since: the earliest :attr:`start` selected (inclusive).
        :param until: the first :attr:`start` no longer selected (exclusive).
        :param dispositions: the dispositions selected.
        """
        if since is not None and self.start < since:
            return False
        if until is not None and self.start >= until:
            return False
        if dispositions is not None and self.disposition not in dispositions:
            return False
        return user is None or user_part(user) in self.users()

    def users(self) -> frozenset[str]:
        """The user parts of caller, callee and answered_by: what ``user`` matches.

        Empty user parts (a URI with only a host) are left out.
        """
        parties = (self.caller, self.callee, self.answered_by)
        return frozenset(
            part for party in parties if party and (part := user_part(party))
        )


CSV_FIELDS = (
    "call_id",
    "caller",
    "callee",
    "answered_by",
    "start",
    "answer",
    "end",
    "disposition",
    "status",
    "hangup_by",
    "forwarded",
    "duration",
    "billsec",
)
"""The CSV columns, in order: the fields of :meth:`CallRecord.to_json`."""

_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_CALLER_TEXT = ("call_id", "caller", "callee", "answered_by", "forwarded")


#: Final statuses that end no call attempt: the caller answers the challenge
#: with credentials, in the same call.
CHALLENGES = frozenset({401, 407})


def disposition_of(status: int) -> str:
    """The disposition of a call whose INVITE got ``status`` as its final answer."""
    if status < 300:
        return "answered"
    if status in (486, 600):
        return "busy"
    if status in (408, 480):
        return "no_answer"
    if status == 487:
        return "cancelled"
    return "failed"


def to_csv(records: Iterable[CallRecord]) -> str:
    """The records as CSV text with a header row (:data:`CSV_FIELDS`).

    Text that came from the network (Call-ID, URIs) and starts like a spreadsheet
    formula (``=``, ``+``, ``-``, ``@``) gets a leading ``'``, so a spreadsheet
    shows it instead of running it (a Call-ID is any word the caller chose).
    Times are as in JSON; empty cells are None. Lines end in CRLF, as RFC 4180
    and the csv module have it.
    """
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS)
    writer.writeheader()
    for record in records:
        row = record.to_json()
        for name in _CALLER_TEXT:
            value = row[name]
            if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
                row[name] = "'" + value
        writer.writerow(row)
    return out.getvalue()


def format_time(moment: float) -> str:
    """Epoch seconds as ISO 8601 UTC with milliseconds: ``2026-12-04T10:15:30.123Z``."""
    seconds, milliseconds = divmod(round(moment * 1000), 1000)
    when = _EPOCH + timedelta(seconds=seconds)
    return f"{when:%Y-%m-%dT%H:%M:%S}.{milliseconds:03d}Z"


def parse_time(text: object) -> float:
    """Epoch seconds from ISO 8601 (as :func:`format_time` writes), to the ms.

    A time without an offset is taken as UTC.

    :raises ValueError: not an ISO 8601 date and time.
    """
    if not isinstance(text, str):
        raise ValueError(f"expected an ISO 8601 time, got {text!r}")
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    # Whole milliseconds counted in integers, then one division: the float is
    # the one nearest the decimal text, as the literal 1796379330.123 would be.
    return ((when - _EPOCH) // _MILLISECOND) / 1000


def user_part(party: str) -> str:
    """The user part of a SIP URI, or a bare user name as it is.

    ``sip:alice@example.test`` and ``<sips:alice:pw@host;transport=tls>`` give
    ``alice``; ``alice`` gives ``alice``; ``sip:example.test`` (no user) gives
    ``""``. Escapes are undone, as URI comparison does (RFC 3261 §19.1.4); case is
    kept, since user parts compare case-sensitively there.
    """
    text = party.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    scheme, colon, rest = text.partition(":")
    if colon and scheme.lower() in ("sip", "sips", "tel"):
        if scheme.lower() == "tel":
            return unquote(rest.partition(";")[0])
        if "@" not in rest:
            return ""
        user = rest.rpartition("@")[0].partition(":")[0]
        return unquote(user)
    return unquote(text.rpartition("@")[0] or text)


def _to_millisecond(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be epoch seconds, not {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite time, not {value!r}")
    return round(value * 1000) / 1000


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {value!r}")
    return value


def _optional_text(value: object) -> str | None:
    return None if value is None else _text(value)
