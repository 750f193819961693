"""The one-pass reading of credentials reads what the character walk reads."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sipproxy.auth import digest
from sipproxy.auth.digest import parse_credentials
from sipproxy.sip.errors import ParseError

# Pieces credentials are made of, so that random values come near the grammar.
_PIECES = st.sampled_from(
    [" ", "\t", "\r\n ", ",", "=", '"', "\\", "a", "Nc", "realm", "x y", "é", '\\"']
)


def _walked(value: str) -> tuple[str, dict[str, str]] | str:
    """What the character walk alone makes of ``value`` (or its error)."""
    text = value.strip(" \t\r\n")
    match = digest._TOKEN.match(text)
    if match is None:
        return "error"
    i = match.end()
    if i < len(text) and text[i] not in " \t\r\n":
        return "error"
    try:
        return digest._walk_params(text, i, match.group(), {})
    except ParseError:
        return "error"


def _parsed(value: str) -> tuple[str, dict[str, str]] | str:
    try:
        return parse_credentials(value)
    except ParseError:
        return "error"


@given(st.lists(_PIECES, max_size=30).map("".join))
def test_one_pass_agrees_with_the_walk(tail: str) -> None:
    value = "Digest " + tail
    assert _parsed(value) == _walked(value)


@given(
    st.dictionaries(
        st.sampled_from(["username", "Realm", "nonce", "uri", "qop", "nc"]),
        st.text(alphabet='ab ,="\\\r\n\t', max_size=8),
        max_size=6,
    ),
    st.booleans(),
)
def test_quoted_values_round_trip(params: dict[str, str], spaced: bool) -> None:
    sep = " , " if spaced else ","
    quoted = (v.replace("\\", "\\\\").replace('"', '\\"') for v in params.values())
    value = "Digest " + sep.join(
        f'{k}="{q}"' for k, q in zip(params, quoted, strict=True)
    )
    lowered = {k.lower(): v for k, v in params.items()}
    if len(lowered) < len(params):
        assert _parsed(value) == "error"
    else:
        assert _parsed(value) == ("Digest", lowered)
        assert _walked(value) == ("Digest", lowered)
