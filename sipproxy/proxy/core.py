"""The server core: a stateful proxy and registrar on top of the transaction layer.

Theory of operation. The transaction layer hands every new request to
:meth:`Proxy.request_received` with its server transaction (retransmissions never
get here). The core validates it (RFC 3261 §16.3), preprocesses its Route set
(§16.4) and then either answers it itself — REGISTER for our domains goes to the
registrar, OPTIONS to the server itself gets 200, CANCEL is matched to its INVITE
(§16.10) — or determines targets (§16.5) and forwards (§16.6), one client
transaction per branch, collected in a :class:`ResponseContext`. Responses come
back through :meth:`Proxy.response_received` and are forwarded upstream or kept as
the best final answer (§16.7). ACKs to 2xx and responses that match no
transaction are forwarded statelessly (§16.11). A request that cannot be parsed
well enough for a transaction is answered statelessly by :meth:`message_invalid`.

Every refusal is a :class:`RejectedError` turned into a response in one place, and
every final decision is one log line.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import itertools
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from sipproxy.config import DialRule
from sipproxy.digest import Authenticator, Outcome
from sipproxy.guard import BanList, TrustedNetworks, ban_line
from sipproxy.location import Binding, Flow, LocationService
from sipproxy.office.headers import diversion_headers, history_info_headers
from sipproxy.office.model import Forwarding, Target
from sipproxy.office.plan import (
    AttemptOutcome,
    CallPlan,
    Forward,
    Refuse,
    Ring,
    Step,
    outcome_of,
)
from sipproxy.office.preferences import OfficePreferences
from sipproxy.proxy.auth import (
    NEVER_CHALLENGED,
    credentials_header,
    may_act,
    without_our_credentials,
)
from sipproxy.proxy.checks import (
    RejectedError,
    check_max_forwards,
    check_proxy_require,
    check_require,
    check_uri_scheme,
    is_local_uri,
)
from sipproxy.proxy.dialplan import loose_route, route_by_dialplan
from sipproxy.proxy.flows import Pinned, decode_flow, dialog_binding, encode_flow
from sipproxy.proxy.observer import ProxyObserver
from sipproxy.proxy.routing import (
    is_loop,
    loop_key,
    make_branch,
    next_hop,
    prepare_forward,
    preprocess_routes,
)
from sipproxy.sip.errors import ParseError
from sipproxy.sip.headers import Headers
from sipproxy.sip.message import Request, Response, first_address, response_from_headers
from sipproxy.sip.uri import SipURI
from sipproxy.sip.via import Via
from sipproxy.transaction.layer import (
    ClientTransaction,
    ServerTransaction,
    TransactionLayer,
)
from sipproxy.transport.peer import (
    Channel,
    Peer,
    ip_of,
    response_destination,
    same_address,
    stamp_received,
)
from sipproxy.transport.sender import Transports

#: Methods this server handles; OPTIONS answers list them (RFC 3261 §11.2).
ALLOW = (
    "INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE",
    "NOTIFY", "PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE",
)  # fmt: skip
#: Option tags we support (RFC 3261 §19.2); Require/Proxy-Require beyond them -> 420.
SUPPORTED = ("path", "outbound")
#: Bodies we understand as a UAS (OPTIONS answers, §11.2).
ACCEPT = "application/sdp"
#: Methods that may create a dialog: we Record-Route them (§16.6 step 4).
DIALOG_CREATING = frozenset({"INVITE", "SUBSCRIBE", "REFER", "NOTIFY"})
#: §16.6 step 11: "Timer C MUST be set [...] greater than 3 minutes".
TIMER_C = 181.0
#: Methods whose successful answers are not logged one by one.
_QUIET_WHEN_OK = frozenset({"REGISTER", "OPTIONS", "SUBSCRIBE", "NOTIFY", "PUBLISH"})
#: Branch outcomes after which the next target is worth trying (§16.7 step 6 spirit:
#: the phone could not be reached at all, not "it said no").
_TRY_NEXT = frozenset({408, 430, 480, 503})

if TYPE_CHECKING:
    from sipproxy.registrar import Registrar


#: Identity headers only a trusted domain may assert (RFC 3325 §5, and the older
#: Remote-Party-ID that some trunks still read as the caller's number).
_IDENTITY_HEADERS = ("P-Asserted-Identity", "P-Preferred-Identity", "Remote-Party-ID")


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """What the core needs to know about this server."""

    domains: frozenset[str]
    local_hosts: frozenset[str]
    local_ports: frozenset[int]
    #: "sequential": newest binding first, next on failure; "parallel": all at once
    forking: str = "sequential"
    timer_c: float = TIMER_C
    dialplan: tuple[DialRule, ...] = ()
    outbound_proxy: str | None = None
    #: requests waiting for a final answer (server transactions in Trying or
    #: Proceeding, proxied ones included) beyond which new requests get 503;
    #: answered ones kept only for retransmissions do not count (issue 13)
    max_pending: int = 50_000
    #: --trusted: peers whose identity headers (RFC 3325) and Path we accept
    trusted: TrustedNetworks = field(default_factory=TrustedNetworks)
    #: --allow-destination: internal networks a request may name as its target
    allowed_destinations: TrustedNetworks = field(default_factory=TrustedNetworks)
    #: of those, how many one source (IPv4 address, IPv6 /64) may hold; beyond
    #: it that source gets 503 while others are still served
    max_pending_per_source: int = 5_000


@dataclass(frozen=True, slots=True)
class _Target:
    """Where one copy of a request goes: the copy, the next hop, and how."""

    request: Request
    peer: Peer
    connection_id: str | None = None
    #: reached through a flow (a registration's or a Route token's): in-dialog
    #: requests must come back the same way, so our Record-Route names it
    pinned: bool = False
    #: TLS: the host its certificate must name (RFC 5922 §4)
    server_name: str | None = None
    #: targets of one DNS lookup share a group: alternatives tried in turn
    group: int = 0


@dataclass
class _Branch:
    """One forwarded copy of a request (§16.6) and what came back on it."""

    request: Request
    peer: Peer
    connection_id: str | None
    transaction: ClientTransaction | None = None
    final: Response | None = None
    provisional: bool = False
    cancel_pending: bool = False
    unreachable: bool = False
    #: Timer C fired: the branch's 487 is reported upstream as 408 (§16.8)
    timed_out: bool = False
    timer_c: IDelayedCall | None = None
    server_name: str | None = None


@dataclass
class ResponseContext:
    """Everything one proxied request waits for (RFC 3261 §16.7)."""

    server: ServerTransaction
    request: Request
    key: str
    inbound: Peer
    inbound_connection: str | None = None
    pending: list[_Target] = field(default_factory=list)
    branches: list[_Branch] = field(default_factory=list)
    best: Response | None = None
    answered: bool = False
    cancelled: bool = False
    #: an office PBX call (issue 9): extension, group or forwarding
    office: _OfficeCall | None = None


@dataclass
class _OfficeCall:
    """A call the office PBX plan steers (issue 9): what it rings, where it goes."""

    plan: CallPlan
    #: the request as it arrived; forwarded copies are made from it
    original: Request
    #: the request as sent to the current destination (its URI and headers)
    request: Request
    #: the no-answer timer of the current attempt
    timer: IDelayedCall | None = None
    rang_out: bool = False


class Proxy:
    """Decides what to do with each message; the transports only move bytes."""

    log = Logger()

    def __init__(
        self,
        settings: ProxySettings,
        *,
        clock: IReactorTime,
        transports: Transports,
        location: LocationService,
        registrar: Registrar | None = None,
        resolve: Callable[[SipURI], Awaitable[list[Peer]]] | None = None,
        known_user: Callable[[str], bool] | None = None,
        auth: Authenticator | None = None,
        bans: BanList | None = None,
        secret: bytes | None = None,
        office: OfficePreferences | None = None,
        observer: ProxyObserver | None = None,
    ) -> None:
        """Take collaborators; nothing happens until messages arrive.

        :param resolve: RFC 3263 lookup for targets outside our domains.
        :param known_user: whether an AOR is a user of ours (no binding: 480 for
            a user, 404 for anyone else); None when there is no user list.
        :param secret: keys To tags and flow tokens; random per start if None.
        :param office: extensions, ring groups, forwarding (issue 9); None: none.
        :param observer: told of requests, final answers, failed
            authentications and bans (metrics); None: nobody is told.
        """
        self.settings = settings
        self._clock = clock
        self._transports = transports
        self._location = location
        self._registrar = registrar
        self._resolve = resolve
        self._secret = secret if secret is not None else os.urandom(32)
        # Owner tokens (see _with_owner) are keyed apart from Record-Route tokens,
        # so a token a phone saw in a Record-Route never passes for one.
        self._owner_secret = hmac.new(self._secret, b"owner", "sha256").digest()
        self._via_secret = hmac.new(self._secret, b"via", "sha256").digest()
        #: This process's own SIP URI (--advertise), recorded as the owner of the
        #: connections it holds; None: bindings record no owner.
        self.instance: str | None = None
        self._counter = itertools.count(1)
        self._known_user = known_user
        self._auth = auth
        self._bans = bans
        self._office = office
        self._contexts: dict[int, ResponseContext] = {}
        self._branches: dict[int, tuple[ResponseContext, _Branch]] = {}
        self._observer = observer
        self.layer = TransactionLayer(self, clock)

    def pending_contexts(self) -> int:
        """Proxied requests still waiting for a final answer (§16.7), for metrics."""
        return len(self._contexts)

    # -- what the transaction layer calls -------------------------------------

    def request_received(
        self,
        request: Request,
        transaction: ServerTransaction | None,
        peer: Peer,
        channel: Channel,
    ) -> None:
        """A new request (never a retransmission) from ``peer``."""
        if self._observer is not None:
            self._observer.request_received(request.method)
        if transaction is None:
            self._forward_ack(request, peer)
            return
        settings = self.settings
        if request.method != "CANCEL" and (
            self.layer.pending() > settings.max_pending
            or (
                self.layer.pending_from(peer) > settings.max_pending_per_source
                # An edge proxy or SBC is many sources in one: its share is
                # the whole budget.
                and peer.host not in settings.trusted
            )
        ):
            # Bounded work under attack or overload: refuse new requests with a
            # hint to come back, rather than queue without end (issue 5); one
            # source cannot take the whole budget from the others (issue 13).
            # A CANCEL is let through: it ends work, and is answered at once.
            self._answer(
                transaction, request, 503, None, (("Retry-After", "5"),), "overload"
            )
            return
        Deferred.fromCoroutine(
            self._handle(request, transaction, peer, channel)
        ).addErrback(self._internal_error, transaction, request)

    def response_received(
        self,
        response: Response,
        transaction: ClientTransaction | None,
        peer: Peer,
        channel: Channel,
    ) -> None:
        """A response to one of our branches, or a stray one (§16.7, §16.11)."""
        if transaction is None:
            self._forward_stray_response(response)
            return
        found = self._branch_of(transaction)
        if found is None:
            return
        context, branch = found
        self._branch_response(context, branch, response)

    def transaction_timed_out(self, transaction: ClientTransaction) -> None:
        """Timer B or F: "treated as if it had received a 408" (§16.7 step 2)."""
        found = self._branch_of(transaction)
        if found is None:
            return
        context, branch = found
        self._branch_response(context, branch, _synthesized(branch.request, 408))

    def message_invalid(self, error: Exception, peer: Peer, channel: Channel) -> None:
        """Bytes that are no acceptable request: answer if we can, else drop.

        "If a request fails [the syntax check] the element MUST behave as a UAS
        and respond with an error code" (RFC 3261 §16.3 step 1); a response is
        never answered, and neither is an ACK.
        """
        if not isinstance(error, ParseError):
            raise error
        self._refuse_malformed(error, peer, channel, _cseq_method(error.headers))

    # -- requests --------------------------------------------------------------

    async def _handle(
        self,
        request: Request,
        transaction: ServerTransaction,
        peer: Peer,
        channel: Channel,
    ) -> None:
        try:
            await self._route(request, transaction, peer, channel)
        except RejectedError as rejection:
            self._answer(
                transaction,
                request,
                rejection.status,
                rejection.reason,
                rejection.extra,
                why="refused",
            )

    async def _route(
        self,
        request: Request,
        transaction: ServerTransaction,
        peer: Peer,
        channel: Channel,
    ) -> None:
        check_uri_scheme(request)
        received = request
        # A REGISTER is never inside a dialog (RFC 3261 §10.2), whatever its
        # Route and To tag say: it always meets the registrar's rules (issue 13).
        registering = request.method == "REGISTER"
        inbound_flow = None if registering else self._flow_from_routes(request)
        owner_flow = None if registering else self._owner_flow(request)
        inbound_flow = inbound_flow or self._if_connected(owner_flow)
        request = preprocess_routes(request, self._is_ours)
        uri = request.request_uri
        has_route = "route" in request.headers
        to_us = not has_route and is_local_uri(
            uri, self.settings.local_hosts, self.settings.local_ports
        )
        ours_domain = (
            isinstance(uri, SipURI)
            and not has_route
            and uri.host.lower().strip("[]") in self.settings.domains
        )
        answering_here = (request.method == "OPTIONS" and to_us) or (
            request.method == "REGISTER" and ours_domain
        )
        check_max_forwards(request, answering_here=answering_here)
        # Loops concern requests we forward (§16.3 step 4); what we answer here
        # skips the hash, which is most of the traffic (REGISTER, OPTIONS pings).
        key = "" if answering_here else loop_key(received)
        if not answering_here and is_loop(received, key, self._is_our_via):
            raise RejectedError(482)
        check_proxy_require(request, SUPPORTED)
        user = None
        # Inside a dialog we authorised: the Route brought back a token we signed
        # for this very dialog (flows.py); a Route or To tag alone proves nothing.
        in_our_dialog = inbound_flow is not None and request.to_addr.tag is not None
        # Another process of ours looked the phone up (and checked the caller).
        in_our_dialog = in_our_dialog or owner_flow is not None
        trusted_source = self._is_trusted(peer.host)
        if self._auth is not None:
            header = credentials_header(
                request,
                domains=self.settings.domains,
                registering_here=request.method == "REGISTER" and ours_domain,
                options_to_us=request.method == "OPTIONS" and to_us,
                in_our_dialog=in_our_dialog,
            )
            if header is not None:
                user = self._authenticate(request, header, peer)
            elif request.method not in NEVER_CHALLENGED and not (
                ours_domain or to_us or in_our_dialog or inbound_flow
            ):
                # Not a relay: only our own authenticated users go elsewhere.
                raise RejectedError(403, "Not A Relay")
        if request.method == "OPTIONS" and to_us:
            check_require(request, SUPPORTED)
            self._answer(
                transaction,
                request,
                200,
                None,
                (
                    ("Allow", ", ".join(ALLOW)),
                    ("Accept", ACCEPT),
                    ("Supported", ", ".join(SUPPORTED)),
                ),
            )
            return
        if request.method == "REGISTER":
            if not trusted_source and "path" in request.headers:
                # RFC 3327 §5.2: only an edge proxy we trust may put itself on
                # the way to a phone; a phone's own Path would steer its calls
                # to any host (issue 13). Ignored, as if it had not been written.
                request = replace(request, headers=request.headers.remove("Path"))
            await self._register(request, transaction, peer, channel, ours_domain)
            return
        if request.method == "CANCEL":
            self._cancel(request, transaction)
            return
        if not in_our_dialog:
            request = self._asserted_identity(request, user, trusted_source)
        if request.method == "INVITE":
            # §16.2: "the proxy MUST [...] generate a 100 (Trying) response".
            transaction.respond(request.response(100))
            if request.to_addr.tag is None and inbound_flow is None:
                request = self._office_identity(request, user)
        routed = None
        if not has_route and inbound_flow is None and request.to_addr.tag is None:
            routed = route_by_dialplan(uri, request.uri, self.settings.dialplan)
        if routed is not None:
            if self._auth is not None and user is None:
                # A trunk costs money: only our authenticated users dial out.
                raise RejectedError(403, "Not A Relay")
            # An operator's rule (a number to a trunk, a domain to a gateway).
            request = replace(request, uri=routed)
            if self.settings.outbound_proxy:
                request = _with_routes(
                    request, [loose_route(self.settings.outbound_proxy)]
                )
            targets = await self._targets_by_uri(request, None)
        elif (
            call := self._office_call(request, has_route, inbound_flow, ours_domain)
        ) is not None:
            await self._office_begin(call, transaction, request, key, peer, channel)
            return
        else:
            if ours_domain and not has_route and inbound_flow is None:
                request = self._office_extension(request)
            targets = await self._targets(
                request,
                inbound_flow,
                has_route,
                ours_domain,
                caller=user,
                # Another process of ours chose the Request-URI from a binding.
                vouched=owner_flow is not None,
            )
        if _is_sips(request.uri):
            targets = self._tls_only(targets)
        self._start(transaction, request, key, targets, peer, channel)

    async def _register(
        self,
        request: Request,
        transaction: ServerTransaction,
        peer: Peer,
        channel: Channel,
        ours_domain: bool,
    ) -> None:
        if self._registrar is None or not ours_domain:
            # Not a relay for other registrars: only our own domains register here.
            raise RejectedError(403, "Not Our Domain")
        flow = Flow(
            transport=peer.transport,
            local_host=channel.local.host,
            local_port=channel.local.port,
            remote_host=peer.host,
            remote_port=peer.port,
            connection_id=getattr(channel, "connection_id", None),
        )
        flow = self._with_owner(flow, peer)
        answer = await self._registrar.register(
            request, flow, now=self._clock.seconds()
        )
        self._answer(
            transaction,
            request,
            answer.status,
            answer.reason,
            answer.headers,
            why=None if answer.status == 200 else "registrar",
        )

    def _cancel(self, cancel: Request, transaction: ServerTransaction) -> None:
        """CANCEL (RFC 3261 §16.10): 200 at once, then cancel every pending branch."""
        invite = self.layer.matching_invite(cancel)
        context = self._contexts.get(id(invite)) if invite is not None else None
        if context is None:
            raise RejectedError(481)
        self._answer(transaction, cancel, 200, None, ())
        context.cancelled = True
        context.pending.clear()
        for branch in context.branches:
            self._cancel_branch(branch)
        if not context.branches and not context.answered:
            self._final(context, _synthesized(context.request, 487))

    async def _targets(
        self,
        request: Request,
        flow: Pinned | None,
        has_route: bool,
        ours_domain: bool,
        *,
        caller: str | None = None,
        vouched: bool = False,
    ) -> list[_Target]:
        """The target set (RFC 3261 §16.5) as copies to send, in order of trial.

        :param caller: the authenticated user of ours who sent the request, if any.
        :param vouched: the Request-URI was chosen by another process of ours.
        """
        if has_route or not ours_domain or flow is not None:
            return await self._targets_by_uri(
                request, flow, named_by_request=not vouched
            )
        uri = request.request_uri
        assert isinstance(uri, SipURI)
        if uri.user is None:
            raise RejectedError(404)
        bindings = await self._location.bindings(uri.aor(), now=self._clock.seconds())
        if not bindings:
            # RFC 5630: sip: and sips: forms of an AOR name the same user; a
            # phone registers one of them, callers may use either (a SIPS call
            # then reaches only its TLS bindings: _tls_only).
            scheme, _, rest = uri.aor().partition(":")
            other = f"{'sip' if scheme == 'sips' else 'sips'}:{rest}"
            bindings = await self._location.bindings(other, now=self._clock.seconds())
        if not bindings:
            known = self._known_user is not None and self._known_user(uri.aor())
            # No user oracle (issue 13): with users to authenticate, an outsider
            # gets 480 for unknown and unregistered users alike (480 tells a
            # caller of a real user to try later; 404 would end the search).
            outsider = caller is None and self._auth is not None
            raise RejectedError(480 if known or outsider else 404)
        targets: list[_Target] = []
        for binding in bindings:
            targets.extend(await self._targets_for_binding(request, binding))
        if not targets:
            raise RejectedError(480)
        return targets

    async def _targets_for_binding(
        self, request: Request, binding: Binding
    ) -> list[_Target]:
        copy = replace(request, uri=binding.contact)
        if binding.path:
            # RFC 3327 §5.3: the Path is the route to the phone; we follow it.
            return await self._targets_by_uri(_with_routes(copy, binding.path), None)
        flow = binding.flow
        if self._held_elsewhere(flow):
            return await self._targets_via_owner(copy, flow)
        direct = _direct_contact(binding)
        if direct is not None and self._transports.can_reach(direct):
            return [_Target(copy, direct)]
        peer = Peer(flow.transport, flow.remote_host, flow.remote_port)
        if (
            flow.transport != "udp"
            and self._transports.connection(flow.connection_id) is None
        ):
            # The phone's connection is gone; its source port was ephemeral, so
            # the only address left to try is the one its Contact names.
            try:
                return await self._targets_by_uri(copy, None)
            except RejectedError:
                return []
        if not self._transports.can_reach(peer):
            return []
        return [_Target(copy, peer, flow.connection_id, pinned=True)]

    async def _targets_by_uri(
        self,
        request: Request,
        flow: Pinned | None,
        *,
        named_by_request: bool = False,
    ) -> list[_Target]:
        """Forward along the Route set or to the Request-URI (§16.5, §16.6).

        :param named_by_request: the hop is whatever the sender wrote (its
            Request-URI or preloaded Route), not a binding, a dial-plan rule or
            a signed token: internal networks are then out of reach (issue 13).
        """
        copy, hop = next_hop(request)
        if flow is not None:
            peer, connection_id, name = flow
            return [_Target(copy, peer, connection_id, pinned=True, server_name=name)]
        if not isinstance(hop, SipURI):
            raise RejectedError(416)
        peers = await self._lookup(hop)
        if named_by_request:
            peers = [p for p in peers if self._may_name(p, hop)]
        if not peers:
            # An IP we have no socket for: nobody reachable (480). A name that
            # resolves to no SIP server: no such destination (404), not a 503,
            # which would tell the previous hop that we are the ones failing.
            raise RejectedError(480 if _is_ip(hop.host.strip("[]")) else 404)
        # RFC 5922 §4: a TLS server proves the host of the URI, not its address.
        name = hop.host.strip("[]")
        # The addresses of one name are one destination with fallbacks, never
        # rung in parallel: a domain with many records must not fan one request
        # out to many hosts (issue 13); one group per lookup keeps them in order.
        group = next(self._counter)
        return [
            _Target(copy, peer, None, server_name=name, group=group) for peer in peers
        ]

    def _tls_only(self, targets: list[_Target]) -> list[_Target]:
        """RFC 3261 §26.2.2: a SIPS Request-URI goes over TLS hops only.

        "the request MUST be sent [...] over TLS": a target reachable only over
        UDP or TCP is dropped rather than downgraded. None left: 416 if this
        server has no TLS at all (it cannot handle SIPS), else 480 (the callee
        has no secure way to be reached now).
        """
        secure = [t for t in targets if t.peer.transport == "tls"]
        if not secure:
            if not self._transports.supports("tls"):
                raise RejectedError(416)
            raise RejectedError(480, "No TLS Path To Target")
        return secure

    async def _lookup(self, uri: SipURI) -> list[Peer]:
        peer = _peer_of(uri)
        if _is_ip(peer.host):
            return [peer] if self._transports.can_reach(peer) else []
        if self._resolve is None:
            return []
        found = await self._resolve(uri)
        return [p for p in found if self._transports.can_reach(p)]

    def _outgoing(self, context: ResponseContext, target: _Target) -> Request:
        """§16.6 steps 3-8 for one target whose next hop is known."""
        realm = self._auth.realm if self._auth is not None else None
        request = without_our_credentials(target.request, realm)
        record_route: list[str] = []
        if request.method in DIALOG_CREATING and request.to_addr.tag is None:
            # Both entries carry a token bound to this dialog: later requests
            # prove with it that they belong here, and are sent to the peer it
            # names, never where their own Request-URI or Route points (issue 13).
            dialog = dialog_binding(
                request.headers.get("call-id") or "", request.from_addr.tag
            )
            secure = _is_sips(context.request.uri)
            record_route = [
                self._rr_uri(
                    target.peer,
                    target.connection_id,
                    dialog=dialog,
                    secure=secure,
                    server_name=target.server_name,
                ),
                self._rr_uri(
                    context.inbound,
                    context.inbound_connection,
                    dialog=dialog,
                    secure=secure,
                ),
            ]
        if (
            "p-asserted-identity" in request.headers
            and _wants_privacy(request)
            and not self._is_trusted(target.peer.host)
        ):
            # RFC 3325 §5: an identity the user asked to hide leaves the trust
            # domain without its P-Asserted-Identity.
            request = replace(
                request, headers=request.headers.remove("P-Asserted-Identity")
            )
        via = self._our_via(
            context.key, target.peer, rport=True, upstream=request.top_via
        )
        return prepare_forward(
            request, request_uri=None, via=via, record_route=record_route
        )

    def _our_via(
        self, key: str, peer: Peer, *, rport: bool, upstream: Via | None = None
    ) -> Via:
        """Our Via toward ``peer``: the address it can answer to, a loop-key branch.

        :param upstream: the Via below ours, where responses go next. The branch
            signs it, so a response that outlives its transaction is relayed only
            to the hop we really received the request from (issue 13, §16.11).
        """
        advertised = self._transports.advertised(peer.transport, peer.host)
        host, port = _host_port(advertised)
        branch = make_branch(key, f"{next(self._counter):x}")
        if upstream is not None:
            branch = f"{branch}.{self._via_mac(branch, upstream)}"
        flag = ";rport" if rport else ""
        return Via.parse(
            f"SIP/2.0/{peer.transport.upper()} {host}:{port};branch={branch}{flag}"
        )

    def _rr_uri(
        self,
        peer: Peer,
        connection_id: str | None,
        *,
        dialog: bytes,
        secure: bool = False,
        server_name: str | None = None,
    ) -> str:
        """One of our Record-Route entries, facing ``peer`` (see proxy/flows.py).

        The topmost entry faces the callee, the second the caller; both name this
        proxy, so §16.4 removes both from later requests. Each carries in its user
        part a token of the flow on its side, signed for ``dialog``.
        """
        advertised = self._transports.advertised(peer.transport, peer.host)
        host, port = _host_port(advertised)
        token = encode_flow(
            peer, connection_id, self._secret, dialog=dialog, server_name=server_name
        )
        user = f"{token}@"
        param = "" if peer.transport == "udp" else f";transport={peer.transport}"
        if secure and peer.transport == "tls":
            # §16.6 step 4: for a SIPS Request-URI "the URI placed into the
            # Record-Route header field MUST be a SIPS URI".
            return f"<sips:{user}{host}:{port};lr>"
        return f"<sip:{user}{host}:{port}{param};lr>"

    # -- branches and responses -------------------------------------------------

    def _start(
        self,
        transaction: ServerTransaction,
        request: Request,
        key: str,
        targets: list[_Target],
        peer: Peer,
        channel: Channel,
        *,
        parallel: bool | None = None,
    ) -> ResponseContext:
        context = ResponseContext(
            transaction,
            request,
            key,
            inbound=_via_peer(request.top_via, peer),
            inbound_connection=getattr(channel, "connection_id", None),
        )
        self._contexts[id(transaction)] = context
        self._ring(context, targets, parallel)
        return context

    def _ring(
        self, context: ResponseContext, targets: list[_Target], parallel: bool | None
    ) -> None:
        """Parallel or sequential search (§16.5); ``parallel=None``: as --forking.

        In parallel every target gets its branch now; in sequence the first does
        and the rest wait in ``context.pending``.
        """
        if parallel is None:
            parallel = self.settings.forking == "parallel"
        if parallel:
            seen: set[int] = set()
            for target in targets:
                if target.group and target.group in seen:
                    # A later address of the same name: a fallback, tried in turn.
                    context.pending.append(target)
                    continue
                seen.add(target.group)
                self._send_branch(context, target)
        else:
            context.pending = targets[1:]
            self._send_branch(context, targets[0])

    def _send_branch(self, context: ResponseContext, target: _Target) -> None:
        request = self._outgoing(context, target)
        peer, connection_id = target.peer, target.connection_id
        branch = _Branch(request, peer, connection_id, server_name=target.server_name)
        context.branches.append(branch)

        def failed(why: str) -> None:
            # Once per branch, though each retransmission may fail again.
            if branch.final is not None or branch.unreachable:
                return
            branch.unreachable = True
            self.log.info(
                "cannot reach {host}:{port}: {why}",
                host=peer.host,
                port=peer.port,
                why=why,
            )
            # A transport error counts as 503 for the branch (§8.1.3.1), but
            # what the caller hears is 480: the phone is unreachable right now.
            self._clock.callLater(
                0, self._branch_response, context, branch, _synthesized(request, 480)
            )

        def send(data: bytes) -> None:
            self._transports.send(
                data,
                peer,
                connection_id=connection_id,
                on_error=failed,
                server_name=target.server_name,
            )

        branch.transaction = self.layer.send_request(
            request, send, reliable=peer.reliable
        )
        self._branches[id(branch.transaction)] = (context, branch)
        if request.method == "INVITE":
            branch.timer_c = self._clock.callLater(
                self.settings.timer_c, self._timer_c, context, branch
            )

    def _timer_c(self, context: ResponseContext, branch: _Branch) -> None:
        """§16.8: Timer C fired: CANCEL a ringing branch, else treat it as 408."""
        branch.timer_c = None
        if branch.final is not None:
            return
        if branch.provisional:
            branch.timed_out = True
            self._cancel_branch(branch)
        else:
            self._branch_response(context, branch, _synthesized(branch.request, 408))

    def _cancel_branch(self, branch: _Branch) -> None:
        """§9.1/§16.10: CANCEL a branch that has no final answer yet.

        "a CANCEL request SHOULD NOT be sent to cancel a request until a
        provisional response is received"; until then it is remembered.
        """
        if branch.final is not None or branch.request.method != "INVITE":
            return
        if not branch.provisional:
            branch.cancel_pending = True
            return
        branch.cancel_pending = False
        cancel = _cancel_for(branch.request)
        peer, connection_id = branch.peer, branch.connection_id

        def send(data: bytes) -> None:
            self._transports.send(
                data,
                peer,
                connection_id=connection_id,
                server_name=branch.server_name,
            )

        self.layer.send_request(cancel, send, reliable=peer.reliable)

    def _branch_of(
        self, transaction: ClientTransaction
    ) -> tuple[ResponseContext, _Branch] | None:
        return self._branches.get(id(transaction))

    def _branch_response(
        self, context: ResponseContext, branch: _Branch, response: Response
    ) -> None:
        """RFC 3261 §16.7 for one response on one branch."""
        invite = context.request.method == "INVITE"
        if branch.final is not None:
            if invite and 200 <= response.status < 300:
                # Retransmitted 2xx after the client transaction accepted (RFC 6026).
                self._forward_up(context, response)
            return
        if response.status < 200:
            if response.status == 100:
                return
            branch.provisional = True
            if branch.timer_c is not None and branch.timer_c.active():
                branch.timer_c.reset(self.settings.timer_c)
            if branch.cancel_pending:
                self._cancel_branch(branch)
            if not context.answered:
                self._forward_up(context, response)
            return
        if branch.timed_out and response.status == 487:
            # "the proxy [...] MAY [...] return 408 (Request Timeout)" (§16.8):
            # the caller learns nobody answered, not that it cancelled.
            response = _synthesized(context.request, 408)
        branch.final = response
        if branch.timer_c is not None and branch.timer_c.active():
            branch.timer_c.cancel()
        branch.timer_c = None
        if 200 <= response.status < 300:
            # §16.7 step 5: every 2xx to an INVITE goes up, even after another.
            if invite and context.answered:
                self._forward_up(context, response)
            self._final(context, response)
            context.pending.clear()
            for other in context.branches:
                self._cancel_branch(other)
            return
        if response.status >= 600:
            context.pending.clear()
            for other in context.branches:
                self._cancel_branch(other)
        if context.best is None or _better(response, context.best):
            context.best = response
        if response.status in _TRY_NEXT and context.pending and not context.cancelled:
            self._send_branch(context, context.pending.pop(0))
            return
        if response.status not in _TRY_NEXT:
            # The phone said no (486, 603...): the next ones are not tried, and
            # the answer must not wait for branches that will never be sent.
            context.pending.clear()
        if all(b.final is not None for b in context.branches) and not context.pending:
            self._final(context, context.best)

    def _final(self, context: ResponseContext, response: Response) -> None:
        if context.answered:
            return
        if context.office is not None:
            # The office plan may forward instead (busy, no answer, unavailable).
            after = self._office_after(context, response)
            if after is None:
                return
            response = after
        if response.status == 503:
            # §16.7 step 6: "the proxy SHOULD generate a 500 [...] instead" of
            # passing on a 503, which would make upstream give up on us.
            response = _synthesized(context.request, 500)
        context.answered = True
        self._forward_up(context, response)
        self._log_final(
            context.request,
            response.status,
            started=context.server.received_at,
            branches=context.branches,
        )
        # Late 2xx retransmissions still need the context (RFC 6026 Timer M).
        self._clock.callLater(40.0, self._forget, context)

    def _forget(self, context: ResponseContext) -> None:
        self._contexts.pop(id(context.server), None)
        for branch in context.branches:
            if branch.timer_c is not None and branch.timer_c.active():
                branch.timer_c.cancel()
            self._branches.pop(id(branch.transaction), None)
            # The client transaction may outlive us (Timer D, Timer K) and its
            # send closure points back at the branch: drop our edge of that cycle
            # so refcounting frees a call, not the garbage collector (issue 8).
            branch.transaction = None

    def _forward_up(self, context: ResponseContext, response: Response) -> None:
        """Send a response upstream on the server transaction, our Via removed."""
        if response.headers.get_all("via") and self._is_our_via(response.top_via):
            _, headers = response.headers.pop_first_value("via")
            response = replace(response, headers=headers)
        if "via" not in response.headers:
            return
        context.server.respond(response)

    def _forward_stray_response(self, response: Response) -> None:
        """§16.11 / RFC 6026: a 2xx with no client transaction goes up statelessly.

        Only when the top Via is one we wrote for the Via below it (the branch
        signs it, _our_via): a response naming us on top of a Via of the
        attacker's choice is dropped, not relayed (issue 13).
        """
        try:
            top = response.top_via
        except ParseError:
            return
        if not self._is_our_via(top) or not 200 <= response.status < 300:
            return
        _, headers = response.headers.pop_first_value("via")
        if "via" not in headers:
            return
        response = replace(response, headers=headers)
        try:
            via = response.top_via
        except ParseError:
            return
        branch = top.branch or ""
        prefix, _, mac = branch.rpartition(".")
        if not mac or not hmac.compare_digest(mac, self._via_mac(prefix, via)):
            return
        source = Peer(via.transport.lower(), (via.received or via.host).strip("[]"), 0)
        self._transports.send(response.to_bytes(), response_destination(via, source))

    def _via_mac(self, branch: str, upstream: Via) -> str:
        """The signature of our branch over the Via below it (what §18.2.2 reads)."""
        text = "\x00".join(
            (
                branch,
                upstream.transport.upper(),
                upstream.host.lower(),
                str(upstream.port),
                upstream.branch or "",
                upstream.received or "",
                upstream.rport or "",
            )
        )
        signature = hmac.new(
            self._via_secret, text.encode("utf-8", "surrogateescape"), "sha256"
        ).digest()
        return signature[:6].hex()

    def _forward_ack(self, request: Request, peer: Peer) -> None:
        """An ACK for a 2xx follows the dialog's flow statelessly (§16.11, §17.2.3).

        An ACK carries no answer and is never challenged, so it travels only
        inside a dialog whose token it brings back (issue 13); any other ACK (one
        for a non-2xx the transaction layer did not match, or one naming a host
        of the sender's choice) is absorbed here.
        """
        try:
            self._forward_ack_in_dialog(request)
        except ParseError as error:
            # Validated fields only get here, but an ACK is never answered: a
            # Route or field that fails to parse later just drops it.
            self._log_dropped(peer, f"ACK: {error.reason}")

    def _forward_ack_in_dialog(self, request: Request) -> None:
        if request.to_addr.tag is None:
            return
        flow = self._flow_from_routes(request) or self._if_connected(
            self._owner_flow(request)
        )
        if flow is None:
            return
        peer, connection_id, server_name = flow
        if self._is_own_address(peer):
            # A token naming ourselves would loop until Max-Forwards runs out.
            return
        key = loop_key(request)
        request = preprocess_routes(request, self._is_ours)
        if request.max_forwards == 0:
            return
        copy, _ = next_hop(request)
        # A 2xx ACK repeats the INVITE's credentials (§13.2.2.4): ours stay here.
        copy = without_our_credentials(
            copy, self._auth.realm if self._auth is not None else None
        )
        via = self._our_via(key, peer, rport=False)
        copy = prepare_forward(copy, request_uri=None, via=via)
        self._transports.send(
            copy.to_bytes(),
            peer,
            connection_id=connection_id,
            server_name=server_name,
        )

    # -- office PBX (issue 9): the plan in pbx.py, executed here ---------------------

    def _office_call(
        self,
        request: Request,
        has_route: bool,
        flow: Pinned | None,
        ours_domain: bool,
    ) -> _OfficeCall | None:
        """An office call for a new INVITE to a user, extension or group of ours."""
        if (
            self._office is None
            or request.method != "INVITE"
            or not ours_domain
            or has_route
            or flow is not None
            or request.to_addr.tag is not None
        ):
            return None
        uri = request.request_uri
        assert isinstance(uri, SipURI)
        if uri.user is None:
            return None
        destination = self._office.office.destination(uri.user)
        if destination is None:
            return None
        plan = CallPlan(self._office.office, uri.host.lower())
        call = _OfficeCall(plan, request, request)
        call.plan.current = destination
        return call

    def _office_identity(self, request: Request, user: str | None) -> Request:
        """The callee's phone shows the caller's extension (issue 9, RFC 3325).

        A proxy may not rewrite From (RFC 3261 §16.6), so the extension travels as
        the display name of a P-Asserted-Identity naming the caller, which phones
        and PBXs show in preference to From. The caller is the authenticated
        user, or without --users the user part of a From in our domains. One
        such header written by the caller is replaced: we assert who it is.
        """
        if self._office is None:
            return request
        try:
            caller = request.from_addr.uri
        except ParseError:
            return request
        if not isinstance(caller, SipURI) or not caller.user:
            return request
        host = caller.host.lower()
        if host not in self.settings.domains:
            return request
        name = user if self._auth is not None else caller.user
        if name is None:
            return request
        number = next(
            (n for n, u in self._office.office.extensions.items() if u == name), None
        )
        if number is None:
            return request
        identity = f'"{number}" <{caller.scheme}:{name}@{host}>'
        headers = request.headers.remove("P-Asserted-Identity")
        return replace(request, headers=headers.append("P-Asserted-Identity", identity))

    def _office_extension(self, request: Request) -> Request:
        """Other requests to an extension (MESSAGE, SUBSCRIBE) go to its user."""
        uri = request.request_uri
        if self._office is None or not isinstance(uri, SipURI) or uri.user is None:
            return request
        user = self._office.office.extensions.get(uri.user)
        if user is None:
            return request
        return replace(request, uri=str(replace(uri, user=user)))

    async def _office_begin(
        self,
        call: _OfficeCall,
        transaction: ServerTransaction,
        request: Request,
        key: str,
        peer: Peer,
        channel: Channel,
    ) -> None:
        destination = call.plan.current
        assert destination is not None
        forwarding = await self._office_forwarding(call, destination)
        first = call.plan.enter(destination, forwarding)
        targets, ring = await self._office_resolve(call, first)
        context = self._start(
            transaction, request, key, targets, peer, channel, parallel=ring.parallel
        )
        context.office = call
        self._office_arm(context, ring)

    async def _office_forwarding(self, call: _OfficeCall, target: Target) -> Forwarding:
        """The TOML forwarding of a user or group, with stored values winning."""
        assert self._office is not None
        name = call.plan.name_of(target)
        return await self._office.effective(name) if name else Forwarding()

    async def _office_resolve(
        self, call: _OfficeCall, step: Step | None
    ) -> tuple[list[_Target], Ring]:
        """Follow the plan until something rings; RejectedError if nothing can."""
        status = 480
        while True:
            if step is None:
                raise RejectedError(status)
            if isinstance(step, Refuse):
                raise RejectedError(step.status, step.reason)
            if isinstance(step, Forward):
                refused = call.plan.retarget(step)
                if refused is not None:
                    raise RejectedError(refused.status, refused.reason)
                call.request = self._office_forwarded(call, step)
                forwarding = await self._office_forwarding(call, step.target)
                step = call.plan.enter(step.target, forwarding)
                continue
            try:
                targets = await self._office_targets(call, step)
            except RejectedError as rejection:
                targets, status = [], rejection.status
            if targets:
                return targets, step
            step = call.plan.ended(AttemptOutcome.UNAVAILABLE)

    async def _office_targets(self, call: _OfficeCall, ring: Ring) -> list[_Target]:
        if ring.uri is not None:
            return await self._targets_by_uri(replace(call.request, uri=ring.uri), None)
        targets: list[_Target] = []
        known = False
        for user in ring.users:
            # A group member on do-not-disturb is skipped, not rung.
            if (
                ring.newest_only
                and self._office is not None
                and (await self._office.effective(user)).dnd
            ):
                continue
            aor = SipURI.parse(f"sip:{user}@{call.plan.domain}").aor()
            known = known or (self._known_user is not None and self._known_user(aor))
            bindings = await self._location.bindings(aor, now=self._clock.seconds())
            for binding in bindings[:1] if ring.newest_only else bindings:
                targets.extend(await self._targets_for_binding(call.request, binding))
        if not targets:
            # A group's members are users: nobody reachable is 480, never 404.
            raise RejectedError(480 if known or ring.newest_only else 404)
        return targets

    def _office_forwarded(self, call: _OfficeCall, step: Forward) -> Request:
        """The INVITE retargeted to ``step.target``, with Diversion and History-Info.

        RFC 5806 §4: the newest Diversion comes first, above any received ones;
        RFC 7044: History-Info is added only when the caller sent none, so
        the indices stay ours.
        """
        original = call.original
        uri = call.plan.uri_of(step.target)
        headers = original.headers
        hops = call.plan.hops
        diversions = diversion_headers(hops)
        if "diversion" in headers:
            for value in reversed(diversions):
                headers = headers.prepend("Diversion", value)
        else:
            headers = headers.extend(("Diversion", v) for v in diversions)
        if "history-info" not in headers:
            headers = headers.extend(
                ("History-Info", v) for v in history_info_headers(hops, uri)
            )
        return replace(original, uri=uri, headers=headers)

    def _office_arm(self, context: ResponseContext, ring: Ring) -> None:
        call = context.office
        assert call is not None
        call.rang_out = False
        if ring.seconds is not None:
            call.timer = self._clock.callLater(
                ring.seconds, self._office_rang_out, context
            )

    def _office_rang_out(self, context: ResponseContext) -> None:
        """Nobody answered in time: end the attempt as Timer C would (§16.8)."""
        call = context.office
        if call is None or context.answered or context.cancelled:
            return
        call.timer = None
        call.rang_out = True
        context.pending.clear()
        for branch in list(context.branches):
            if branch.final is not None:
                continue
            if branch.provisional:
                self._cancel_branch(branch)
            else:
                self._branch_response(
                    context, branch, _synthesized(branch.request, 408)
                )

    def _office_after(
        self, context: ResponseContext, response: Response
    ) -> Response | None:
        """The attempt ended with ``response``: the answer to send, or None.

        None: the plan goes on (the next member of a group, a forwarding target).
        """
        call = context.office
        assert call is not None
        if call.timer is not None and call.timer.active():
            call.timer.cancel()
        call.timer = None
        if response.status < 300 or context.cancelled:
            return response
        outcome = outcome_of(response.status, rang_out=call.rang_out)
        step = call.plan.ended(outcome)
        if step is None:
            return _synthesized(context.request, 480) if call.rang_out else response
        if isinstance(step, Refuse):
            return context.request.response(step.status, step.reason)
        context.best = None
        Deferred.fromCoroutine(self._office_next(context, step)).addErrback(
            self._office_failed, context
        )
        return None

    async def _office_next(self, context: ResponseContext, step: Step) -> None:
        call = context.office
        assert call is not None
        try:
            targets, ring = await self._office_resolve(call, step)
        except RejectedError as rejection:
            context.office = None
            self._final(
                context, context.request.response(rejection.status, rejection.reason)
            )
            return
        if context.cancelled:
            context.office = None
            self._final(context, _synthesized(context.request, 487))
            return
        self._ring(context, targets, ring.parallel)
        self._office_arm(context, ring)

    def _office_failed(self, failure: Any, context: ResponseContext) -> None:
        self.log.failure("office call failed", failure)
        context.office = None
        self._final(context, _synthesized(context.request, 500))

    # -- authentication (issue 5) ------------------------------------------------

    def _authenticate(self, request: Request, header: str, peer: Peer) -> str:
        """The authenticated user, or a RejectedError with a challenge or 403.

        A missing, wrong, unknown-user or stale credential all get the same
        challenge (only the nonce differs), so nobody learns which users exist;
        only wrong answers to a nonce issued to this very address count towards
        its ban (issue 13: anything else costs no round trip, so a spoofed
        source could get someone else banned). Nonces are bound to the address
        they are sent to. A digest uri that is not the Request-URI gets 400.
        """
        assert self._auth is not None
        now = self._clock.seconds()
        result = self._auth.verify(request, now, source=peer.host, header=header)
        if result.outcome is Outcome.OK and result.user is not None:
            if self._bans is not None:
                self._bans.succeeded(peer.host, now, user=result.user)
            if not may_act(request, result.user):
                raise RejectedError(403, "Not Your Address")
            return result.user
        if result.outcome is Outcome.FAILED:
            self.log.info(
                "authentication failed from {host}: {reason}",
                host=peer.host,
                reason=result.reason,
            )
            if self._observer is not None:
                self._observer.auth_failed()
            if self._bans is not None and self._bans.failed(peer.host, now):
                if self._observer is not None:
                    self._observer.banned()
                self.log.warn(
                    "{line}",
                    line=ban_line(
                        peer.host, self._bans.max_failures, self._bans.ban_time
                    ),
                )
        elif result.outcome is Outcome.UNPROVEN:
            self.log.debug(
                "credentials from {host} not counted: {reason}",
                host=peer.host,
                reason=result.reason,
            )
        elif result.outcome is Outcome.URI_MISMATCH:
            # RFC 2617 §3.2.2.5: "the server SHOULD return a 400 Bad Request".
            self.log.info("from {host}: {reason}", host=peer.host, reason=result.reason)
            raise RejectedError(400, "Digest URI Does Not Match Request-URI")
        status = 401 if header == "Authorization" else 407
        name = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
        stale = result.outcome is Outcome.STALE
        raise RejectedError(
            status,
            None,
            tuple(
                (name, v)
                for v in self._auth.challenge(now, source=peer.host, stale=stale)
            ),
        )

    # -- helpers ---------------------------------------------------------------

    def _flow_from_routes(self, request: Request) -> Pinned | None:
        """The flow named by the last of our own leading Route entries (flows.py).

        Only the last one counts: it faces the next hop. Its token must have been
        signed for this request's dialog (Call-ID and either tag: requests from
        the callee carry the creating request's tag in To); anything else, an
        entry without a token included, names no flow and proves no dialog.
        """
        found = None
        try:
            routes = request.routes
        except ParseError:
            return None
        last = None
        for route in routes:
            uri = route.uri
            if not (isinstance(uri, SipURI) and self._is_ours(uri)):
                break
            last = uri
        if last is None or not last.user:
            return None
        try:
            call_id = request.headers.get("call-id") or ""
            dialogs = (
                dialog_binding(call_id, request.from_addr.tag),
                dialog_binding(call_id, request.to_addr.tag),
            )
        except ParseError:
            return None
        found = decode_flow(last.user, self._secret, dialogs=dialogs)
        return found

    # -- several processes sharing one store (issue 8) ---------------------------

    def _with_owner(self, flow: Flow, peer: Peer) -> Flow:
        """Record who holds a connection flow, for the other processes (Path-like).

        The owner is this process's URI with a token naming the connection in its
        user part: another process that finds the binding sends the request to
        that URI as a Route, and this process delivers it on the connection.
        """
        if self.instance is None or flow.transport == "udp":
            return flow
        where = _owner_address(self.instance)
        if where is None:
            return flow
        token = encode_flow(peer, flow.connection_id, self._owner_secret)
        return replace(flow, owner=f"sip:{token}@{where};lr")

    def _held_elsewhere(self, flow: Flow) -> bool:
        """Whether another process holds this binding's connection."""
        if flow.owner is None or flow.transport == "udp":
            return False
        try:
            owner = SipURI.parse(flow.owner)
        except ParseError:
            return False
        return not self._is_ours(owner)

    async def _targets_via_owner(self, request: Request, flow: Flow) -> list[_Target]:
        """Send through the process that holds the phone's connection."""
        assert flow.owner is not None
        try:
            return await self._targets_by_uri(
                _with_routes(request, [f"<{flow.owner}>"]), None
            )
        except RejectedError:
            return []

    def _owner_flow(self, request: Request) -> Pinned | None:
        """The connection an owner token in our first Route names (_with_owner)."""
        try:
            first = first_address(request.headers, "route")
        except ParseError:
            return None
        if first is None:
            return None
        uri = first.uri
        if not (isinstance(uri, SipURI) and uri.user and self._is_ours(uri)):
            return None
        return decode_flow(uri.user, self._owner_secret)

    def _if_connected(self, flow: Pinned | None) -> Pinned | None:
        """An owner token's flow, or None when its connection is gone.

        Then the Request-URI (the phone's Contact) is the only address left, as
        in _targets_for_binding for a binding of our own.
        """
        if flow is None or flow[0].transport == "udp":
            return flow
        return flow if self._transports.connection(flow[1]) is not None else None

    def _is_own_address(self, peer: Peer) -> bool:
        return (
            peer.host.lower() in self.settings.local_hosts
            and peer.port in self.settings.local_ports
        )

    def _is_trusted(self, host: str) -> bool:
        """Whether ``host`` is in a --trusted network (an edge proxy, a trunk)."""
        return host in self.settings.trusted

    def _may_name(self, peer: Peer, hop: SipURI) -> bool:
        """Whether a request may send us to ``peer`` by naming it itself.

        Not to an internal address (loopback, private, link-local...) unless the
        operator allows its network: the Request-URI or a preloaded Route would
        otherwise reach services behind the proxy (issue 13).
        """
        address = ip_of(peer.host)
        if address is None or not _is_internal(address):
            return True
        if peer.host in self.settings.allowed_destinations:
            return True
        self.log.info(
            "refused to send to {host}:{port} ({uri}): an internal address named "
            "by the request (allow-destination allows a network)",
            host=peer.host,
            port=peer.port,
            uri=str(hop),
        )
        return False

    def _asserted_identity(
        self, request: Request, user: str | None, trusted_source: bool
    ) -> Request:
        """RFC 3325: who the caller is, as this server can vouch for it.

        Identity headers from outside the trust domain are claims and go; an
        authenticated user of ours is asserted as the user we verified, whatever
        it wrote (towards a trunk, that is the number it is billed for).
        """
        headers = request.headers
        if user is None and (
            trusted_source
            or not any(name.lower() in headers for name in _IDENTITY_HEADERS)
        ):
            return request
        for name in _IDENTITY_HEADERS:
            headers = headers.remove(name)
        if user is not None:
            try:
                caller = request.from_addr.uri
            except ParseError:
                caller = None
            if isinstance(caller, SipURI):
                headers = headers.append(
                    "P-Asserted-Identity", f"<{caller.scheme}:{user}@{caller.host}>"
                )
        return replace(request, headers=headers)

    def _is_ours(self, uri: SipURI) -> bool:
        host = uri.host.lower().strip("[]")
        if host not in self.settings.local_hosts:
            return False
        return uri.port is None or uri.port in self.settings.local_ports

    def _is_our_via(self, via: Via) -> bool:
        host = via.host.lower().strip("[]")
        return host in self.settings.local_hosts and (
            via.port is None or via.port in self.settings.local_ports
        )

    def _answer(
        self,
        transaction: ServerTransaction,
        request: Request,
        status: int,
        reason: str | None,
        extra: Sequence[tuple[str, str]],
        why: str | None = None,
    ) -> None:
        """Respond on the server transaction; the one path for our own answers."""
        response = request.response(
            status,
            reason,
            to_tag=self._to_tag(request.headers) if status > 100 else None,
            headers=tuple(extra),
        )
        # Our own refusals (challenges, 403, 503 ...) go out once over UDP when
        # nothing preceded them: a sender that proved nothing gets no Timer G
        # resends to amplify (issue 13); its INVITE retransmissions get the
        # answer again. After a 100 the transaction retransmits as usual.
        transaction.respond(response, retransmit=False)
        if status >= 200:
            self._log_final(request, status, why, started=transaction.received_at)

    def _log_final(
        self,
        request: Request,
        status: int,
        why: str | None = None,
        *,
        started: float | None = None,
        branches: Sequence[_Branch] = (),
    ) -> None:
        """The one log line (and metrics event) of each final decision.

        :param why: who decided when we answered ourselves ("registrar", ...).
        :param started: when the request arrived, for the time spent.
        :param branches: the forwarded copies; the one whose answer went up is
            the route taken.
        """
        elapsed = None if started is None else self._clock.seconds() - started
        if self._observer is not None:
            self._observer.final_sent(request.method, status, elapsed)
        if status < 300 and request.method in _QUIET_WHEN_OK:
            # Successful refreshes and keepalives are most of the traffic, and a
            # Twisted log event costs as much as handling the request: they stay
            # out of the log (bench: 33% of CPU at 1000 REGISTER/s went here).
            return
        route = why or "local"
        for branch in branches:
            if branch.final is not None and branch.final.status == status:
                peer = branch.peer
                route = f"{peer.transport}:{peer.host}:{peer.port}"
                break
        # Structured fields for --log-format json; credentials never appear here.
        self.log.info(
            "{method} {call_id} {uri} from {caller} to {callee} -> {status} "
            "via {route} in {ms} ms",
            method=request.method,
            call_id=request.headers.get("call-id"),
            uri=request.uri,
            caller=_uri_of(request, "from"),
            callee=_uri_of(request, "to"),
            status=status,
            route=route,
            ms=None if elapsed is None else round(elapsed * 1000),
        )

    def _internal_error(
        self, failure: Any, transaction: ServerTransaction, request: Request
    ) -> None:
        self.log.failure("internal error on {method}", failure, method=request.method)
        self._answer(transaction, request, 500, None, (("Retry-After", "5"),))

    def _refuse_malformed(
        self, error: ParseError, peer: Peer, channel: Channel, method: str | None
    ) -> None:
        headers = error.headers
        if headers is None or method == "ACK":
            self._log_dropped(peer, error.reason)
            return
        to_tag = self._to_tag(headers) if error.status > 100 else None
        try:
            try:
                stamped = stamp_received(headers, peer)
                response = response_from_headers(
                    stamped, error.status, None, to_tag=to_tag, extra=error.extra
                )
                destination = (
                    peer
                    if peer.reliable
                    else response_destination(response.top_via, peer)
                )
            except ParseError:
                # RFC 4475 badinv01/insuf: Via or identifying fields are unusable,
                # but the source is known; answer there, never where it points.
                response = response_from_headers(
                    headers, error.status, None, to_tag=to_tag, extra=error.extra,
                    strict=False,
                )  # fmt: skip
                destination = peer
        except ParseError as unanswerable:
            self._log_dropped(peer, unanswerable.reason)
            return
        self.log.info(
            "answered {status} to {host}:{port} over {transport}: {why}",
            status=error.status,
            host=peer.host,
            port=peer.port,
            transport=peer.transport,
            why=error.reason,
        )
        channel.send(response.to_bytes(), destination)

    def _log_dropped(self, peer: Peer, reason: str) -> None:
        self.log.info(
            "dropped malformed message from {host}:{port} over {transport}: {reason}",
            host=peer.host,
            port=peer.port,
            transport=peer.transport,
            reason=reason,
        )

    def _to_tag(self, headers: Headers) -> str:
        """A To tag that is the same for every retransmission of one request.

        A stateless answer must not change between retransmissions (§8.2.6.2
        wants a tag; §16.11 wants stateless decisions repeatable), so the tag is a
        keyed hash of what identifies the request.
        """
        key = "\x00".join(
            (
                headers.get("call-id") or "",
                headers.get("from") or "",
                headers.get("cseq") or "",
            )
        )
        digest = hashlib.blake2b(
            key.encode("utf-8", "surrogateescape"), key=self._secret[:32], digest_size=6
        )
        return digest.hexdigest()


def _uri_of(request: Request, name: str) -> str:
    """The URI of From or To for the log (no display name, no tag)."""
    try:
        address = request.from_addr if name == "from" else request.to_addr
    except ParseError:
        return "?"
    return str(address.uri)


def _better(candidate: Response, best: Response) -> bool:
    """§16.7 step 6: a 6xx wins; otherwise the lowest response class."""

    def rank(status: int) -> int:
        return 0 if status >= 600 else status // 100

    return rank(candidate.status) < rank(best.status)


def _synthesized(request: Request, status: int) -> Response:
    """A response we make up for a branch (408 timeout, 503 unreachable, 487)."""
    return request.response(status)


def _direct_contact(binding: Binding) -> Peer | None:
    """The Contact's own address, when it can be trusted over the flow.

    RFC 3261 routes to the registered Contact; a phone behind NAT writes an
    address nobody can reach there, so the flow the REGISTER came on is used
    instead (RFC 3581, RFC 5626). The Contact is trusted only when nothing says
    NAT: the REGISTER came over UDP without RFC 5626 outbound, and the Contact
    names, as an IP literal, the very address the REGISTER came from (a phone
    or a SIPp instance registering on behalf of another port of its own host).
    """
    flow = binding.flow
    if flow.transport != "udp" or binding.reg_id is not None:
        return None
    try:
        uri = SipURI.parse(binding.contact)
    except ParseError:
        return None
    host = uri.host.strip("[]")
    if not _is_ip(host) or not same_address(host, flow.remote_host):
        return None
    transport = (uri.transport or "udp").lower()
    if transport != "udp":
        return None
    return Peer("udp", flow.remote_host, uri.port or 5060)


@functools.lru_cache(maxsize=4)
def _owner_address(instance: str) -> str | None:
    """``host:port;transport=x`` of an --advertise URI, parsed once."""
    try:
        base = SipURI.parse(instance)
    except ParseError:
        return None
    host = f"[{base.host}]" if ":" in base.host else base.host
    port = f":{base.port}" if base.port else ""
    param = f";transport={base.transport}" if base.transport else ""
    return f"{host}{port}{param}"


def _with_routes(request: Request, routes: Sequence[str]) -> Request:
    headers = request.headers
    for value in reversed(routes):
        headers = headers.prepend("Route", value)
    return replace(request, headers=headers)


def _via_peer(via: Via, peer: Peer) -> Peer:
    """Where the sender of a request listens: its flow, by its stamped Via."""
    if peer.reliable:
        return peer
    return response_destination(via, peer)


def _host_port(advertised: Peer | None) -> tuple[str, int]:
    if advertised is None:
        return "127.0.0.1", 5060
    host = f"[{advertised.host}]" if ":" in advertised.host else advertised.host
    return host, advertised.port


def _cancel_for(invite: Request) -> Request:
    """The CANCEL of a forwarded INVITE (RFC 3261 §9.1).

    "The Request-URI, Call-ID, To, the numeric part of CSeq, and From header
    fields in the CANCEL request MUST be identical to those in the request being
    cancelled, including tags. A CANCEL constructed by a client MUST have only a
    single Via header field value matching the top Via value in the request being
    cancelled." Route header fields are copied too.
    """
    headers = invite.headers
    via = headers.get_all("via")[0]
    fields: list[tuple[str, str]] = [("Via", via)]
    for route in headers.get_all("route"):
        fields.append(("Route", route))
    fields += [
        ("Max-Forwards", "70"),
        ("From", headers.get("from") or ""),
        ("To", headers.get("to") or ""),
        ("Call-ID", headers.get("call-id") or ""),
        ("CSeq", f"{invite.cseq.number} CANCEL"),
        ("Content-Length", "0"),
    ]
    return Request("CANCEL", invite.uri, Headers.of(*fields))


def _peer_of(uri: SipURI) -> Peer:
    """RFC 3261 §19.1.2 defaults for an IP-addressed URI."""
    transport = (
        uri.transport or ("tls" if uri.scheme.lower() == "sips" else "udp")
    ).lower()
    host = (uri.param("maddr") or uri.host).strip("[]")
    default = 5061 if transport == "tls" else 5060
    return Peer(transport, host, uri.port or default)


def _is_sips(uri: str) -> bool:
    return uri[:5].lower() == "sips:"


def _is_ip(host: str) -> bool:
    return ip_of(host) is not None


def _is_internal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Loopback, private, link-local, unspecified, multicast or reserved."""
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        address = mapped
    return (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_unspecified
        or address.is_multicast
        or address.is_reserved
    )


def _wants_privacy(request: Request) -> bool:
    """RFC 3323/3325: ``Privacy: id`` asks that the asserted identity stay inside."""
    values = ",".join(request.headers.get_all("privacy"))
    return "id" in (v.strip().lower() for v in values.replace(";", ",").split(","))


def _cseq_method(headers: Headers | None) -> str | None:
    value = headers.get("cseq") if headers is not None else None
    if value is None:
        return None
    parts = value.split()
    return parts[1] if len(parts) == 2 else None


__all__ = ["ALLOW", "SUPPORTED", "Proxy", "ProxySettings", "ResponseContext"]
