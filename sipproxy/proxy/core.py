"""The server core: a stateful proxy and registrar on top of the transaction layer.

Theory of operation. The transaction layer hands every new request to
:meth:`Proxy.request_received` with its server transaction (retransmissions never
get here). The core validates it (RFC 3261 §16.3), preprocesses its Route set
(§16.4), passes the auth gate and hands it, as an :class:`Incoming`, to the
handler of its method (``Proxy._handlers``). REGISTER for our domains goes to the
registrar, OPTIONS to the server itself gets 200, CANCEL is matched to its INVITE
(§16.10); any other request gets its targets (§16.5, proxy/targets.py) and is
forwarded (§16.6), one client transaction per branch, collected in a
:class:`ResponseContext` (proxy/forking.py). Responses come back through
:meth:`Proxy.response_received` and are forwarded upstream or kept as the best
final answer (§16.7). ACKs to 2xx and responses that match no transaction are
forwarded statelessly (§16.11). A request that cannot be parsed well enough for
a transaction is answered statelessly by :meth:`message_invalid`.

Every refusal is a :class:`RejectedError` turned into a response in one place, and
every final decision is one log line.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import itertools
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, NamedTuple

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from sipproxy.auth.digest import Authenticator, Outcome
from sipproxy.auth.gate import (
    NEVER_CHALLENGED,
    Admit,
    Deny,
    credentials_header,
    decide,
    without_our_credentials,
)
from sipproxy.config import DialRule
from sipproxy.guard import BanList, TrustedNetworks, ban_line
from sipproxy.location import Flow, LocationService
from sipproxy.office.preferences import OfficePreferences
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
from sipproxy.proxy.forking import (
    TIMER_C,
    Branch,
    Destination,
    Forking,
    ResponseContext,
    synthesized,
)
from sipproxy.proxy.observer import ProxyObserver
from sipproxy.proxy.office_calls import OfficeCalls
from sipproxy.proxy.routing import (
    is_loop,
    loop_key,
    make_branch,
    next_hop,
    prepare_forward,
    preprocess_routes,
)
from sipproxy.proxy.targets import TargetLookup, with_routes
from sipproxy.sip.addressing import (
    Channel,
    Peer,
    response_destination,
    stamp_received,
)
from sipproxy.sip.errors import ParseError
from sipproxy.sip.headers import Headers
from sipproxy.sip.message import Request, Response, first_address, response_from_headers
from sipproxy.sip.transports import UDP, is_reliable, kind_of
from sipproxy.sip.uri import SipURI
from sipproxy.sip.via import Via
from sipproxy.transaction.layer import (
    ClientTransaction,
    ServerTransaction,
    TransactionLayer,
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
#: Methods whose successful answers are not logged one by one.
_QUIET_WHEN_OK = frozenset({"REGISTER", "OPTIONS", "SUBSCRIBE", "NOTIFY", "PUBLISH"})

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


class Incoming(NamedTuple):
    """A request that passed the checks (§16.3) and the auth gate, for a handler.

    ``request`` has had its Route set preprocessed (§16.4); the rest is what the
    core learned on the way: where it came from and how far it can be trusted.
    A tuple rather than a frozen dataclass: one is built per request, and
    building a tuple costs half as much.
    """

    request: Request
    transaction: ServerTransaction
    peer: Peer
    channel: Channel
    #: the loop-detection key of the request as received ("" if answered here)
    key: str
    has_route: bool
    #: the Request-URI names this server (host and port)
    to_us: bool
    #: the Request-URI is in one of our domains
    ours_domain: bool
    #: the flow a signed Route token names (a dialog of ours), if any
    inbound_flow: Pinned | None
    #: the connection another process of ours sent the request to, if any
    owner_flow: Pinned | None
    in_our_dialog: bool
    #: the source is in a --trusted network
    trusted_source: bool
    #: the user the request authenticated as, if any
    user: str | None


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
        :param office: extensions, ring groups, forwarding; None: none.
        :param observer: told of requests, final answers, failed
            authentications and bans (metrics); None: nobody is told.
        """
        self.settings = settings
        self._clock = clock
        self._transports = transports
        self._location = location
        self._registrar = registrar
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
        self.targets = TargetLookup(
            clock=clock,
            transports=transports,
            location=location,
            settings=lambda: self.settings,
            is_ours=self._is_ours,
            auth_required=lambda: self._auth is not None,
            counter=self._counter,
            resolve=resolve,
            known_user=known_user,
        )
        self._auth = auth
        self._bans = bans
        self._office = office
        self._observer = observer
        self.layer = TransactionLayer(self, clock)
        #: Who handles a request, by method (after §16.3 and the auth gate);
        #: any method not listed is proxied.
        self._handlers: dict[str, Callable[[Incoming], Awaitable[None]]] = {
            "OPTIONS": self._on_options,
            "REGISTER": self._on_register,
            "CANCEL": self._on_cancel,
        }
        self.forking = Forking(
            clock=clock,
            layer=self.layer,
            transports=transports,
            settings=lambda: self.settings,
            outgoing=self._outgoing,
            is_our_via=self._is_our_via,
            answered=self._log_answer,
        )
        self.office_calls = (
            None
            if office is None
            else OfficeCalls(
                office,
                clock=clock,
                location=location,
                forking=self.forking,
                targets=self.targets,
                settings=lambda: self.settings,
                auth_required=lambda: self._auth is not None,
                known_user=known_user,
            )
        )

    def pending_contexts(self) -> int:
        """Proxied requests still waiting for a final answer (§16.7), for metrics."""
        return self.forking.pending()

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
        found = self.forking.branch_of(transaction)
        if found is None:
            return
        context, branch = found
        self.forking.branch_response(context, branch, response)

    def transaction_timed_out(self, transaction: ClientTransaction) -> None:
        """Timer B or F: "treated as if it had received a 408" (§16.7 step 2)."""
        found = self.forking.branch_of(transaction)
        if found is None:
            return
        context, branch = found
        self.forking.branch_response(context, branch, synthesized(branch.request, 408))

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
        incoming = Incoming(
            request,
            transaction,
            peer,
            channel,
            key=key,
            has_route=has_route,
            to_us=to_us,
            ours_domain=ours_domain,
            inbound_flow=inbound_flow,
            owner_flow=owner_flow,
            in_our_dialog=in_our_dialog,
            trusted_source=trusted_source,
            user=user,
        )
        handler = self._handlers.get(request.method, self._proxy)
        await handler(incoming)

    async def _on_options(self, incoming: Incoming) -> None:
        """OPTIONS to the server itself gets 200 (RFC 3261 §11.2); others go on."""
        if not incoming.to_us:
            await self._proxy(incoming)
            return
        request = incoming.request
        check_require(request, SUPPORTED)
        self._answer(
            incoming.transaction,
            request,
            200,
            None,
            (
                ("Allow", ", ".join(ALLOW)),
                ("Accept", ACCEPT),
                ("Supported", ", ".join(SUPPORTED)),
            ),
        )

    async def _on_register(self, incoming: Incoming) -> None:
        """REGISTER goes to the registrar (RFC 3261 §10.3), for our domains only."""
        request = incoming.request
        if not incoming.trusted_source and "path" in request.headers:
            # RFC 3327 §5.2: only an edge proxy we trust may put itself on
            # the way to a phone; a phone's own Path would steer its calls
            # to any host (issue 13). Ignored, as if it had not been written.
            request = replace(request, headers=request.headers.remove("Path"))
        if self._registrar is None or not incoming.ours_domain:
            # Not a relay for other registrars: only our own domains register here.
            raise RejectedError(403, "Not Our Domain")
        peer, channel = incoming.peer, incoming.channel
        flow = Flow(
            transport=peer.transport,
            local_host=channel.local.host,
            local_port=channel.local.port,
            remote_host=peer.host,
            remote_port=peer.port,
            connection_id=channel.connection_id,
        )
        flow = self._with_owner(flow, peer)
        answer = await self._registrar.register(
            request, flow, now=self._clock.seconds()
        )
        self._answer(
            incoming.transaction,
            request,
            answer.status,
            answer.reason,
            answer.headers,
            why=None if answer.status == 200 else "registrar",
        )

    async def _on_cancel(self, incoming: Incoming) -> None:
        """CANCEL is matched to its INVITE here (§16.10), never forwarded as such."""
        self._cancel(incoming.request, incoming.transaction)

    async def _proxy(self, incoming: Incoming) -> None:
        """Any other request is forwarded (RFC 3261 §16.5, §16.6)."""
        request, transaction = incoming.request, incoming.transaction
        peer, channel, key = incoming.peer, incoming.channel, incoming.key
        has_route, ours_domain = incoming.has_route, incoming.ours_domain
        inbound_flow, owner_flow = incoming.inbound_flow, incoming.owner_flow
        user = incoming.user
        uri = request.request_uri
        if not incoming.in_our_dialog:
            request = self._asserted_identity(request, user, incoming.trusted_source)
        if request.method == "INVITE":
            # §16.2: "the proxy MUST [...] generate a 100 (Trying) response".
            transaction.respond(request.response(100))
            if (
                request.to_addr.tag is None
                and inbound_flow is None
                and self.office_calls is not None
            ):
                request = self.office_calls.identity(request, user)
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
                request = with_routes(
                    request, [loose_route(self.settings.outbound_proxy)]
                )
            targets = await self.targets.by_uri(request, None)
        elif (
            self.office_calls is not None
            and (
                call := self.office_calls.call_for(
                    request, has_route, inbound_flow, ours_domain
                )
            )
            is not None
        ):
            await self.office_calls.begin(
                call, transaction, request, key, peer, channel
            )
            return
        else:
            if (
                ours_domain
                and not has_route
                and inbound_flow is None
                and self.office_calls is not None
            ):
                request = self.office_calls.extension(request)
            targets = await self.targets.for_request(
                request,
                inbound_flow,
                has_route,
                ours_domain,
                caller=user,
                # Another process of ours chose the Request-URI from a binding.
                vouched=owner_flow is not None,
            )
        if _is_sips(request.uri):
            targets = self.targets.tls_only(targets)
        self.forking.start(transaction, request, key, targets, peer, channel)

    def _cancel(self, cancel: Request, transaction: ServerTransaction) -> None:
        """CANCEL (RFC 3261 §16.10): 200 at once, then cancel every pending branch."""
        invite = self.layer.matching_invite(cancel)
        context = self.forking.context_of(invite) if invite is not None else None
        if context is None:
            raise RejectedError(481)
        self._answer(transaction, cancel, 200, None, ())
        self.forking.cancel(context)

    def _outgoing(self, context: ResponseContext, target: Destination) -> Request:
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
        kind = kind_of(peer.transport)
        param = "" if kind is UDP else f";transport={kind.uri_param}"
        if secure and kind.secure:
            # §16.6 step 4: for a SIPS Request-URI "the URI placed into the
            # Record-Route header field MUST be a SIPS URI".
            return f"<sips:{user}{host}:{port};lr>"
        return f"<sip:{user}{host}:{port}{param};lr>"

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

    # -- authentication (issue 5) ------------------------------------------------

    def _authenticate(self, request: Request, header: str, peer: Peer) -> str:
        """The authenticated user, or a RejectedError with a challenge, 400 or 403.

        :func:`~sipproxy.auth.gate.decide` says which; this carries it out: the
        ban list (only wrong answers to a nonce issued to this very address
        count, so a spoofed source cannot get someone else banned), the
        observer, the log and a challenge bound to ``peer``'s address.
        """
        assert self._auth is not None
        now = self._clock.seconds()
        result = self._auth.verify(request, now, source=peer.host, header=header)
        ok = result.outcome is Outcome.OK and result.user is not None
        if ok and self._bans is not None:
            self._bans.succeeded(peer.host, now, user=result.user)
        decision = decide(request, result, header)
        if isinstance(decision, Admit):
            return decision.user
        if isinstance(decision, Deny):
            if decision.status == 400:
                self.log.info(
                    "from {host}: {reason}", host=peer.host, reason=result.reason
                )
            raise RejectedError(decision.status, decision.reason)
        if decision.counted:
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
        raise RejectedError(
            decision.status,
            None,
            tuple(
                (decision.header, v)
                for v in self._auth.challenge(
                    now, source=peer.host, stale=decision.stale
                )
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
        if self.instance is None or not is_reliable(flow.transport):
            return flow
        where = _owner_address(self.instance)
        if where is None:
            return flow
        token = encode_flow(peer, flow.connection_id, self._owner_secret)
        return replace(flow, owner=f"sip:{token}@{where};lr")

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
        if flow is None or not flow[0].reliable:
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

    def _log_answer(self, context: ResponseContext, response: Response) -> None:
        """Forking sent the final answer to a proxied request upstream."""
        self._log_final(
            context.request,
            response.status,
            started=context.server.received_at,
            branches=context.branches,
        )

    def _log_final(
        self,
        request: Request,
        status: int,
        why: str | None = None,
        *,
        started: float | None = None,
        branches: Sequence[Branch] = (),
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


def _host_port(advertised: Peer | None) -> tuple[str, int]:
    if advertised is None:
        return "127.0.0.1", 5060
    host = f"[{advertised.host}]" if ":" in advertised.host else advertised.host
    return host, advertised.port


def _is_sips(uri: str) -> bool:
    return uri[:5].lower() == "sips:"


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
