"""Listening sockets: UDP, TCP and TLS ports, alone or shared (SO_REUSEPORT).

``sipproxy.server`` decides what listens and what receives; this module opens the
sockets, as Twisted's ``listen*`` would, with what SIP needs beyond that: a large
UDP receive buffer and ports several processes share.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any, Protocol

from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.protocols.tls import TLSMemoryBIOFactory

from sipproxy.sip.transports import kind_of
from sipproxy.transport.tls import credentials_of, server_options

#: what the kernel is asked for as a UDP socket's receive buffer (capped by
#: net.core.rmem_max)
RECEIVE_BUFFER = 4 << 20


class Endpoint(Protocol):
    """One address to listen on (``config.ListenSpec``)."""

    @property
    def transport(self) -> str:
        """``udp``, ``tcp`` or ``tls``."""

    @property
    def port(self) -> int:
        """The port; 0 lets the kernel choose."""

    @property
    def interface(self) -> str:
        """The address to bind; empty: every IPv4 address."""

    @property
    def options(self) -> tuple[tuple[str, str], ...]:
        """Keyword options other than ``interface``, in order."""

    def option(self, name: str) -> str | None:
        """A keyword option such as ``backlog`` or ``privateKey``."""


def listen_udp(
    reactor: Any, endpoint: Endpoint, protocol: Any, *, shared: bool
) -> IListeningPort:
    """A UDP port for ``protocol``, with a receive buffer a burst fits in."""
    port: IListeningPort = (
        listen_shared(reactor, endpoint, protocol)
        if shared
        else reactor.listenUDP(
            endpoint.port, protocol, interface=endpoint.interface, maxPacketSize=65535
        )
    )
    enlarge_receive_buffer(port)
    return port


def listen_stream(
    reactor: Any, endpoint: Endpoint, factory: Any, *, shared: bool
) -> IListeningPort:
    """A TCP port, or a TLS one with the endpoint's key and certificate."""
    if kind_of(endpoint.transport).secure:
        # Checked when the options were parsed; read again, as files may change.
        options = server_options(
            credentials_of(endpoint.options), endpoint.option("caCerts")
        )
        if shared:
            return listen_shared(
                reactor, endpoint, TLSMemoryBIOFactory(options, False, factory)
            )
        return reactor.listenSSL(  # type: ignore[no-any-return]
            endpoint.port, factory, options, interface=endpoint.interface
        )
    if shared:
        return listen_shared(reactor, endpoint, factory)
    return reactor.listenTCP(  # type: ignore[no-any-return]
        endpoint.port, factory, interface=endpoint.interface
    )


def listen_shared(reactor: Any, endpoint: Endpoint, receiver: Any) -> IListeningPort:
    """Listen with SO_REUSEPORT, so other processes may listen on the same port.

    Twisted's listenUDP/listenTCP cannot set it before bind(), so the socket is
    made here and handed to the reactor, which takes a duplicate of it.
    """
    interface = endpoint.interface or "0.0.0.0"
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    reliable = kind_of(endpoint.transport).reliable
    kind = socket.SOCK_STREAM if reliable else socket.SOCK_DGRAM
    try:
        with socket.socket(family, kind) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((interface, endpoint.port))
            sock.setblocking(False)
            if kind == socket.SOCK_DGRAM:
                return reactor.adoptDatagramPort(  # type: ignore[no-any-return]
                    sock.fileno(), family, receiver, maxPacketSize=65535
                )
            sock.listen(int(endpoint.option("backlog") or 50))
            return reactor.adoptStreamPort(  # type: ignore[no-any-return]
                sock.fileno(), family, receiver
            )
    except OSError as error:
        raise CannotListenError(interface, endpoint.port, error) from None


def enlarge_receive_buffer(port: IListeningPort) -> None:
    """Let a burst (every phone re-registering after an outage) queue, not drop.

    The default UDP receive buffer (~200 KB) fills within one garbage-collector
    pause at a thousand requests a second; the kernel caps what we ask for at
    net.core.rmem_max.
    """
    sock = getattr(port, "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)


def host_port(port: IListeningPort) -> str:
    """Where a port listens, for logs: ``[::1]:5060``, ``*:5060`` (every address)."""
    address = port.getHost()
    host = getattr(address, "host", "")
    host = f"[{host}]" if ":" in host else host or "*"
    return f"{host}:{getattr(address, 'port', '?')}"
