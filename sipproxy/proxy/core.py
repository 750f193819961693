"""The server core: a stateful proxy and registrar on top of the transaction layer.

Theory of operation. The transaction layer hands every new request to
:meth:`Proxy.request_received` with its server transaction (retransmissions never
get here). The core admits it by work in flight, validates it (RFC 3261 §16.3),
preprocesses its Route set (§16.4), reads the dialog and owner tokens it brings
back, passes the auth gate, and hands it, as an :class:`Incoming`, to the handler
of its method (``Proxy.handlers``, proxy/handlers.py) together with the proxy's
one :class:`HandlerContext` (proxy/context.py). Forwarded requests are forked
(proxy/forking.py); their responses come back through
:meth:`Proxy.response_received`. ACKs to 2xx and responses that match no
transaction are forwarded statelessly (§16.11). A request that cannot be parsed
well enough for a transaction is answered statelessly by :meth:`message_invalid`.

Every refusal is a :class:`RejectedError` turned into a response in one place, and
every final decision is one :class:`~sipproxy.proxy.events.FinalDecision` on the
event stream (the log line and the metrics observe it).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from sipproxy import eager
from sipproxy.auth.digest import Authenticator
from sipproxy.auth.gate import NEVER_CHALLENGED, credentials_header
from sipproxy.guard import BanList
from sipproxy.location import LocationService
from sipproxy.office.preferences import OfficePreferences
from sipproxy.proxy.checks import (
    RejectedError,
    check_max_forwards,
    check_proxy_require,
    check_uri_scheme,
)
from sipproxy.proxy.context import HandlerContext, Incoming, ProxySettings
from sipproxy.proxy.events import Events, FinalLogLine
from sipproxy.proxy.forking import Forking, ResponseContext, synthesized
from sipproxy.proxy.handlers import (
    ALLOW,
    HANDLERS,
    SUPPORTED,
    Handler,
    forward_ack,
    proxy,
)
from sipproxy.proxy.identity import Identity
from sipproxy.proxy.observer import ProxyObserver
from sipproxy.proxy.office_calls import OfficeCalls
from sipproxy.proxy.owner import Owners
from sipproxy.proxy.routing import is_loop, loop_key, preprocess_routes
from sipproxy.proxy.stamps import Stamps
from sipproxy.proxy.subscribe import on_subscribe
from sipproxy.proxy.targets import TargetLookup
from sipproxy.sip.addressing import (
    Channel,
    Peer,
    response_destination,
    stamp_received,
)
from sipproxy.sip.errors import ParseError
from sipproxy.sip.headers import Headers
from sipproxy.sip.message import Request, Response, response_from_headers
from sipproxy.sip.uri import SipURI
from sipproxy.transaction.layer import (
    ClientTransaction,
    ServerTransaction,
    TransactionLayer,
)
from sipproxy.transport.sender import Transports

if TYPE_CHECKING:
    from sipproxy.registrar import Registrar


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
        #: the office's run-time preferences (forwarding, DND), if any
        self.office = office
        self._observer = observer
        secret = secret if secret is not None else os.urandom(32)
        counter = itertools.count(1)
        current = self._current_settings
        self.stamps = Stamps(
            transports=transports, holder=self, secret=secret, counter=counter
        )
        self.identity = Identity(clock=clock, auth=auth, bans=bans, observer=observer)
        self.owners = Owners(
            transports=transports, secret=secret, is_our_uri=self.stamps.is_ours
        )
        #: Observers of the final decisions and dialog changes (proxy/events.py).
        self.events = Events([FinalLogLine(observer)])
        self.layer = TransactionLayer(self, clock)
        self.context = context = HandlerContext(
            holder=self,
            clock=clock,
            layer=self.layer,
            transports=transports,
            stamps=self.stamps,
            identity=self.identity,
            owners=self.owners,
            events=self.events,
        )
        context.registrar = registrar
        self.targets = context.targets = TargetLookup(
            clock=clock,
            transports=transports,
            location=location,
            settings=current,
            is_ours=self.stamps.is_ours,
            auth_required=lambda: self.identity.auth is not None,
            counter=counter,
            resolve=resolve,
            known_user=known_user,
        )
        #: Who handles a request, by method (after §16.3 and the auth gate);
        #: any method not listed is proxied.
        # SUBSCRIBE's handler lives beside the notifier and uses ``proxy`` of
        # handlers.py: listed here, so that handlers.py need not import it back.
        self.handlers: dict[str, Handler] = {**HANDLERS, "SUBSCRIBE": on_subscribe}
        self.forking = context.forking = Forking(
            clock=clock,
            layer=self.layer,
            transports=transports,
            settings=current,
            outgoing=context.outgoing,
            is_our_via=self.stamps.is_ours,
            answered=context.proxied_answer,
            events=self.events,
        )
        self.office_calls = context.office_calls = (
            None
            if office is None
            else OfficeCalls(
                office,
                clock=clock,
                location=location,
                forking=self.forking,
                targets=self.targets,
                settings=current,
                auth_required=lambda: self.identity.auth is not None,
                known_user=known_user,
            )
        )

    def _current_settings(self) -> ProxySettings:
        return self.settings

    @property
    def instance(self) -> str | None:
        """This process's own SIP URI (--advertise), the owner of its connections."""
        return self.owners.instance

    @instance.setter
    def instance(self, value: str | None) -> None:
        self.owners.instance = value

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
            forward_ack(self.context, request, peer)
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
            # hint to come back, rather than queue without end; one source
            # cannot take the whole budget from the others. A CANCEL is let
            # through: it ends work, and is answered at once.
            self.context.respond(
                transaction,
                request,
                503,
                None,
                (("Retry-After", "5"),),
                why="overload",
                source=peer,
            )
            return
        # With the memory store nearly every request is answered or forwarded
        # before its handler first waits: no Deferred for those (sipproxy.eager).
        finished = eager.start(self._handle(request, transaction, peer, channel))
        if finished is not None:
            finished.addErrback(self._internal_error, transaction, request, peer)

    def response_received(
        self,
        response: Response,
        transaction: ClientTransaction | None,
        peer: Peer,
        channel: Channel,
    ) -> None:
        """A response to one of our branches, or a stray one (§16.7, §16.11)."""
        if transaction is None:
            self.stamps.forward_stray_response(response)
            return
        found = self.forking.branch_of(transaction)
        if found is None:
            self.context.own_response(transaction, response)
            return
        context, branch = found
        self.forking.branch_response(context, branch, response)

    def transaction_timed_out(self, transaction: ClientTransaction) -> None:
        """Timer B or F: "treated as if it had received a 408" (§16.7 step 2)."""
        found = self.forking.branch_of(transaction)
        if found is None:
            self.context.own_timed_out(transaction)
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
            self.context.respond(
                transaction,
                request,
                rejection.status,
                rejection.reason,
                rejection.extra,
                why="refused",
                source=peer,
            )

    async def _route(
        self,
        request: Request,
        transaction: ServerTransaction,
        peer: Peer,
        channel: Channel,
    ) -> None:
        """Classify a request (§16.3, §16.4, tokens, the auth gate), then handle it."""
        check_uri_scheme(request)
        received = request
        stamps = self.stamps
        # A REGISTER is never inside a dialog (RFC 3261 §10.2), whatever its
        # Route and To tag say: it always meets the registrar's rules, or a
        # copied token would let a phone register without credentials.
        registering = request.method == "REGISTER"
        inbound_flow = None if registering else stamps.flow_from_routes(request)
        owner_flow = None if registering else self.owners.owner_flow(request)
        inbound_flow = inbound_flow or self.owners.if_connected(owner_flow)
        request = preprocess_routes(request, stamps.is_ours)
        uri = request.request_uri
        has_route = "route" in request.headers
        settings = self.settings
        to_us = (
            not has_route
            and isinstance(uri, SipURI)
            and uri.user is None
            and stamps.is_ours(uri)
        )
        ours_domain = (
            isinstance(uri, SipURI)
            and not has_route
            and uri.host.lower().strip("[]") in settings.domains
        )
        answering_here = (request.method == "OPTIONS" and to_us) or (
            registering and ours_domain
        )
        check_max_forwards(request, answering_here=answering_here)
        # Loops concern requests we forward (§16.3 step 4); what we answer here
        # skips the hash, which is most of the traffic (REGISTER, OPTIONS pings).
        key = "" if answering_here else loop_key(received)
        if not answering_here and is_loop(received, key, stamps.is_ours):
            raise RejectedError(482)
        check_proxy_require(request, SUPPORTED)
        user = None
        # Inside a dialog we authorised: the Route brought back a token we signed
        # for this very dialog (flows.py); a Route or To tag alone proves nothing.
        in_our_dialog = inbound_flow is not None and request.to_addr.tag is not None
        # Another process of ours looked the phone up (and checked the caller).
        in_our_dialog = in_our_dialog or owner_flow is not None
        trusted_source = peer.host in settings.trusted
        identity = self.identity
        if identity.auth is not None:
            header = credentials_header(
                request,
                domains=settings.domains,
                registering_here=registering and ours_domain,
                options_to_us=request.method == "OPTIONS" and to_us,
                in_our_dialog=in_our_dialog,
            )
            if header is not None:
                user = identity.authenticate(request, header, peer)
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
        handler = self.handlers.get(request.method, proxy)
        try:
            await handler(self.context, incoming)
        except RejectedError as rejection:
            # Refused once the caller proved who it is (404, 480): the decision
            # names the user, as decisions on forwarded requests do, so a call
            # record's caller is the user whatever the outcome.
            self.context.answer(
                incoming,
                rejection.status,
                rejection.reason,
                rejection.extra,
                why="refused",
            )

    # -- what goes wrong -------------------------------------------------------

    def _internal_error(
        self,
        failure: Any,
        transaction: ServerTransaction,
        request: Request,
        peer: Peer,
    ) -> None:
        self.log.failure("internal error on {method}", failure, method=request.method)
        self.context.respond(
            transaction, request, 500, None, (("Retry-After", "5"),), source=peer
        )

    def _refuse_malformed(
        self, error: ParseError, peer: Peer, channel: Channel, method: str | None
    ) -> None:
        headers = error.headers
        if headers is None or method == "ACK":
            self.context.dropped(peer, error.reason)
            return
        to_tag = self.stamps.to_tag(headers) if error.status > 100 else None
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
            self.context.dropped(peer, unanswerable.reason)
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


def _cseq_method(headers: Headers | None) -> str | None:
    value = headers.get("cseq") if headers is not None else None
    if value is None:
        return None
    parts = value.split()
    return parts[1] if len(parts) == 2 else None


__all__ = [
    "ALLOW",
    "SUPPORTED",
    "Incoming",
    "Proxy",
    "ProxySettings",
    "ResponseContext",
]
