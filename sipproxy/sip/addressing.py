"""Who sent a message, over what, and where its responses go (RFC 3261 §18.2).

Pure values and functions, below the transaction layer and the transports: the
Twisted protocols in :mod:`sipproxy.transport` make Peers and Channels, every
layer above reads them.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from typing import Protocol

from sipproxy.sip.errors import ParseError
from sipproxy.sip.headers import Headers
from sipproxy.sip.message import kept_view, parse_top_via, via_field
from sipproxy.sip.transports import DEFAULT_PORTS, RELIABLE
from sipproxy.sip.via import Via

__all__ = [
    "DEFAULT_PORTS",
    "IPV6_SOURCE_PREFIX",
    "Channel",
    "Peer",
    "canonical_ip",
    "ip_of",
    "response_destination",
    "same_address",
    "source_key",
    "source_network",
    "stamp_received",
]


@dataclass(slots=True, unsafe_hash=True)  # immutable by convention (sip/headers.py)
class Peer:
    """The far end of a message as the socket saw it."""

    transport: str  # a name in sip.transports.KINDS
    host: str
    port: int

    @property
    def reliable(self) -> bool:
        """Stream transports neither lose nor reorder (RFC 3261 §17.1.1.2)."""
        return self.transport in RELIABLE


class Channel(Protocol):
    """Where a message came in and where its answers go out.

    A UDP socket sends to any address; a TCP or TLS connection only to its peer,
    so it ignores ``peer``.
    """

    @property
    def local(self) -> Peer:
        """Our own address on this channel (transport, host, port)."""

    @property
    def connection_id(self) -> str | None:
        """The connection's name for flows (RFC 5626); None for a datagram socket."""

    def send(self, data: bytes, peer: Peer) -> None:
        """Write one whole message."""


@functools.lru_cache(maxsize=4096)
def ip_of(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``text`` as an IP address (one pair of brackets allowed), or None.

    ``[::1]`` is an address, ``[[::1]]`` or ``[::1`` is not: a configuration
    check that let them through would only fail later, at listen time.
    Cached: the same few thousand peer addresses are compared on every message,
    and ipaddress parses in Python (bench/hotpath.py).
    """
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


#: IPv6 sources are grouped by this prefix (a subscriber's smallest allocation).
IPV6_SOURCE_PREFIX = 64


@functools.lru_cache(maxsize=8192)
def canonical_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``text`` (brackets allowed) as an address, IPv4-mapped IPv6 as IPv4."""
    try:
        address = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def source_key(source_ip: str) -> str:
    """The key a source is counted under: the IPv4 address, or an IPv6 /64.

    ``"192.0.2.7"`` stays as it is; ``"2001:db8::1"`` and ``"2001:db8::2"`` both
    give ``"2001:db8::/64"``; ``"::ffff:192.0.2.7"`` gives ``"192.0.2.7"``. Text
    that is no address (a test's host name) is its own key. O(1) for IPv4; IPv6
    parses are cached.
    """
    if ":" not in source_ip:
        return source_ip
    return _ipv6_key(source_ip)


@functools.lru_cache(maxsize=8192)
def _ipv6_key(source_ip: str) -> str:
    network = source_network(source_ip)
    if network is None:
        return source_ip
    if isinstance(network, ipaddress.IPv4Network):
        return str(network.network_address)
    return str(network)


@functools.lru_cache(maxsize=8192)
def source_network(
    text: str,
) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """The one definition of a source: an IPv4 address (a /32), or an IPv6 /64.

    ``text`` may have brackets; an IPv4-mapped IPv6 address is its IPv4 address.
    None when ``text`` is no address. One IPv6 subscriber is given a /64 or more
    and may send from any address in it, so counting, banning and binding
    nonces by anything smaller would let it count as many.
    """
    address = canonical_ip(text)
    if address is None:
        return None
    if isinstance(address, ipaddress.IPv4Address):
        return ipaddress.IPv4Network(address)
    return ipaddress.IPv6Network((address, IPV6_SOURCE_PREFIX), strict=False)


def same_address(a: str, b: str) -> bool:
    """Whether two host strings name one IP address (brackets and forms aside)."""
    if a == b:
        return True
    left = ip_of(a)
    return left is not None and left == ip_of(b)


def stamp_received(headers: Headers, peer: Peer) -> Headers:
    """Add ``received`` and fill ``rport`` in the top Via (RFC 3261 §18.2.1, RFC 3581).

    "When the server transport receives a request over any transport, it MUST
    examine the value of the "sent-by" parameter in the top Via header field value.
    If the host portion of the "sent-by" parameter contains a domain name, or if it
    contains an IP address that differs from the packet source address, the server
    MUST add a "received" parameter to that Via header field value."

    RFC 3581 §4: with an empty ``rport`` the server also sets it to the source port,
    and then always adds ``received``. A request's ``rport`` with a value is
    treated as the flag too: RFC 3581 §3 has the client send it empty, so a value
    is not meaningful, and honouring it would let the request pick the port its
    responses go to; a value that is no port at all (``abc``, ``99999``) is
    replaced the same way, so even the 400 refusing it goes to the source.
    """
    top = headers.first_field("via")
    if top is None:
        raise ParseError("no Via header field")
    # Validation parsed it already; the parsed Via is kept on the field.
    via = kept_view(top, parse_top_via)
    changed = via
    rport = via.rport
    source_port = str(peer.port)
    if rport is not None and rport != source_port:
        changed = changed.with_param("rport", source_port)
    # A received the sender wrote itself is never trusted: responses go to it.
    stale = via.received is not None and not same_address(via.received, peer.host)
    needs_received = rport is not None and via.received is None
    if needs_received or stale or not same_address(via.host, peer.host):
        changed = changed.with_param("received", peer.host)
    if changed is via:
        return headers
    _, rest = headers.pop_first_value("via")
    # Everyone downstream reads this Via, and responses bring it back below
    # ours: written with its view, it is never parsed.
    return rest.prepend_field(via_field(changed))


def response_destination(via: Via, peer: Peer) -> Peer:
    """Where a response to a request with top Via ``via`` goes (RFC 3261 §18.2.2).

    Stream transports answer on the request's connection (the caller does that);
    this gives the address for a datagram, or for a new connection when the old one
    is gone. Deliberate choice: a Via ``maddr`` is not honoured. Sending to an
    address the request names rather than the one it came from turns the server
    into a reflector for spoofed requests; multicast SIP is not in use. The source
    address (``received``) is used instead.
    """
    host = (via.received or via.host).strip("[]")
    if via.rport is not None:  # RFC 3581 §4: back to the source port
        return Peer(peer.transport, host, via.rport_port or peer.port)
    port = via.port or DEFAULT_PORTS.get(peer.transport, 5060)
    return Peer(peer.transport, host, port)
