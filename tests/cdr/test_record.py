"""The call record value: validation, derived times, JSON, CSV and matching."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipproxy.cdr.record import (
    CSV_FIELDS,
    DISPOSITIONS,
    CallRecord,
    format_time,
    parse_time,
    to_csv,
    user_part,
)
from tests.cdr.examples import T0, call

DECEMBER_4 = 1_796_379_330.123
"""2026-12-04T10:15:30.123Z."""


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("disposition", "hung_up", "disposition 'hung_up' is not one of"),
        ("disposition", "", "disposition '' is not one of"),
        ("hangup_by", "network", "hangup_by 'network' is not one of"),
        ("status", 99, "status 99 is not a SIP status code"),
        ("status", 700, "status 700 is not a SIP status code"),
        ("start", float("nan"), "start must be a finite time"),
        ("end", float("inf"), "end must be a finite time"),
        ("answer", "10:00", "answer must be epoch seconds"),
    ],
)
def test_invalid_fields_are_refused(field: str, value: object, message: str) -> None:
    """A record with an unknown disposition (or other bad field) never exists."""
    fields: dict[str, Any] = {field: value}
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(call(), **fields)


def test_every_disposition_is_accepted() -> None:
    for disposition in DISPOSITIONS:
        assert call(disposition=disposition).disposition == disposition


def test_times_are_kept_to_the_millisecond() -> None:
    """Times round to the millisecond, the resolution every store keeps."""
    record = call(start=100.12345, answer=None, end=160.0006)
    assert (record.start, record.end) == (100.123, 160.001)


def test_duration_and_billsec() -> None:
    """Duration runs from start, billsec from answer; both 0 until they apply."""
    record = call(start=T0, answer=T0 + 4.5, end=T0 + 64.75)
    assert (record.duration, record.billsec) == (64.75, 60.25)
    unanswered = call(disposition="no_answer", start=T0, end=T0 + 30)
    assert (unanswered.duration, unanswered.billsec) == (30.0, 0.0)
    in_progress = call(start=T0, answer=T0 + 5, end=None)
    assert (in_progress.duration, in_progress.billsec) == (0.0, 0.0)
    assert call(start=0.1, answer=None, end=0.3).duration == 0.2  # not 0.19999...


def test_json_has_iso_times_with_milliseconds() -> None:
    record = call(start=DECEMBER_4, answer=DECEMBER_4 + 5, end=DECEMBER_4 + 65.5)
    data = record.to_json()
    assert data == {
        "call_id": "c1",
        "caller": "alice",
        "callee": "sip:bob@example.test",
        "answered_by": "sip:bob@example.test",
        "start": "2026-12-04T10:15:30.123Z",
        "answer": "2026-12-04T10:15:35.123Z",
        "end": "2026-12-04T10:16:35.623Z",
        "disposition": "answered",
        "status": 200,
        "hangup_by": "caller",
        "forwarded": None,
        "duration": 65.5,
        "billsec": 60.5,
    }
    assert list(data) == list(CSV_FIELDS)


def test_json_round_trips_through_text() -> None:
    """A record written as JSON text and read back is equal to the one written."""
    record = call(forwarded="sip:carol@example.test", start=DECEMBER_4)
    text = json.dumps(record.to_json())
    assert CallRecord.from_json(json.loads(text)) == record
    bare = CallRecord(call_id="x", caller="a", callee="b", start=0, disposition="lost")
    assert CallRecord.from_json(bare.to_json()) == bare


@given(st.integers(min_value=0, max_value=253_402_300_799_999))
def test_every_millisecond_round_trips(milliseconds: int) -> None:
    """Any time up to year 9999 survives format_time and parse_time exactly."""
    moment = milliseconds / 1000
    assert parse_time(format_time(moment)) == moment


def test_parse_time_takes_other_iso_forms() -> None:
    assert parse_time("2026-12-04T10:15:30.123+00:00") == DECEMBER_4
    assert parse_time("2026-12-04T11:15:30.123+01:00") == DECEMBER_4
    assert parse_time("2026-12-04T10:15:30.123") == DECEMBER_4


@pytest.mark.parametrize(
    "data",
    [
        {},
        {**call().to_json(), "start": "yesterday"},
        {**call().to_json(), "start": 12.5},
        {**call().to_json(), "caller": None},
        {**call().to_json(), "disposition": "unknown"},
    ],
)
def test_from_json_refuses_what_is_not_a_record(data: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (each case has its own message)
        CallRecord.from_json(data)


def test_csv_reads_back_with_every_field() -> None:
    """The CSV has a header of every field and one row per record, in order."""
    records = [
        call("c1", start=DECEMBER_4),
        call("c2", disposition="busy", status=486, start=DECEMBER_4 + 1),
    ]
    text = to_csv(records)
    assert text.startswith(",".join(CSV_FIELDS) + "\r\n")
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert [tuple(row) for row in rows] == [CSV_FIELDS] * 2
    expected = [
        {k: "" if v is None else str(v) for k, v in record.to_json().items()}
        for record in records
    ]
    assert rows == expected
    assert rows[1]["answer"] == ""
    assert rows[0]["start"] == "2026-12-04T10:15:30.123Z"


def test_csv_of_no_records_is_the_header() -> None:
    assert to_csv([]) == ",".join(CSV_FIELDS) + "\r\n"


def test_csv_defuses_what_a_spreadsheet_would_run() -> None:
    """A Call-ID or URI starting like a formula is quoted with a leading '."""
    hostile = call("=HYPERLINK(1)", caller="+cmd|' /C calc'!A0", callee="@SUM(1)")
    row = next(csv.DictReader(io.StringIO(to_csv([hostile]), newline="")))
    assert row["call_id"] == "'=HYPERLINK(1)"
    assert row["caller"] == "'+cmd|' /C calc'!A0"
    assert row["callee"] == "'@SUM(1)"
    assert row["disposition"] == "answered"


@pytest.mark.parametrize(
    ("party", "user"),
    [
        ("alice", "alice"),
        ("sip:alice@example.test", "alice"),
        ("sips:alice@example.test:5061;transport=tls", "alice"),
        ("<sip:alice:secret@example.test>", "alice"),
        ("SIP:Alice@example.test", "Alice"),
        ("sip:%61lice@example.test", "alice"),
        ("sip:+15551234567@gw.example.test;user=phone", "+15551234567"),
        ("tel:+15551234567;phone-context=example.test", "+15551234567"),
        ("sip:example.test", ""),
        ("alice@example.test", "alice"),
    ],
)
def test_user_part(party: str, user: str) -> None:
    assert user_part(party) == user


def test_matches_a_user_by_name_or_uri() -> None:
    record = call(
        caller="sip:alice@example.test",
        callee="sip:sales@example.test",
        answered_by="sip:carol@192.0.2.4",
    )
    for user in ("alice", "sip:alice@example.test", "sales", "carol", None):
        assert record.matches(user)
    assert not record.matches("bob")
    assert not record.matches("example.test")
    assert record.users() == {"alice", "sales", "carol"}


def test_matches_a_window_and_dispositions() -> None:
    record = call(start=T0, disposition="busy")
    assert record.matches(since=T0, until=T0 + 0.001)
    assert not record.matches(since=T0 + 0.001)
    assert not record.matches(until=T0)
    assert record.matches(dispositions=frozenset({"busy", "no_answer"}))
    assert not record.matches(dispositions=frozenset({"answered"}))
    assert not record.matches(dispositions=frozenset())
