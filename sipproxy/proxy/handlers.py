"""Method handlers: what the proxy does with a request once it is classified.

Each handler takes the proxy's :class:`~sipproxy.proxy.context.HandlerContext` and
an :class:`~sipproxy.proxy.context.Incoming`, and answers, forwards or raises
:class:`~sipproxy.proxy.checks.RejectedError` (the core answers it). A new method
is a handler here, or in a module of its own, plus one entry in :data:`HANDLERS`;
a method without an entry is proxied (:func:`proxy`). ACKs are not requests in a
transaction: the core hands them to :func:`forward_ack`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sipproxy.auth.gate import without_our_credentials
from sipproxy.location import Flow
from sipproxy.proxy.checks import RejectedError, check_require
from sipproxy.proxy.context import HandlerContext, Incoming, is_sips
from sipproxy.proxy.dialplan import loose_route, route_by_dialplan
from sipproxy.proxy.events import DialogState
from sipproxy.proxy.identity import asserted_identity
from sipproxy.proxy.routing import (
    copy_with,
    loop_key,
    next_hop,
    prepare_forward,
    preprocess_routes,
)
from sipproxy.proxy.targets import with_routes
from sipproxy.sip.addressing import Peer
from sipproxy.sip.errors import ParseError
from sipproxy.sip.message import Request

#: Methods this server handles; OPTIONS answers list them (RFC 3261 §11.2).
ALLOW = (
    "INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE",
    "NOTIFY", "PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE",
)  # fmt: skip
#: Option tags we support (RFC 3261 §19.2); Require/Proxy-Require beyond them -> 420.
SUPPORTED = ("path", "outbound")
#: Bodies we understand as a UAS (OPTIONS answers, §11.2).
ACCEPT = "application/sdp"
#: Event packages we serve as notifier (Allow-Events, RFC 6665 §8.2.2: OPTIONS
#: answers and 489 list them): busy lamps (proxy/subscribe.py).
ALLOW_EVENTS = "dialog"

Handler = Callable[[HandlerContext, Incoming], Awaitable[None]]


async def on_options(ctx: HandlerContext, incoming: Incoming) -> None:
    """OPTIONS to the server itself gets 200 (RFC 3261 §11.2); others go on."""
    if not incoming.to_us:
        await proxy(ctx, incoming)
        return
    check_require(incoming.request, SUPPORTED)
    ctx.answer(
        incoming,
        200,
        None,
        (
            ("Allow", ", ".join(ALLOW)),
            ("Accept", ACCEPT),
            ("Supported", ", ".join(SUPPORTED)),
            ("Allow-Events", ALLOW_EVENTS),
        ),
    )


async def on_register(ctx: HandlerContext, incoming: Incoming) -> None:
    """REGISTER goes to the registrar (RFC 3261 §10.3), for our domains only."""
    request = incoming.request
    if not incoming.trusted_source and "path" in request.headers:
        # RFC 3327 §5.2: only an edge proxy we trust may put itself on the way
        # to a phone; a phone's own Path would steer its calls to any host.
        # Ignored, as if it had not been written.
        request = request.with_headers(request.headers.remove("Path"))
    if ctx.registrar is None or not incoming.ours_domain:
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
    flow = ctx.owners.with_owner(flow, peer)
    answer = await ctx.registrar.register(request, flow, now=ctx.clock.seconds())
    ctx.respond(
        incoming.transaction,
        request,
        answer.status,
        answer.reason,
        answer.headers,
        why=None if answer.status == 200 else "registrar",
        source=peer,
        user=incoming.user,
    )


async def on_cancel(ctx: HandlerContext, incoming: Incoming) -> None:
    """CANCEL is matched to its INVITE here (§16.10), never forwarded as such."""
    ctx.cancel(incoming)


def on_bye(ctx: HandlerContext, incoming: Incoming) -> Awaitable[None]:
    """BYE ends its dialog (§15.1.2) as soon as it is sent; then it is proxied.

    Only a BYE that brought back our token for its dialog ends one: a Call-ID
    and tags alone are claims anyone can copy. A BYE relayed to us by another
    process of ours was reported there.
    """
    if incoming.inbound_flow is not None and incoming.owner_flow is None:
        ctx.dialog_changed(DialogState.TERMINATED, incoming)
    # Not a coroutine of its own: proxy's is the one awaited (one frame less).
    return proxy(ctx, incoming)


async def proxy(ctx: HandlerContext, incoming: Incoming) -> None:
    """Any other request is forwarded (RFC 3261 §16.5, §16.6), in a dialog or not."""
    request, transaction = incoming.request, incoming.transaction
    has_route, ours_domain = incoming.has_route, incoming.ours_domain
    inbound_flow, user = incoming.inbound_flow, incoming.user
    settings = ctx.settings
    office_calls = ctx.office_calls
    if not incoming.in_our_dialog:
        request = asserted_identity(request, user, incoming.trusted_source)
    if request.method == "INVITE":
        # §16.2: "the proxy MUST [...] generate a 100 (Trying) response".
        transaction.respond(request.response(100))
        if (
            request.to_addr.tag is None
            and inbound_flow is None
            and office_calls is not None
        ):
            request = office_calls.identity(request, user)
    routed = None
    if not has_route and inbound_flow is None and request.to_addr.tag is None:
        routed = route_by_dialplan(request.request_uri, request.uri, settings.dialplan)
    if routed is not None:
        if ctx.identity.auth is not None and user is None:
            # A trunk costs money: only our authenticated users dial out.
            raise RejectedError(403, "Not A Relay")
        # An operator's rule (a number to a trunk, a domain to a gateway).
        request = copy_with(request, routed, request.headers)
        if settings.outbound_proxy:
            request = with_routes(request, [loose_route(settings.outbound_proxy)])
        targets = await ctx.targets.by_uri(request, None)
    elif (
        office_calls is not None
        and (
            call := office_calls.call_for(request, has_route, inbound_flow, ours_domain)
        )
        is not None
    ):
        await office_calls.begin(
            call, transaction, request, incoming.key, incoming.peer, incoming.channel
        )
        return
    else:
        if (
            ours_domain
            and not has_route
            and inbound_flow is None
            and office_calls is not None
        ):
            request = office_calls.extension(request)
        targets = await ctx.targets.for_request(
            request,
            inbound_flow,
            has_route,
            ours_domain,
            caller=user,
            # Another process of ours chose the Request-URI from a binding.
            vouched=incoming.owner_flow is not None,
        )
    if is_sips(request.uri):
        targets = ctx.targets.tls_only(targets)
    ctx.forward(incoming, request, targets)


def forward_ack(ctx: HandlerContext, request: Request, peer: Peer) -> None:
    """An ACK for a 2xx follows the dialog's flow statelessly (§16.11, §17.2.3).

    An ACK carries no answer and is never challenged, so it travels only inside
    a dialog whose token it brings back; any other ACK (one for a non-2xx the
    transaction layer did not match, or one naming a host of the sender's
    choice) is absorbed here: otherwise anyone could bounce packets off us.
    """
    try:
        _forward_ack_in_dialog(ctx, request)
    except ParseError as error:
        # Validated fields only get here, but an ACK is never answered: a
        # Route or field that fails to parse later just drops it.
        ctx.dropped(peer, f"ACK: {error.reason}")


def _forward_ack_in_dialog(ctx: HandlerContext, request: Request) -> None:
    if request.to_addr.tag is None:
        return
    owners = ctx.owners
    flow = ctx.stamps.flow_from_routes(request) or owners.if_connected(
        owners.owner_flow(request)
    )
    if flow is None:
        return
    peer = flow.peer
    if ctx.stamps.is_ours(peer):
        # A token naming ourselves would loop until Max-Forwards runs out.
        return
    key = loop_key(request)
    request = preprocess_routes(request, ctx.stamps.is_ours)
    if request.max_forwards == 0:
        return
    copy, _ = next_hop(request)
    # A 2xx ACK repeats the INVITE's credentials (§13.2.2.4): ours stay here.
    copy = without_our_credentials(copy, ctx.identity.realm)
    via = ctx.stamps.our_via(key, peer, rport=False)
    copy = prepare_forward(copy, request_uri=None, via=via)
    ctx.transports.send(
        copy.to_bytes(),
        peer,
        connection_id=flow.connection_id,
        server_name=flow.server_name,
    )


#: Who handles a request, by method (after §16.3 and the auth gate); any method
#: not listed is proxied.
HANDLERS: dict[str, Handler] = {
    "OPTIONS": on_options,
    "REGISTER": on_register,
    "CANCEL": on_cancel,
    "BYE": on_bye,
}

__all__ = [
    "ACCEPT",
    "ALLOW",
    "ALLOW_EVENTS",
    "HANDLERS",
    "SUPPORTED",
    "Handler",
    "forward_ack",
    "on_bye",
    "on_cancel",
    "on_options",
    "on_register",
    "proxy",
]
