"""Header fields as they travel: names, unfolded values, and the original bytes.

A proxy forwards most header fields untouched (RFC 3261 §16.6), so a parsed field
keeps its exact bytes in ``raw`` and :meth:`Headers.to_bytes` writes them back as they
arrived. Only fields built or edited in code are serialised from ``name`` and
``value``. Values are ``str`` decoded from UTF-8 with ``surrogateescape``, so any
byte, valid UTF-8 or not, survives the round trip.

The values of the wire format (these classes, URIs, Via, messages, peers and
transaction keys) are immutable by convention: edits return copies, and nothing
assigns to a field after construction. They are not ``frozen`` dataclasses because
a frozen dataclass sets each field through ``object.__setattr__``, about 1 µs per
object, and a REGISTER makes some sixty of them (bench/hotpath.py).
``unsafe_hash`` keeps them hashable by value, as frozen ones were.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache

__all__ = [
    "COMPACT_FORMS",
    "LIST_HEADERS",
    "Header",
    "Headers",
    "canonical_name",
    "split_values",
]

#: Compact forms of header names (RFC 3261 §7.3.3, §20 and the extensions that
#: define one: RFC 3265, 3515, 3892, 4028, 3841, 4474).
COMPACT_FORMS: dict[str, str] = {
    "i": "call-id",
    "m": "contact",
    "e": "content-encoding",
    "l": "content-length",
    "c": "content-type",
    "f": "from",
    "s": "subject",
    "k": "supported",
    "t": "to",
    "v": "via",
    "o": "event",
    "u": "allow-events",
    "r": "refer-to",
    "b": "referred-by",
    "x": "session-expires",
    "a": "accept-contact",
    "j": "reject-contact",
    "d": "request-disposition",
    "y": "identity",
    "n": "identity-info",
}

#: Header fields whose grammar is a comma-separated list, so that several fields
#: of the name equal one field with the values joined by commas (RFC 3261 §7.3.1).
#: WWW-Authenticate, Authorization and the Proxy-* credentials are left out on
#: purpose: their values hold commas between auth-params, and §7.3.1 names them as
#: the exception.
LIST_HEADERS: frozenset[str] = frozenset(
    {
        "via",
        "contact",
        "route",
        "record-route",
        "path",
        "service-route",
        "allow",
        "supported",
        "require",
        "proxy-require",
        "unsupported",
        "accept",
        "accept-encoding",
        "accept-language",
        "allow-events",
        "content-encoding",
        "in-reply-to",
        "warning",
        "call-info",
        "alert-info",
        "error-info",
        "history-info",
        "diversion",
    }
)


_SPECIAL = re.compile(r'["<>,\\]')


@lru_cache(maxsize=4096)
def canonical_name(name: str) -> str:
    """The lowercased long form of a header name: ``"v"`` and ``"VIA"`` give ``"via"``.

    Header names are case-insensitive and a compact form equals its long form
    (RFC 3261 §7.3.1, §7.3.3).
    """
    low = name.lower()
    return COMPACT_FORMS.get(low, low)


def split_values(value: str) -> list[str]:
    """Split a list-valued header value on its top-level commas (RFC 3261 §7.3.1).

    Commas inside a quoted-string (with its quoted-pairs) or inside ``<...>`` do not
    split. Each value is stripped of surrounding whitespace; empty values are kept,
    so that a validator can see and reject them.
    """
    if "," not in value:
        return [value.strip()]
    if '"' not in value and "<" not in value:
        return [v.strip() for v in value.split(",")]
    values: list[str] = []
    start = 0
    quoted = False
    angle = False
    escaped = -1  # index of the character a backslash escapes
    # Visit only the characters that matter, not every character.
    for m in _SPECIAL.finditer(value):
        i = m.start()
        if i == escaped:
            continue
        ch = value[i]
        if quoted:
            if ch == "\\":
                escaped = i + 1
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == "<":
            angle = True
        elif ch == ">":
            angle = False
        elif ch == "," and not angle:
            values.append(value[start:i].strip())
            start = i + 1
    values.append(value[start:].strip())
    return values


class Header:
    """One header field (RFC 3261 §7.3).

    ``name`` is as written on the wire (``"v"``, ``"Call-Id"``); ``value`` is the
    unfolded value (each line fold is one SP, surrounding whitespace stripped);
    ``raw`` is the exact bytes of the whole field as received, folds included and
    line ends written as CRLF, without the final CRLF; it is ``None`` for fields
    built in code. Equality ignores ``raw``: a field equals its re-parsed self.

    A plain class, not a dataclass: the parser makes one per received field and
    passes ``key`` it already knows, and a dataclass's ``__post_init__`` with
    ``object.__setattr__`` cost a third of that (bench/hotpath.py).
    """

    __slots__ = ("key", "name", "raw", "value", "view")

    def __init__(
        self, name: str, value: str, raw: bytes | None = None, key: str | None = None
    ) -> None:
        self.name = name
        self.value = value
        self.raw = raw
        #: ``canonical_name(name)``, computed once because every lookup needs it
        self.key = canonical_name(name) if key is None else key
        #: the field parsed, kept by the typed views of a message (message.kept_view):
        #: the top Via, a From/To NameAddress, a CSeq, or all the NameAddresses of a
        #: Contact/Route/Record-Route field. The field is immutable and read many
        #: times on the way through the server (bench/hotpath.py): parsed once.
        self.view: object | None = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Header):
            return NotImplemented
        return self.name == other.name and self.value == other.value

    def __hash__(self) -> int:
        return hash((self.name, self.value))

    def __repr__(self) -> str:
        return f"Header(name={self.name!r}, value={self.value!r})"

    def remember(self, view: object) -> None:
        """Keep ``view`` as this field parsed (see :attr:`view`)."""
        self.view = view

    def with_value(self, value: str) -> Header:
        """A field of the same name with another value, serialised from it."""
        return Header(self.name, value, None, self.key)

    def to_bytes(self) -> bytes:
        """The field as it goes on the wire, without the final CRLF."""
        if self.raw is not None:
            return self.raw
        return f"{self.name}: {self.value}".encode("utf-8", "surrogateescape")


@dataclass(slots=True, unsafe_hash=True)  # immutable by convention (sip/headers.py)
class Headers:
    """The header fields of a message, in order; edits return a new ``Headers``.

    Lookups take any spelling of a name: ``get("i")`` finds ``Call-ID``.
    """

    fields: tuple[Header, ...] = ()

    @classmethod
    def of(cls, *pairs: tuple[str, str]) -> Headers:
        """Build headers from ``(name, value)`` pairs, in order."""
        return cls(tuple(Header(name, value) for name, value in pairs))

    def __iter__(self) -> Iterator[Header]:
        return iter(self.fields)

    def __len__(self) -> int:
        return len(self.fields)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = canonical_name(name)
        return any(h.key == key for h in self.fields)

    def get(self, name: str) -> str | None:
        """The value of the first field called ``name``, or ``None``."""
        key = canonical_name(name)
        for h in self.fields:
            if h.key == key:
                return h.value
        return None

    def first_field(self, name: str) -> Header | None:
        """The first field called ``name``, or ``None``."""
        key = canonical_name(name)
        for h in self.fields:
            if h.key == key:
                return h
        return None

    def get_all(self, name: str) -> list[str]:
        """Every value of every field called ``name``, in order.

        Values of list-valued headers (:data:`LIST_HEADERS`) are split on top-level
        commas (RFC 3261 §7.3.1); other headers give one value per field.
        """
        key = canonical_name(name)
        if key in LIST_HEADERS:
            values: list[str] = []
            for h in self.fields:
                if h.key == key:
                    values.extend(split_values(h.value))
            return values
        return [h.value for h in self.fields if h.key == key]

    def count(self, name: str) -> int:
        """The number of fields called ``name`` (not of comma-separated values)."""
        key = canonical_name(name)
        return sum(1 for h in self.fields if h.key == key)

    def append(self, name: str, value: str) -> Headers:
        """A copy with the field added at the end."""
        return Headers((*self.fields, Header(name, value)))

    def prepend(self, name: str, value: str) -> Headers:
        """A copy with the field as the first of its name.

        It goes where the first field of that name is, or at the very top when there
        is none, so a proxy's Via or Record-Route ends up topmost (RFC 3261 §16.6).
        """
        return self.prepend_field(Header(name, value))

    def prepend_field(self, new: Header) -> Headers:
        """A copy with the field ``new`` as the first of its name (see prepend).

        For a field built with its view already known (our own Via), so that no
        one parses back what we just wrote.
        """
        key = new.key
        for i, h in enumerate(self.fields):
            if h.key == key:
                return Headers((*self.fields[:i], new, *self.fields[i:]))
        return Headers((new, *self.fields))

    def remove(self, name: str) -> Headers:
        """A copy without any field called ``name``."""
        key = canonical_name(name)
        return Headers(tuple(h for h in self.fields if h.key != key))

    def replace(self, name: str, value: str) -> Headers:
        """A copy with one field ``name: value`` where the first such field was.

        Other fields of the name are removed; with none, the field is appended.
        """
        key = canonical_name(name)
        out: list[Header] = []
        done = False
        for h in self.fields:
            if h.key != key:
                out.append(h)
            elif not done:
                out.append(Header(name, value))
                done = True
        if not done:
            out.append(Header(name, value))
        return Headers(tuple(out))

    def extend(self, pairs: Iterable[tuple[str, str]]) -> Headers:
        """A copy with the ``(name, value)`` pairs appended in order."""
        return Headers((*self.fields, *(Header(name, value) for name, value in pairs)))

    def pop_first_value(self, name: str) -> tuple[str, Headers]:
        """Remove the first comma-separated value of the first field called ``name``.

        Other values of that field stay in it, in place: this pops the topmost Via
        of a response (RFC 3261 §16.7 step 3) or Route of a request (§16.4).

        :raises KeyError: when there is no such field.
        """
        key = canonical_name(name)
        for i, h in enumerate(self.fields):
            if h.key != key:
                continue
            values = split_values(h.value)
            first = values[0]
            if len(values) == 1:
                rest: tuple[Header, ...] = ()
            else:
                rest = (h.with_value(", ".join(values[1:])),)
            return first, Headers((*self.fields[:i], *rest, *self.fields[i + 1 :]))
        raise KeyError(name)

    def to_bytes(self) -> bytes:
        """The fields joined by CRLF; fields not edited keep their original bytes."""
        return b"\r\n".join(h.to_bytes() for h in self.fields)
