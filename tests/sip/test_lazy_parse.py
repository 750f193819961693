"""The parser's one-split path for usual header sections equals the line walk.

``_fast_fields`` takes a section written the usual way (CRLF lines, no folds,
token names) in one split; anything else goes to ``_parse_fields``, which finds
what is wrong. These tests hold the first to the second on every message of the
RFC 4475/5118 corpus, on corrupted copies of them and on generated messages,
and check that the usual messages really take the short way.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipproxy.sip.headers import Header
from sipproxy.sip.parser import (
    MAX_HEADER_FIELDS,
    MAX_LINE_LENGTH,
    _fast_fields,
    _find_head_end,
    _parse_fields,
    _split_lines,
)
from tests.sip.test_properties import TORTURE, mutated, requests, responses

INVITE = (
    b"INVITE sip:bob@example.test SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:alice@example.test>;tag=a1\r\n"
    b"To: <sip:bob@example.test>\r\n"
    b"Call-ID: 1-call@127.0.0.1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: <sip:alice@127.0.0.1:5061>\r\n"
    b"v: SIP/2.0/UDP other;branch=z9hG4bK-2\r\n"
    b"X-Odd-Name_1: \t spaced value \t\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)


def _section(data: bytes) -> bytes | None:
    """The fields between the start line and the empty line, as parse_message cuts."""
    data = data.lstrip(b"\r\n")
    found = _find_head_end(data, 0)
    if found is None:
        return None
    head_end = found[0]
    first_end = data.find(b"\n", 0, head_end + 1) - 1
    if first_end <= 0 or data[first_end] != 13 or data[head_end - 1] != 13:
        return None
    return data[first_end + 2 : head_end - 1]


def _fields(headers: list[Header]) -> list[tuple[str, str, bytes | None, str]]:
    return [(h.name, h.value, h.raw, h.key) for h in headers]


def _assert_same(section: bytes) -> bool:
    """The short way, when it answers, gives what the line walk gives."""
    fast = _fast_fields(section)
    if fast is None:
        return False
    walked, error = _parse_fields(_split_lines(section))
    assert error is None
    assert _fields(fast) == _fields(walked)
    return True


def test_a_usual_invite_takes_the_short_way() -> None:
    section = _section(INVITE)
    assert section is not None
    assert _assert_same(section)
    fast = _fast_fields(section)
    assert fast is not None
    assert [h.key for h in fast][-3:] == ["via", "x-odd-name_1", "content-length"]
    assert fast[-2].value == "spaced value"
    assert fast[-2].raw == b"X-Odd-Name_1: \t spaced value \t"


@pytest.mark.parametrize(
    "section",
    [
        b"Via: a\r\n b",  # folded
        b"Via: a\r\n\tb",
        b"Via: a\nFrom: b",  # bare LF
        b"Via: a\rb",  # bare CR
        b"Via : a",  # space before the colon
        b"Via a",  # no colon
        b": a",  # no name
        b"V(a: b",  # not a token
        b"Subject: " + b"x" * MAX_LINE_LENGTH,  # too long
        b"\r\n".join([b"X: y"] * (MAX_HEADER_FIELDS + 1)),  # too many
    ],
)
def test_unusual_sections_take_the_line_walk(section: bytes) -> None:
    assert _fast_fields(section) is None


def test_the_most_fields_still_take_the_short_way() -> None:
    assert _assert_same(b"\r\n".join([b"X: y"] * MAX_HEADER_FIELDS))


def test_every_corpus_message() -> None:
    short = 0
    for data in TORTURE:
        section = _section(data)
        if section is not None and _assert_same(section):
            short += 1
    # Most torture messages are written the usual way; a change that sent them
    # all to the walk would make this comparison empty.
    assert short >= len(TORTURE) // 2


@settings(max_examples=400, deadline=None)
@given(mutated())
def test_corrupted_corpus_messages(data: bytes) -> None:
    section = _section(data)
    if section is not None:
        _assert_same(section)


@settings(max_examples=150, deadline=None)
@given(st.one_of(requests(), responses()))
def test_generated_messages_take_the_short_way(message: object) -> None:
    data = message.to_bytes()  # type: ignore[attr-defined]
    section = _section(data)
    assert section is not None
    # Generated values may hold a CR or LF only inside a quoted string, which
    # the serialiser never folds: every generated message is usual.
    assert _assert_same(section)
