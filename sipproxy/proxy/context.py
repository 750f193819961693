"""What a method handler works with: the request as classified, and the proxy's means.

The core (proxy/core.py) classifies each new request (§16.3 checks, Route
preprocessing, dialog tokens, the auth gate) into an :class:`Incoming` and calls
the handler of its method (proxy/handlers.py) with it and the one
:class:`HandlerContext` of the proxy. The context is what a handler may do:
answer, forward (start forking), send a request of its own as a UAC, and write our
Via and Record-Route. One context serves every request, so handling a request
allocates nothing for it; per-request state lives in :class:`Incoming`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple, Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from sipproxy.auth.gate import without_our_credentials
from sipproxy.config import DialRule
from sipproxy.guard import TrustedNetworks
from sipproxy.proxy.checks import RejectedError
from sipproxy.proxy.events import (
    LOG_NAMESPACE,
    DialogState,
    Events,
    FinalDecision,
)
from sipproxy.proxy.flows import Pinned, dialog_binding
from sipproxy.proxy.forking import (
    TIMER_C,
    Destination,
    Forking,
    ResponseContext,
    synthesized,
)
from sipproxy.proxy.identity import Identity, wants_privacy
from sipproxy.proxy.owner import Owners
from sipproxy.proxy.routing import prepare_forward
from sipproxy.proxy.stamps import Stamps
from sipproxy.proxy.targets import TargetLookup
from sipproxy.sip.addressing import Channel, Peer
from sipproxy.sip.message import Request, Response, via_field
from sipproxy.sip.via import Via
from sipproxy.transaction.layer import (
    ClientTransaction,
    ServerTransaction,
    TransactionLayer,
)
from sipproxy.transport.sender import Transports

if TYPE_CHECKING:
    from sipproxy.proxy.notifier import Notifier
    from sipproxy.proxy.office_calls import OfficeCalls
    from sipproxy.registrar import Registrar

#: Methods that may create a dialog: we Record-Route them (§16.6 step 4).
DIALOG_CREATING = frozenset({"INVITE", "SUBSCRIBE", "REFER", "NOTIFY"})


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
    #: answered ones kept only for retransmissions do not count: they cost memory,
    #: not work
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


class HasSettings(Protocol):
    """Whatever holds the current settings (the proxy; they change on reload)."""

    @property
    def settings(self) -> ProxySettings:
        """The settings now."""
        ...


#: Told each response to a request of our own; a final one is the last.
ResponseHandler = Callable[[Response], None]


class HandlerContext:
    """The proxy's means, as a method handler sees them; one per proxy."""

    def __init__(
        self,
        *,
        holder: HasSettings,
        clock: IReactorTime,
        layer: TransactionLayer,
        transports: Transports,
        stamps: Stamps,
        identity: Identity,
        owners: Owners,
        events: Events,
    ) -> None:
        """Take collaborators.

        The core sets ``forking``, ``targets``, ``registrar`` and
        ``office_calls`` right after, the wiring ``notifier``: forking and the
        office plan call back into this context, so they are built on it.
        """
        self._holder = holder
        self.clock = clock
        self.layer = layer
        self.transports = transports
        self.stamps = stamps
        self.identity = identity
        self.owners = owners
        self.events = events
        self.log = Logger(namespace=LOG_NAMESPACE)
        self.registrar: Registrar | None = None
        self.office_calls: OfficeCalls | None = None
        #: busy lamps (SUBSCRIBE, Event: dialog); None: SUBSCRIBE is proxied
        self.notifier: Notifier | None = None
        self.forking: Forking
        self.targets: TargetLookup
        #: requests of our own waiting for their final response, by transaction
        self._own: dict[int, tuple[ResponseHandler, Request]] = {}

    @property
    def settings(self) -> ProxySettings:
        """The current settings (they change on reload)."""
        return self._holder.settings

    # -- answering -------------------------------------------------------------

    def answer(
        self,
        incoming: Incoming,
        status: int,
        reason: str | None = None,
        extra: Sequence[tuple[str, str]] = (),
        *,
        why: str | None = None,
    ) -> None:
        """Answer the request as a UAS (§8.2.6), on its server transaction."""
        self.respond(
            incoming.transaction,
            incoming.request,
            status,
            reason,
            extra,
            why=why,
            source=incoming.peer,
            user=incoming.user,
        )

    def respond(
        self,
        transaction: ServerTransaction,
        request: Request,
        status: int,
        reason: str | None = None,
        extra: Sequence[tuple[str, str]] = (),
        *,
        why: str | None = None,
        source: Peer | None = None,
        user: str | None = None,
    ) -> None:
        """Respond on ``transaction``; the one path for our own answers.

        :param why: who decided, for the final decision ("registrar" ...).
        """
        response = request.response(
            status,
            reason,
            to_tag=self.stamps.to_tag(request.headers) if status > 100 else None,
            headers=tuple(extra),
        )
        # Our own refusals (challenges, 403, 503 ...) go out once over UDP when
        # nothing preceded them: a sender that proved nothing gets no Timer G
        # resends to amplify; its INVITE retransmissions get the answer again.
        # After a 100 the transaction retransmits as usual.
        transaction.respond(response, retransmit=False)
        if status >= 200:
            decision = FinalDecision(
                request,
                status,
                why or "local",
                why,
                transaction.received_at,
                self.clock.seconds(),
                None,
                user,
                source,
            )
            # Events.decided inlined: this runs once per REGISTER and OPTIONS.
            for observer in self.events.decisions:
                observer.decided(decision)

    # -- forwarding ------------------------------------------------------------

    def forward(
        self, incoming: Incoming, request: Request, targets: list[Destination]
    ) -> ResponseContext:
        """Forward ``request`` (incoming's, as changed) to ``targets`` (§16.6)."""
        return self.forking.start(
            incoming.transaction,
            request,
            incoming.key,
            targets,
            incoming.peer,
            incoming.channel,
            user=incoming.user,
        )

    def cancel(self, incoming: Incoming) -> None:
        """CANCEL (RFC 3261 §16.10): 200 at once, then cancel every pending branch."""
        invite = self.layer.matching_invite(incoming.request)
        context = self.forking.context_of(invite) if invite is not None else None
        if context is None:
            raise RejectedError(481)
        self.answer(incoming, 200)
        self.forking.cancel(context)

    def outgoing(self, context: ResponseContext, target: Destination) -> Request:
        """§16.6 steps 3-8 for one target whose next hop is known (for forking)."""
        request = without_our_credentials(target.request, self.identity.realm)
        record_route: list[str] = []
        if request.method in DIALOG_CREATING and request.to_addr.tag is None:
            # Both entries carry a token bound to this dialog: later requests
            # prove with it that they belong here, and are sent to the peer it
            # names, never where their own Request-URI or Route points.
            dialog = dialog_binding(
                request.headers.get("call-id") or "", request.from_addr.tag
            )
            secure = is_sips(context.request.uri)
            record_route = [
                self.stamps.record_route(
                    target.peer,
                    target.connection_id,
                    dialog=dialog,
                    secure=secure,
                    server_name=target.server_name,
                ),
                self.stamps.record_route(
                    context.inbound,
                    context.inbound_connection,
                    dialog=dialog,
                    secure=secure,
                ),
            ]
        if (
            "p-asserted-identity" in request.headers
            and wants_privacy(request)
            and target.peer.host not in self._holder.settings.trusted
        ):
            # RFC 3325 §5: an identity the user asked to hide leaves the trust
            # domain without its P-Asserted-Identity.
            request = request.with_headers(
                request.headers.remove("P-Asserted-Identity")
            )
        via = self.stamps.our_via(
            context.key, target.peer, rport=True, upstream=request.top_via
        )
        return prepare_forward(
            request, request_uri=None, via=via, record_route=record_route
        )

    def proxied_answer(self, context: ResponseContext, response: Response) -> None:
        """Forking sent the final answer to a proxied request upstream."""
        status = response.status
        route = "local"
        for branch in context.branches:
            if branch.final is not None and branch.final.status == status:
                peer = branch.peer
                route = f"{peer.transport}:{peer.host}:{peer.port}"
                break
        started = context.server.received_at
        ringing = context.ringing_at
        self.events.decided(
            FinalDecision(
                context.request,
                status,
                route,
                None,
                started,
                self.clock.seconds(),
                None if ringing is None else ringing - started,
                context.user,
                context.inbound,
            )
        )

    def dialog_changed(self, state: DialogState, incoming: Incoming) -> None:
        """Tell the event stream a request changed its dialog (a BYE ended it)."""
        if self.events.dialogs:
            self.events.dialog_changed(state, incoming.request, self.clock.seconds())

    # -- requests of our own (we are the UAC) -----------------------------------

    def send_request(
        self,
        request: Request,
        peer: Peer,
        on_response: ResponseHandler,
        *,
        connection_id: str | None = None,
        server_name: str | None = None,
    ) -> ClientTransaction:
        """Send a request of our own (a NOTIFY, say) in a new client transaction.

        We are its UAC (RFC 3261 §8.1): our Via goes on top with a new branch
        (§8.1.1.7); the rest of ``request`` is the caller's. Every response goes
        to ``on_response``; a timeout arrives as a 408 (§8.1.3.1) and a
        transport error as a 503 (§8.1.3.1), each once, and after a final
        response nothing more does.
        """
        via = self.our_via(secrets.token_hex(6), peer, rport=True)
        request = request.with_headers(request.headers.prepend_field(via_field(via)))
        transaction: ClientTransaction | None = None

        def failed(why: str) -> None:
            self.log.info(
                "cannot reach {host}:{port}: {why}",
                host=peer.host,
                port=peer.port,
                why=why,
            )
            # Later, not now: the first send fails inside send_request, before
            # the transaction is known (own_response then ignores repeats).
            self.clock.callLater(0, report)

        def report() -> None:
            if transaction is not None:
                self.own_response(transaction, synthesized(request, 503))

        def send(data: bytes) -> None:
            self.transports.send(
                data,
                peer,
                connection_id=connection_id,
                on_error=failed,
                server_name=server_name,
            )

        transaction = self.layer.send_request(request, send, reliable=peer.reliable)
        self._own[id(transaction)] = (on_response, request)
        return transaction

    def own_response(self, transaction: ClientTransaction, response: Response) -> None:
        """A response on a client transaction of no proxied request: one of ours."""
        found = self._own.get(id(transaction))
        if found is None:
            return
        if response.status >= 200:
            del self._own[id(transaction)]
        found[0](response)

    def own_timed_out(self, transaction: ClientTransaction) -> None:
        """Timer B or F on a request of our own: a 408 (§8.1.3.1)."""
        found = self._own.get(id(transaction))
        if found is not None:
            self.own_response(transaction, synthesized(found[1], 408))

    # -- our stamps ------------------------------------------------------------

    def our_via(
        self, key: str, peer: Peer, *, rport: bool, upstream: Via | None = None
    ) -> Via:
        """Our Via toward ``peer`` (see :meth:`Stamps.our_via`)."""
        return self.stamps.our_via(key, peer, rport=rport, upstream=upstream)

    def record_route(
        self,
        peer: Peer,
        connection_id: str | None,
        *,
        dialog: bytes,
        secure: bool = False,
        server_name: str | None = None,
    ) -> str:
        """One of our Record-Route entries (see :meth:`Stamps.record_route`)."""
        return self.stamps.record_route(
            peer, connection_id, dialog=dialog, secure=secure, server_name=server_name
        )

    def dropped(self, peer: Peer, reason: str) -> None:
        """One line for a message dropped unanswered."""
        self.log.info(
            "dropped malformed message from {host}:{port} over {transport}: {reason}",
            host=peer.host,
            port=peer.port,
            transport=peer.transport,
            reason=reason,
        )


def is_sips(uri: str) -> bool:
    """Whether a URI (as text) is a SIPS URI."""
    return uri[:5].lower() == "sips:"


__all__ = [
    "DIALOG_CREATING",
    "HandlerContext",
    "Incoming",
    "ProxySettings",
    "ResponseHandler",
    "is_sips",
]
