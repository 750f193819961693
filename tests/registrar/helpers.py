"""REGISTER builders and a registrar over the memory store, for the registrar tests."""

from __future__ import annotations

from itertools import count
from typing import Any

from sipproxy.location import Binding, Flow, LocationService
from sipproxy.location.memory import MemoryLocationService
from sipproxy.registrar import Registrar, RegistrarAnswer, RegistrarSettings
from sipproxy.sip.message import Request
from sipproxy.sip.parser import parse_message
from sipproxy.testing import run as run

DOMAIN = "example.com"
ALICE = "sip:alice@example.com"
CALL_ID = "a84b4c76e66710@pc33.example.com"
#: The REGISTER came from a phone behind NAT: this is its public address and port.
NAT_FLOW = Flow("udp", "192.0.2.1", 5060, "203.0.113.9", 61000)
TCP_FLOW = Flow("tcp", "192.0.2.1", 5060, "203.0.113.9", 52000, connection_id="c7")
SETTINGS = RegistrarSettings(domains=frozenset({DOMAIN}))

_branches = count(1)


def register_request(
    *lines: str,
    uri: str = f"sip:{DOMAIN}",
    to: str = f"<{ALICE}>",
    call_id: str = CALL_ID,
    cseq: int = 1,
) -> Request:
    """A REGISTER as it comes off the wire, with ``lines`` as extra header fields."""
    head = [
        f"REGISTER {uri} SIP/2.0",
        f"Via: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK{next(_branches)}",
        "Max-Forwards: 70",
        f"To: {to}",
        f"From: {to};tag=456248",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
        *lines,
        "Content-Length: 0",
    ]
    message = parse_message("\r\n".join(head).encode() + b"\r\n\r\n")
    assert isinstance(message, Request)
    return message


class Phone:
    """A registrar on a store, and REGISTERs sent to it with rising CSeqs."""

    def __init__(
        self,
        location: LocationService | None = None,
        settings: RegistrarSettings = SETTINGS,
    ) -> None:
        self.location = location or MemoryLocationService()
        self.registrar = Registrar(self.location, settings)
        self.cseq = 0

    async def send(
        self,
        *lines: str,
        now: float = 1000.0,
        flow: Flow = NAT_FLOW,
        cseq: int | None = None,
        **fields: Any,
    ) -> RegistrarAnswer:
        """REGISTER with ``lines`` at ``now``; CSeq one higher than last time."""
        self.cseq = self.cseq + 1 if cseq is None else cseq
        request = register_request(*lines, cseq=self.cseq, **fields)
        return await self.registrar.register(request, flow, now=now)

    def register(self, *lines: str, **fields: Any) -> RegistrarAnswer:
        """:meth:`send` on the memory store, run to completion."""
        return run(self.send(*lines, **fields))

    def bindings(self, aor: str = ALICE, *, now: float = 1000.0) -> list[Binding]:
        """The AOR's bindings in the memory store."""
        return run(self.location.bindings(aor, now=now))


def header_values(answer: RegistrarAnswer, name: str) -> list[str]:
    """The values of the answer's extra header fields called ``name``."""
    return [value for field, value in answer.headers if field.lower() == name.lower()]


def contacts(bindings: list[Binding]) -> list[str]:
    """The contact URIs of ``bindings``, in order."""
    return [b.contact for b in bindings]
