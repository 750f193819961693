from __future__ import annotations

import pytest

from sipproxy.sip.headers import Header, Headers, canonical_name, split_values
from sipproxy.sip.parser import parse_message


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("i", "call-id"),
        ("M", "contact"),
        ("l", "content-length"),
        ("v", "via"),
        ("VIA", "via"),
        ("Call-Id", "call-id"),
        ("o", "event"),
        ("u", "allow-events"),
        ("r", "refer-to"),
        ("b", "referred-by"),
        ("x", "session-expires"),
        ("a", "accept-contact"),
        ("j", "reject-contact"),
        ("d", "request-disposition"),
        ("y", "identity"),
        ("n", "identity-info"),
        ("k", "supported"),
        ("X-Custom", "x-custom"),
    ],
)
def test_canonical_name(name: str, canonical: str) -> None:
    """Compact forms and any case map to the lowercased long form (§7.3.3)."""
    assert canonical_name(name) == canonical


@pytest.mark.parametrize(
    ("value", "parts"),
    [
        ("a", ["a"]),
        ("a, b,c", ["a", "b", "c"]),
        ('"Doe, John" <sip:a@b>, <sip:c@d>', ['"Doe, John" <sip:a@b>', "<sip:c@d>"]),
        ('"x \\" , y" <sip:a@b>, c', ['"x \\" , y" <sip:a@b>', "c"]),
        ("<sip:a@b;x=1,2>, <sip:c>", ["<sip:a@b;x=1,2>", "<sip:c>"]),
        ("a,,b", ["a", "", "b"]),
    ],
)
def test_split_values_respects_quotes_and_angles(value: str, parts: list[str]) -> None:
    """Commas inside quoted strings or <> do not split a list value (§7.3.1)."""
    assert split_values(value) == parts


HEADERS = Headers.of(
    ("v", "SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b;branch=z9hG4bK2"),
    ("Via", "SIP/2.0/TCP c;branch=z9hG4bK3"),
    ("Call-ID", "abc"),
    ("WWW-Authenticate", 'Digest realm="x", nonce="y"'),
    ("Contact", '"A, B" <sip:a@b>, <sip:c@d>'),
    ("Subject", ""),
)


def test_lookup_by_any_spelling() -> None:
    """get(), count() and `in` treat compact and long forms the same."""
    assert HEADERS.get("i") == "abc"
    assert HEADERS.get("CALL-ID") == "abc"
    assert HEADERS.get("to") is None
    assert HEADERS.count("via") == 2
    assert "V" in HEADERS
    assert "To" not in HEADERS
    assert 3 not in HEADERS
    assert len(HEADERS) == 6
    assert HEADERS.get("s") == ""


def test_get_all_splits_only_list_headers() -> None:
    """Via and Contact split on commas; WWW-Authenticate never does (§7.3.1)."""
    assert len(HEADERS.get_all("via")) == 3
    assert HEADERS.get_all("m") == ['"A, B" <sip:a@b>', "<sip:c@d>"]
    assert HEADERS.get_all("www-authenticate") == ['Digest realm="x", nonce="y"']


def test_prepend_goes_before_the_first_of_its_name() -> None:
    """A new Via lands above the others; an absent name goes to the very top."""
    edited = HEADERS.prepend("Via", "SIP/2.0/UDP p;branch=z9hG4bKp")
    assert edited.get_all("via")[0] == "SIP/2.0/UDP p;branch=z9hG4bKp"
    assert edited.fields[0].name == "Via"
    top = HEADERS.prepend("Record-Route", "<sip:p;lr>")
    assert top.fields[0] == Header("Record-Route", "<sip:p;lr>")


def test_append_remove_replace() -> None:
    """Editors return new headers and leave the original alone."""
    appended = HEADERS.append("To", "<sip:x@y>")
    assert appended.fields[-1] == Header("To", "<sip:x@y>")
    assert "to" not in HEADERS
    removed = HEADERS.remove("v")
    assert "via" not in removed
    assert len(removed) == 4
    replaced = HEADERS.replace("via", "SIP/2.0/UDP z")
    assert replaced.get_all("via") == ["SIP/2.0/UDP z"]
    assert replaced.fields[0] == Header("via", "SIP/2.0/UDP z")
    added = HEADERS.replace("Max-Forwards", "70")
    assert added.fields[-1] == Header("Max-Forwards", "70")
    assert HEADERS.extend([("A", "1"), ("B", "2")]).fields[-2:] == (
        Header("A", "1"),
        Header("B", "2"),
    )


def test_pop_first_value_keeps_the_rest_of_the_field() -> None:
    """Popping the top Via leaves the other values of that field in place."""
    top, rest = HEADERS.pop_first_value("via")
    assert top == "SIP/2.0/UDP a;branch=z9hG4bK1"
    assert rest.get_all("via") == [
        "SIP/2.0/UDP b;branch=z9hG4bK2",
        "SIP/2.0/TCP c;branch=z9hG4bK3",
    ]
    assert rest.fields[0].name == "v"
    top2, rest2 = rest.pop_first_value("via")
    assert top2 == "SIP/2.0/UDP b;branch=z9hG4bK2"
    assert rest2.count("via") == 1
    with pytest.raises(KeyError):
        HEADERS.pop_first_value("route")


def test_header_equality_ignores_raw() -> None:
    """A field equals the same field built in code; raw only changes the bytes."""
    parsed = Header("Via", "x", b"Via  :  x")
    assert parsed == Header("Via", "x")
    assert parsed.to_bytes() == b"Via  :  x"
    assert Header("Via", "x").to_bytes() == b"Via: x"


def test_untouched_fields_stay_byte_for_byte() -> None:
    """Editing one field keeps every other field's original bytes, folds included."""
    data = (
        b"OPTIONS sip:a@b SIP/2.0\r\n"
        b"v  :  SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
        b"Subject:  hello\r\n   world  \r\n"
        b"TO:<sip:a@b>\r\n"
        b"Max-Forwards: 70\r\n"
        b"X-Bin: \xff\xfe\r\n"
        b"\r\n"
    )
    message = parse_message(data)
    assert message.headers.get("subject") == "hello world"
    assert message.headers.get("x-bin") == "\udcff\udcfe"
    edited = message.headers.replace("Max-Forwards", "69")
    assert edited.to_bytes() == (
        b"v  :  SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
        b"Subject:  hello\r\n   world  \r\n"
        b"TO:<sip:a@b>\r\n"
        b"Max-Forwards: 69\r\n"
        b"X-Bin: \xff\xfe"
    )
    assert Headers.of(("X", "\udcff")).to_bytes() == b"X: \xff"
