"""Requests and responses as values (RFC 3261 §7), with typed views of headers.

A message keeps its header fields as parsed (:class:`Headers`); the typed views
(``vias``, ``cseq``, ``from_addr``, ...) parse a value each time they are read and
raise :class:`ParseError`, so a proxy pays only for the headers it looks at.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

from sipproxy.sip.errors import ParseError
from sipproxy.sip.headers import Header, Headers, split_values
from sipproxy.sip.status import reason_phrase
from sipproxy.sip.uri import AbsoluteURI, NameAddress, SipURI, parse_uri
from sipproxy.sip.via import Via

__all__ = [
    "MAX_CSEQ",
    "CSeq",
    "Request",
    "Response",
    "first_address",
    "kept_view",
    "parse_addresses",
    "parse_digits",
    "parse_top_via",
    "parse_via",
    "response_from_headers",
    "via_field",
]

#: CSeq numbers are 32-bit unsigned (RFC 3261 §8.1.1.5).
MAX_CSEQ = 2**32 - 1

# CSeq = 1*DIGIT LWS Method
_CSEQ = re.compile(r"([0-9]+)[ \t]+([A-Za-z0-9\-.!%*_+`'~]+)")
_DIGITS = re.compile(r"[0-9]+")
_TAG = re.compile(r";[ \t]*tag[ \t]*=", re.IGNORECASE)
_V = TypeVar("_V")


def parse_digits(text: str, what: str, limit: int) -> int:
    """Parse ``1*DIGIT`` (leading zeros allowed) no greater than ``limit``.

    Overlong digit strings are rejected before conversion, so no value can make
    ``int()`` slow or raise (RFC 4475 §3.1.2.4).

    :raises ParseError: on anything but digits, or a value above ``limit``.
    """
    text = text.strip(" \t")
    if not _DIGITS.fullmatch(text):
        raise ParseError(f"{what} is not a number: {text[:30]!r}")
    significant = text.lstrip("0")
    if len(significant) > len(str(limit)) or int(text) > limit:
        raise ParseError(f"{what} too large: {text[:30]!r}")
    return int(text)


@dataclass(slots=True, unsafe_hash=True)  # immutable by convention (sip/headers.py)
class CSeq:
    """The CSeq header value: a sequence number and a method (RFC 3261 §20.16)."""

    number: int
    method: str

    @classmethod
    def parse(cls, text: str) -> CSeq:
        """Parse ``1*DIGIT LWS Method``; the number must be below 2**32.

        :raises ParseError: on bad syntax or an overlarge number.
        """
        m = _CSEQ.fullmatch(text.strip(" \t"))
        if m is None:
            raise ParseError(f"bad CSeq: {text[:60]!r}")
        return cls(parse_digits(m[1], "CSeq number", MAX_CSEQ), m[2])

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


class _Message:
    """Typed views shared by requests and responses."""

    __slots__ = ()
    headers: Headers

    def _required(self, name: str) -> str:
        value = self.headers.get(name)
        if value is None:
            raise ParseError(f"missing {name}")
        return value

    def _view(self, key: str, parse: Callable[[str], _V]) -> _V:
        """The first field ``key``, parsed once and kept on it."""
        h = self.headers.first_field(key)
        if h is None:
            raise ParseError(f"missing {key}")
        return kept_view(h, parse)

    @property
    def vias(self) -> list[Via]:
        """Every Via value, topmost first (RFC 3261 §20.42)."""
        return [Via.parse(v) for v in self.headers.get_all("via")]

    @property
    def top_via(self) -> Via:
        """The topmost Via value.

        :raises ParseError: when there is none or it does not parse.
        """
        return self._view("via", parse_top_via)

    @property
    def cseq(self) -> CSeq:
        """The CSeq (RFC 3261 §20.16)."""
        return self._view("cseq", CSeq.parse)

    @property
    def call_id(self) -> str:
        """The Call-ID (RFC 3261 §20.8)."""
        return self._required("call-id")

    @property
    def from_addr(self) -> NameAddress:
        """The From value (RFC 3261 §20.20)."""
        return self._view("from", NameAddress.parse)

    @property
    def to_addr(self) -> NameAddress:
        """The To value (RFC 3261 §20.39)."""
        return self._view("to", NameAddress.parse)

    @property
    def max_forwards(self) -> int | None:
        """Max-Forwards (RFC 3261 §20.22): 0..255, or ``None`` when absent."""
        value = self.headers.get("max-forwards")
        return None if value is None else parse_digits(value, "Max-Forwards", 255)

    def _addresses(self, key: str) -> list[NameAddress]:
        # Validation, the registrar and routing all read these: each field's
        # values are parsed once and kept on the field.
        found: list[NameAddress] = []
        for h in self.headers.fields:
            if h.key == key:
                found.extend(kept_view(h, parse_addresses))
        return found

    @property
    def contacts(self) -> list[NameAddress]:
        """Every Contact value; callers check ``get_all("contact") == ["*"]`` first."""
        return self._addresses("contact")

    @property
    def routes(self) -> list[NameAddress]:
        """Every Route value, in order (RFC 3261 §20.34)."""
        return self._addresses("route")

    @property
    def record_routes(self) -> list[NameAddress]:
        """Every Record-Route value, in order (RFC 3261 §20.30)."""
        return self._addresses("record-route")


def parse_addresses(value: str) -> tuple[NameAddress, ...]:
    """Every name-addr of one list-valued field (Contact, Route, Record-Route)."""
    return tuple(NameAddress.parse(v) for v in split_values(value))


def first_address(headers: Headers, key: str) -> NameAddress | None:
    """The first value of the first field ``key``, parsed once and kept on it."""
    h = headers.first_field(key)
    return None if h is None else kept_view(h, parse_addresses)[0]


#: Views parsed lately, per header name and by the exact value text. One call's From
#: comes back in every message of the call, its To (with the tag) in all but the
#: first, its CSeq values in every call: a value seen again is not parsed again.
#: Views are immutable values (sip/headers.py), so messages may share them.
_SEEN: dict[str, dict[str, object]] = {}
#: Values kept per header name at most; beyond, its table starts over.
SEEN_MAX = 2048
#: Longer values are not kept: real ones are well under this, and a sender of
#: long made-up values must not fill memory with them (at most some 8 MB here).
SEEN_VALUE_MAX = 256


#: Request-URIs parsed lately, by their text (see Request.request_uri).
_SEEN_URIS: dict[str, SipURI | AbsoluteURI] = {}


def _table(key: str) -> dict[str, object]:
    # By header name, not by parse: compiled, a classmethod is a new object at
    # each reference, and every header name has one parse.
    seen = _SEEN.get(key)
    if seen is None:
        seen = _SEEN[key] = {}
    return seen


def _keep(seen: dict[str, _V], value: str, view: _V) -> None:
    if len(value) <= SEEN_VALUE_MAX:
        if len(seen) >= SEEN_MAX:
            # Emptied, not evicted one by one: refilling costs one parse per
            # value, and a sender of endless new values gains nothing.
            seen.clear()
        seen[value] = view


def via_field(via: Via) -> Header:
    """A Via field written from ``via``, known to parse to it.

    For a Via we build (ours, or one we stamp with received/rport): the field
    keeps ``via`` as its view, and the text is noted with it among the values
    seen, so neither this message nor a response that brings the Via back
    parses what we wrote. ``Via.parse(str(via))`` must equal ``via``
    (tests/sip/test_addressing.py, tests/proxy/test_context.py).
    """
    text = str(via)
    field = Header("Via", text)
    field.remember(via)
    _keep(_table("via"), text, via)
    return field


def parse_via(value: str) -> Via:
    """``Via.parse(value)`` for one Via value, taken from the values seen lately.

    A response carries below our Via the one we stamped on the request.
    """
    seen = _table("via")
    view = seen.get(value)
    if type(view) is Via:
        return view
    via = Via.parse(value)
    _keep(seen, value, via)
    return via


def kept_view(field: Header, parse: Callable[[str], _V]) -> _V:
    """``parse(field.value)``, done once per field and kept on it (Header.view).

    Each header name has one parse (the top Via, a NameAddress, a CSeq, the
    addresses of a list), so a field's view is always of the same kind. A value
    parsed lately for another message is taken from there (:data:`_SEEN`);
    values that do not parse are not kept there.
    """
    view = field.view
    if view is None:
        value = field.value
        seen = _table(field.key)
        view = seen.get(value)
        if view is not None:
            field.remember(view)
            return view  # type: ignore[return-value]
        try:
            view = parse(value)
        except ParseError as error:
            # Kept too: validation, the 400 and its addressing all read the top
            # Via, and a hostile one must cost one parse, not three.
            field.remember(_Unparseable(error.reason))
            raise
        field.remember(view)
        _keep(seen, value, view)
    elif type(view) is _Unparseable:
        raise ParseError(view.reason)
    return view  # type: ignore[return-value]


class _Unparseable:
    """The view of a field whose value did not parse: why not."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def parse_top_via(value: str) -> Via:
    """The first via-parm of a Via field's value."""
    return Via.parse(_first_value(value))


def _first_value(value: str) -> str:
    # Cheaper than splitting every value when only the top one is wanted.
    if "," not in value:
        return value
    return split_values(value)[0]


def _head_bytes(start_line: str, headers: Headers) -> bytes:
    fields = headers.to_bytes()
    start = start_line.encode("utf-8", "surrogateescape")
    if fields:
        return start + b"\r\n" + fields + b"\r\n\r\n"
    return start + b"\r\n\r\n"


def _body_headers(headers: Headers, body: bytes, content_type: str | None) -> Headers:
    headers = headers.replace("Content-Length", str(len(body)))
    if content_type is not None:
        headers = headers.replace("Content-Type", content_type)
    return headers


@dataclass(slots=True, unsafe_hash=True)  # immutable by convention (sip/headers.py)
class Request(_Message):
    """A SIP request (RFC 3261 §7.1); ``uri`` is the Request-URI text as received."""

    method: str
    uri: str
    headers: Headers
    body: bytes = b""
    version: str = "SIP/2.0"
    #: ``request_uri`` once parsed; a copy made with another ``uri`` starts empty
    _uri_view: SipURI | AbsoluteURI | None = field(
        default=None, init=False, compare=False, repr=False
    )

    @property
    def request_uri(self) -> SipURI | AbsoluteURI:
        """The Request-URI, parsed (RFC 3261 §7.1, §19)."""
        view = self._uri_view
        if view is None:
            # As kept_view: a call's requests repeat their Request-URI, and
            # every REGISTER of a domain names the same one.
            text = self.uri
            view = _SEEN_URIS.get(text)
            if view is None:
                view = parse_uri(text)
                _keep(_SEEN_URIS, text, view)
            object.__setattr__(self, "_uri_view", view)
        return view

    def with_headers(self, headers: Headers) -> Request:
        """A copy with other header fields; the Request-URI, parsed once, is kept.

        What every received request goes through (Via stamping), so it skips
        dataclasses.replace, which costs several times a plain construction.
        """
        copy = Request(self.method, self.uri, headers, self.body, self.version)
        copy._uri_view = self._uri_view
        return copy

    def to_bytes(self) -> bytes:
        """The message as it goes on the wire; Content-Length is not invented."""
        return _head_bytes(f"{self.method} {self.uri} {self.version}", self.headers) + (
            self.body
        )

    def with_body(self, body: bytes, content_type: str | None = None) -> Request:
        """A copy with ``body``, Content-Length set and Content-Type if given."""
        return replace(
            self, body=body, headers=_body_headers(self.headers, body, content_type)
        )

    def response(
        self,
        status: int,
        reason: str | None = None,
        *,
        to_tag: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> Response:
        """Build a response to this request (RFC 3261 §8.2.6.2).

        Via (every value, in order), From, To, Call-ID and CSeq are copied as
        received; ``to_tag`` is added to To when To has no tag; then ``headers``
        and a Content-Length.

        :raises ParseError: when a field the response needs is missing.
        """
        return response_from_headers(
            self.headers, status, reason, to_tag=to_tag, extra=headers, body=body
        )


@dataclass(slots=True, unsafe_hash=True)  # immutable by convention (sip/headers.py)
class Response(_Message):
    """A SIP response (RFC 3261 §7.2)."""

    status: int
    reason: str
    headers: Headers
    body: bytes = b""
    version: str = "SIP/2.0"

    def to_bytes(self) -> bytes:
        """The message as it goes on the wire; Content-Length is not invented."""
        line = f"{self.version} {self.status} {self.reason}"
        return _head_bytes(line, self.headers) + self.body

    def with_body(self, body: bytes, content_type: str | None = None) -> Response:
        """A copy with ``body``, Content-Length set and Content-Type if given."""
        return replace(
            self, body=body, headers=_body_headers(self.headers, body, content_type)
        )


def _has_tag(to: Header) -> bool:
    try:
        return kept_view(to, NameAddress.parse).tag is not None
    except ParseError:
        # A To that does not parse (RFC 4475 quotbal) still gets its 400; guess.
        return _TAG.search(to.value) is not None


def response_from_headers(
    headers: Headers,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    extra: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    strict: bool = True,
) -> Response:
    """Build a response from a request's header fields (RFC 3261 §8.2.6.2).

    Used directly to answer a request that failed to parse, from the fields in
    :attr:`ParseError.headers`. Every Via field is copied unchanged and in order,
    then the first From, To (with ``;tag=to_tag`` added if it has none), Call-ID
    and CSeq, then ``extra``, then Content-Length.

    With ``strict=False`` only a Via field is needed: the fields that are there
    are copied as received, for a 400 that goes back over the request's own
    connection or to its source address (RFC 4475 §3.1.2.1 badinv01 and §3.3.1
    insuf expect a 400 although their Via or identifying fields are unusable).

    :raises ParseError: when Via, From, To, Call-ID or CSeq is missing or the top
        Via does not parse: such a response could not be addressed.
    """
    vias: list[Header] = []
    first: dict[str, Header] = {}
    for h in headers.fields:
        if h.key == "via":
            vias.append(h)
        elif h.key in ("from", "to", "call-id", "cseq") and h.key not in first:
            first[h.key] = h
    if not vias:
        raise ParseError("cannot answer: no Via")
    missing = [k for k in ("from", "to", "call-id", "cseq") if k not in first]
    if strict:
        if missing:
            raise ParseError(f"cannot answer: no {', '.join(missing)}")
        kept_view(vias[0], parse_top_via)
    to = first.get("to")
    if to is not None and to_tag is not None and not _has_tag(to):
        first["to"] = Header(to.name, f"{to.value};tag={to_tag}")
    fields = [*vias]
    fields += (first[k] for k in ("from", "to", "call-id", "cseq") if k in first)
    fields += (Header(name, value) for name, value in extra)
    fields.append(Header("Content-Length", str(len(body))))
    return Response(
        status,
        reason_phrase(status) if reason is None else reason,
        Headers(tuple(fields)),
        body,
    )
