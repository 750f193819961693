"""Bytes to messages: datagrams, stream framing, and the checks a proxy needs.

:func:`parse_message` splits the start line and the header fields once and stops
there: values are parsed later, when someone asks (see :mod:`sipproxy.sip.message`).
:func:`validate_request` and :func:`validate_response` then check the fields a proxy
relies on (RFC 3261 §16.3 step 1). :class:`StreamFramer` cuts a TCP or TLS byte
stream into messages by Content-Length (RFC 3261 §18.3) and recognises RFC 5626
keepalives.

Every failure is a :class:`ParseError`. When the start line looked like a request,
the error carries the header fields that could be read, so that the server can
address its 400 (or 505, 501, 513) response; errors about responses carry none,
because a response that cannot be parsed is dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sipproxy.sip.errors import ParseError
from sipproxy.sip.headers import Header, Headers, canonical_name
from sipproxy.sip.message import Request, Response, parse_digits, parse_via
from sipproxy.sip.status import METHODS
from sipproxy.sip.uri import STAR, SipURI
from sipproxy.sip.via import BRANCH_COOKIE

__all__ = [
    "MAX_HEADER_FIELDS",
    "MAX_LINE_LENGTH",
    "MAX_MESSAGE_SIZE",
    "Keepalive",
    "StreamFramer",
    "parse_message",
    "validate_request",
    "validate_response",
]

#: The largest message accepted, in bytes: the largest a UDP datagram can carry
#: (RFC 3261 §18.1.1 sends anything larger over a congestion-controlled transport).
MAX_MESSAGE_SIZE = 65536
#: The most header fields in one message. Real messages have 10 to 40; RFC 4475's
#: longreq has 20 fields. The cap bounds the work one message can cause.
MAX_HEADER_FIELDS = 256
#: The longest physical line, in bytes. RFC 4475's longreq has lines of some 1,500
#: bytes (a display name, a Call-ID); a real Identity header is under 1,000.
MAX_LINE_LENGTH = 8192

_TOKEN = re.compile(rb"[A-Za-z0-9\-.!%*_+`'~]+")
# SIP-Version = "SIP" "/" 1*DIGIT "." 1*DIGIT ("SIP" is case-insensitive)
_VERSION = re.compile(rb"[Ss][Ii][Pp]/[0-9]+\.[0-9]+")
# The Request-URI as the start line carries it: no LWS, no controls, no <>.
_REQUEST_URI = re.compile(rb"[^\x00-\x20\x7f<>]+")
_STATUS = re.compile(rb"[1-6][0-9][0-9]")
_FOLD = (b" ", b"\t")


@dataclass(frozen=True, slots=True)
class Keepalive:
    """A double-CRLF "ping" between messages on a stream (RFC 5626 §4.4.1).

    The receiver answers it with a single CRLF "pong".
    """


_KEEPALIVE = Keepalive()


def _find_head_end(data: bytes | bytearray, start: int) -> tuple[int, int] | None:
    """``(end of the last header line, start of the body)``, or ``None``.

    The empty line may end in CRLF or, liberally, in a bare LF.
    """
    crlf = data.find(b"\n\r\n", start)
    lf = data.find(b"\n\n", start)
    if crlf < 0 and lf < 0:
        return None
    if lf < 0 or 0 <= crlf < lf:
        return crlf, crlf + 3
    return lf, lf + 2


def _split_lines(head: bytes) -> list[bytes]:
    """The lines of a header section; CRLF and bare LF both end a line."""
    lines = head.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def _parse_fields(lines: list[bytes]) -> tuple[list[Header], str | None]:
    """Header fields from the lines after the start line, and the first problem.

    A bad field is skipped and noted, so the good ones can still address an error
    response. Folded lines are joined: each fold (line end and the whitespace after
    it) becomes one SP (RFC 3261 §7.3.1).
    """
    fields: list[Header] = []
    error: str | None = None
    n = len(lines)
    i = 0
    while i < n:
        line = lines[i]
        j = i + 1
        while j < n and lines[j].startswith(_FOLD):
            j += 1
        group = lines[i:j] if j > i + 1 else None
        i = j
        if (
            len(line) > MAX_LINE_LENGTH
            or b"\r" in line
            or (group and any(len(g) > MAX_LINE_LENGTH or b"\r" in g for g in group))
        ):
            error = error or "header line too long or with a bare CR"
            continue
        colon = line.find(b":")
        name = line[:colon].rstrip(b" \t") if colon > 0 else b""
        if not _TOKEN.fullmatch(name):
            error = error or f"bad header field {line[:40]!r}"
            continue
        if group is None:
            raw = line
            value = line[colon + 1 :].strip(b" \t")
        else:
            raw = b"\r\n".join(group)
            value = b" ".join(
                [line[colon + 1 :]] + [g.lstrip(b" \t") for g in group[1:]]
            ).strip(b" \t")
        if len(fields) >= MAX_HEADER_FIELDS:
            return fields, error or "too many header fields"
        fields.append(
            Header(name.decode("ascii"), value.decode("utf-8", "surrogateescape"), raw)
        )
    return fields, error


#: Names as they arrive (``b"Via"``, ``b"v"``) to ``(name, key)``: most messages
#: spell their dozen names the same way, so a field's name costs one lookup.
_NAMES: dict[bytes, tuple[str, str]] = {}
#: The most spellings kept: a sender inventing names must not grow it without end.
_NAMES_MAX = 1024


def _name_of(raw: bytes) -> tuple[str, str] | None:
    """``(name, key)`` for a field name as received, or ``None`` if it is no token."""
    known = _NAMES.get(raw)
    if known is not None:
        return known
    if not _TOKEN.fullmatch(raw):
        return None
    name = raw.decode("ascii")
    known = (name, canonical_name(name))
    if len(_NAMES) < _NAMES_MAX:
        _NAMES[raw] = known
    return known


def _fast_fields(section: bytes) -> list[Header] | None:
    """The fields of a header section written the usual way, or ``None``.

    The usual way: every line ends in CRLF, no line is folded, no bare CR or LF,
    each name a token right before its colon, no line over MAX_LINE_LENGTH, at
    most MAX_HEADER_FIELDS fields. Then one split finds every line and each field
    costs a lookup, a strip and a decode. Anything else gives ``None`` and
    :func:`_parse_fields` takes the section apart line by line, with the error a
    malformed one deserves (tests/sip/test_parser.py compares the two).
    """
    if not section:
        return []
    lines = section.split(b"\r\n")
    n = len(lines)
    if (
        n > MAX_HEADER_FIELDS
        or section.count(b"\r") != n - 1
        or section.count(b"\n") != n - 1
    ):
        return None
    fields: list[Header] = []
    for line in lines:
        colon = line.find(b":")
        if colon <= 0 or len(line) > MAX_LINE_LENGTH:
            return None
        known = _name_of(line[:colon])
        if known is None:
            return None
        value = line[colon + 1 :].strip(b" \t").decode("utf-8", "surrogateescape")
        fields.append(Header(known[0], value, line, known[1]))
    return fields


def _decode(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _content_length(values: list[str]) -> int | None:
    """The one Content-Length the fields agree on, or ``None`` without any.

    :raises ParseError: on a value that is not a number, or two different values:
        the message cannot be framed (RFC 4475 §3.1.2.3, §3.3.9).
    """
    if not values:
        return None
    lengths = {parse_digits(v, "Content-Length", 2**32 - 1) for v in values}
    if len(lengths) > 1:
        raise ParseError("conflicting Content-Length values")
    return lengths.pop()


def _check_request_line(parts: list[bytes]) -> tuple[str | None, int]:
    """A problem with ``Method SP Request-URI SP SIP-Version`` and its status."""
    if len(parts) != 3 or not all(parts):
        return "request line is not Method SP Request-URI SP SIP-Version", 400
    method, uri, version = parts
    if not _TOKEN.fullmatch(method):
        return f"bad method {method[:40]!r}", 400
    if not _REQUEST_URI.fullmatch(uri):
        return f"bad Request-URI {uri[:60]!r}", 400
    if not _VERSION.fullmatch(version):
        return f"bad SIP-Version {version[:20]!r}", 400
    if version.upper() != b"SIP/2.0":
        return f"unsupported version {version[:20]!r}", 505
    return None, 0


def parse_message(data: bytes, *, stream: bool = False) -> Request | Response:
    """Parse one whole message: one UDP datagram, or one message a framer cut.

    On a datagram (RFC 3261 §18.3) without Content-Length, the body is the rest of
    the datagram; octets after Content-Length bytes of body are ignored; a
    Content-Length larger than what follows is an error. A datagram that ends
    right after its header fields without the empty line is accepted (the RFC 5118
    archive and RFC 4475 baddn are written so). With ``stream=True``, Content-Length
    is mandatory. CRLFs before the start line are skipped (RFC 3261 §7.5); the
    header section may use bare LF line ends.

    :raises ParseError: with ``status`` 400, 505 (another SIP version) or 513 (too
        large), and with ``headers`` when the start line looked like a request.
    """
    if data[:1] in (b"\r", b"\n"):
        data = data.lstrip(b"\r\n")
    framing_error: str | None = None
    status = 400
    if len(data) > MAX_MESSAGE_SIZE:
        framing_error, status = "message too large", 513
    found = _find_head_end(data, 0)
    if found is None:
        head_end = body_start = len(data)
        if stream or not data.endswith(b"\n"):
            framing_error = framing_error or "no empty line after the header fields"
    else:
        head_end, body_start = found
    first_end = data.find(b"\n", 0, head_end + 1) - 1
    fast: list[Header] | None = None
    if (
        found is not None
        and first_end > 0
        and data[first_end] == data[head_end - 1] == 13
    ):
        # CRLF after the start line and after the last field: try the usual way.
        # Without fields the section's end is before its start, a slice mypyc
        # does not clamp as Python does (PyBytes_FromStringAndSize gets < 0).
        fast = _fast_fields(data[first_end + 2 : max(head_end - 1, first_end + 2)])
    field_error: str | None = None
    if fast is not None:
        start_line = data[:first_end]
        fields = fast
    else:
        lines = _split_lines(data[:head_end])
        if not lines:
            raise ParseError("empty message")
        start_line = lines[0]
        fields, field_error = _parse_fields(lines[1:])
    is_request = start_line[:4].upper() != b"SIP/"
    headers = Headers(tuple(fields))
    attached = headers if is_request else None

    def fail(reason: str, status: int = 400) -> ParseError:
        return ParseError(reason, status=status, headers=attached)

    if len(start_line) > MAX_LINE_LENGTH:
        raise fail("start line too long")
    if is_request:
        parts = start_line.split(b" ")
        line_error, line_status = _check_request_line(parts)
        if line_error is not None:
            raise fail(line_error, line_status)
    else:
        parts = start_line.split(b" ", 2)
        if len(parts) < 2 or parts[0].upper() != b"SIP/2.0":
            raise fail(f"bad status line {start_line[:40]!r}")
        if not _STATUS.fullmatch(parts[1]):
            raise fail(f"bad status code {parts[1][:20]!r}")
    if framing_error is not None:
        raise fail(framing_error, status)
    if field_error is not None:
        raise fail(field_error)
    try:
        length = _content_length([h.value for h in fields if h.key == "content-length"])
    except ParseError as e:
        raise fail(e.reason) from None
    if length is None:
        if stream:
            raise fail("no Content-Length on a stream transport (RFC 3261 §18.3)")
        body = data[body_start:]
    else:
        if length > len(data) - body_start:
            raise fail("Content-Length larger than the message")
        body = data[body_start : body_start + length]
    if is_request:
        method, uri, version = parts
        return Request(
            method.decode("ascii"), _decode(uri), headers, body, version.decode("ascii")
        )
    reason = _decode(parts[2]) if len(parts) == 3 else ""
    return Response(int(parts[1]), reason, headers, body, parts[0].decode("ascii"))


#: Fields a request must carry exactly once, and at most once (RFC 3261 §8.1.1).
_ONCE = ("from", "to", "call-id", "cseq")
_AT_MOST_ONCE = ("max-forwards", "content-length", "content-type")


def validate_request(request: Request) -> None:
    """Check what a proxy needs well-formed before it acts (RFC 3261 §16.3 step 1).

    Via (at least one, each value a via-parm, no bare-cookie branch), exactly one
    From, To, Call-ID and CSeq, at most one Max-Forwards, Content-Length and
    Content-Type; From, To, Contact, Route and Record-Route parse; CSeq's number is
    below 2**32 and its method is the request's (RFC 3261 §8.1.1.5); Max-Forwards is
    0..255; the Request-URI parses and, if SIP, has no headers (RFC 3261 §19.1.5).
    Date, Expires, Accept and Content-Type values are left to whoever uses them
    (RFC 4475 §3.1.2.12).

    :raises ParseError: with ``headers`` set; ``status`` 400, or 501 for an unknown
        method whose CSeq names another (RFC 4475 §3.1.2.18).
    """
    headers = request.headers

    def fail(reason: str, status: int = 400) -> ParseError:
        return ParseError(reason, status=status, headers=headers)

    vias = headers.get_all("via")
    if not vias:
        raise fail("no Via")
    # One pass over the fields counts every name the checks below limit.
    counts = dict.fromkeys(_ONCE + _AT_MOST_ONCE, 0)
    for h in headers.fields:
        key = h.key
        if key in counts:
            counts[key] += 1
    for name in _ONCE:
        if counts[name] != 1:
            raise fail(f"{name} must appear exactly once")
    for name in _AT_MOST_ONCE:
        if counts[name] > 1:
            raise fail(f"{name} must appear at most once")
    if _undecodable(headers.get("call-id") or ""):
        # RFC 3261 §25.1: a Call-ID is "word" characters, ASCII; bytes that are
        # not even UTF-8 cannot be stored (SQLite, Redis) or logged as they are.
        raise fail("Call-ID is not UTF-8")
    try:
        # The top Via, CSeq, From, To, Contact and Request-URI are kept parsed
        # on the message for the layers above, which read them again.
        top_via = request.top_via
        if top_via.rport and top_via.rport_port is None:
            # RFC 3581 §3: a client sends rport without a value; one that is no
            # port at all is answered, not let loose on response addressing.
            raise ParseError(f"bad rport in Via: {top_via.rport[:20]!r}")
        parsed_vias = [top_via] + [parse_via(v) for v in vias[1:]]
        for via in parsed_vias:
            if via.branch == BRANCH_COOKIE:
                # RFC 4475 §3.2.1: the cookie alone identifies no transaction.
                raise ParseError("Via branch is only the magic cookie")
        cseq = request.cseq
        request.max_forwards  # noqa: B018 - parsed for its check
        request.from_addr  # noqa: B018
        request.to_addr  # noqa: B018
        if headers.get_all("contact") != [STAR]:
            request.contacts  # noqa: B018
        request.routes  # noqa: B018
        request.record_routes  # noqa: B018
        uri = request.request_uri
    except ParseError as e:
        raise fail(e.reason) from None
    if cseq.method != request.method:
        # RFC 4475 §3.1.2.18: for an unknown method, 501 is the better answer.
        raise fail(
            "CSeq method differs from the request method",
            400 if request.method in METHODS else 501,
        )
    if isinstance(uri, SipURI) and uri.headers:
        raise fail("headers in a SIP Request-URI (RFC 3261 §19.1.5)")


def validate_response(response: Response) -> None:
    """Check what a proxy needs to match and forward a response (RFC 3261 §16.7).

    At least one Via, each a via-parm; a CSeq with a number below 2**32; From, To
    and Call-ID present.

    :raises ParseError: without headers: the response is to be dropped.
    """
    headers = response.headers
    vias = headers.get_all("via")
    if not vias:
        raise ParseError("no Via")
    # The top Via and the CSeq are kept parsed on the response: the transaction
    # layer matches on both right after this.
    response.top_via  # noqa: B018
    for value in vias[1:]:
        parse_via(value)
    response.cseq  # noqa: B018
    for name in ("from", "to", "call-id"):
        if name not in headers:
            raise ParseError(f"no {name}")


def _stream_content_length(head: bytes) -> int:
    """The Content-Length of a header section, read without parsing the rest.

    :raises ParseError: when it is missing (RFC 3261 §18.3: "MUST be used with
        stream oriented transports"), not a number, or given twice differently.
    """
    values: list[str] = []
    lines = _split_lines(head)
    for i, line in enumerate(lines):
        if i == 0 or line.startswith(_FOLD):
            continue
        colon = line.find(b":")
        name = line[:colon].rstrip(b" \t").lower()
        if name != b"content-length" and name != b"l":
            continue
        parts = [line[colon + 1 :]]
        for cont in lines[i + 1 :]:
            if not cont.startswith(_FOLD):
                break
            parts.append(cont)
        values.append(_decode(b" ".join(parts)))
    length = _content_length(values)
    if length is None:
        raise ParseError("no Content-Length on a stream transport (RFC 3261 §18.3)")
    return length


def _headers_of(head: bytes) -> Headers | None:
    """The header fields of a request's header section, for an error response."""
    lines = _split_lines(head)
    if not lines or lines[0][:4].upper() == b"SIP/":
        return None
    return Headers(tuple(_parse_fields(lines[1:])[0]))


class StreamFramer:
    """Cut a TCP or TLS byte stream into SIP messages (RFC 3261 §18.3).

    Each message ends Content-Length bytes after its empty line. Between messages
    a CRLFCRLF is a keepalive ping (RFC 5626 §4.4.1) and a lone CRLF is skipped
    (RFC 3261 §7.5). A message that cannot be framed (Content-Length missing, bad
    or conflicting; over ``max_message_size``) ends the stream: :meth:`feed` returns
    a :class:`ParseError` last, and the framer is :attr:`closed` from then on.

    The search for the empty line resumes where it stopped, so a message arriving
    byte by byte costs linear time.
    """

    def __init__(self, max_message_size: int = MAX_MESSAGE_SIZE) -> None:
        self._max = max_message_size
        self._buffer = bytearray()
        self._scanned = 0  # bytes of the buffer already searched for the empty line
        self._length: int | None = None  # size of the message being received
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether the stream broke framing; the connection should be closed."""
        return self._closed

    @property
    def in_message(self) -> bool:
        """Whether part of a message (not of a keepalive) waits for the rest.

        The transport gives a started message a deadline: a sender that trickles
        its bytes (slowloris) must not hold the connection and its buffer forever.
        """
        if self._length is not None:
            return True
        buffer = self._buffer
        return bool(buffer) and not (len(buffer) < 4 and b"\r\n\r\n".startswith(buffer))

    def feed(self, data: bytes) -> list[bytes | Keepalive | ParseError]:
        """Take the next bytes of the stream; return what they complete, in order."""
        if self._closed:
            return []
        buffer = self._buffer
        buffer += data
        out: list[bytes | Keepalive | ParseError] = []
        while True:
            if self._length is None:
                if not self._skip_crlf(out):
                    break
                found = _find_head_end(buffer, max(0, self._scanned - 2))
                if found is None:
                    self._scanned = len(buffer)
                    if len(buffer) > self._max:
                        out.append(self._close("header section too large", 513, None))
                    break
                head_end, body_start = found
                head = bytes(buffer[:head_end])
                try:
                    length = _stream_content_length(head)
                except ParseError as e:
                    out.append(self._close(e.reason, 400, head))
                    break
                if body_start + length > self._max:
                    out.append(self._close("message too large", 513, head))
                    break
                self._length = body_start + length
            if len(buffer) < self._length:
                break
            out.append(bytes(buffer[: self._length]))
            del buffer[: self._length]
            self._length = None
            self._scanned = 0
        return out

    def _skip_crlf(self, out: list[bytes | Keepalive | ParseError]) -> bool:
        """Consume pings and pongs before a message; ``False`` if more is needed."""
        buffer = self._buffer
        while buffer[:1] == b"\r":
            if buffer.startswith(b"\r\n\r\n"):
                out.append(_KEEPALIVE)
                del buffer[:4]
            elif len(buffer) < 4 and b"\r\n\r\n".startswith(buffer):
                return False
            elif buffer.startswith(b"\r\n"):
                del buffer[:2]
            else:
                break
        return bool(buffer)

    def _close(self, reason: str, status: int, head: bytes | None) -> ParseError:
        self._closed = True
        self._buffer.clear()
        headers = None if head is None else _headers_of(head)
        return ParseError(reason, status=status, headers=headers)


def _undecodable(text: str) -> bool:
    """Whether ``text`` holds bytes that were not UTF-8 (kept as surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
