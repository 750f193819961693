"""The transport kinds SIP runs over, described once.

Every module that needs to know whether a transport is reliable, what its Via
token or default port is, or how a URI names it asks this registry instead of
comparing strings of its own; a new kind (WebSocket, RFC 7118) is one entry here
plus the module that carries its bytes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TransportKind:
    """What the rest of the server needs to know about one transport."""

    #: Our own name for it, lower case: ``Peer.transport``, flows, ``--listen``.
    name: str
    #: The token in a Via sent-protocol, ``SIP/2.0/<token>`` (RFC 3261 §20.42).
    via_token: str
    #: The port when a URI or Via names none (RFC 3261 §19.1.2).
    default_port: int
    #: Neither loses nor reorders: no retransmission timers (§17.1.1.2).
    reliable: bool
    #: Encrypted and authenticated; what a SIPS URI requires (§26.2).
    secure: bool
    #: The ``transport=`` URI parameter value that selects it (§19.1.1).
    uri_param: str
    #: The NAPTR service field that names it (RFC 3263 §4.1); "" if none.
    naptr_service: str = ""
    #: The SRV owner-name prefix to look it up under (RFC 3263 §4.1); "" if none.
    srv_prefix: str = ""
    #: We can open connections of this kind to reach a peer; False: a peer is
    #: reached only over a connection it opened to us (WebSocket).
    dialable: bool = True


UDP = TransportKind("udp", "UDP", 5060, False, False, "udp", "sip+d2u", "_sip._udp.")
TCP = TransportKind("tcp", "TCP", 5060, True, False, "tcp", "sip+d2t", "_sip._tcp.")
# RFC 3263 §4.1: "_sips" is TLS over TCP.
TLS = TransportKind("tls", "TLS", 5061, True, True, "tls", "sips+d2t", "_sips._tcp.")
# RFC 7118 §5.2.1 and §5.2.2: Via transport "WS"/"WSS", URI parameter "ws"/"wss";
# reliable (§5.2.4: the reliable-transport timers, no retransmissions). The
# ports are WebSocket's own (RFC 6455 §3: 80 for ws, 443 for wss). No NAPTR or
# SRV: the clients are browsers, which open a connection to a WebSocket URI and
# accept none (§5.3, Appendix B.1), so a ws target is never looked up in DNS and
# never dialled; it is reached over the connection it opened (a flow, RFC 5626)
# or not at all.
WS = TransportKind("ws", "WS", 80, True, False, "ws", dialable=False)
WSS = TransportKind("wss", "WSS", 443, True, True, "wss", dialable=False)

#: Every kind by its name. Order is preference when nothing else decides.
KINDS: dict[str, TransportKind] = {kind.name: kind for kind in (UDP, TCP, TLS, WS, WSS)}

#: RFC 3261 §19.1.2: the port when a sent-by or URI names none.
DEFAULT_PORTS: dict[str, int] = {name: k.default_port for name, k in KINDS.items()}

#: Names of the stream kinds; a set, as Peer.reliable asks on every message.
RELIABLE: frozenset[str] = frozenset(n for n, k in KINDS.items() if k.reliable)

_BY_VIA_TOKEN = {kind.via_token.upper(): kind for kind in KINDS.values()}
_BY_URI_PARAM = {kind.uri_param: kind for kind in KINDS.values()}


def kind_of(name: str) -> TransportKind:
    """The kind called ``name`` (as in ``Peer.transport``); KeyError if none."""
    return KINDS[name.lower()]


def by_via_token(token: str) -> TransportKind | None:
    """The kind a Via's transport token names, or None for one we do not carry."""
    return _BY_VIA_TOKEN.get(token.upper())


def by_uri_param(value: str) -> TransportKind | None:
    """The kind a URI's ``transport=`` selects, or None for one we do not carry."""
    return _BY_URI_PARAM.get(value.lower())


def is_secure(name: str) -> bool:
    """Whether the transport called ``name`` is encrypted (unknown: no)."""
    kind = KINDS.get(name)
    return kind is not None and kind.secure


def is_dialable(name: str) -> bool:
    """Whether we may open a connection (or send a datagram) over ``name``."""
    kind = KINDS.get(name)
    return kind is not None and kind.dialable


def is_reliable(name: str) -> bool:
    """Whether the transport called ``name`` is a stream (unknown: datagram)."""
    return name in RELIABLE
