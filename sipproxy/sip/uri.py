"""SIP and SIPS URIs, other absolute URIs, and name-addr values (RFC 3261 §19, §25).

Every part keeps its %-escapes as written, so ``str(SipURI.parse(text)) == text``;
escapes are decoded exactly once, and only where a comparison or a key needs it
(RFC 3261 §19.1.4; RFC 4475 §3.1.1.3).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace
from urllib.parse import unquote

from sipproxy.sip.errors import ParseError

__all__ = [
    "MAX_HOST_LENGTH",
    "STAR",
    "AbsoluteURI",
    "NameAddress",
    "SipURI",
    "parse_params",
    "parse_uri",
]

#: The wildcard Contact of a REGISTER that removes all bindings (RFC 3261 §10.2.2).
STAR = "*"

# scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
# user = 1*( unreserved / escaped / user-unreserved )
# user-unreserved = "&" / "=" / "+" / "$" / "," / ";" / "?" / "/"
_USER = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()&=+$,;?/]|%[0-9A-Fa-f]{2})+")
# password = *( unreserved / escaped / "&" / "=" / "+" / "$" / "," )
_PASSWORD = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()&=+$,]|%[0-9A-Fa-f]{2})*")
# hostname / IPv4address; "_" is tolerated because deployed hosts use it.
_HOSTNAME = re.compile(r"[A-Za-z0-9\-._]+")
# The characters of an IPv6address; what they spell is left to ipaddress.
_IPV6_CHARS = re.compile(r"[0-9A-Fa-f:.]+")
#: The longest host accepted, brackets included: a DNS name has at most 253
#: characters (RFC 1035 §2.3.4), so anything longer is an attack, not a host.
MAX_HOST_LENGTH = 255
# "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255" is the longest IPv6address: 45.
_MAX_IPV6_LENGTH = 45
_PORT = re.compile(r"[0-9]{1,5}")
# paramchar = param-unreserved / unreserved / escaped
# param-unreserved = "[" / "]" / "/" / ":" / "&" / "+" / "$"
# The usual SIP URI after "sip:": a user of unreserved characters (no escapes,
# ";", "?", "/" or ":"), a host name or IPv4 address, a port, parameters of
# paramchars without escapes. Groups: user, host, port, ";params".
_PLAIN_URI_BODY = (
    r"(?:([A-Za-z0-9\-_.!~*'()&=+$,]+)@)?([A-Za-z0-9\-._]+)(?::([0-9]{1,5}))?"
    r"((?:;[A-Za-z0-9\-_.!~*'()\[\]/:&+$]+(?:=[A-Za-z0-9\-_.!~*'()\[\]/:&+$]+)?)*)"
)
_PLAIN_URI = re.compile(_PLAIN_URI_BODY)
# "sip:" or "sips:" in any case, as a group, before _PLAIN_URI_BODY.
_PLAIN_SIP_SCHEME = r"([Ss][Ii][Pp][Ss]?):"
_PARAMCHARS = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()\[\]/:&+$]|%[0-9A-Fa-f]{2})+")
# hname / hvalue: hnv-unreserved = "[" / "]" / "/" / "?" / ":" / "+" / "$"
_HNAME = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()\[\]/?:+$]|%[0-9A-Fa-f]{2})+")
_HVALUE = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()\[\]/?:+$]|%[0-9A-Fa-f]{2})*")
# The opaque part of any other absolute URI: printable, no LWS, no <>" delimiters.
_OPAQUE = re.compile(r"[^\x00-\x20\x7f<>\"]+")
# token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
_TOKEN_RE = r"[A-Za-z0-9\-.!%*_+`'~]+"
_TOKEN = re.compile(_TOKEN_RE)
_TOKENS_RE = rf"{_TOKEN_RE}(?:[ \t]+{_TOKEN_RE})*"
_TOKENS = re.compile(_TOKENS_RE)
# gen-value = token / host / quoted-string; host here may be an IPv6 address with or
# without brackets (RFC 5118 §4.5), so ":" "[" "]" are allowed.
_GEN_VALUE_RE = r"[A-Za-z0-9\-.!%*_+`'~:\[\]]+"
_GEN_VALUE = re.compile(_GEN_VALUE_RE)
# The usual header parameters, ";branch=z9hG4bK..;rport", for the fast paths'
# regexes: no LWS and no quoted value, so that splitting them on ";" and "=" is
# exact (_split_plain_params).
_PLAIN_PARAMS_RE = rf"(?:;{_TOKEN_RE}(?:={_GEN_VALUE_RE})?)*"
# The usual name-addr, '"Alice" <sip:alice@host>;tag=1' or '<sip:u@h:5060>',
# whole: a quoted display name without quoted-pairs, or a token one; a plain
# SIP URI; plain parameters. Groups: quoted display, token display, the scheme
# and those of _PLAIN_URI_BODY, the header ";params".
_PLAIN_NAME_ADDRESS = re.compile(
    rf'(?:"([^"\\]*)"[ \t]*|({_TOKENS_RE})[ \t]*)?'
    rf"<{_PLAIN_SIP_SCHEME}{_PLAIN_URI_BODY}>({_PLAIN_PARAMS_RE})"
)
_WS = " \t"
_NEEDS_ANGLE = re.compile(r"[;?,]").search

#: URI parameters that make two URIs differ when only one of them has it
#: (RFC 3261 §19.1.4).
_SIGNIFICANT_PARAMS = frozenset({"user", "ttl", "method", "maddr", "transport"})


def _unescape(text: str) -> str:
    """Decode %HH escapes once; bytes that are not UTF-8 survive as surrogates."""
    if "%" not in text:
        return text
    return unquote(text, encoding="utf-8", errors="surrogateescape")


def is_ipv6_reference(host: str) -> bool:
    """Whether ``host`` is ``[IPv6address]`` (RFC 3261 §25.1 IPv6reference).

    Linear in ``len(host)``: a regex that checks the form (``[`` then thousands of
    colons) costs quadratic time on hostile input, one datagram stalling the
    server; ``ipaddress`` decides instead, after a length cap. RFC 5118
    §4.10 asks to tolerate the three-colon form the RFC 3261 ABNF allows
    (``[2001:db8:::192.0.2.1]``), which RFC 4291 does not.
    """
    inner = host[1:-1]
    if (
        not host.startswith("[")
        or not host.endswith("]")
        or len(inner) > _MAX_IPV6_LENGTH + 1
        or not _IPV6_CHARS.fullmatch(inner)  # no "%zone", which ipaddress allows
    ):
        return False
    for candidate in (inner, inner.replace(":::", "::", 1)):
        try:
            ipaddress.IPv6Address(candidate)
        except ValueError:
            continue
        return True
    return False


def is_hostname(host: str) -> bool:
    """Whether ``host`` is a hostname or IPv4address as SIP writes them (§25.1).

    Loose on purpose ("_" and a trailing or leading "." pass, as deployed hosts use
    them) but bounded: at most :data:`MAX_HOST_LENGTH` characters.
    """
    return len(host) <= MAX_HOST_LENGTH and _HOSTNAME.fullmatch(host) is not None


def _find_param(
    params: tuple[tuple[str, str | None], ...], name: str
) -> tuple[str, str | None] | None:
    low = name.lower()
    for item in params:
        if item[0].lower() == low:
            return item
    return None


def _with_param(
    params: tuple[tuple[str, str | None], ...], name: str, value: str | None
) -> tuple[tuple[str, str | None], ...]:
    low = name.lower()
    out = list(params)
    for i, (n, _) in enumerate(out):
        if n.lower() == low:
            out[i] = (n, value)
            return tuple(out)
    out.append((name, value))
    return tuple(out)


def _without_param(
    params: tuple[tuple[str, str | None], ...], name: str
) -> tuple[tuple[str, str | None], ...]:
    low = name.lower()
    return tuple(p for p in params if p[0].lower() != low)


def _format_params(params: tuple[tuple[str, str | None], ...]) -> str:
    return "".join(f";{n}" if v is None else f";{n}={v}" for n, v in params)


# Immutable by convention (sip/headers.py). init=False and a hand-written
# __init__: mypyc compiles that one, where the dataclass decorator's generated
# __init__ runs interpreted, and every received message builds several of these
# views (issue 18). The parsers build them by class name, not through cls, so
# that the compiled __init__ is called directly rather than via type.__call__.
@dataclass(slots=True, unsafe_hash=True, init=False)
class SipURI:
    """A ``sip:`` or ``sips:`` URI (RFC 3261 §19.1.1), every part as written.

    ``host`` keeps an IPv6 reference's brackets and the case it was written in;
    ``user``, ``password``, parameter and header strings keep their %-escapes.
    """

    scheme: str
    user: str | None
    password: str | None
    host: str
    port: int | None
    params: tuple[tuple[str, str | None], ...]
    headers: tuple[tuple[str, str], ...]

    def __init__(
        self,
        scheme: str,
        user: str | None,
        password: str | None,
        host: str,
        port: int | None,
        params: tuple[tuple[str, str | None], ...] = (),
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.scheme = scheme
        self.user = user
        self.password = password
        self.host = host
        self.port = port
        self.params = params
        self.headers = headers

    @classmethod
    def parse(cls, text: str) -> SipURI:
        """Parse a SIP-URI or SIPS-URI.

        :raises ParseError: on anything the RFC 3261 §25 grammar does not allow, or
            on another scheme.
        """
        colon = text.find(":")
        scheme = text[:colon]
        if colon < 0 or scheme.lower() not in ("sip", "sips"):
            raise ParseError(f"not a SIP URI: {text[:60]!r}")
        return SipURI._parse_rest(scheme, text[colon + 1 :])

    @classmethod
    def _parse_rest(cls, scheme: str, rest: str) -> SipURI:
        # Nearly every URI is user@host:port;params without escapes, password,
        # IPv6 or headers: one regex takes those apart into exactly what the full
        # walk below would give (tests/sip/test_uri.py compares the two).
        m = _PLAIN_URI.fullmatch(rest)
        if m is not None:
            uri = _plain_sip_uri(scheme, m[1], m[2], m[3], m[4])
            if uri is not None:
                return uri
        return SipURI._parse_rest_walk(scheme, rest)

    @classmethod
    def _parse_rest_walk(cls, scheme: str, rest: str) -> SipURI:
        # An unescaped "@" cannot occur in host, parameters or headers, so the first
        # one ends the userinfo; the user part may hold ";", "?" and "," (§25).
        user: str | None = None
        password: str | None = None
        at = rest.find("@")
        if at >= 0:
            userinfo = rest[:at]
            rest = rest[at + 1 :]
            c = userinfo.find(":")
            if c >= 0:
                user, password = userinfo[:c], userinfo[c + 1 :]
                if not _PASSWORD.fullmatch(password):
                    raise ParseError(f"bad password in URI: {password[:40]!r}")
            else:
                user = userinfo
            if not _USER.fullmatch(user):
                raise ParseError(f"bad user part in URI: {user[:40]!r}")
        q = rest.find("?")
        headers_text: str | None = None
        if q >= 0:
            rest, headers_text = rest[:q], rest[q + 1 :]
        hostport, *param_texts = rest.split(";")
        if hostport.startswith("["):
            end = hostport.find("]") + 1
            host, port_text = hostport[:end], hostport[end:]
            if not end or not is_ipv6_reference(host):
                raise ParseError(f"bad IPv6 reference in URI: {hostport[:60]!r}")
        else:
            c = hostport.find(":")
            host, port_text = (hostport, "") if c < 0 else (hostport[:c], hostport[c:])
            if not is_hostname(host):
                raise ParseError(f"bad host in URI: {hostport[:60]!r}")
        port: int | None = None
        if port_text:
            if port_text[0] != ":" or not _PORT.fullmatch(port_text, 1):
                raise ParseError(f"bad port in URI: {port_text[:20]!r}")
            port = int(port_text[1:])
            if port > 65535:
                raise ParseError(f"port out of range: {port}")
        params: list[tuple[str, str | None]] = []
        for p in param_texts:
            name, eq, value = p.partition("=")
            if not _PARAMCHARS.fullmatch(name) or (
                eq and not _PARAMCHARS.fullmatch(value)
            ):
                raise ParseError(f"bad URI parameter: {p[:40]!r}")
            params.append((name, value if eq else None))
        headers: list[tuple[str, str]] = []
        if headers_text is not None:
            for h in headers_text.split("&"):
                name, eq, value = h.partition("=")
                if not eq or not _HNAME.fullmatch(name) or not _HVALUE.fullmatch(value):
                    raise ParseError(f"bad URI header: {h[:40]!r}")
                headers.append((name, value))
        return SipURI(scheme, user, password, host, port, tuple(params), tuple(headers))

    def __str__(self) -> str:
        parts = [self.scheme, ":"]
        if self.user is not None:
            parts.append(self.user)
            if self.password is not None:
                parts += (":", self.password)
            parts.append("@")
        parts.append(self.host)
        if self.port is not None:
            parts += (":", str(self.port))
        parts.append(_format_params(self.params))
        if self.headers:
            parts += ("?", "&".join(f"{n}={v}" for n, v in self.headers))
        return "".join(parts)

    def param(self, name: str) -> str | None:
        """The value of URI parameter ``name`` (any case); ``""`` if it has none."""
        item = _find_param(self.params, name)
        if item is None:
            return None
        return "" if item[1] is None else item[1]

    def has_param(self, name: str) -> bool:
        """Whether the URI carries parameter ``name`` (any case)."""
        return _find_param(self.params, name) is not None

    def with_param(self, name: str, value: str | None = None) -> SipURI:
        """A copy with parameter ``name`` set (in place if present, else appended)."""
        return replace(self, params=_with_param(self.params, name, value))

    def without_param(self, name: str) -> SipURI:
        """A copy without parameter ``name``."""
        return replace(self, params=_without_param(self.params, name))

    @property
    def transport(self) -> str | None:
        """The ``transport`` parameter lowercased, or ``None`` when absent."""
        value = self.param("transport")
        return None if value is None else value.lower()

    @property
    def unescaped_user(self) -> str | None:
        """The user part with its escapes decoded once (``%00`` stays a NUL)."""
        return None if self.user is None else _unescape(self.user)

    def aor(self) -> str:
        """The address-of-record key: ``scheme:user@host``, canonical.

        Scheme and host are lowercased, the user is unescaped once, and port,
        parameters and headers are dropped, as the registrar does when it turns a
        To URI into a key (RFC 3261 §10.3 step 5).
        """
        user = self.unescaped_user
        host = self.host.lower()
        scheme = self.scheme.lower()
        return f"{scheme}:{host}" if user is None else f"{scheme}:{user}@{host}"

    def matches(self, other: SipURI | AbsoluteURI) -> bool:
        """URI equivalence as RFC 3261 §19.1.4 defines it.

        Scheme and host compare without case, user and password with case after
        unescaping; a port present in one must be present and equal in the other;
        user, ttl, method, maddr and transport must agree if either URI has them,
        other parameters only if both have them; URI headers must all agree.
        """
        if not isinstance(other, SipURI):
            return False
        if (
            self.scheme.lower() != other.scheme.lower()
            or self.unescaped_user != other.unescaped_user
            or _unescape_opt(self.password) != _unescape_opt(other.password)
            or self.host.lower() != other.host.lower()
            or self.port != other.port
        ):
            return False
        mine = _param_map(self.params)
        theirs = _param_map(other.params)
        for name in mine.keys() | theirs.keys():
            if name in mine and name in theirs:
                if mine[name] != theirs[name]:
                    return False
            elif name in _SIGNIFICANT_PARAMS:
                return False
        return _header_set(self.headers) == _header_set(other.headers)


def _plain_sip_uri(
    scheme: str, user: str | None, host: str, port_text: str | None, params: str
) -> SipURI | None:
    """The SipURI of a plain URI's parts (_PLAIN_URI_BODY's groups), or None.

    None when the host is too long or the port out of range: the walk then
    gives the error.
    """
    if len(host) > MAX_HOST_LENGTH:
        return None
    port: int | None = None
    if port_text is not None:
        port = int(port_text)
        if port > 65535:
            return None
    return SipURI(scheme, user, None, host, port, _split_plain_params(params), ())


def _unescape_opt(text: str | None) -> str | None:
    return None if text is None else _unescape(text)


def _param_map(params: tuple[tuple[str, str | None], ...]) -> dict[str, str | None]:
    return {
        _unescape(n).lower(): None if v is None else _unescape(v).lower()
        for n, v in params
    }


def _header_set(headers: tuple[tuple[str, str], ...]) -> frozenset[tuple[str, str]]:
    return frozenset((_unescape(n).lower(), _unescape(v)) for n, v in headers)


# Immutable by convention; a compiled __init__, called by name (see SipURI).
@dataclass(slots=True, unsafe_hash=True, init=False)
class AbsoluteURI:
    """A URI of any scheme other than sip and sips (``tel:``, ``http:``, ...).

    The proxy cannot route on it; it is kept as written (RFC 3261 §19.1, §16.3).
    """

    scheme: str
    opaque: str

    def __init__(self, scheme: str, opaque: str) -> None:
        self.scheme = scheme
        self.opaque = opaque

    def __str__(self) -> str:
        return f"{self.scheme}:{self.opaque}"

    def matches(self, other: SipURI | AbsoluteURI) -> bool:
        """Equality with the scheme compared without case (RFC 3986 §6.2.2.1)."""
        return (
            isinstance(other, AbsoluteURI)
            and self.scheme.lower() == other.scheme.lower()
            and self.opaque == other.opaque
        )


def parse_uri(text: str) -> SipURI | AbsoluteURI:
    """Parse an absolute URI: a :class:`SipURI` for sip/sips, else an AbsoluteURI.

    :raises ParseError: on whitespace, ``<``, a missing scheme, a bad port or any
        other departure from RFC 3261 §25 (``sip:2001:db8::10`` lacks the brackets
        RFC 5118 §4.2 requires).
    """
    colon = text.find(":")
    scheme = text[:colon]
    if colon <= 0 or not _SCHEME.fullmatch(scheme):
        raise ParseError(f"URI without a scheme: {text[:60]!r}")
    low = scheme.lower()
    if low == "sip" or low == "sips":
        return SipURI._parse_rest(scheme, text[colon + 1 :])
    opaque = text[colon + 1 :]
    if not _OPAQUE.fullmatch(opaque):
        raise ParseError(f"bad URI: {text[:60]!r}")
    return AbsoluteURI(scheme, opaque)


def _skip_ws(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in _WS:
        i += 1
    return i


def _quoted_end(text: str, i: int) -> int:
    """Index just past the quoted-string that starts at ``text[i] == '"'``."""
    n = len(text)
    j = i + 1
    while j < n:
        ch = text[j]
        if ch == "\\":
            if j + 1 >= n or text[j + 1] in "\r\n":
                break
            j += 2
            continue
        if ch == '"':
            return j + 1
        j += 1
    raise ParseError(f"unterminated quoted string: {text[i : i + 40]!r}")


def _unquote(quoted: str) -> str:
    """The content of a quoted-string with its quoted-pairs resolved (§25.1)."""
    inner = quoted[1:-1]
    if "\\" not in inner:
        return inner
    out: list[str] = []
    i = 0
    while i < len(inner):
        if inner[i] == "\\":
            i += 1
        out.append(inner[i])
        i += 1
    return "".join(out)


def _quote(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch in "\r\n":
            out.append(" ")
        elif ch in '"\\' or ch < " " or ch == "\x7f":
            out += ("\\", ch)
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


_LWS_OR_QUOTE = re.compile(r'[ \t\r\n"]')


def parse_params(text: str, i: int = 0) -> tuple[tuple[str, str | None], ...]:
    """Parse ``*( SEMI generic-param )`` from ``text[i:]`` to its end.

    LWS is allowed around ``;`` and ``=`` (RFC 3261 §25.1 SEMI, EQUAL). Names keep
    their case; a quoted-string value keeps its quotes.

    :raises ParseError: on an empty parameter, a bad name or value, or trailing text.
    """
    params: list[tuple[str, str | None]] = []
    if text.startswith(";", i) and not _LWS_OR_QUOTE.search(text, i):
        # The usual case, ";branch=z9hG4bK..;rport": no LWS and no quoted value,
        # so splitting on ";" is exact; anything odd takes the full walk below.
        for part in text[i + 1 :].split(";"):
            name, eq, written = part.partition("=")
            if not _TOKEN.fullmatch(name) or (eq and not _GEN_VALUE.fullmatch(written)):
                break
            params.append((name, written if eq else None))
        else:
            return tuple(params)
        params.clear()
    n = len(text)
    i = _skip_ws(text, i)
    while i < n:
        if text[i] != ";":
            raise ParseError(f"expected ';' in parameters: {text[i : i + 40]!r}")
        i = _skip_ws(text, i + 1)
        m = _TOKEN.match(text, i)
        if m is None:
            raise ParseError(f"bad parameter name: {text[i : i + 40]!r}")
        name = m.group()
        i = _skip_ws(text, m.end())
        value: str | None = None
        if i < n and text[i] == "=":
            i = _skip_ws(text, i + 1)
            if i < n and text[i] == '"':
                end = _quoted_end(text, i)
                value = text[i:end]
                i = end
            else:
                m = _GEN_VALUE.match(text, i)
                if m is None:
                    raise ParseError(f"bad parameter value: {text[i : i + 40]!r}")
                value = m.group()
                i = m.end()
            i = _skip_ws(text, i)
        params.append((name, value))
    return tuple(params)


def _split_plain_params(text: str) -> tuple[tuple[str, str | None], ...]:
    """The parameters of ``text``, which _PLAIN_PARAMS_RE matches whole."""
    if not text:
        return ()
    params: list[tuple[str, str | None]] = []
    for part in text[1:].split(";"):
        name, eq, value = part.partition("=")
        params.append((name, value if eq else None))
    return tuple(params)


# Immutable by convention; a compiled __init__, called by name (see SipURI).
@dataclass(slots=True, unsafe_hash=True, init=False)
class NameAddress:
    """A name-addr or addr-spec with its header parameters (RFC 3261 §20.10, §25).

    The value of From, To, Contact, Route, Record-Route, Reply-To and the like.
    ``display_name`` is unquoted with quoted-pairs resolved (``None`` when absent);
    ``params`` are the header parameters after the URI (tag, expires, q, ...), a
    quoted value kept with its quotes; ``angle`` says whether the URI was in ``<>``.
    """

    uri: SipURI | AbsoluteURI
    display_name: str | None
    params: tuple[tuple[str, str | None], ...]
    angle: bool

    def __init__(
        self,
        uri: SipURI | AbsoluteURI,
        display_name: str | None = None,
        params: tuple[tuple[str, str | None], ...] = (),
        angle: bool = True,
    ) -> None:
        self.uri = uri
        self.display_name = display_name
        self.params = params
        self.angle = angle

    @classmethod
    def parse(cls, text: str) -> NameAddress:
        """Parse one name-addr or addr-spec followed by parameters.

        Written without ``<>``, the ``;params`` belong to the header field, not to
        the URI, and the URI may not contain ``?`` or ``,`` (RFC 3261 §20.10;
        RFC 4475 §3.1.2.13, §3.3.12).

        :raises ParseError: on ``*``, an unterminated quote, a display name that is
            neither tokens nor a quoted-string, LWS inside ``<>``, or a bad URI.
        """
        text = text.strip(_WS)
        # One regex call for the usual value, where the walk makes four or more;
        # the walk gives the same for it (tests/sip/test_uri.py compares the two).
        m = _PLAIN_NAME_ADDRESS.fullmatch(text)
        if m is not None:
            uri = _plain_sip_uri(m[3], m[4], m[5], m[6], m[7])
            if uri is not None:
                quoted = m[1]
                display = m[2] if quoted is None else quoted
                return NameAddress(uri, display, _split_plain_params(m[8]), True)
        return NameAddress._parse_walk(text)

    @staticmethod
    def _parse_walk(text: str) -> NameAddress:
        text = text.strip(_WS)
        display: str | None = None
        if text.startswith('"'):
            end = _quoted_end(text, 0)
            display = _unquote(text[:end])
            lt = _skip_ws(text, end)
            if lt >= len(text) or text[lt] != "<":
                raise ParseError(f"quoted display name without <URI>: {text[:60]!r}")
        else:
            lt = text.find("<")
            if lt >= 0:
                name = text[:lt].rstrip(_WS)
                # RFC 4475 §3.1.1.6: accept no LWS between the display name and "<".
                if name:
                    if not _TOKENS.fullmatch(name):
                        raise ParseError(f"bad display name: {name[:60]!r}")
                    display = name
        if lt >= 0:
            gt = text.find(">", lt)
            if gt < 0:
                raise ParseError(f"unterminated <URI>: {text[:60]!r}")
            uri_text = text[lt + 1 : gt]
            uri = parse_uri(uri_text)
            return NameAddress(uri, display, parse_params(text, gt + 1), True)
        if text == STAR:
            raise ParseError("'*' is not an address")
        semi = text.find(";")
        uri_text = text if semi < 0 else text[:semi].rstrip(_WS)
        if "?" in uri_text or "," in uri_text:
            raise ParseError(f"URI with '?' or ',' must be in <>: {text[:60]!r}")
        params = () if semi < 0 else parse_params(text, semi)
        return NameAddress(parse_uri(uri_text), None, params, False)

    def __str__(self) -> str:
        params = _format_params(self.params)
        uri = str(self.uri)
        # Without <>, a URI holding ";", "?" or "," would lose its meaning (§20).
        if not self.angle and self.display_name is None and not _NEEDS_ANGLE(uri):
            return f"{uri}{params}"
        if self.display_name is None:
            return f"<{uri}>{params}"
        return f"{_quote(self.display_name)} <{uri}>{params}"

    def param(self, name: str) -> str | None:
        """The value of header parameter ``name`` (any case); ``""`` if it has none."""
        item = _find_param(self.params, name)
        if item is None:
            return None
        return "" if item[1] is None else item[1]

    def has_param(self, name: str) -> bool:
        """Whether header parameter ``name`` (any case) is present."""
        return _find_param(self.params, name) is not None

    @property
    def tag(self) -> str | None:
        """The ``tag`` parameter of From or To (RFC 3261 §19.3), or ``None``."""
        return self.param("tag")

    def with_param(self, name: str, value: str | None = None) -> NameAddress:
        """A copy with header parameter ``name`` set (in place, else appended)."""
        return replace(self, params=_with_param(self.params, name, value))

    def without_param(self, name: str) -> NameAddress:
        """A copy without header parameter ``name``."""
        return replace(self, params=_without_param(self.params, name))
