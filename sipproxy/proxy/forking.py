"""Forking: the branches of one proxied request and the answer they add up to.

Theory of operation (RFC 3261 §16.5-§16.10). The proxy hands :meth:`Forking.start`
a server transaction and the destinations of its request, in order of trial. One
:class:`ResponseContext` collects everything the request waits for; each forwarded
copy is a :class:`Branch` with its own client transaction. Destinations are rung
all at once (parallel) or one after another (sequential); the addresses of one DNS
name are always alternatives tried in turn. Responses on a branch
(:meth:`Forking.branch_response`) go upstream at once (1xx, every 2xx to an INVITE)
or are kept until every branch has ended and the best one is chosen (§16.7 step 6).
Timer C (§16.8) cancels a ringing INVITE branch, or ends a silent one as 408. A
CANCEL from upstream (:meth:`Forking.cancel`) cancels every branch (§16.10). A
context is SEARCHING, then CANCELLED (if a CANCEL comes first), then ANSWERED
(:class:`ForkState`). After the final answer the context lives on for Timer M,
for late 2xx retransmissions (RFC 6026).

Who decides what happens after an unanswered attempt is not this module: a context
may carry an ``on_ended`` hook (the office call plan) that receives the answer
about to go upstream and returns it, another one, or None to keep the context
open for a next attempt (:meth:`Forking.ring`).

Forking is where responses are seen, so it tells the event stream
(proxy/events.py) of the dialogs an INVITE creates: CREATED when forwarded, EARLY
on a branch's first tagged provisional answer, CONFIRMED on a 2xx, TERMINATED on a
final answer that is not 2xx.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from sipproxy.office.headers import diversion_reason
from sipproxy.proxy.events import DialogState, Events
from sipproxy.sip.addressing import Channel, Peer, response_destination
from sipproxy.sip.errors import ParseError
from sipproxy.sip.headers import Headers
from sipproxy.sip.message import Request, Response
from sipproxy.sip.via import Via
from sipproxy.transaction.layer import (
    ClientTransaction,
    ServerTransaction,
    TransactionLayer,
)
from sipproxy.transaction.timers import Timers
from sipproxy.transport.sender import Transports

#: §16.6 step 11: "Timer C MUST be set [...] greater than 3 minutes". The value
#: lives with the other RFC timers; the proxy runs it, the transaction layer not.
TIMER_C = Timers().timer_c
#: Branch outcomes after which the next destination is worth trying (§16.7 step 6
#: spirit: the phone could not be reached at all, not "it said no").
_TRY_NEXT = frozenset({408, 430, 480, 503})


class ForkSettings(Protocol):
    """What forking reads from the server's (reloadable) settings."""

    @property
    def forking(self) -> str:
        """Sequential: one destination after another; parallel: all at once."""
        ...

    @property
    def timer_c(self) -> float:
        """Timer C in seconds (§16.6 step 11)."""
        ...


@dataclass(frozen=True, slots=True)
class Destination:
    """Where one copy of a request goes: the copy, the next hop, and how."""

    request: Request
    peer: Peer
    connection_id: str | None = None
    #: reached through a flow (a registration's or a Route token's): in-dialog
    #: requests must come back the same way, so our Record-Route names it
    pinned: bool = False
    #: TLS: the host its certificate must name (RFC 5922 §4)
    server_name: str | None = None
    #: destinations of one DNS lookup share a group: alternatives tried in turn
    group: int = 0


@dataclass
class Branch:
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


class ForkState(enum.Enum):
    """Where a proxied request stands, upstream (§16.7, §16.10)."""

    #: branches are out or about to be; no final answer went upstream yet
    SEARCHING = "searching"
    #: a CANCEL came: no new branch is sent; the final answer (487) is still due
    CANCELLED = "cancelled"
    #: the final answer went upstream; only further 2xx to an INVITE follow it
    ANSWERED = "answered"


#: Told the answer an attempt ended with; returns the answer to send upstream,
#: or None when the plan goes on (it then rings again or calls ``finish``).
AttemptEnded = Callable[["ResponseContext", Response], "Response | None"]


@dataclass
class ResponseContext:
    """Everything one proxied request waits for (RFC 3261 §16.7)."""

    server: ServerTransaction
    request: Request
    key: str
    inbound: Peer
    inbound_connection: str | None = None
    pending: list[Destination] = field(default_factory=list)
    branches: list[Branch] = field(default_factory=list)
    best: Response | None = None
    state: ForkState = ForkState.SEARCHING
    #: the hook of a call plan (the office PBX) deciding after each attempt
    on_ended: AttemptEnded | None = None
    #: the user the request authenticated as, for the final decision
    user: str | None = None
    #: when the first provisional answer (not 100) came, for the setup time
    ringing_at: float | None = None

    @property
    def answered(self) -> bool:
        """Whether the final answer went upstream."""
        return self.state is ForkState.ANSWERED

    @property
    def cancelled(self) -> bool:
        """Whether a CANCEL came before the final answer went upstream."""
        return self.state is ForkState.CANCELLED


class Forking:
    """The contexts and branches of every proxied request in progress."""

    log = Logger()

    def __init__(
        self,
        *,
        clock: IReactorTime,
        layer: TransactionLayer,
        transports: Transports,
        settings: Callable[[], ForkSettings],
        outgoing: Callable[[ResponseContext, Destination], Request],
        is_our_via: Callable[[Via], bool],
        answered: Callable[[ResponseContext, Response], None],
        events: Events | None = None,
        timer_m: float = Timers().timer_m,
    ) -> None:
        """Take collaborators; nothing happens until :meth:`start`.

        :param settings: the current settings (they change on reload).
        :param outgoing: §16.6 steps 3-8: the copy to send to a destination.
        :param is_our_via: whether a Via is ours (removed from responses).
        :param answered: told of each final answer sent upstream (the decision).
        :param events: told of the dialogs INVITEs create; None: nobody.
        :param timer_m: how long a context outlives its answer (RFC 6026).
        """
        self._clock = clock
        self._layer = layer
        self._transports = transports
        self._settings = settings
        self._outgoing = outgoing
        self._is_our_via = is_our_via
        self._answered = answered
        self._events = events if events is not None else Events()
        self._timer_m = timer_m
        self._contexts: dict[int, ResponseContext] = {}
        self._branches: dict[int, tuple[ResponseContext, Branch]] = {}

    def pending(self) -> int:
        """Proxied requests still waiting for a final answer (§16.7), for metrics."""
        return len(self._contexts)

    def context_of(self, server: ServerTransaction) -> ResponseContext | None:
        """The context of the request ``server`` received, if we forwarded it."""
        return self._contexts.get(id(server))

    def branch_of(
        self, transaction: ClientTransaction
    ) -> tuple[ResponseContext, Branch] | None:
        """The context and branch a client transaction belongs to."""
        return self._branches.get(id(transaction))

    def start(
        self,
        transaction: ServerTransaction,
        request: Request,
        key: str,
        destinations: list[Destination],
        peer: Peer,
        channel: Channel,
        *,
        parallel: bool | None = None,
        on_ended: AttemptEnded | None = None,
        user: str | None = None,
    ) -> ResponseContext:
        """Open the context of a request to forward and ring its destinations.

        :param user: the user the request authenticated as, if any.
        """
        context = ResponseContext(
            transaction,
            request,
            key,
            inbound=_via_peer(request.top_via, peer),
            inbound_connection=getattr(channel, "connection_id", None),
            on_ended=on_ended,
            user=user,
        )
        self._contexts[id(transaction)] = context
        if self._events.dialogs:
            self._dialog_changed(context, DialogState.CREATED)
        self.ring(context, destinations, parallel)
        return context

    def ring(
        self,
        context: ResponseContext,
        destinations: list[Destination],
        parallel: bool | None,
    ) -> None:
        """Parallel or sequential search (§16.5); ``parallel=None``: as --forking.

        In parallel every destination gets its branch now; in sequence the first
        does and the rest wait in ``context.pending``.
        """
        if parallel is None:
            parallel = self._settings().forking == "parallel"
        if parallel:
            seen: set[int] = set()
            for destination in destinations:
                if destination.group and destination.group in seen:
                    # A later address of the same name: a fallback, tried in turn.
                    context.pending.append(destination)
                    continue
                seen.add(destination.group)
                self._send_branch(context, destination)
        else:
            context.pending = destinations[1:]
            self._send_branch(context, destinations[0])

    def _send_branch(self, context: ResponseContext, destination: Destination) -> None:
        request = self._outgoing(context, destination)
        peer, connection_id = destination.peer, destination.connection_id
        branch = Branch(
            request, peer, connection_id, server_name=destination.server_name
        )
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
                0, self.branch_response, context, branch, synthesized(request, 480)
            )

        def send(data: bytes) -> None:
            self._transports.send(
                data,
                peer,
                connection_id=connection_id,
                on_error=failed,
                server_name=destination.server_name,
            )

        branch.transaction = self._layer.send_request(
            request, send, reliable=peer.reliable
        )
        self._branches[id(branch.transaction)] = (context, branch)
        if request.method == "INVITE":
            branch.timer_c = self._clock.callLater(
                self._settings().timer_c, self._timer_c, context, branch
            )

    def _timer_c(self, context: ResponseContext, branch: Branch) -> None:
        """§16.8: Timer C fired: CANCEL a ringing branch, else treat it as 408."""
        branch.timer_c = None
        if branch.final is not None:
            return
        if branch.provisional:
            branch.timed_out = True
            self._cancel_branch(branch)
        else:
            self.branch_response(context, branch, synthesized(branch.request, 408))

    def cancel(self, context: ResponseContext) -> None:
        """CANCEL from upstream (§16.10): cancel every pending branch, try no more."""
        if context.state is ForkState.SEARCHING:
            context.state = ForkState.CANCELLED
        context.pending.clear()
        for branch in context.branches:
            self._cancel_branch(branch)
        if not context.branches and not context.answered:
            self.finish(context, synthesized(context.request, 487))

    def stop_ringing(self, context: ResponseContext) -> None:
        """End the current attempt as Timer C would (§16.8), on every branch."""
        context.pending.clear()
        for branch in list(context.branches):
            if branch.final is not None:
                continue
            if branch.provisional:
                self._cancel_branch(branch)
            else:
                self.branch_response(context, branch, synthesized(branch.request, 408))

    def _cancel_branch(self, branch: Branch) -> None:
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

        self._layer.send_request(cancel, send, reliable=peer.reliable)

    def branch_response(
        self, context: ResponseContext, branch: Branch, response: Response
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
            if not branch.provisional:
                branch.provisional = True
                if context.ringing_at is None:
                    context.ringing_at = self._clock.seconds()
                if self._events.dialogs:
                    self._dialog_changed(context, DialogState.EARLY, response)
            if branch.timer_c is not None and branch.timer_c.active():
                branch.timer_c.reset(self._settings().timer_c)
            if branch.cancel_pending:
                self._cancel_branch(branch)
            if not context.answered:
                self._forward_up(context, response)
            return
        if branch.timed_out and response.status == 487:
            # "the proxy [...] MAY [...] return 408 (Request Timeout)" (§16.8):
            # the caller learns nobody answered, not that it cancelled.
            response = synthesized(context.request, 408)
        branch.final = response
        if branch.timer_c is not None and branch.timer_c.active():
            branch.timer_c.cancel()
        branch.timer_c = None
        if 200 <= response.status < 300:
            if self._events.dialogs:
                self._dialog_changed(
                    context, DialogState.CONFIRMED, response, branch=branch
                )
            # §16.7 step 5: every 2xx to an INVITE goes up, even after another.
            if invite and context.answered:
                self._forward_up(context, response)
            self.finish(context, response)
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
            self.finish(context, context.best)

    def finish(self, context: ResponseContext, response: Response) -> None:
        """The attempt ended with ``response``: answer upstream, or let a plan go on."""
        if context.answered:
            return
        if context.on_ended is not None:
            # The call plan may forward instead (busy, no answer, unavailable).
            after = context.on_ended(context, response)
            if after is None:
                return
            response = after
        if response.status == 503:
            # §16.7 step 6: "the proxy SHOULD generate a 500 [...] instead" of
            # passing on a 503, which would make upstream give up on us.
            response = synthesized(context.request, 500)
        context.state = ForkState.ANSWERED
        self._forward_up(context, response)
        self._answered(context, response)
        if response.status >= 300 and self._events.dialogs:
            self._dialog_changed(context, DialogState.TERMINATED, response)
        # Late 2xx retransmissions still need the context (RFC 6026 Timer M).
        self._clock.callLater(self._timer_m, self._forget, context)

    def _dialog_changed(
        self,
        context: ResponseContext,
        state: DialogState,
        response: Response | None = None,
        *,
        branch: Branch | None = None,
    ) -> None:
        """Tell the event stream, for an INVITE that creates a dialog only.

        An EARLY without a To tag is no dialog yet (§12.1): nothing to say.
        """
        request = context.request
        if request.method != "INVITE":
            return
        try:
            if request.to_addr.tag is not None:
                return  # a re-INVITE: the dialog exists already
            to_tag = None if response is None else response.to_addr.tag
        except ParseError:
            return
        if state is DialogState.EARLY and to_tag is None:
            return
        self._events.dialog_changed(
            state,
            request,
            self._clock.seconds(),
            to_tag=to_tag,
            status=None if response is None else response.status,
            user=context.user,
            answered_by=None if branch is None else str(branch.request.uri),
            forwarded=None
            if branch is None
            else diversion_reason(branch.request.headers.get("diversion")),
        )

    def _forget(self, context: ResponseContext) -> None:
        self._contexts.pop(id(context.server), None)
        for branch in context.branches:
            if branch.timer_c is not None and branch.timer_c.active():
                branch.timer_c.cancel()
            self._branches.pop(id(branch.transaction), None)
            # The client transaction may outlive us (Timer D, Timer K) and its
            # send closure points back at the branch: drop our edge of that cycle
            # so refcounting frees a call, not the garbage collector.
            branch.transaction = None

    def _forward_up(self, context: ResponseContext, response: Response) -> None:
        """Send a response upstream on the server transaction, our Via removed."""
        if response.headers.get_all("via") and self._is_our_via(response.top_via):
            _, headers = response.headers.pop_first_value("via")
            # Not dataclasses.replace: several times the cost, on every response.
            response = Response(
                response.status,
                response.reason,
                headers,
                response.body,
                response.version,
            )
        if "via" not in response.headers:
            return
        context.server.respond(response)


def synthesized(request: Request, status: int) -> Response:
    """A response we make up for a branch (408 timeout, 503 unreachable, 487)."""
    return request.response(status)


def _better(candidate: Response, best: Response) -> bool:
    """§16.7 step 6: a 6xx wins; otherwise the lowest response class."""

    def rank(status: int) -> int:
        return 0 if status >= 600 else status // 100

    return rank(candidate.status) < rank(best.status)


def _via_peer(via: Via, peer: Peer) -> Peer:
    """Where the sender of a request listens: its flow, by its stamped Via."""
    if peer.reliable:
        return peer
    return response_destination(via, peer)


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


__all__ = [
    "TIMER_C",
    "AttemptEnded",
    "Branch",
    "Destination",
    "ForkSettings",
    "ForkState",
    "Forking",
    "ResponseContext",
    "synthesized",
]
