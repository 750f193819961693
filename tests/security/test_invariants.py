"""The trust boundary as invariants, under arbitrary traffic (issue 13).

A state machine drives the whole core (registrar and digest on, tests/proxy's
harness: fake UDP socket, memory store, test clock) with any interleaving of
legitimate flows (phones registering after a 401 they really got, calls set up,
answered and hung up along their route set) and attacks (forged Routes, To tags,
tokens of other dialogs, Vias, out-of-dialog ACKs, stray responses on real and
forged branches, garbage, forged and replayed credentials, Contact ``*``, Path)
sent from attackers' addresses or spoofed from the phones'. After every datagram
and every clock advance it checks:

1. **Bindings.** The bindings of an address-of-record change only while the
   proxy handles a REGISTER that carries fresh, correct credentials of that very
   user (computed by the model from the user's password and a nonce the proxy
   issued; a replay of them does not count).
2. **Destinations** (docs "The trust boundary"). Nothing goes to a sink: an
   address that only attacker-controlled fields name (Request-URIs, Routes,
   Vias, Path, Contact, Record-Route), the proxy's own host included. A response
   goes to the host of someone who sent us a request (the port may be its Via's,
   §18.2.2). A request goes to the host of a binding's flow or of the peer of a
   dialog through one of our users (a sender whose request reached a binding).
   No TCP/TLS connection is opened to anything else.
3. **No internal error**: nothing the machine sends makes the core log a
   traceback.

The model is deliberately coarse (hosts, not transactions): sound, and enough
for "this packet had no reason to be sent". Run with
``--hypothesis-show-statistics`` to see which paths the runs covered.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, currently_in_test_context, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from zope.interface import implementer

from sipproxy.auth.digest import Authenticator
from sipproxy.location import Binding
from sipproxy.registrar import RegistrarSettings
from sipproxy.sip.errors import ParseError
from sipproxy.sip.message import Request, Response
from sipproxy.sip.parser import parse_message
from sipproxy.sip.uri import SipURI
from tests.auth.test_digest import answer as digest_answer
from tests.proxy.harness import Harness, run
from tests.proxy.harness import answer as respond
from tests.support import user_db

Address = tuple[str, int]

REALM = "example.test"
PASSWORDS = {"alice": "wonderland", "bob": "builder"}
PROXY = "127.0.0.1:5060"
#: Our users' phones: their source address and the Contact they register (alice
#: behind NAT, bob on a public address, so both ways of reaching a binding run).
PHONES: dict[str, Address] = {
    "alice": ("192.0.2.10", 5070),
    "bob": ("192.0.2.20", 5062),
}
CONTACTS = {"alice": "sip:alice@172.16.0.10:5060", "bob": "sip:bob@192.0.2.20:5062"}
#: A caller from another domain: needs no credentials to call our users.
CAROL: Address = ("192.0.2.30", 5080)
ACTORS: dict[str, Address] = {**PHONES, "carol": CAROL}
ATTACKERS: tuple[Address, ...] = (("203.0.113.5", 5060), ("203.0.113.6", 40000))
#: Where an attacker's datagram may claim to come from (UDP is spoofable).
SOURCES = (*ATTACKERS, *ACTORS.values())
#: Addresses no legitimate actor ever uses: only attacker-written fields name them.
SINKS: tuple[Address, ...] = (
    ("127.0.0.1", 6379),
    ("10.0.0.1", 5060),
    ("198.51.100.66", 5060),
    ("93.184.216.34", 5060),
)
#: The proxy (127.0.0.1:5060) sending to its own host is a loop, never a reason.
SINK_HOSTS = frozenset(host for host, _ in SINKS)
SINK_URIS = (
    "sip:x@127.0.0.1:6379;transport=tcp",
    "sip:x@127.0.0.1:6379",
    "sip:x@10.0.0.1:5060",
    "sip:x@198.51.100.66:5060",
    "sip:x@93.184.216.34",
    "sip:x@127.0.0.1:5060",
)
SINK_VIAS = (
    "SIP/2.0/UDP 127.0.0.1:6379;branch=z9hG4bKsink1",
    "SIP/2.0/TCP 10.0.0.1:5060;branch=z9hG4bKsink2",
    "SIP/2.0/UDP 198.51.100.66:5060;branch=z9hG4bKsink3;rport=5060",
    "SIP/2.0/UDP 93.184.216.34;branch=z9hG4bKsink4;received=127.0.0.1",
)
FORGED_NONCE = "A" * 43
SDP = b"v=0\r\n"


def make_authenticator() -> Authenticator:
    """Digest for alice and bob in example.test: the one place it is built.

    Nothing else here calls the Authenticator: every credential travels in a
    datagram through ``Harness.receive``, as a phone's would.
    """
    return Authenticator(REALM, user_db(REALM, **PASSWORDS), b"n" * 32)


def make_harness() -> Harness:
    return Harness(
        registrar=RegistrarSettings(domains=frozenset({REALM})),
        auth=make_authenticator(),
        known_users=frozenset(f"sip:{user}@{REALM}" for user in PASSWORDS),
    )


def wire(start: str, fields: Sequence[tuple[str, str]], body: bytes = b"") -> bytes:
    """A message as a UA writes it; Content-Length is always right."""
    head = "".join(f"{name}: {value}\r\n" for name, value in fields)
    return f"{start}\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


def note(what: str) -> None:
    """A statistics event (``--hypothesis-show-statistics``): what runs covered."""
    if currently_in_test_context():
        event(what)


def user_of(aor: str) -> str | None:
    try:
        uri = SipURI.parse(aor)
    except ParseError:
        return None
    return uri.unescaped_user


@implementer(ILogObserver)
class FailureLog(list[str]):
    """The tracebacks logged while the machine runs."""

    def __call__(self, event: LogEvent) -> None:
        if "log_failure" in event:
            self.append(f"{formatEvent(event)}\n{event['log_failure']}")


@dataclass
class Call:
    """A call the model set up between two legitimate actors."""

    call_id: str
    caller: str
    callee: str
    from_tag: str
    #: the INVITE as the callee's phone got it (its Vias and Record-Route)
    invite: Request
    to_tag: str = ""
    #: the Record-Route of the 2xx as the caller got it (RFC 3261 §12.1.2)
    route_set: list[str] = field(default_factory=list)
    cseq: int = 10


class TrustBoundary(RuleBasedStateMachine):
    """Legitimate and hostile traffic, any mix; invariants after every datagram."""

    def __init__(self) -> None:
        super().__init__()
        self.h = make_harness()
        self.ids = itertools.count(1)
        #: latest challenge seen at an address, by header name
        self.challenges: dict[tuple[Address, str], str] = {}
        #: nonce -> last nonce count a legitimate UA used with it
        self.nc: dict[str, int] = {}
        self.reg_cseq = dict.fromkeys(PASSWORDS, 0)
        # What an eavesdropper has seen, for replays and forged dialogs.
        self.seen_credentials: list[tuple[str, str]] = []
        self.record_routes: list[str] = []
        self.forwarded: list[Request] = []
        self.call_ids: list[str] = []
        self.tags: list[str] = []
        # The model of allowed destinations.
        self.request_hosts: set[str] = set()
        self.peer_hosts: set[str] = set()
        self.ringing: list[Call] = []
        self.dialogs: list[Call] = []
        #: what the proxy sent in the last step, by destination
        self.out: list[tuple[Request | Response, Address]] = []
        #: INVITEs phones got and have not answered (any caller's, attackers' too)
        self.incoming: list[tuple[Address, Request]] = []
        #: tracebacks logged by the core (an internal error is a 500 to someone)
        self.failures = FailureLog()
        globalLogPublisher.addObserver(self.failures)

    def teardown(self) -> None:
        globalLogPublisher.removeObserver(self.failures)

    # -- the model's edge: one datagram in, every datagram out checked ---------------

    def bindings(self) -> dict[str, frozenset[Binding]]:
        """Every stored binding, expired ones too (time alone changes nothing)."""
        store = self.h.location
        past = float("-inf")
        return {
            aor: frozenset(run(store.bindings(aor, now=past)))
            for aor in run(store.aors(now=past))
        }

    def send(
        self, data: bytes, source: Address, *, credentials_of: str | None = None
    ) -> list[tuple[Request | Response, Address]]:
        """Deliver one datagram; check both invariants; return what went out.

        :param credentials_of: the user whose fresh, correct credentials the
            datagram carries in a REGISTER (the only one whose bindings may change).
        """
        if not data.startswith(b"SIP/2.0 "):
            self.request_hosts.add(source[0])
        before = self.bindings()
        self.h.receive(data, source)
        self.check_bindings(before, credentials_of, data)
        return self.drain(source)

    def check_bindings(
        self,
        before: dict[str, frozenset[Binding]],
        credentials_of: str | None,
        cause: bytes,
    ) -> None:
        """Invariant 1: no binding changes without that user's credentials."""
        after = self.bindings()
        for aor in before.keys() | after.keys():
            if before.get(aor, frozenset()) != after.get(aor, frozenset()):
                note("bindings changed")
                assert user_of(aor) == credentials_of, (
                    f"bindings of {aor} changed without its credentials:\n"
                    f"{sorted(b.contact for b in before.get(aor, ()))} -> "
                    f"{sorted(b.contact for b in after.get(aor, ()))}\n"
                    f"after {cause.decode(errors='replace')}"
                )
        for bindings in after.values():
            self.peer_hosts.update(b.flow.remote_host for b in bindings)

    def drain(self, source: Address | None) -> list[tuple[Request | Response, Address]]:
        """Invariant 2 on everything the proxy wrote; remember what it showed."""
        written = list(self.h.socket.written)
        self.h.socket.written.clear()
        out: list[tuple[Request | Response, Address]] = []
        for data, (host, port) in written:
            assert host not in SINK_HOSTS, f"sent to sink {host}:{port}:\n{data!r}"
            try:
                message = parse_message(data)
            except ParseError as error:
                raise AssertionError(f"wrote unparseable {data!r}: {error}") from None
            out.append((message, (host, port)))
        # A request of the sender's forwarded to one of our users makes the sender
        # a peer of that dialog: later requests inside it may go back there.
        if source is not None and any(
            isinstance(m, Request) and addr[0] in self.peer_hosts and m.method != "ACK"
            for m, addr in out
        ):
            self.peer_hosts.add(source[0])
        for message, (host, port) in out:
            if isinstance(message, Response):
                assert host in self.request_hosts, (
                    f"response to {host}:{port}, which sent us no request:\n"
                    f"{message.to_bytes()!r}"
                )
            else:
                assert host in self.peer_hosts, (
                    f"request to {host}:{port}, neither a binding nor a dialog "
                    f"peer:\n{message.to_bytes()!r}"
                )
            self.remember(message, (host, port))
        for connection in (*self.h.clock.tcpClients, *self.h.clock.sslClients):
            host = connection[0]
            assert host not in SINK_HOSTS, f"connection to sink {connection[:2]}"
            assert host in self.peer_hosts, f"connection to {connection[:2]}"
        for message, (host, _) in out:
            kind = (
                f"{message.status}" if isinstance(message, Response) else message.method
            )
            who = "phone" if host in {h for h, _ in ACTORS.values()} else "other"
            note(f"sent {kind} to {who}")
        self.out = out
        return out

    def remember(self, message: Request | Response, where: Address) -> None:
        """What an eavesdropper on the wire learns from one datagram."""
        headers = message.headers
        self.record_routes.extend(headers.get_all("record-route"))
        call_id = headers.get("call-id")
        if call_id:
            self.call_ids.append(call_id)
        for name in ("www-authenticate", "proxy-authenticate"):
            challenge = headers.get(name)
            if challenge is not None:
                self.challenges[(where, name)] = challenge
        try:
            tags = [message.from_addr.tag, message.to_addr.tag]
        except ParseError:
            tags = []
        self.tags.extend(t for t in tags if t)
        if isinstance(message, Request):
            self.forwarded.append(message)
            if message.method == "INVITE" and where in PHONES.values():
                self.incoming.append((where, message))

    def received(
        self, where: Address, call_id: str, kind: type[Request] | type[Response]
    ) -> list[Request | Response]:
        return [
            m
            for m, addr in self.out
            if addr == where and isinstance(m, kind) and m.call_id == call_id
        ]

    def credentials(
        self, user: str, where: Address, header: str, method: str, uri: str
    ) -> str:
        """Fresh credentials of ``user`` for the challenge ``where`` last got."""
        challenge = self.challenges[(where, header)]
        nonce = challenge.split('nonce="', 1)[1].split('"', 1)[0]
        self.nc[nonce] = self.nc.get(nonce, 0) + 1
        return digest_answer(
            challenge,
            user,
            PASSWORDS[user],
            method=method,
            uri=uri,
            nc=f"{self.nc[nonce]:08x}",
            cnonce=f"c{next(self.ids)}",
        )

    # -- legitimate flows ----------------------------------------------------------

    def register_fields(
        self, user: str, contact: str, expires: int, aor_user: str | None = None
    ) -> list[tuple[str, str]]:
        host, port = PHONES[user]
        aor = f"sip:{aor_user or user}@{REALM}"
        self.reg_cseq[user] += 1
        return [
            ("Via", f"SIP/2.0/UDP {host}:{port};branch=z9hG4bKr{next(self.ids)};rport"),
            ("Max-Forwards", "70"),
            ("From", f"<{aor}>;tag=r{user}"),
            ("To", f"<{aor}>"),
            ("Call-ID", f"reg-{user}@{host}"),
            ("CSeq", f"{self.reg_cseq[user]} REGISTER"),
            ("Contact", contact),
            ("Expires", str(expires)),
        ]

    def authorized_register(
        self,
        user: str,
        *,
        contact: str,
        expires: int,
        reuse: bool,
        aor_user: str | None = None,
        extra: Sequence[tuple[str, str]] = (),
    ) -> list[tuple[Request | Response, Address]]:
        """REGISTER as a phone does: credentials for the 401 it got (or reused)."""
        phone = PHONES[user]
        if not reuse or (phone, "www-authenticate") not in self.challenges:
            self.send(
                wire(
                    f"REGISTER sip:{REALM} SIP/2.0",
                    [*self.register_fields(user, contact, expires, aor_user), *extra],
                ),
                phone,
            )
        if (phone, "www-authenticate") not in self.challenges:
            return []
        value = self.credentials(
            user, phone, "www-authenticate", "REGISTER", f"sip:{REALM}"
        )
        self.seen_credentials.append(("Authorization", value))
        fields = self.register_fields(user, contact, expires, aor_user)
        return self.send(
            wire(
                f"REGISTER sip:{REALM} SIP/2.0",
                [*fields, *extra, ("Authorization", value)],
            ),
            phone,
            credentials_of=user if aor_user in (None, user) else None,
        )

    @initialize()
    def phones_register(self) -> None:
        """Both phones start registered, so that calls reach them."""
        for user in sorted(PASSWORDS):
            self.authorized_register(
                user, contact=f"<{CONTACTS[user]}>", expires=3600, reuse=False
            )

    @rule(
        user=st.sampled_from(sorted(PASSWORDS)),
        expires=st.sampled_from([3600, 3600, 3600, 60, 0]),
        star=st.booleans(),
        reuse=st.booleans(),
        path=st.sampled_from([None, None, *SINK_URIS]),
    )
    def phone_registers(
        self, user: str, expires: int, star: bool, reuse: bool, path: str | None
    ) -> None:
        """A phone (un)registers with its own password.

        It may write a Path of its own: only a trusted edge proxy's Path is ever
        followed (RFC 3327 §5.2), so calls still go to the phone's flow.
        """
        contact = "*" if star and expires == 0 else f"<{CONTACTS[user]}>"
        extra = [("Supported", "path"), ("Path", f"<{path};lr>")] if path else []
        self.authorized_register(
            user, contact=contact, expires=expires, reuse=reuse, extra=extra
        )

    @rule(
        user=st.sampled_from(sorted(PASSWORDS)),
        contact=st.sampled_from([*(f"<{u}>" for u in SINK_URIS), "*"]),
    )
    def user_registers_for_another(self, user: str, contact: str) -> None:
        """An authenticated user binds a Contact to someone else's AOR: 403."""
        victim = next(u for u in PASSWORDS if u != user)
        expires = 0 if contact == "*" else 3600
        self.authorized_register(
            user, contact=contact, expires=expires, reuse=False, aor_user=victim
        )

    @rule(
        caller=st.sampled_from(sorted(ACTORS)),
        callee=st.sampled_from(sorted(PASSWORDS)),
        method=st.sampled_from(["INVITE", "INVITE", "MESSAGE"]),
    )
    def call(self, caller: str, callee: str, method: str) -> None:
        """A caller sends INVITE or MESSAGE to one of our users (with credentials)."""
        if caller == callee:
            return
        where = ACTORS[caller]
        n = next(self.ids)
        call_id, from_tag = f"call-{n}@{where[0]}", f"f{n}"
        uri = f"sip:{callee}@{REALM}"
        domain = REALM if caller in PASSWORDS else "elsewhere.test"

        def request(cseq: int, extra: Sequence[tuple[str, str]] = ()) -> bytes:
            return wire(
                f"{method} {uri} SIP/2.0",
                [
                    ("Via", f"SIP/2.0/UDP {where[0]}:{where[1]};branch=z9hG4bKc{n}x"
                     f"{cseq};rport"),
                    ("Max-Forwards", "70"),
                    ("From", f"<sip:{caller}@{domain}>;tag={from_tag}"),
                    ("To", f"<{uri}>"),
                    ("Call-ID", call_id),
                    ("CSeq", f"{cseq} {method}"),
                    ("Contact", f"<sip:{caller}@{where[0]}:{where[1]}>"),
                    ("Content-Type", "application/sdp"),
                    *extra,
                ],
                SDP,
            )  # fmt: skip

        self.send(request(1), where)
        if caller in PASSWORDS:
            challenged = [
                m
                for m in self.received(where, call_id, Response)
                if isinstance(m, Response) and m.status == 407
            ]
            if not challenged:
                return
            if method == "INVITE":
                # The ACK for the 407 (RFC 3261 §17.1.1.3): same branch, its To tag.
                self.send(ack_for(challenged[0], uri), where)
            value = self.credentials(caller, where, "proxy-authenticate", method, uri)
            self.seen_credentials.append(("Proxy-Authorization", value))
            self.send(request(2, [("Proxy-Authorization", value)]), where)
        for message in self.received(PHONES[callee], call_id, Request):
            if isinstance(message, Request) and message.method == "INVITE":
                self.ringing.append(Call(call_id, caller, callee, from_tag, message))
            elif isinstance(message, Request):
                self.send(
                    respond(message, 200, to_tag=f"t{n}").to_bytes(), PHONES[callee]
                )

    @precondition(lambda self: bool(self.ringing))
    @rule(pick=st.integers(min_value=0), status=st.sampled_from([180, 200, 200, 486]))
    def callee_answers(self, pick: int, status: int) -> None:
        """The callee rings, accepts (caller ACKs along the route set) or declines."""
        call = self.ringing[pick % len(self.ringing)]
        callee = PHONES[call.callee]
        call.to_tag = f"t{call.call_id.split('@')[0]}"
        contact = f"<{CONTACTS[call.callee]}>" if status < 300 else ""
        self.send(
            respond(
                call.invite, status, to_tag=call.to_tag, contact=contact
            ).to_bytes(),
            callee,
        )
        if status < 200:
            return
        self.ringing.remove(call)
        note(f"callee answered {status}")
        where = ACTORS[call.caller]
        got = [
            m
            for m in self.received(where, call.call_id, Response)
            if isinstance(m, Response) and m.status == status
        ]
        if not got:
            return
        response = got[0]
        uri = f"sip:{call.callee}@{REALM}"
        if status >= 300:
            self.send(ack_for(response, uri), where)
            return
        call.route_set = response.headers.get_all("record-route")
        call.cseq = response.cseq.number
        ack = in_dialog(
            "ACK", call, from_caller=True, cseq=call.cseq, branch=f"a{next(self.ids)}"
        )
        self.send(ack, where)
        self.dialogs.append(call)

    @precondition(lambda self: bool(self.dialogs))
    @rule(pick=st.integers(min_value=0), from_caller=st.booleans())
    def hang_up(self, pick: int, from_caller: bool) -> None:
        """Either side sends BYE along its route set; the other answers 200."""
        call = self.dialogs.pop(pick % len(self.dialogs))
        call.cseq += 1
        side = ACTORS[call.caller] if from_caller else PHONES[call.callee]
        other = PHONES[call.callee] if from_caller else ACTORS[call.caller]
        bye = in_dialog(
            "BYE", call, from_caller=from_caller, cseq=call.cseq, branch=f"b{call.cseq}"
        )
        self.send(bye, side)
        for message in self.received(other, call.call_id, Request):
            assert isinstance(message, Request)
            if message.method == "BYE":
                note("BYE reached the other side")
                tag = call.from_tag if from_caller else call.to_tag
                self.send(respond(message, 200, to_tag=tag).to_bytes(), other)

    @precondition(lambda self: bool(self.incoming))
    @rule(pick=st.integers(min_value=0), hang_up=st.booleans())
    def phone_answers_anything(self, pick: int, hang_up: bool) -> None:
        """A phone accepts any INVITE it got, then hangs up along its Record-Route.

        The caller may be an attacker whose Contact names a sink: the BYE must
        still go only where the dialog's token says.
        """
        where, invite = self.incoming.pop(pick % len(self.incoming))
        note("a phone answered an INVITE")
        user = next(u for u, phone in PHONES.items() if phone == where)
        tag = f"p{next(self.ids)}"
        contact = f"<{CONTACTS[user]}>"
        self.send(respond(invite, 200, to_tag=tag, contact=contact).to_bytes(), where)
        if not hang_up:
            return
        try:
            remote = str(invite.contacts[0].uri)
            fields = [
                ("Via", f"SIP/2.0/UDP {where[0]}:{where[1]};branch=z9hG4bK{tag};rport"),
                ("Max-Forwards", "70"),
                *(("Route", r) for r in invite.headers.get_all("record-route")),
                ("From", f"{invite.headers.get('to')};tag={tag}"),
                ("To", invite.headers.get("from") or ""),
                ("Call-ID", invite.call_id),
                ("CSeq", "1 BYE"),
            ]
        except (ParseError, IndexError):
            return
        self.send(wire(f"BYE {remote} SIP/2.0", fields), where)

    # -- attacks ---------------------------------------------------------------------

    def forged_routes(self, kind: str, pick: int) -> list[tuple[str, str]]:
        """Route values an attacker writes: ours, with no, bad or stolen tokens."""
        stolen = (
            self.record_routes[pick % len(self.record_routes)]
            if self.record_routes
            else f"<sip:{PROXY};lr>"
        )
        sink = SINK_URIS[pick % len(SINK_URIS)].replace("sip:x@", "sip:")
        values = {
            "none": [],
            "domain": [f"<sip:{REALM};lr>"],
            "proxy": [f"<sip:{PROXY};lr>"],
            "garbage token": [f"<sip:Zm9vYmFyYmF6cXV4@{PROXY};lr>"],
            "stolen": [stolen],
            "stolen pair": self.record_routes[-2:] if self.record_routes else [stolen],
            "stolen then sink": [stolen, f"<{sink};lr>"],
            "proxy then sink": [f"<sip:{PROXY};lr>", f"<{sink};lr>"],
            "sink": [f"<{sink};lr>"],
        }[kind]
        return [("Route", value) for value in values]

    def forged_credentials(
        self, kind: str, pick: int, header: str, user: str, method: str, uri: str
    ) -> list[tuple[str, str]]:
        """Credentials an attacker can write: none, garbage, guessed, replayed."""
        if kind == "none":
            return []
        if kind == "garbage":
            return [(header, "Digest garbage")]
        if kind == "replayed" and self.seen_credentials:
            # Under the header this request needs, whichever it was captured in.
            return [
                (header, self.seen_credentials[pick % len(self.seen_credentials)][1])
            ]
        seen = sorted(set(self.challenges.values()))
        if kind == "guessed" and seen:
            challenge = seen[pick % len(seen)]
        else:
            challenge = (
                f'Digest realm="{REALM}", nonce="{FORGED_NONCE}", opaque="x", '
                'algorithm=MD5, qop="auth"'
            )
        value = digest_answer(challenge, user, "guess", method=method, uri=uri)
        return [(header, value.replace(', opaque="x"', ""))]

    @rule(
        source=st.sampled_from(SOURCES),
        user=st.sampled_from(["alice", "bob", "mallory"]),
        credentials=st.sampled_from(
            ["none", "garbage", "forged", "guessed", "replayed"]
        ),
        route=st.sampled_from(["none", "domain", "proxy", "stolen", "proxy then sink"]),
        to_tag=st.sampled_from([None, "forged", "stolen"]),
        contact=st.sampled_from([*(f"<{u}>" for u in SINK_URIS), "*"]),
        path=st.sampled_from([None, *SINK_URIS]),
        call_id=st.sampled_from(["fresh", "phone's", "stolen"]),
        pick=st.integers(min_value=0),
    )
    def attacker_registers(
        self,
        source: Address,
        user: str,
        credentials: str,
        route: str,
        to_tag: str | None,
        contact: str,
        path: str | None,
        call_id: str,
        pick: int,
    ) -> None:
        """REGISTER without valid credentials: forged dialog, Path, ``*``, replays."""
        aor = f"sip:{user}@{REALM}"
        n = next(self.ids)
        if to_tag == "stolen":
            to_tag = self.tags[pick % len(self.tags)] if self.tags else "t1"
        host = PHONES.get(user, source)[0]
        ids = {
            "fresh": f"evil-{n}",
            "phone's": f"reg-{user}@{host}",
            "stolen": self.call_ids[pick % len(self.call_ids)]
            if self.call_ids
            else "x",
        }
        fields = [
            ("Via", f"SIP/2.0/UDP {source[0]}:{source[1]};branch=z9hG4bKe{n}"),
            *self.forged_routes(route, pick),
            ("Max-Forwards", "70"),
            ("From", f"<{aor}>;tag=e{pick % 7}"),
            ("To", f"<{aor}>" + (f";tag={to_tag}" if to_tag else "")),
            ("Call-ID", ids[call_id]),
            ("CSeq", f"{pick % 2**31 + 1} REGISTER"),
            ("Contact", contact),
            ("Expires", "0" if contact == "*" else "3600"),
            *([("Path", f"<{path};lr>")] if path else []),
            ("Supported", "path"),
            *self.forged_credentials(
                credentials, pick, "Authorization", user, "REGISTER", f"sip:{REALM}"
            ),
        ]  # fmt: skip
        self.send(wire(f"REGISTER sip:{REALM} SIP/2.0", fields), source)

    @rule(
        source=st.sampled_from(SOURCES),
        method=st.sampled_from(
            ["INVITE", "MESSAGE", "BYE", "ACK", "ACK", "SUBSCRIBE", "OPTIONS", "INFO",
             "CANCEL"]
        ),
        request_uri=st.sampled_from(
            [*SINK_URIS, "sip:bob@example.test", "sip:alice@example.test",
             "sip:x@203.0.113.5:5060", "sip:example.test", "contact",
             "sip:bob@example.test;maddr=127.0.0.1", "sip:bob@127.0.0.1:5060",
             "sip:x@93.184.216.34;maddr=10.0.0.1", "sip:bob@example.test;transport=tcp",
             "sip:bob@[::ffff:127.0.0.1]:6379"]
        ),
        route=st.sampled_from(
            ["none", "domain", "proxy", "garbage token", "stolen", "stolen pair",
             "stolen then sink", "proxy then sink", "sink"]
        ),
        caller=st.sampled_from(
            ["sip:evil@evil.test", "sip:alice@example.test", "sip:carol@elsewhere.test"]
        ),
        credentials=st.sampled_from(["none", "garbage", "guessed", "replayed"]),
        to_tag=st.sampled_from([None, "forged", "stolen"]),
        from_tag=st.sampled_from(["e1", "stolen"]),
        call_id=st.sampled_from(["fresh", "stolen"]),
        record_route=st.booleans(),
        via=st.sampled_from(
            ["own", "own no rport", "sink", "own then sink", "rport=6379", "stolen",
             "received=127.0.0.1", "maddr=127.0.0.1"]
        ),
        pick=st.integers(min_value=0),
    )  # fmt: skip
    def attacker_requests(
        self,
        source: Address,
        method: str,
        request_uri: str,
        route: str,
        caller: str,
        credentials: str,
        to_tag: str | None,
        from_tag: str,
        call_id: str,
        record_route: bool,
        via: str,
        pick: int,
    ) -> None:
        """A request claiming a dialog, a relay, an internal request_uri, an ACK..."""
        if request_uri == "contact":
            request_uri = next(iter(CONTACTS.values())) if pick % 2 else CONTACTS["bob"]
        stolen_tag = self.tags[pick % len(self.tags)] if self.tags else "t1"
        if to_tag == "stolen":
            to_tag = stolen_tag
        if from_tag == "stolen":
            from_tag = self.tags[(pick // 3) % len(self.tags)] if self.tags else "f1"
        n = next(self.ids)
        own = f"SIP/2.0/UDP {source[0]}:{source[1]};branch=z9hG4bKq{n}"
        vias = {
            "own": [f"{own};rport"],
            "own no rport": [own],
            "sink": [SINK_VIAS[pick % len(SINK_VIAS)]],
            "own then sink": [f"{own};rport", SINK_VIAS[pick % len(SINK_VIAS)]],
            # RFC 3261 §18.2.2 names these; the source address wins (peer.py).
            "rport=6379": [f"{own};rport=6379"],
            "received=127.0.0.1": [f"{own};received=127.0.0.1;rport"],
            "maddr=127.0.0.1": [f"{own};maddr=127.0.0.1"],
            # A caller's Via as we forwarded it (a CANCEL then matches its INVITE).
            "stolen": self.forwarded[pick % len(self.forwarded)].headers.get_all("via")[
                1:2
            ]
            if self.forwarded
            else [own],
        }[via]
        vias = vias or [own]
        fields = [
            *(("Via", v) for v in vias),
            *self.forged_routes(route, pick),
            # A Record-Route of its own, below ours: the callee's route set
            # then names a sink after our entries.
            *([("Record-Route", f"<{SINK_URIS[(pick // 5) % len(SINK_URIS)]};lr>")]
              if record_route else []),
            ("Max-Forwards", str(70 if pick % 5 else 1)),
            ("From", f"<{caller}>;tag={from_tag}"),
            ("To", f"<{request_uri}>" + (f";tag={to_tag}" if to_tag else "")),
            ("Call-ID", self.call_ids[pick % len(self.call_ids)]
             if call_id == "stolen" and self.call_ids else f"evil-{n}"),
            ("CSeq", f"{pick % 1000 + 1} {method}"),
            ("Contact", f"<{SINK_URIS[pick % len(SINK_URIS)]}>"),
            ("Content-Type", "text/plain"),
            *self.forged_credentials(
                credentials, pick, "Proxy-Authorization",
                (user_of(caller) or "evil"), method, request_uri,
            ),
        ]  # fmt: skip
        self.send(
            wire(f"{method} {request_uri} SIP/2.0", fields, b"*1\r\n$4\r\nPING\r\n"),
            source,
        )

    @rule(
        source=st.sampled_from(SOURCES),
        status=st.sampled_from([100, 180, 200, 200, 486, 503]),
        top=st.sampled_from(["stolen", "stolen", "forged branch", "not ours"]),
        below=st.sampled_from(["as sent", "sink", "changed port", "changed received",
                               "none", "sink then as sent"]),
        pick=st.integers(min_value=0),
    )  # fmt: skip
    def attacker_responds(
        self, source: Address, status: int, top: str, below: str, pick: int
    ) -> None:
        """A response with our Via (real branch or not) on top of any Via below."""
        model = self.forwarded[pick % len(self.forwarded)] if self.forwarded else None
        vias = (
            model.headers.get_all("via")
            if model is not None
            else [f"SIP/2.0/UDP {PROXY};branch=z9hG4bKforged", SINK_VIAS[0]]
        )
        if top == "forged branch":
            vias = [f"SIP/2.0/UDP {PROXY};branch=z9hG4bKforged{pick % 9}", *vias[1:]]
        elif top == "not ours":
            vias = [SINK_VIAS[pick % len(SINK_VIAS)], *vias[1:]]
        sink_via = SINK_VIAS[pick % len(SINK_VIAS)]
        rest = vias[1:]
        if rest:
            if below == "sink":
                rest = [sink_via]
            elif below == "changed port":
                rest = [_with_host(rest[0], "127.0.0.1:6379")]
            elif below == "changed received":
                rest = [_set_received(rest[0], "10.0.0.1")]
            elif below == "none":
                rest = []
            elif below == "sink then as sent":
                rest = [sink_via, *rest]
        headers = [("Via", v) for v in [vias[0], *rest]]
        for name in ("From", "To", "Call-ID", "CSeq"):
            value = (model.headers.get(name) if model else None) or {
                "From": "<sip:alice@example.test>;tag=a",
                "To": "<sip:bob@example.test>",
                "CSeq": "1 INVITE",
            }.get(name, "forged")
            if name == "To" and ";tag=" not in value and status > 100:
                value += f";tag=s{pick % 5}"
            headers.append((name, value))
        headers.append(("Contact", f"<{SINK_URIS[pick % len(SINK_URIS)]}>"))
        response = wire(f"SIP/2.0 {status} Whatever", headers, b"*1\r\n$4\r\nPING\r\n")
        self.send(response, source)

    @rule(
        seconds=st.sampled_from([0.5, 4.0, 32.5, 64.0, 181.0, 301.0, 4000.0])
        | st.floats(min_value=0, max_value=8000)
    )
    def time_passes(self, seconds: float) -> None:
        """Timers fire (retransmissions, Timer C, expiry of nonces and bindings)."""
        before = self.bindings()
        self.h.clock.advance(seconds)
        self.check_bindings(before, None, f"{seconds} s passing".encode())
        self.drain(None)

    @invariant()
    def nothing_left_unchecked(self) -> None:
        """Every datagram the proxy wrote was checked by the step that caused it."""
        assert not self.h.socket.written

    @invariant()
    def no_internal_error(self) -> None:
        """No input makes the core fail (STYLE principle 6)."""
        assert not self.failures, self.failures[0]


def _with_host(via: str, host_port: str) -> str:
    """The same Via (branch and all) with another sent-by."""
    protocol, _, rest = via.partition(" ")
    _, semicolon, params = rest.partition(";")
    return f"{protocol} {host_port}{semicolon}{params}"


def _set_received(via: str, host: str) -> str:
    parts = [p for p in via.split(";") if not p.startswith("received=")]
    return ";".join([*parts, f"received={host}"])


def ack_for(response: Response, uri: str) -> bytes:
    """The ACK a UAC sends for a non-2xx final response (RFC 3261 §17.1.1.3)."""
    h = response.headers
    return wire(
        f"ACK {uri} SIP/2.0",
        [
            ("Via", h.get_all("via")[0]),
            ("Max-Forwards", "70"),
            ("From", h.get("from") or ""),
            ("To", h.get("to") or ""),
            ("Call-ID", response.call_id),
            ("CSeq", f"{response.cseq.number} ACK"),
        ],
    )


def in_dialog(
    method: str, call: Call, *, from_caller: bool, cseq: int, branch: str
) -> bytes:
    """ACK or BYE inside ``call``, along its route set (RFC 3261 §12.2.1.1)."""
    caller_where = ACTORS[call.caller]
    domain = REALM if call.caller in PASSWORDS else "elsewhere.test"
    caller = f"<sip:{call.caller}@{domain}>;tag={call.from_tag}"
    callee = f"<sip:{call.callee}@{REALM}>;tag={call.to_tag}"
    if from_caller:
        where, uri = caller_where, CONTACTS[call.callee]
        routes, ours, theirs = list(reversed(call.route_set)), caller, callee
    else:
        where = PHONES[call.callee]
        uri = f"sip:{call.caller}@{caller_where[0]}:{caller_where[1]}"
        routes, ours, theirs = list(call.route_set), callee, caller
    return wire(
        f"{method} {uri} SIP/2.0",
        [
            ("Via", f"SIP/2.0/UDP {where[0]}:{where[1]};branch=z9hG4bK{branch};rport"),
            ("Max-Forwards", "70"),
            *(("Route", r) for r in routes),
            ("From", ours),
            ("To", theirs),
            ("Call-ID", call.call_id),
            ("CSeq", f"{cseq} {method}"),
        ],
    )


TrustBoundary.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestTrustBoundary = TrustBoundary.TestCase


# -- the model's own paths: the machine cannot pass by exercising nothing --------------


def test_the_legitimate_paths_work() -> None:
    """Phones register after a real 401; a call is set up, answered and hung up."""
    machine = TrustBoundary()
    try:
        walk_the_legitimate_paths(machine)
    finally:
        machine.teardown()


def walk_the_legitimate_paths(machine: TrustBoundary) -> None:
    machine.phone_registers("alice", 3600, star=False, reuse=False, path=None)
    machine.phone_registers("bob", 3600, star=False, reuse=False, path=None)
    assert {b.contact for v in machine.bindings().values() for b in v} == {
        CONTACTS["alice"],
        CONTACTS["bob"],
    }
    machine.call("alice", "bob", "INVITE")
    assert len(machine.ringing) == 1
    machine.callee_answers(0, 200)
    assert len(machine.dialogs) == 1
    acks = [m for m, a in machine.out if a == PHONES["bob"] and isinstance(m, Request)]
    assert [m.method for m in acks] == ["ACK"]  # the ACK followed the route set
    machine.hang_up(0, from_caller=False)
    # Alice got the BYE and answered it: her 200 went back to Bob.
    ok = [m for m, a in machine.out if a == PHONES["bob"] and isinstance(m, Response)]
    assert [m.status for m in ok if isinstance(m, Response)] == [200]
    machine.call("carol", "alice", "INVITE")
    machine.callee_answers(0, 200)
    machine.hang_up(0, from_caller=True)
    ok = [m for m, a in machine.out if a == CAROL and isinstance(m, Response)]
    assert [m.status for m in ok if isinstance(m, Response)] == [200]
    machine.phone_registers("bob", 0, star=True, reuse=True, path=None)
    assert {b.contact for v in machine.bindings().values() for b in v} == {
        CONTACTS["alice"]
    }


# -- found while probing the machine's inputs ---------------------------------------


@pytest.mark.parametrize("rport", ["abc", "99999"])
def test_an_rport_that_is_no_port_is_refused(rport: str) -> None:
    """``rport=abc`` or ``rport=99999`` gets a 400 to the source, not a traceback."""
    h = make_harness()
    source = host, port = ATTACKERS[0]
    h.receive(
        wire(
            f"OPTIONS sip:{REALM} SIP/2.0",
            [
                ("Via", f"SIP/2.0/UDP {host}:{port};branch=z9hG4bKp;rport={rport}"),
                ("Max-Forwards", "70"),
                ("From", "<sip:evil@evil.test>;tag=1"),
                ("To", f"<sip:{REALM}>"),
                ("Call-ID", "rport"),
                ("CSeq", "1 OPTIONS"),
            ],
        ),
        source,
    )
    answered = [(m, addr) for m, addr in h.sent() if isinstance(m, Response)]
    assert [(m.status, addr) for m, addr in answered] == [(400, source)]
