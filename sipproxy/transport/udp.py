"""SIP over UDP: one datagram, one message (RFC 3261 §18.3)."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from typing_extensions import override

from sipproxy.sip.addressing import Peer
from sipproxy.sip.errors import ParseError
from sipproxy.sip.parser import parse_message
from sipproxy.sip.transports import UDP
from sipproxy.transport.receiver import MessageReceiver


class SIPDatagramProtocol(DatagramProtocol):
    """One UDP socket: datagrams to the receiver, and its answers back out."""

    log = Logger()
    noisy = False  # the service logs one line listing every listener
    #: A socket is no connection: flows through it name none (RFC 5626).
    connection_id: str | None = None

    def __init__(
        self,
        receiver: MessageReceiver,
        max_message_size: int = 65536,
        *,
        admit: Callable[[str], bool] | None = None,
    ) -> None:
        """Read datagrams for ``receiver``.

        :param admit: asked per datagram with the source IP before any parsing;
            False drops it silently (a banned or flooding source).
        """
        self._receiver = receiver
        self._max_size = max_message_size
        self._admit = admit
        self._local = Peer(UDP.name, "", 0)

    @property
    def local(self) -> Peer:
        """The address this socket is bound to."""
        return self._local

    @override
    def startProtocol(self) -> None:
        address = self.transport.getHost()  # type: ignore[union-attr]
        self._local = Peer(UDP.name, address.host, address.port)

    @override
    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:
        if self._admit is not None and not self._admit(addr[0]):
            return
        peer = Peer(UDP.name, addr[0], addr[1])
        if len(datagram) <= 4 and not datagram.strip(b"\r\n"):
            # RFC 5626 §3.5.1 keepalives over UDP are STUN; a bare CRLF is what
            # many phones send instead. Neither is a message; say nothing.
            return
        try:
            if len(datagram) > self._max_size:
                raise ParseError(
                    f"datagram of {len(datagram)} bytes exceeds {self._max_size}",
                    status=513,
                )
            message = parse_message(datagram)
        except ParseError as error:
            self._receiver.message_invalid(error, peer, self)
            return
        self._receiver.message_received(message, peer, self)

    def send(self, data: bytes, peer: Peer) -> None:
        """Send one message to ``peer``; a failed send is logged, never raised."""
        transport = self.transport
        if transport is None:
            # The socket is closed (the server is stopping); a retransmission
            # timer of a transaction may still fire in these last moments.
            return
        try:
            transport.write(data, (peer.host, peer.port))
        except OSError as error:
            self.log.warn(
                "udp send to {host}:{port} failed: {error}",
                host=peer.host,
                port=peer.port,
                error=error,
            )
