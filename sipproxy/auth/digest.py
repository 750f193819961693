"""Digest authentication: challenges, nonces and verification.

RFC 3261 §22 takes HTTP Digest (RFC 2617, now RFC 7616) for SIP; RFC 8760 adds
SHA-256 to it. A server answers a request without good credentials with a
challenge (401 + WWW-Authenticate from a registrar or UAS, 407 +
Proxy-Authenticate from a proxy, RFC 3261 §22.1, §22.3); the UA resends it with
Authorization or Proxy-Authorization, which :meth:`Authenticator.verify` checks.

Theory of operation:

- **Nonces are stateless** (RFC 7616 §3.3 leaves their form to the server):
  ``base64url(issued_at ‖ salt ‖ HMAC-SHA-256(secret, issued_at ‖ salt ‖
  source))``. Only the holder of ``secret`` can make one, so a nonce that checks
  out was issued by us, at ``issued_at``, to ``source``; it is fresh for
  ``nonce_lifetime`` seconds. The random salt makes every challenge's nonce
  unique, so phones behind one NAT challenged in the same instant never share a
  nonce (and its nonce count).
- **A nonce is bound to where it was sent**: ``source`` is the IPv4
  address the challenge went to, or the /64 of an IPv6 one (a host owns a /64,
  RFC 7421; the ban list groups the same way). A wrong answer is
  :attr:`Outcome.FAILED`, which the caller counts towards a ban, only when its
  nonce was issued to the address it comes from: to get one, the sender had to
  receive our challenge there, a round trip a spoofed UDP source cannot make. A
  nonce never issued, issued to another address, or anything else that proves
  nothing about the sender is :attr:`Outcome.UNPROVEN`: challenged again, never
  counted, so nobody can get an address banned by writing its address on
  packets.
- **One guess per nonce**: a wrong answer burns its nonce (remembered with the
  nonce counts below); any later answer on it is UNPROVEN without being
  computed. Each guess thus costs a round trip for a new nonce, and a batch of
  guesses on one nonce (pipelined on TCP) is worth one. A nonce has one
  spelling (the unused low bits of its last base64url character are 0), so a
  burnt nonce cannot come back respelt. A wrong answer on an
  expired nonce is FAILED every time (it was issued to that source, so counting
  it is safe, and a right one is STALE: leaving wrong ones uncounted would make
  ``stale=true`` an oracle with unlimited guesses).
- **Stale** (RFC 7616 §3.3 ``stale``): a correct response with an expired nonce
  is :attr:`Outcome.STALE`, and the caller challenges again with
  ``stale=true`` so the UA retries without asking its user for a password.
- **Replay**: qop="auth" with nc and cnonce is required (RFC 2069 responses
  without qop are refused: without a nonce count a captured Authorization could
  be replayed for the whole nonce lifetime; every SIP phone in use sends qop).
  For each nonce the highest nc that verified is remembered, in an LRU map of at
  most ``max_nonces`` entries; an nc not above it is :attr:`Outcome.UNPROVEN`
  (the nc of RFC 7616 §3.4 exists so that a server can detect replays; a
  replay is no guess, and whoever captured it could send it with the victim's
  address, so it is not counted). When a live
  nonce is pushed out of the map, every nonce issued up to then that the map no
  longer knows is treated as stale, so forgetting never opens a replay window.
- **No user oracle**: an unknown user's response is computed and compared
  against a fixed dummy HA1 exactly as a known user's, then refused, so a
  scanner sees the same outcome and the same work. Comparisons use
  :func:`hmac.compare_digest`.
- **URI**: the digest ``uri`` must name the Request-URI: equal, or equivalent
  by RFC 3261 §19.1.4 (host and scheme case, parameter order; ``sip:a`` and
  ``sip:a:5060`` are *not* equivalent). Any other ``uri`` is
  :attr:`Outcome.URI_MISMATCH`, answered 400 and not counted: "The
  authenticating server must assure that the resource designated by the "uri"
  directive is the same as the resource specified in the Request-Line; if they
  are not, the server SHOULD return a 400 Bad Request error" (RFC 2617
  §3.2.2.5). It is a misconfigured client or an ALG that rewrote the
  Request-URI, not a wrong password, and a silent challenge would loop.
- **Time** is the caller's ``now`` (float seconds); nothing here reads a clock.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import os
import re
import struct
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from sipproxy.auth.ha1 import ALGORITHMS, encode_utf8, hash_hex
from sipproxy.sip.addressing import source_network
from sipproxy.sip.errors import ParseError
from sipproxy.sip.uri import parse_uri

if TYPE_CHECKING:
    from sipproxy.auth.htdigest import UserDB
    from sipproxy.sip.message import Request

__all__ = [
    "AuthResult",
    "Authenticator",
    "Outcome",
    "compute_response",
    "parse_credentials",
]

_CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization"})
# 32 bytes in 43 base64url characters: the last one carries 2 bits of nothing,
# which must be 0, so that a nonce has one spelling (one guess per nonce).
_NONCE = re.compile(r"[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]")
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")
# HMAC's pads (RFC 2104): the key XOR 0x36 and XOR 0x5c, by translate tables.
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))
_SHA256_BLOCK = 64
_NC = re.compile(r"[0-9a-fA-F]{8}")
_TIMESTAMP = struct.Struct(">d")
_SALT_SIZE = 8
_MAC_SIZE = 16
#: the "highest nc" of a nonce burnt by a wrong answer: above any 8-hex-digit nc
_BURNT = 1 << 32
# token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_SPACE = " \t\r\n"


@functools.lru_cache(maxsize=256)
def _ha2(algorithm: str, method: str, uri: str) -> str:
    """H(method:uri), cached: phones send the same few again and again.

    A REGISTER to the domain is the same (method, uri) for every phone, so a
    small cache leaves one hash per verification (HA1 comes from the file).
    """
    return hash_hex(algorithm, f"{method}:{uri}")


def compute_response(
    ha1: str,
    *,
    algorithm: str,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
) -> str:
    """The request-digest for ``ha1`` (RFC 7616 §3.4.1, RFC 2617 §3.2.2.1).

    With ``qop="auth"``: ``H(HA1:nonce:nc:cnonce:qop:H(method:uri))``; without
    qop, as RFC 2069: ``H(HA1:nonce:H(method:uri))``. ``auth-int`` is not
    supported (RFC 3261 §22.4 leaves it optional and phones do not use it).

    :raises ValueError: for another qop, or qop without nc and cnonce.
    """
    ha2 = _ha2(algorithm, method, uri)
    if qop is None:
        return hash_hex(algorithm, f"{ha1}:{nonce}:{ha2}")
    if qop != "auth" or nc is None or cnonce is None:
        raise ValueError("only qop=auth, with nc and cnonce, is supported")
    return hash_hex(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


# One well-formed auth-param and the spaces after it, up to the next comma or
# the end: name, quoted value (escapes still in) or unquoted value. The one-pass
# reading of parse_credentials; anything it does not match goes to the walk.
_PARAM = re.compile(
    r"[ \t\r\n,]*([A-Za-z0-9\-.!%*_+`'~]+)[ \t\r\n]*=[ \t\r\n]*"
    r'(?:"([^"\\]*(?:\\[\s\S][^"\\]*)*)"|([^ \t\r\n,"]*))[ \t\r\n]*(?=,|\Z)'
)
_LIST_END = re.compile(r"[ \t\r\n,]*\Z")
_QUOTED_PAIR = re.compile(r"\\([\s\S])")


def parse_credentials(value: str) -> tuple[str, dict[str, str]]:
    """Split a credentials value into its scheme and auth-params (RFC 3261 §25.1).

    ``credentials = ("Digest" LWS digest-response) / other-response``, where the
    response is comma-separated ``name = ( token / quoted-string )``. Parameter
    names are lowercased (they are case-insensitive, RFC 3261 §7.3.1); quoted
    values are unquoted and their quoted-pairs unescaped; unquoted values run to
    the next comma or space. Spaces around ``=`` and commas, and empty list
    elements, are tolerated.

    :raises ParseError: on a missing scheme, a parameter without ``=``, an
        unterminated quoted string, or a parameter given twice.
    """
    text = value.strip(_SPACE)
    scheme_match = _TOKEN.match(text)
    if scheme_match is None:
        raise ParseError("credentials without an auth scheme")
    scheme = scheme_match.group()
    i, n = scheme_match.end(), len(text)
    params: dict[str, str] = {}
    if i < n and text[i] not in _SPACE:
        raise ParseError("no space after the auth scheme")
    # One pass with a regex per parameter; what it cannot read (malformed, or
    # a backslash at the end of a quoted string) is walked below, which reads
    # the same language and says what is wrong.
    pos = i
    while (match := _PARAM.match(text, pos)) is not None:
        name, quoted, plain = match.groups()
        name = name.lower()
        if name in params:
            raise ParseError(f"auth-param {name!r} given twice")
        if quoted is None:
            params[name] = plain
        elif "\\" in quoted:
            params[name] = _QUOTED_PAIR.sub(r"\1", quoted)
        else:
            params[name] = quoted
        pos = match.end()
    if _LIST_END.match(text, pos):
        return scheme, params
    params.clear()
    return _walk_params(text, i, scheme, params)


def _walk_params(
    text: str, i: int, scheme: str, params: dict[str, str]
) -> tuple[str, dict[str, str]]:
    """parse_credentials character by character, from ``i`` after the scheme."""
    n = len(text)
    while True:
        while i < n and (text[i] in _SPACE or text[i] == ","):
            i += 1
        if i >= n:
            return scheme, params
        name_match = _TOKEN.match(text, i)
        if name_match is None:
            raise ParseError(f"bad auth-param name at {text[i : i + 20]!r}")
        name = name_match.group().lower()
        i = name_match.end()
        while i < n and text[i] in _SPACE:
            i += 1
        if i >= n or text[i] != "=":
            raise ParseError(f"auth-param {name!r} without '='")
        i += 1
        while i < n and text[i] in _SPACE:
            i += 1
        if i < n and text[i] == '"':
            chars: list[str] = []
            i += 1
            while True:
                if i >= n:
                    raise ParseError(f"unterminated quoted string in {name!r}")
                ch = text[i]
                if ch == "\\" and i + 1 < n:
                    chars.append(text[i + 1])
                    i += 2
                elif ch == '"':
                    i += 1
                    break
                else:
                    chars.append(ch)
                    i += 1
            param = "".join(chars)
        else:
            start = i
            while i < n and text[i] not in _SPACE and text[i] not in ',"':
                i += 1
            param = text[start:i]
        if name in params:
            raise ParseError(f"auth-param {name!r} given twice")
        params[name] = param
        while i < n and text[i] in _SPACE:
            i += 1
        if i < n and text[i] != ",":
            raise ParseError(f"expected ',' after auth-param {name!r}")


@functools.lru_cache(maxsize=4096)
def source_key(source: str | None) -> bytes:
    """What a nonce is bound to: an IPv4 address, or the /64 of an IPv6 one.

    An IPv4-mapped IPv6 address is its IPv4 address. Anything that is not an IP
    address (it should not happen) is bound as its lowercased text; None (no
    source known) binds to nothing.
    """
    if source is None:
        return b""
    text = source.strip("[]").partition("%")[0]
    network = source_network(text)
    if network is None:
        return b"n" + encode_utf8(text.lower())
    # The guard's source (sip.addressing) as bytes: family, then the prefix.
    family = b"4" if network.version == 4 else b"6"
    return family + network.network_address.packed[: network.prefixlen // 8]


def same_resource(digest_uri: str, request_uri: str) -> bool:
    """Whether a digest ``uri`` names the Request-URI (RFC 3261 §19.1.4).

    Equal strings, or URIs equivalent by the rules of §19.1.4 (for sip and sips;
    other schemes compare by scheme case only). Unparseable means different.
    """
    if digest_uri == request_uri:
        return True
    try:
        return parse_uri(digest_uri).matches(parse_uri(request_uri))
    except ParseError:
        return False


def _quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


class Outcome(Enum):
    """What :meth:`Authenticator.verify` concluded about a request."""

    #: The credentials are good: ``AuthResult.user`` is who sent the request.
    OK = "ok"
    #: No credentials for our realm: challenge.
    MISSING = "missing"
    #: Good credentials on an expired nonce: challenge again with ``stale=true``.
    STALE = "stale"
    #: A wrong answer to a nonce issued to this source: count it, challenge.
    FAILED = "failed"
    #: Credentials that prove nothing about the sender (a nonce not issued to
    #: this source, a burnt nonce, a replay, unreadable): challenge, don't count.
    UNPROVEN = "unproven"
    #: The digest uri is not the Request-URI (RFC 2617 §3.2.2.5): 400, not counted.
    URI_MISMATCH = "uri mismatch"


@dataclass(frozen=True, slots=True)
class AuthResult:
    """The outcome of a verification, the user when it is OK, and why.

    ``reason`` is for the log; it never holds a password or hash, but it may name
    the user the request claimed, so it must not go into a response.
    """

    outcome: Outcome
    user: str | None = None
    reason: str = ""


@dataclass(slots=True)
class _Credentials:
    username: str
    nonce: str
    uri: str
    response: str
    algorithm: str
    nc: str
    cnonce: str


class _FailedError(Exception):
    """Internal: a wrong answer to a nonce issued to this source, with the reason."""


class _UnprovenError(Exception):
    """Internal: credentials that prove nothing about their sender, with the reason."""


def _credentials(params: Mapping[str, str], algorithms: Sequence[str]) -> _Credentials:
    for required in ("username", "nonce", "uri", "response"):
        if not params.get(required):
            raise _UnprovenError(f"no {required}")
    algorithm = params.get("algorithm", "MD5").upper()  # RFC 7616 §3.3: MD5 default
    if algorithm not in algorithms:
        raise _UnprovenError(f"algorithm {algorithm[:20]!r} not offered")
    if params.get("userhash", "false").lower() != "false":
        raise _UnprovenError("userhash not offered")
    qop = params.get("qop")
    if qop is None:
        raise _UnprovenError("no qop (RFC 2069 responses are refused)")
    if qop.lower() != "auth":
        raise _UnprovenError(f"qop {qop[:20]!r} not offered")
    nc, cnonce = params.get("nc"), params.get("cnonce")
    if nc is None or not _NC.fullmatch(nc):
        raise _UnprovenError("nc is not 8 hex digits")
    if not cnonce:
        raise _UnprovenError("no cnonce")
    return _Credentials(
        params["username"],
        params["nonce"],
        params["uri"],
        params["response"],
        algorithm,
        nc,
        cnonce,
    )


class Authenticator:
    """Challenge and verify Digest credentials for one realm (RFC 3261 §22).

    State: the highest nonce count seen per nonce, or that a wrong answer burnt
    it (bounded, see the module docstring). ``users`` may be replaced at any
    time (a reloaded users file); that state survives the change.

    :param realm: the realm of challenges and of the credentials we accept.
    :param users: the users of ``realm`` and their HA1 values.
    :param secret: the key of the nonce HMAC; a new random one per start makes
        every nonce of the previous run invalid.
    :param nonce_lifetime: seconds a nonce stays fresh.
    :param algorithms: what challenges offer, in order of preference.
    :param max_nonces: how many nonces' counts are remembered.
    """

    def __init__(
        self,
        realm: str,
        users: UserDB,
        secret: bytes,
        *,
        nonce_lifetime: float = 300.0,
        algorithms: Sequence[str] = ("SHA-256", "MD5"),
        max_nonces: int = 10_000,
    ) -> None:
        algorithms = tuple(a.upper() for a in algorithms)
        if not algorithms or any(a not in ALGORITHMS for a in algorithms):
            raise ValueError(f"algorithms must be some of {sorted(ALGORITHMS)}")
        if not secret:
            raise ValueError("the nonce secret must not be empty")
        if nonce_lifetime <= 0 or max_nonces < 1:
            raise ValueError("nonce_lifetime and max_nonces must be positive")
        self.realm = realm
        self.users = users
        self.nonce_lifetime = nonce_lifetime
        self.algorithms = algorithms
        self._secret = secret
        # HMAC-SHA-256 with the keyed inner and outer states made once (RFC
        # 2104): each MAC is then two copies and two hashes, not a new HMAC.
        key = (
            secret if len(secret) <= _SHA256_BLOCK else hashlib.sha256(secret).digest()
        )
        key = key.ljust(_SHA256_BLOCK, b"\0")
        self._hmac_inner = hashlib.sha256(key.translate(_IPAD))
        self._hmac_outer = hashlib.sha256(key.translate(_OPAD))
        self._max_nonces = max_nonces
        opaque = hmac.new(secret, b"sipproxy opaque", hashlib.sha256).digest()[:12]
        self.opaque = base64.urlsafe_b64encode(opaque).decode("ascii")
        self._dummy_ha1 = {
            a: hash_hex(a, f"sipproxy dummy user:{realm}:") for a in ALGORITHMS
        }
        # nonce -> (issued_at, highest nc verified or _BURNT), least recently used first
        self._counts: OrderedDict[str, tuple[float, int]] = OrderedDict()
        # nonces issued at or before this moment and not in _counts are stale
        self._forgotten_until = float("-inf")

    # -- challenges -----------------------------------------------------------

    def offered_algorithms(self) -> tuple[str, ...]:
        """The configured algorithms every user has an HA1 for, in order.

        A users file written by plain ``htdigest`` has no SHA-256 HA1, so then
        only MD5 is offered (a UA answers the first challenge whose algorithm it
        knows, RFC 8760, and would fail). If none is left, the configured list
        is offered.
        """
        have = self.users.algorithms
        return tuple(a for a in self.algorithms if a in have) or self.algorithms

    def make_nonce(self, now: float, source: str | None = None) -> str:
        """A fresh nonce stamped ``now`` for ``source``: timestamp, salt, HMAC.

        :param source: the IP address the challenge is sent to (see
            :func:`source_key`); None makes a nonce that only a verification
            without a source accepts (tests, tools).
        """
        body = _TIMESTAMP.pack(now) + os.urandom(_SALT_SIZE)
        # base64url without its one "=" of padding (binascii: one C call each).
        encoded = binascii.b2a_base64(body + self._mac(body, source), newline=False)
        return encoded[:-1].translate(_TO_URLSAFE).decode("ascii")

    def _mac(self, body: bytes, source: str | None) -> bytes:
        # body has a fixed size, so body ‖ source is unambiguous.
        inner = self._hmac_inner.copy()
        inner.update(body + source_key(source))
        outer = self._hmac_outer.copy()
        outer.update(inner.digest())
        return outer.digest()[:_MAC_SIZE]

    def challenge(
        self, now: float, *, source: str | None = None, stale: bool = False
    ) -> list[str]:
        """WWW-Authenticate / Proxy-Authenticate values, one per algorithm.

        A server offering several algorithms sends one challenge each, most
        preferred first (RFC 8760, RFC 7616 §3.7); all share one nonce and
        opaque (as in the RFC 7616 §3.9.1 example). Each is ``Digest realm,
        nonce, opaque, algorithm, qop="auth"`` and, after
        :attr:`Outcome.STALE`, ``stale=true``.

        :param source: the IP address the challenge goes to: the nonce is good
            only in requests from there (from its /64 for IPv6).
        """
        nonce = self.make_nonce(now, source)
        tail = ", stale=true" if stale else ""
        return [
            f"Digest realm={_quote(self.realm)}, nonce={_quote(nonce)}, "
            f'opaque={_quote(self.opaque)}, algorithm={algorithm}, qop="auth"{tail}'
            for algorithm in self.offered_algorithms()
        ]

    def nonce_issued_at(self, nonce: str, source: str | None = None) -> float | None:
        """When we issued ``nonce`` to ``source``; None if we did not (or altered)."""
        if not _NONCE.fullmatch(nonce):
            return None
        raw = binascii.a2b_base64(nonce.encode("ascii").translate(_FROM_URLSAFE) + b"=")
        body, mac = raw[:-_MAC_SIZE], raw[-_MAC_SIZE:]
        if not hmac.compare_digest(mac, self._mac(body, source)):
            return None
        (issued_at,) = _TIMESTAMP.unpack(body[: _TIMESTAMP.size])
        return float(issued_at)

    # -- verification ---------------------------------------------------------

    def verify(
        self,
        request: Request,
        now: float,
        *,
        source: str | None = None,
        header: str = "Authorization",
    ) -> AuthResult:
        """Check the credentials for our realm in ``header`` of ``request``.

        ``header`` is "Authorization" (after a 401) or "Proxy-Authorization"
        (after a 407, RFC 3261 §22.3). Credentials for other realms, meant for
        other servers, are ignored (§22.3); if several are for our realm the
        first one counts. The steps, in an order that tells nothing about
        which users exist: parse; the uri (URI_MISMATCH); check the nonce is
        ours and was issued to ``source``, and not burnt (else UNPROVEN);
        compute the response (a dummy HA1 for an unknown user) and compare in
        constant time (FAILED, and the nonce is burnt); then freshness (STALE)
        and the nonce count (a replay is UNPROVEN).

        :param source: the IP address the request came from, as given to
            :meth:`challenge`.
        :raises ValueError: for a ``header`` that does not carry credentials.
        """
        if header.lower() not in _CREDENTIAL_HEADERS:
            raise ValueError(f"{header!r} does not carry credentials")
        params: dict[str, str] | None = None
        malformed = False
        for value in request.headers.get_all(header):
            try:
                scheme, candidate = parse_credentials(value)
            except ParseError:
                malformed = True
                continue
            if scheme.lower() == "digest" and candidate.get("realm") == self.realm:
                params = candidate
                break
        if params is None:
            if malformed:
                return AuthResult(Outcome.UNPROVEN, reason=f"malformed {header}")
            return AuthResult(Outcome.MISSING, reason=f"no {header} for our realm")
        try:
            return self._verify(request, now, params, source)
        except _UnprovenError as error:
            return AuthResult(Outcome.UNPROVEN, reason=str(error))
        except _FailedError as error:
            return AuthResult(Outcome.FAILED, reason=str(error))

    def _verify(
        self,
        request: Request,
        now: float,
        params: Mapping[str, str],
        source: str | None,
    ) -> AuthResult:
        creds = _credentials(params, self.algorithms)
        if not same_resource(creds.uri, request.uri):
            return AuthResult(
                Outcome.URI_MISMATCH,
                reason=f"digest uri {creds.uri[:100]!r} is not the Request-URI",
            )
        issued_at = self.nonce_issued_at(creds.nonce, source)
        if issued_at is None:
            raise _UnprovenError("nonce not issued to this source, or not ours")
        opaque = params.get("opaque")
        if opaque is not None and not hmac.compare_digest(
            encode_utf8(opaque), encode_utf8(self.opaque)
        ):
            raise _UnprovenError("opaque not ours")
        seen = self._counts.get(creds.nonce)
        if seen is not None and seen[1] == _BURNT:
            raise _UnprovenError("nonce already spent by a wrong answer")
        known = self.users.ha1(creds.username, creds.algorithm)
        ha1 = known if known is not None else self._dummy_ha1[creds.algorithm]
        expected = compute_response(
            ha1,
            algorithm=creds.algorithm,
            method=request.method,
            uri=creds.uri,
            nonce=creds.nonce,
            qop="auth",
            nc=creds.nc,
            cnonce=creds.cnonce,
        )
        matches = hmac.compare_digest(
            encode_utf8(expected), encode_utf8(creds.response.lower())
        )
        if known is None or not matches:
            self._burn(creds.nonce, issued_at, now)
            # One reason for both, so that not even the log separates them.
            raise _FailedError(f"wrong password or unknown user {creds.username!r}")
        return self._check_count(creds, issued_at, now, seen)

    def _burn(self, nonce: str, issued_at: float, now: float) -> None:
        """A wrong answer: no later answer on ``nonce`` is looked at.

        Only a fresh nonce is remembered; an expired one is never OK again, and a
        wrong answer on it is FAILED each time (see the module docstring).
        """
        if not 0 <= now - issued_at <= self.nonce_lifetime:
            return
        self._counts[nonce] = (issued_at, _BURNT)
        self._counts.move_to_end(nonce)
        self._forget(now)

    def _check_count(
        self,
        creds: _Credentials,
        issued_at: float,
        now: float,
        seen: tuple[float, int] | None,
    ) -> AuthResult:
        age = now - issued_at
        if not 0 <= age <= self.nonce_lifetime or (
            seen is None and issued_at <= self._forgotten_until
        ):
            # The password was right, but the user is not authenticated yet.
            return AuthResult(Outcome.STALE, reason=f"stale nonce, {creds.username!r}")
        nc = int(creds.nc, 16)
        if nc <= (seen[1] if seen is not None else 0):
            raise _UnprovenError(f"replayed nc {creds.nc} for user {creds.username!r}")
        self._counts[creds.nonce] = (issued_at, nc)
        self._counts.move_to_end(creds.nonce)
        self._forget(now)
        return AuthResult(Outcome.OK, creds.username)

    def _forget(self, now: float) -> None:
        """Drop expired nonces from the old end, then any over ``max_nonces``."""
        horizon = now - self.nonce_lifetime
        while self._counts:
            nonce, (issued_at, _) = next(iter(self._counts.items()))
            if issued_at >= horizon and len(self._counts) <= self._max_nonces:
                break
            del self._counts[nonce]
            if issued_at >= horizon:
                self._forgotten_until = max(self._forgotten_until, issued_at)
