"""Call records the CDR tests share."""

from __future__ import annotations

from typing import Any

from sipproxy.cdr.record import CallRecord

T0 = 1_764_843_330.123
"""2025-12-04T10:15:30.123Z: in the past, as the start of a finished call is.

(The Redis store's query relies on that: a stream entry is never added before
its call started.)"""
DAY = 86_400.0


def call(
    call_id: str = "c1",
    *,
    caller: str = "alice",
    callee: str = "sip:bob@example.test",
    start: float = T0,
    disposition: str = "answered",
    **fields: Any,
) -> CallRecord:
    """A finished call: answered ones ring 5 s and last a minute unless told."""
    if disposition == "answered":
        fields.setdefault("answered_by", callee)
        fields.setdefault("answer", start + 5)
        fields.setdefault("status", 200)
        fields.setdefault("hangup_by", "caller")
        fields.setdefault("end", start + 65)
    else:
        fields.setdefault("end", start + 20)
    return CallRecord(
        call_id=call_id,
        caller=caller,
        callee=callee,
        start=start,
        disposition=disposition,
        **fields,
    )


def call_ids(records: list[CallRecord]) -> list[str]:
    return [record.call_id for record in records]
