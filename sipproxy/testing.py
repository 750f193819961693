"""Fakes shared by the tests: the UDP side MemoryReactorClock lacks, recorders, run."""

from __future__ import annotations

from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IUDPTransport
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.testing import MemoryReactorClock
from zope.interface import implementer

from sipproxy.sip.addressing import Peer

_T = TypeVar("_T")


def run(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """Run a coroutine that never waits on real I/O (the memory store) to its end."""
    results: list[_T] = []
    Deferred.fromCoroutine(coroutine).addCallback(results.append)
    assert results, "the coroutine waited on something"
    return results[0]


def _address(kind: str, host: str, port: int) -> IPv4Address | IPv6Address:
    if ":" in host:
        return IPv6Address(kind, host, port)  # type: ignore[arg-type]
    return IPv4Address(kind, host, port)  # type: ignore[arg-type]


@implementer(IUDPTransport, IListeningPort)
class FakeDatagramTransport:
    """A UDP socket that records what is written to it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 5060) -> None:
        self.written: list[tuple[bytes, tuple[str, int]]] = []
        self._host = _address("UDP", host, port)
        self.connected = False

    def write(self, packet: bytes, addr: Any = None) -> None:
        """Record one datagram."""
        self.written.append((packet, addr))

    def connect(self, host: str, port: int) -> None:
        """Connected UDP is not used by sipproxy."""
        raise NotImplementedError

    def getHost(self) -> IPv4Address | IPv6Address:  # noqa: N802 - Twisted's name
        """The bound address."""
        return self._host

    def stopListening(self) -> None:  # noqa: N802 - Twisted's name
        """Close the fake socket."""

    def startListening(self) -> None:  # noqa: N802 - Twisted's name
        """Nothing to bind."""

    def setBroadcastAllowed(self, enabled: bool) -> None:  # noqa: N802
        """Broadcast is never used."""

    def getBroadcastAllowed(self) -> bool:  # noqa: N802
        """Broadcast is never used."""
        return False

    def loseConnection(self) -> None:  # noqa: N802 - Twisted's name
        """Nothing to close."""


class UDPMemoryReactor(MemoryReactorClock):
    """MemoryReactorClock plus ``listenUDP`` on a FakeDatagramTransport."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.udp: list[tuple[int, DatagramProtocol, str, FakeDatagramTransport]] = []

    def listenUDP(  # noqa: N802 - Twisted's name
        self,
        port: int,
        protocol: DatagramProtocol,
        interface: str = "",
        maxPacketSize: int = 8192,  # noqa: N803 - Twisted's name
    ) -> FakeDatagramTransport:
        """Bind ``protocol`` to a fake socket and start it."""
        transport = FakeDatagramTransport(
            interface or "0.0.0.0", port or 40000 + len(self.udp)
        )
        self.udp.append((port, protocol, interface, transport))
        protocol.makeConnection(transport)
        return transport


@dataclass
class RecordingChannel:
    """A Channel that keeps what the core sends."""

    local: Peer = field(default_factory=lambda: Peer("udp", "127.0.0.1", 5060))
    sent: list[tuple[bytes, Peer]] = field(default_factory=list)
    connection_id: str | None = None

    def send(self, data: bytes, peer: Peer) -> None:
        """Record one outgoing message."""
        self.sent.append((data, peer))
