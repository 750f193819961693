"""One Via header value (RFC 3261 §20.42, §18.2.1; RFC 3581; RFC 5118 §4.5)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sipproxy.sip.errors import ParseError
from sipproxy.sip.uri import (
    _PLAIN_PARAMS_RE,
    _TOKEN_RE,
    MAX_HOST_LENGTH,
    _find_param,
    _format_params,
    _split_plain_params,
    _with_param,
    is_ipv6_reference,
    parse_params,
)

__all__ = ["BRANCH_COOKIE", "Via"]

#: The magic cookie that starts every RFC 3261 branch (RFC 3261 §8.1.1.7).
BRANCH_COOKIE = "z9hG4bK"

# sent-protocol = protocol-name SLASH protocol-version SLASH transport, where
# SLASH = SWS "/" SWS; then LWS and sent-by = host [ COLON port ].
_SENT_PROTOCOL = re.compile(
    r"[ \t]*([A-Za-z0-9\-.!%*_+`'~]+)[ \t]*/[ \t]*([A-Za-z0-9\-.!%*_+`'~]+)"
    r"[ \t]*/[ \t]*([A-Za-z0-9\-.!%*_+`'~]+)[ \t]+"
)
# hostname / IPv4address; an IPv6reference is found by its "]" (see _sent_by_host).
_HOSTNAME = re.compile(r"[A-Za-z0-9\-._]+")
_PORT = re.compile(r"[ \t]*:[ \t]*([0-9]{1,5})")
# The usual via-parm, "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK..;rport": LWS
# only before the host, a host name or IPv4 address, plain parameters.
# One regex call for the lot, where the walk makes one per part and each call
# costs more than the characters it reads. Groups: protocol, transport, host,
# port, ";params".
_PLAIN_VIA = re.compile(
    rf"({_TOKEN_RE}/{_TOKEN_RE})/({_TOKEN_RE})[ \t]+([A-Za-z0-9\-._]+)"
    rf"(?::([0-9]{{1,5}}))?({_PLAIN_PARAMS_RE})"
)


# Immutable by convention; a compiled __init__, called by name (see SipURI in
# sip/uri.py).
@dataclass(slots=True, unsafe_hash=True, init=False)
class Via:
    """A via-parm: who sent the request and how to get the response back.

    ``protocol`` is ``"SIP/2.0"`` as written without LWS; ``transport`` is as written
    (``"UDP"``, ``"tls"``); ``host`` keeps IPv6 brackets; ``params`` keep their names
    and values as written, ``None`` for a parameter without ``=``.
    """

    protocol: str
    transport: str
    host: str
    port: int | None
    params: tuple[tuple[str, str | None], ...]

    def __init__(
        self,
        protocol: str,
        transport: str,
        host: str,
        port: int | None,
        params: tuple[tuple[str, str | None], ...] = (),
    ) -> None:
        self.protocol = protocol
        self.transport = transport
        self.host = host
        self.port = port
        self.params = params

    @classmethod
    def parse(cls, text: str) -> Via:
        """Parse one via-parm; LWS may surround ``/``, ``:``, ``;`` and ``=`` (§25).

        :raises ParseError: when the value is not a via-parm.
        """
        # The walk gives the same for what the regex takes (tests/sip/test_via.py
        # compares the two); a long host or a large port is left to its errors.
        m = _PLAIN_VIA.fullmatch(text)
        if m is not None:
            host = m[3]
            port_text = m[4]
            port = None if port_text is None else int(port_text)
            if len(host) <= MAX_HOST_LENGTH and (port is None or port <= 65535):
                return Via(m[1], m[2], host, port, _split_plain_params(m[5]))
        return Via._parse_walk(text)

    @staticmethod
    def _parse_walk(text: str) -> Via:
        m = _SENT_PROTOCOL.match(text)
        if m is None:
            raise ParseError(f"bad Via sent-protocol: {text[:60]!r}")
        protocol = f"{m[1]}/{m[2]}"
        transport = m[3]
        host, i = _sent_by_host(text, m.end())
        port: int | None = None
        p = _PORT.match(text, i)
        if p is not None:
            port = int(p[1])
            if port > 65535:
                raise ParseError(f"Via port out of range: {port}")
            i = p.end()
        return Via(protocol, transport, host, port, parse_params(text, i))

    def __str__(self) -> str:
        port = "" if self.port is None else f":{self.port}"
        params = _format_params(self.params)
        return f"{self.protocol}/{self.transport} {self.host}{port}{params}"

    def param(self, name: str) -> str | None:
        """The value of parameter ``name`` (any case); ``""`` if it has none."""
        item = _find_param(self.params, name)
        if item is None:
            return None
        return "" if item[1] is None else item[1]

    def with_param(self, name: str, value: str | None = None) -> Via:
        """A copy with parameter ``name`` set (in place if present, else appended)."""
        # Built directly: dataclasses.replace costs several times as much, and
        # every received request's Via gets received/rport this way.
        params = _with_param(self.params, name, value)
        return Via(self.protocol, self.transport, self.host, self.port, params)

    @property
    def branch(self) -> str | None:
        """The transaction identifier (RFC 3261 §8.1.1.7), or ``None``."""
        return self.param("branch")

    @property
    def received(self) -> str | None:
        """The source address a server noted (§18.2.1); IPv6 with or without ``[]``."""
        return self.param("received")

    @property
    def rport(self) -> str | None:
        """RFC 3581 ``rport``: ``None`` absent, ``""`` asked for, else the digits."""
        return self.param("rport")

    @property
    def rport_port(self) -> int | None:
        """``rport`` as a port number (1 to 65535), or ``None`` when it is no port.

        ``None`` for an absent or empty ``rport`` and for one like ``abc`` or
        ``99999`` alike: callers that need to tell them apart read :attr:`rport`.
        """
        rport = self.rport
        if not rport or len(rport) > 5 or not rport.isdigit() or not rport.isascii():
            return None
        port = int(rport)
        return port if 0 < port <= 65535 else None

    @property
    def maddr(self) -> str | None:
        """The ``maddr`` parameter, or ``None``."""
        return self.param("maddr")

    @property
    def ttl(self) -> str | None:
        """The ``ttl`` parameter as written, or ``None``."""
        return self.param("ttl")

    @property
    def sent_by(self) -> tuple[str, int | None]:
        """``(host, port)`` as the sender wrote them (RFC 3261 §18.2.2)."""
        return self.host, self.port


def _sent_by_host(text: str, i: int) -> tuple[str, int]:
    """The host of a sent-by starting at ``text[i]``, and the index after it.

    Linear time whatever the input (a "[" and 8,000 colons took 50 ms with a
    regex: one datagram could stall the server), and at most MAX_HOST_LENGTH characters.

    :raises ParseError: when no host starts there.
    """
    if text.startswith("[", i):
        end = text.find("]", i, i + MAX_HOST_LENGTH) + 1
        if not end or not is_ipv6_reference(text[i:end]):
            raise ParseError(f"bad IPv6 reference in Via: {text[i : i + 60]!r}")
        return text[i:end], end
    h = _HOSTNAME.match(text, i)
    if h is None or h.end() - i > MAX_HOST_LENGTH:
        raise ParseError(f"bad Via sent-by: {text[:60]!r}")
    return h.group(), h.end()
