"""Office calls: the plan of sipproxy/office/, executed through the forking hooks.

A new INVITE to an extension, a ring group or a user with forwarding becomes an
:class:`OfficeCall`. :meth:`OfficeCalls.begin` follows its plan until something
rings and starts forking with the plan's hook (``ResponseContext.on_ended``):
when an attempt ends unanswered (busy, no answer within the ring time,
unavailable) the plan picks the next step, a next member or a forwarding target
with Diversion and History-Info, and rings it on the same context; otherwise the
answer goes upstream as forking would send it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from sipproxy.location import LocationService
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
from sipproxy.proxy.checks import RejectedError
from sipproxy.proxy.flows import Pinned
from sipproxy.proxy.forking import Destination, Forking, ResponseContext, synthesized
from sipproxy.proxy.targets import TargetLookup
from sipproxy.sip.addressing import Channel, Peer
from sipproxy.sip.errors import ParseError
from sipproxy.sip.message import Request, Response
from sipproxy.sip.uri import SipURI
from sipproxy.transaction.layer import ServerTransaction


class OfficeSettings(Protocol):
    """What office calls read from the server's (reloadable) settings."""

    @property
    def domains(self) -> frozenset[str]:
        """The domains we are the registrar of."""
        ...


@dataclass
class OfficeCall:
    """A call the office PBX plan steers: what it rings, where it goes."""

    plan: CallPlan
    #: the request as it arrived; forwarded copies are made from it
    original: Request
    #: the request as sent to the current destination (its URI and headers)
    request: Request
    #: the no-answer timer of the current attempt
    timer: IDelayedCall | None = None
    rang_out: bool = False


class OfficeCalls:
    """Runs office calls: the plan decides, forking rings."""

    log = Logger()

    def __init__(
        self,
        office: OfficePreferences,
        *,
        clock: IReactorTime,
        location: LocationService,
        forking: Forking,
        targets: TargetLookup,
        settings: Callable[[], OfficeSettings],
        auth_required: Callable[[], bool],
        known_user: Callable[[str], bool] | None = None,
    ) -> None:
        """Take collaborators; nothing happens until a call begins."""
        self._office = office
        self._clock = clock
        self._location = location
        self._forking = forking
        self._lookup = targets
        self._settings = settings
        self._auth_required = auth_required
        self._known_user = known_user

    def call_for(
        self,
        request: Request,
        has_route: bool,
        flow: Pinned | None,
        ours_domain: bool,
    ) -> OfficeCall | None:
        """An office call for a new INVITE to a user, extension or group of ours."""
        if (
            request.method != "INVITE"
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
        call = OfficeCall(plan, request, request)
        call.plan.current = destination
        return call

    def identity(self, request: Request, user: str | None) -> Request:
        """The callee's phone shows the caller's extension (RFC 3325).

        A proxy may not rewrite From (RFC 3261 §16.6), so the extension travels as
        the display name of a P-Asserted-Identity naming the caller, which phones
        and PBXs show in preference to From. The caller is the authenticated
        user, or without --users the user part of a From in our domains. One
        such header written by the caller is replaced: we assert who it is.
        """
        try:
            caller = request.from_addr.uri
        except ParseError:
            return request
        if not isinstance(caller, SipURI) or not caller.user:
            return request
        host = caller.host.lower()
        if host not in self._settings().domains:
            return request
        name = user if self._auth_required() else caller.user
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

    def extension(self, request: Request) -> Request:
        """Other requests to an extension (MESSAGE, SUBSCRIBE) go to its user."""
        uri = request.request_uri
        if not isinstance(uri, SipURI) or uri.user is None:
            return request
        user = self._office.office.extensions.get(uri.user)
        if user is None:
            return request
        return replace(request, uri=str(replace(uri, user=user)))

    async def begin(
        self,
        call: OfficeCall,
        transaction: ServerTransaction,
        request: Request,
        key: str,
        peer: Peer,
        channel: Channel,
    ) -> None:
        """Follow the plan until something rings, and fork with the plan's hook."""
        destination = call.plan.current
        assert destination is not None
        forwarding = await self._forwarding(call, destination)
        first = call.plan.enter(destination, forwarding)
        targets, ring = await self._resolve(call, first)
        context = self._forking.start(
            transaction,
            request,
            key,
            targets,
            peer,
            channel,
            parallel=ring.parallel,
            on_ended=functools.partial(self._after, call),
        )
        self._arm(context, call, ring)

    async def _forwarding(self, call: OfficeCall, target: Target) -> Forwarding:
        """The TOML forwarding of a user or group, with stored values winning."""
        name = call.plan.name_of(target)
        return await self._office.effective(name) if name else Forwarding()

    async def _resolve(
        self, call: OfficeCall, step: Step | None
    ) -> tuple[list[Destination], Ring]:
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
                call.request = self._forwarded(call, step)
                forwarding = await self._forwarding(call, step.target)
                step = call.plan.enter(step.target, forwarding)
                continue
            try:
                targets = await self._targets(call, step)
            except RejectedError as rejection:
                targets, status = [], rejection.status
            if targets:
                return targets, step
            step = call.plan.ended(AttemptOutcome.UNAVAILABLE)

    async def _targets(self, call: OfficeCall, ring: Ring) -> list[Destination]:
        if ring.uri is not None:
            return await self._lookup.by_uri(replace(call.request, uri=ring.uri), None)
        targets: list[Destination] = []
        known = False
        for user in ring.users:
            # A group member on do-not-disturb is skipped, not rung.
            if ring.newest_only and (await self._office.effective(user)).dnd:
                continue
            aor = SipURI.parse(f"sip:{user}@{call.plan.domain}").aor()
            known = known or (self._known_user is not None and self._known_user(aor))
            bindings = await self._location.bindings(aor, now=self._clock.seconds())
            for binding in bindings[:1] if ring.newest_only else bindings:
                targets.extend(await self._lookup.for_binding(call.request, binding))
        if not targets:
            # A group's members are users: nobody reachable is 480, never 404.
            raise RejectedError(480 if known or ring.newest_only else 404)
        return targets

    def _forwarded(self, call: OfficeCall, step: Forward) -> Request:
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

    def _arm(self, context: ResponseContext, call: OfficeCall, ring: Ring) -> None:
        call.rang_out = False
        if ring.seconds is not None:
            call.timer = self._clock.callLater(
                ring.seconds, self._rang_out, context, call
            )

    def _rang_out(self, context: ResponseContext, call: OfficeCall) -> None:
        """Nobody answered in time: end the attempt as Timer C would (§16.8)."""
        if context.on_ended is None or context.answered or context.cancelled:
            return
        call.timer = None
        call.rang_out = True
        self._forking.stop_ringing(context)

    def _after(
        self, call: OfficeCall, context: ResponseContext, response: Response
    ) -> Response | None:
        """The attempt ended with ``response``: the answer to send, or None.

        The forking hook of an office call (``ResponseContext.on_ended``). None:
        the plan goes on (the next member of a group, a forwarding target).
        """
        if call.timer is not None and call.timer.active():
            call.timer.cancel()
        call.timer = None
        if response.status < 300 or context.cancelled:
            return response
        outcome = outcome_of(response.status, rang_out=call.rang_out)
        step = call.plan.ended(outcome)
        if step is None:
            return synthesized(context.request, 480) if call.rang_out else response
        if isinstance(step, Refuse):
            return context.request.response(step.status, step.reason)
        context.best = None
        Deferred.fromCoroutine(self._next(context, call, step)).addErrback(
            self._failed, context
        )
        return None

    async def _next(
        self, context: ResponseContext, call: OfficeCall, step: Step
    ) -> None:
        try:
            targets, ring = await self._resolve(call, step)
        except RejectedError as rejection:
            context.on_ended = None
            self._forking.finish(
                context, context.request.response(rejection.status, rejection.reason)
            )
            return
        if context.cancelled:
            context.on_ended = None
            self._forking.finish(context, synthesized(context.request, 487))
            return
        self._forking.ring(context, targets, ring.parallel)
        self._arm(context, call, ring)

    def _failed(self, failure: Any, context: ResponseContext) -> None:
        self.log.failure("office call failed", failure)
        context.on_ended = None
        self._forking.finish(context, synthesized(context.request, 500))


__all__ = ["OfficeCall", "OfficeCalls", "OfficeSettings"]
