"""The server's own cost per message, without sockets or a load generator.

Feeds REGISTER (or OPTIONS) datagrams straight into the UDP protocol of a fully
wired ``SIPServerService`` (memory store) and reports microseconds per message.
It isolates what the parser, transaction layer, registrar and proxy cost, which
is what bounds the SIPp ramps on one core (docs/performance.md)::

    python -m bench.hotpath --messages 50000
    python -m bench.hotpath --profile              # cProfile, top functions
    valgrind --tool=callgrind python -m bench.hotpath --messages 5000

Every REGISTER is a new AOR, as in the SIPp ``register`` scenario. ``--kind call``
plays whole calls (INVITE, 180, 200, ACK, BYE, 200) to a registered callee whose
answers are built from what the proxy forwards; it reports per call, and the
callee's side (parsing what it is sent, building its answers) is counted too.
``--cdr SPEC`` opens that call-record store and lets the call tracker watch
the proxy as the running server does (``none``: tracking without storing;
``jsonl:PATH`` appends each record, synchronously); without it nothing tracks
calls, which is the figure to compare against. ``sqlite:`` writes on the
reactor's thread pool, which this reactor-less bench does not run. Busy lamps
are wired as in the server (the notifier follows the call tracker): the bench
makes no subscription, so the notifier watches nobody and is off the event
stream; calls cost it nothing, as in a server where nobody uses BLF keys.

``--kind digest-register`` runs the server with a users file (MD5, as
``htdigest`` writes it) and plays SIPp's register-with-auth scenario: each
REGISTER is challenged with a 401, and sent again with an Authorization
computed here from the challenge (qop=auth, nc=00000001). It reports per
authenticated REGISTER, both round trips and the credentials computed here
included. The users file holds a fixed number of users (``_DIGEST_USERS``),
so that start-up costs the same whatever ``--messages``; the n-th REGISTER is
user ``u(n mod _DIGEST_USERS)``, each a new AOR until the users run out.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import hashlib
import os
import pstats
import re
import tempfile
import time
from dataclasses import dataclass, field

from twisted.internet import reactor
from twisted.internet.defer import Deferred

from sipproxy.cdr import CallRecordStore
from sipproxy.collector import Collector
from sipproxy.config import build_config
from sipproxy.server import SIPServerService, build_server
from sipproxy.sip.message import Request
from sipproxy.sip.parser import parse_message
from sipproxy.testing import FakeDatagramTransport
from sipproxy.transport.udp import SIPDatagramProtocol

_REGISTER = (
    "REGISTER sip:example.test SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-{n}-1;rport\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:u{n}@example.test>;tag=1234SIPpTag00{n}\r\n"
    "To: <sip:u{n}@example.test>\r\n"
    "Call-ID: {n}-1234@127.0.0.1\r\n"
    "CSeq: 1 REGISTER\r\n"
    "Contact: <sip:u{n}@127.0.0.1:5061;transport=udp>\r\n"
    "Expires: 3600\r\n"
    "User-Agent: SIPp register benchmark\r\n"
    "Content-Length: 0\r\n"
    "\r\n"
)
_OPTIONS = (
    "OPTIONS sip:example.test SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-{n}-1;rport\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:probe@example.test>;tag={n}\r\n"
    "To: <sip:example.test>\r\n"
    "Call-ID: {n}-opt@127.0.0.1\r\n"
    "CSeq: 1 OPTIONS\r\n"
    "Content-Length: 0\r\n"
    "\r\n"
)


_INVITE = (
    "INVITE sip:bob@example.test SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-{n}-inv;rport\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:alice@example.test>;tag=a{n}\r\n"
    "To: <sip:bob@example.test>\r\n"
    "Call-ID: {n}-call@127.0.0.1\r\n"
    "CSeq: 1 INVITE\r\n"
    "Contact: <sip:alice@127.0.0.1:5061>\r\n"
    "Content-Type: application/sdp\r\n"
    "Content-Length: {length}\r\n"
    "\r\n"
    "{sdp}"
)
_SDP = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
    "t=0 0\r\nm=audio 6000 RTP/AVP 0\r\n"
)
_IN_DIALOG = (
    "{method} sip:alice@127.0.0.1:5061 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-{n}-{method};rport\r\n"
    "Max-Forwards: 70\r\n"
    "{routes}"
    "From: <sip:alice@example.test>;tag=a{n}\r\n"
    "To: <sip:bob@example.test>;tag=b{n}\r\n"
    "Call-ID: {n}-call@127.0.0.1\r\n"
    "CSeq: {cseq} {method}\r\n"
    "Content-Length: 0\r\n"
    "\r\n"
)
_DIGEST_REGISTER = (
    "REGISTER sip:example.test SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-{n}-{cseq};rport\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:{user}@example.test>;tag=1234SIPpTag00{n}\r\n"
    "To: <sip:{user}@example.test>\r\n"
    "Call-ID: {n}-1234@127.0.0.1\r\n"
    "CSeq: {cseq} REGISTER\r\n"
    "Contact: <sip:{user}@127.0.0.1:5061;transport=udp>\r\n"
    "{authorization}"
    "Expires: 3600\r\n"
    "User-Agent: SIPp register benchmark\r\n"
    "Content-Length: 0\r\n"
    "\r\n"
)
_AUTHORIZATION = (
    'Authorization: Digest username="{user}",realm="example.test",'
    'nonce="{nonce}",uri="sip:example.test",response="{response}",'
    'algorithm=MD5,cnonce="{cnonce}",qop=auth,nc=00000001{opaque}\r\n'
)
#: How many users the digest bench's users file holds (see the module docstring).
_DIGEST_USERS = 2500
_REALM = "example.test"
_CHALLENGE_PARAM = re.compile(rb'(nonce|opaque)="([^"]*)"')
_CALLER = ("127.0.0.1", 5061)
_CALLEE = ("127.0.0.1", 5070)


def call(
    protocol: SIPDatagramProtocol, transport: FakeDatagramTransport, n: int
) -> bool:
    """One whole call through the proxy: INVITE, 180, 200, ACK, BYE, 200.

    The callee's side is played from what the proxy sends it. True if the
    caller got its 200 for the BYE.
    """
    sdp = _SDP
    invite = _INVITE.format(n=n, length=len(sdp), sdp=sdp).encode()
    transport.written.clear()
    protocol.datagramReceived(invite, _CALLER)
    forwarded = [d for d, to in transport.written if to == _CALLEE]
    if not forwarded:
        return False
    request = parse_message(forwarded[0])
    assert isinstance(request, Request)
    rr = request.headers.get_all("record-route")
    for status in (180, 200):
        response = request.response(
            status,
            to_tag=f"b{n}",
            headers=[("Record-Route", v) for v in rr]
            + [("Contact", "<sip:bob@127.0.0.1:5070>")],
        )
        protocol.datagramReceived(response.to_bytes(), _CALLEE)
    # The caller's route set is the Record-Route of the 200, reversed (§12.1.2).
    routes = "".join(f"Route: {v}\r\n" for v in reversed(rr))
    for method, cseq in (("ACK", 1), ("BYE", 2)):
        text = _IN_DIALOG.format(method=method, n=n, routes=routes, cseq=cseq)
        text = text.replace(
            "sip:alice@127.0.0.1:5061 SIP", "sip:bob@127.0.0.1:5070 SIP"
        )
        transport.written.clear()
        protocol.datagramReceived(text.encode(), _CALLER)
    forwarded = [d for d, to in transport.written if to == _CALLEE]
    if not forwarded:
        return False
    bye = parse_message(forwarded[0])
    assert isinstance(bye, Request)
    protocol.datagramReceived(bye.response(200).to_bytes(), _CALLEE)
    return any(b" 200 " in d[:16] for d, to in transport.written if to == _CALLER)


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def digest_users() -> tuple[str, list[str]]:
    """A users file of ``_DIGEST_USERS`` users (password: the user name).

    :returns: its path (the caller removes it) and each user's HA1, by index.
    """
    ha1s = [_md5(f"u{i}:{_REALM}:u{i}") for i in range(_DIGEST_USERS)]
    fd, path = tempfile.mkstemp(prefix="sipproxy-bench-users-")
    with os.fdopen(fd, "w") as f:
        f.writelines(f"u{i}:{_REALM}:{ha1}\n" for i, ha1 in enumerate(ha1s))
    return path, ha1s


def digest_register(
    protocol: SIPDatagramProtocol,
    transport: FakeDatagramTransport,
    n: int,
    ha1s: list[str],
    ha2: str,
) -> bool:
    """One authenticated registration: REGISTER, 401, REGISTER with credentials, 200.

    The credentials are computed here from the 401, as a UA does. True if the
    second REGISTER was answered 200.
    """
    index = n % len(ha1s)
    user = f"u{index}"
    transport.written.clear()
    first = _DIGEST_REGISTER.format(n=n, cseq=1, user=user, authorization="")
    protocol.datagramReceived(first.encode(), _CALLER)
    if not transport.written or b" 401 " not in transport.written[0][0][:16]:
        return False
    found = dict(_CHALLENGE_PARAM.findall(transport.written[0][0]))
    nonce = found[b"nonce"].decode()
    cnonce = f"{n:08x}"
    response = _md5(f"{ha1s[index]}:{nonce}:00000001:{cnonce}:auth:{ha2}")
    opaque = found.get(b"opaque")
    authorization = _AUTHORIZATION.format(
        user=user,
        nonce=nonce,
        response=response,
        cnonce=cnonce,
        opaque=f',opaque="{opaque.decode()}"' if opaque is not None else "",
    )
    transport.written.clear()
    second = _DIGEST_REGISTER.format(
        n=n, cseq=2, user=user, authorization=authorization
    )
    protocol.datagramReceived(second.encode(), _CALLER)
    return bool(transport.written) and b" 200 " in transport.written[0][0][:16]


@dataclass(frozen=True, slots=True)
class Bench:
    """A wired server, the UDP protocol fed datagrams and its fake socket."""

    service: SIPServerService
    protocol: SIPDatagramProtocol
    transport: FakeDatagramTransport
    #: --kind digest-register: each user's HA1, by number
    ha1s: list[str] = field(default_factory=list)


def build(cdr: str | None = None, users: str | None = None) -> Bench:
    """A server wired as twistd wires it, with a fake socket."""
    options = {"domain": ["example.test"], "listen": ["udp:5060"], "rate-limit": "0"}
    if cdr is not None:
        options["cdr"] = cdr
    if users is not None:
        options["users"] = users
    config = build_config({}, options)
    service = build_server(config, reactor)
    protocol = SIPDatagramProtocol(
        service.proxy.layer, config.max_message_size, admit=service.admission.admit
    )
    transport = FakeDatagramTransport()
    protocol.makeConnection(transport)
    service.transports.add_udp(protocol)
    Deferred.fromCoroutine(service.location.open())  # memory: at once
    return Bench(service, protocol, transport)


def run(kind: str, count: int, profile: bool, cdr: str | None = None) -> None:
    if kind == "digest-register":
        users, ha1s = digest_users()
        try:
            bench = dataclasses.replace(build(cdr, users), ha1s=ha1s)
        finally:
            os.unlink(users)
    else:
        bench = build(cdr)
    service = bench.service
    if cdr is None:
        # Nothing waits: the coroutine runs to its end right here.
        Deferred.fromCoroutine(measure(bench, kind, count, profile))
        return

    async def recorded() -> None:
        # As startService does once the store is open; the store's worker
        # thread answers through the reactor, so this one runs.
        await service.cdr.open()
        service._recording(None)
        await measure(bench, kind, count, profile, service.cdr)

    def stop(result: object) -> object:
        reactor.stop()
        return result

    reactor.callWhenRunning(
        lambda: Deferred.fromCoroutine(recorded()).addErrback(print).addBoth(stop)
    )
    reactor.run()


#: With a store, calls played before waiting for their records to be written,
#: as a running server's store keeps up between packets (or its queue grows).
_IN_FLIGHT = 10


async def measure(
    bench: Bench,
    kind: str,
    count: int,
    profile: bool,
    store: CallRecordStore | None = None,
) -> None:
    """Play ``count`` messages or calls and print the CPU spent on each.

    With ``store``, the figure includes writing every record and closing the
    store: ``time.process_time`` counts every thread, the store's worker too.
    """
    service, protocol, transport = bench.service, bench.protocol, bench.transport
    template = _REGISTER if kind == "register" else _OPTIONS
    datagrams = (
        [template.format(n=n).encode() for n in range(count)]
        if kind != "digest-register"
        else []
    )
    source = ("127.0.0.1", 5061)
    if kind == "call":
        bob = _REGISTER.format(n=0).replace("u0@", "bob@").replace("5061", "5070")
        protocol.datagramReceived(bob.encode(), _CALLEE)
    # The running server's collection policy (sipproxy.collector).
    collector = Collector(reactor)
    collector.start()
    profiler = cProfile.Profile() if profile else None
    if profiler:
        profiler.enable()
    start = time.process_time()
    answered = 0
    if kind == "call":
        for n in range(count):
            answered += call(protocol, transport, n)
            if store is not None and n % _IN_FLIGHT == _IN_FLIGHT - 1:
                await service.calls.written()
    elif kind == "digest-register":
        ha1s = bench.ha1s
        ha2 = _md5("REGISTER:sip:example.test")
        for n in range(count):
            answered += digest_register(protocol, transport, n, ha1s, ha2)
    else:
        for datagram in datagrams:
            protocol.datagramReceived(datagram, source)
    if store is not None:
        await service.calls.stop()
        await store.close()
    spent = time.process_time() - start
    collector.stop()
    if profiler:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
    if kind not in ("call", "digest-register"):
        answered = sum(1 for data, _ in transport.written if b" 200 " in data[:16])
    print(
        f"{kind}: {count} messages, {answered} answered 200, "
        f"{spent / count * 1e6:.1f} us CPU each, {count / spent:.0f}/s on one core"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--kind",
        choices=("register", "options", "call", "digest-register"),
        default="register",
    )
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--cdr", help="track calls and record them here (none, jsonl:PATH)"
    )
    args = parser.parse_args()
    run(args.kind, args.messages, args.profile, args.cdr)


if __name__ == "__main__":
    main()
