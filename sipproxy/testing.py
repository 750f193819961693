"""Fakes shared by the tests: the UDP side MemoryReactorClock lacks, recorders, run."""

from __future__ import annotations

import dataclasses
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IUDPTransport
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.testing import MemoryReactorClock
from zope.interface import implementer

from sipproxy.cdr.record import CallRecord
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


class MemoryCallRecordStore:
    """A :class:`~sipproxy.cdr.CallRecordStore` in lists, done before it returns.

    :param fail: every operation raises this (a store that is down).
    """

    def __init__(self, fail: Exception | None = None) -> None:
        self.records: list[CallRecord] = []
        self.live: dict[str, CallRecord] = {}
        self.fail = fail

    def _check(self) -> None:
        if self.fail is not None:
            raise self.fail

    async def open(self) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """Nothing to close."""

    async def add(self, record: CallRecord) -> None:
        """Keep ``record``."""
        self._check()
        self.records.append(record)

    async def keep_live(self, key: str, record: CallRecord) -> None:
        """Keep ``record`` as live under ``key``."""
        self._check()
        self.live[key] = record

    async def drop_live(self, key: str) -> None:
        """Forget the live ``key``."""
        self._check()
        self.live.pop(key, None)

    async def close_lost(self, owner: str, now: float) -> list[CallRecord]:
        """Move ``owner``'s live records to the records as ``lost``."""
        self._check()
        keys = [key for key in self.live if key.startswith(f"{owner}:")]
        lost = sorted(
            (
                dataclasses.replace(self.live.pop(key), disposition="lost", end=now)
                for key in keys
            ),
            key=lambda record: record.start,
        )
        self.records.extend(lost)
        return lost

    async def query(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        user: str | None = None,
        dispositions: frozenset[str] | None = None,
        limit: int = 100,
    ) -> list[CallRecord]:
        """Matching records, newest start first."""
        self._check()
        numbered = [
            (record.start, number, record)
            for number, record in enumerate(self.records)
            if record.matches(user, since, until, dispositions)
        ]
        numbered.sort(key=lambda item: item[:2], reverse=True)
        return [record for _start, _number, record in numbered[:limit]]
