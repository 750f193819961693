"""A whole proxy on fakes: MemoryReactorClock time, fake UDP sockets, memory store."""

from __future__ import annotations

from dataclasses import replace

from sipproxy.auth.digest import Authenticator
from sipproxy.config import Config, DialRule, ListenSpec
from sipproxy.location import Binding, Flow
from sipproxy.location.memory import MemoryLocationService
from sipproxy.office.model import Office
from sipproxy.proxy.calls import CallTracker
from sipproxy.proxy.observer import ProxyObserver
from sipproxy.registrar import RegistrarSettings
from sipproxy.server import build_core
from sipproxy.sip.message import Request, Response
from sipproxy.sip.parser import parse_message
from sipproxy.testing import (
    FakeDatagramTransport,
    MemoryCallRecordStore,
    UDPMemoryReactor,
)
from sipproxy.testing import run as run
from sipproxy.transport.udp import SIPDatagramProtocol

PROXY = ("127.0.0.1", 5060)
ALICE = ("192.0.2.10", 5070)
BOB = ("192.0.2.20", 5062)
BOB2 = ("192.0.2.21", 5064)


class Harness:
    """The proxy wired by server.build_core, with every edge replaced by a fake."""

    def __init__(
        self,
        *,
        forking: str = "sequential",
        dialplan: tuple[DialRule, ...] = (),
        outbound_proxy: str | None = None,
        known_users: frozenset[str] = frozenset(),
        office: Office | None = None,
        observer: ProxyObserver | None = None,
        registrar: RegistrarSettings | None = None,
        auth: Authenticator | None = None,
        track_calls: bool = False,
    ) -> None:
        """Build the proxy; by default without a registrar and without digest.

        :param registrar: REGISTER goes to a real :class:`Registrar` with these
            settings on the harness's memory store.
        :param auth: digest authentication is on, with this authenticator.
        :param track_calls: a call tracker watches the proxy, and busy lamps
            follow it, as the server wires them (``self.calls``).
        """
        self.clock = UDPMemoryReactor()
        self.location = MemoryLocationService()
        run(self.location.open())
        config = Config(
            domains=("example.test",),
            listen=(ListenSpec("udp", 5060, "127.0.0.1"),),
            forking=forking,
            dialplan=dialplan,
            outbound_proxy=outbound_proxy,
            office=office,
        )
        if registrar is not None:
            # The registrar's domains are the config's: one list of our domains.
            assert registrar.domains == frozenset(config.domains), registrar
            config = replace(
                config,
                default_expires=registrar.default_expires,
                min_expires=registrar.min_expires,
                max_expires=registrar.max_expires,
                max_bindings=registrar.max_bindings,
            )
        core = build_core(
            config,
            self.clock,
            location=self.location,
            authenticator=auth,
            known_user=lambda aor: aor in known_users,
            observer=observer,
            secret=b"s" * 32,
            registers=registrar is not None,
        )
        self.transports = core.transports
        self.proxy = core.proxy
        self.udp = SIPDatagramProtocol(self.proxy.layer)
        self.socket: FakeDatagramTransport = self.clock.listenUDP(
            5060, self.udp, interface="127.0.0.1"
        )
        self.transports.add_udp(self.udp)
        self.calls: CallTracker | None = None
        if track_calls:
            self.calls = CallTracker(MemoryCallRecordStore(), self.clock, owner="h")
            core.notifier.follow(self.calls, self.proxy.events)
            # As the server does once the call-record store is open: after.
            self.proxy.events.decisions.append(self.calls)
            self.proxy.events.dialogs.append(self.calls)

    def register(
        self,
        user: str,
        where: tuple[str, int],
        *,
        at: float = 0.0,
        contact: str | None = None,
    ) -> None:
        """A binding as the registrar would store it, reached through its flow.

        By default the Contact is a private address: the phone is behind NAT.
        """
        binding = Binding(
            aor=f"sip:{user}@example.test",
            contact=contact or f"sip:{user}@10.0.0.{where[1] % 200}:5060",
            expires_at=at + 3600,
            registered_at=at,
            call_id=f"reg-{user}-{where[1]}",
            cseq=1,
            flow=Flow("udp", *PROXY, *where),
        )
        run(self.location.update(binding.aor, save=[binding], now=self.clock.seconds()))

    def receive(
        self, data: bytes | Request | Response, source: tuple[str, int]
    ) -> None:
        """A datagram from ``source`` arrives at the proxy's socket."""
        raw = data if isinstance(data, bytes) else data.to_bytes()
        self.udp.datagramReceived(raw, source)

    def sent(self) -> list[tuple[Request | Response, tuple[str, int]]]:
        """Everything the proxy sent and no test has taken yet, parsed."""
        out = [(parse_message(data), addr) for data, addr in self.socket.written]
        self.socket.written.clear()
        return out

    def sent_to(self, where: tuple[str, int]) -> list[Request | Response]:
        """Take what was sent to ``where``; what went elsewhere stays to be taken."""
        taken: list[tuple[bytes, tuple[str, int]]] = []
        kept: list[tuple[bytes, tuple[str, int]]] = []
        for data, addr in self.socket.written:
            (taken if addr == where else kept).append((data, addr))
        self.socket.written[:] = kept
        return [parse_message(data) for data, _ in taken]


def invite(
    to_user: str = "bob",
    *,
    call_id: str = "call-1",
    branch: str = "z9hG4bKalice1",
    max_forwards: int = 70,
    extra: str = "",
) -> bytes:
    return (
        f"INVITE sip:{to_user}@example.test SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {ALICE[0]}:{ALICE[1]};branch={branch};rport\r\n"
        f"Max-Forwards: {max_forwards}\r\n"
        'From: "Alice" <sip:alice@example.test>;tag=a1\r\n'
        f"To: <sip:{to_user}@example.test>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 INVITE\r\n"
        f"Contact: <sip:alice@{ALICE[0]}:{ALICE[1]}>\r\n"
        f"{extra}"
        "Content-Type: application/sdp\r\n"
        "Content-Length: 4\r\n\r\nv=0\n"
    ).encode()


def answer(
    request: Request, status: int, *, to_tag: str = "b1", contact: str = ""
) -> Response:
    """The response a phone would send to ``request`` (it copies the Vias)."""
    extra = [("Contact", contact)] if contact else []
    if 100 < status < 300:
        # RFC 3261 §12.1.1: the UAS copies Record-Route into dialog responses.
        extra += [("Record-Route", v) for v in request.headers.get_all("record-route")]
    return request.response(status, to_tag=to_tag, headers=extra)
