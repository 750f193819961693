"""SUBSCRIBE: busy lamps served here, other event packages routed to the phones.

What a SUBSCRIBE meets, in order:

1. In a subscription dialog of ours (its To tag and Call-ID name one): a
   refresh, or with ``Expires: 0`` an unsubscribe (RFC 6665 §4.2.1.4), from
   the subscriber who made it only. A To tag of a dialog we
   merely record-routed (a presence subscription between phones) is proxied;
   any other gets 481 (RFC 3261 §12.2.2: no such dialog).
2. Not for one of our domains (or with a Route): proxied as today. The core
   already refused outsiders with 403: no relay for foreign domains.
3. For our domain: ``Event: dialog`` is ours (the notifier); packages the
   phones serve themselves (presence, message-summary...) are proxied to the
   user's phones as any request; any other package, or none, gets 489 with
   Allow-Events (RFC 6665 §4.2.1.1, the 489 of §8.3.2).
4. The subscriber must be a user of ours: authenticated when there is a users
   file (the core challenged with 407 like any request from our domains), or
   without one, a From in our domains; else 403. Caps: per subscriber (403)
   and in total (503 with Retry-After).
5. Expires (RFC 6665 §4.2.1.1): default 3600 (RFC 4235 §3.2), 423 with
   Min-Expires below the minimum, cut to the maximum; 0 is a fetch: one
   NOTIFY, nothing kept. The 200 carries Expires and our Contact (RFC 3261
   §12.1.1: a response that makes a dialog names the UAS's target), then the
   notifier NOTIFYs at once.
"""

from __future__ import annotations

from sipproxy.proxy.checks import RejectedError
from sipproxy.proxy.context import HandlerContext, Incoming
from sipproxy.proxy.handlers import ALLOW_EVENTS, proxy
from sipproxy.proxy.notifier import DEFAULT_EXPIRES, Notifier, Subscription
from sipproxy.sip.dialoginfo import CONTENT_TYPE
from sipproxy.sip.errors import ParseError
from sipproxy.sip.message import Request
from sipproxy.sip.uri import SipURI

__all__ = ["ROUTED_PACKAGES", "on_subscribe"]

#: Packages the users' phones (or their voicemail) serve: routed to the phones.
ROUTED_PACKAGES = frozenset(
    {
        "presence",
        "presence.winfo",
        "message-summary",
        "conference",
        "call-info",
        "line-seize",
        "as-feature-event",
        "ua-profile",
    }
)


async def on_subscribe(ctx: HandlerContext, incoming: Incoming) -> None:
    """Handle one SUBSCRIBE (see the module's notes for the order of rules)."""
    notifier = ctx.notifier
    request = incoming.request
    if notifier is None:
        await proxy(ctx, incoming)
        return
    to_tag = request.to_addr.tag
    if to_tag is not None:
        key = notifier.key_of(
            request.headers.get("call-id") or "", request.from_addr.tag or "", to_tag
        )
        found = notifier.find(key)
        if found is None and notifier.shared and _subscriber_or_none(ctx, incoming):
            # Made, or refreshed, through another process on the same store.
            # Only for one of our users: a read of every subscription is no
            # answer to give anyone who invents a To tag.
            await notifier.sync()
            found = notifier.find(key)
        if found is not None:
            _refresh(ctx, notifier, incoming, found)
            return
        if incoming.inbound_flow is not None or incoming.owner_flow is not None:
            await proxy(ctx, incoming)  # a dialog between phones we record-routed
            return
        raise RejectedError(481, "Subscription Does Not Exist")
    if incoming.has_route or not (incoming.ours_domain or incoming.to_us):
        await proxy(ctx, incoming)
        return
    package = _package(request)
    if package in ROUTED_PACKAGES:
        await proxy(ctx, incoming)
        return
    if package != "dialog":
        raise RejectedError(489, "Bad Event", (("Allow-Events", ALLOW_EVENTS),))
    _subscribe(ctx, notifier, incoming)


def _package(request: Request) -> str:
    event = request.headers.get("event") or ""
    return event.partition(";")[0].strip().lower()


def _subscriber(ctx: HandlerContext, incoming: Incoming) -> str:
    """Who subscribes: a user of ours, or 403."""
    if ctx.identity.auth is not None:
        if incoming.user is None:
            raise RejectedError(403, "Not Our User")
        return incoming.user
    try:
        uri = incoming.request.from_addr.uri
    except ParseError:
        raise RejectedError(403, "Not Our User") from None
    if (
        not isinstance(uri, SipURI)
        or not uri.user
        or uri.host.lower().strip("[]") not in ctx.settings.domains
    ):
        raise RejectedError(403, "Not Our User")
    return uri.unescaped_user or uri.user


def _subscriber_or_none(ctx: HandlerContext, incoming: Incoming) -> str | None:
    try:
        return _subscriber(ctx, incoming)
    except RejectedError:
        return None


def _expires(notifier: Notifier, request: Request) -> int:
    """The subscription's duration (RFC 6665 §4.2.1.1), or 423 / 400."""
    settings = notifier.settings
    text = request.headers.get("expires")
    if text is None:
        wanted = DEFAULT_EXPIRES
    else:
        text = text.strip()
        if not (text.isascii() and text.isdigit()) or len(text) > 10:
            raise RejectedError(400, "Bad Expires")
        wanted = int(text)
    if wanted == 0:
        return 0
    if wanted < settings.min_expires:
        # Too short to be worth the NOTIFYs: 423 (RFC 6665 §4.2.1.1) with the
        # shortest we take in Min-Expires (RFC 3261 §20.23).
        raise RejectedError(
            423, "Interval Too Brief", (("Min-Expires", str(settings.min_expires)),)
        )
    return min(wanted, settings.max_expires)


def _accepts_dialog_info(request: Request) -> bool:
    """RFC 6665 §4.2.1.1: Accept, if present, must allow the body we send."""
    accept = request.headers.get_all("accept")
    if not accept:
        return True
    kinds = {
        part.partition(";")[0].strip().lower()
        for value in accept
        for part in value.split(",")
    }
    # An empty Accept is read as no constraint: phones that write one mean
    # "the package's default" (RFC 4235 §3.3: dialog-info+xml), not "nothing".
    return bool(kinds & {CONTENT_TYPE, "application/*", "*/*"}) or kinds == {""}


def _subscribe(ctx: HandlerContext, notifier: Notifier, incoming: Incoming) -> None:
    request = incoming.request
    uri = request.request_uri
    subscriber = _subscriber(ctx, incoming)
    if not isinstance(uri, SipURI) or not uri.user:
        raise RejectedError(404, "Not Found")
    lamp = notifier.lamps.lamp(uri.unescaped_user or uri.user)
    if lamp is None:
        raise RejectedError(404, "Not Found")
    if not _accepts_dialog_info(request):
        raise RejectedError(406, None, (("Accept", CONTENT_TYPE),))
    contacts = request.contacts
    if len(contacts) != 1:
        # RFC 3261 §8.1.1.8: "The Contact header field MUST be present and
        # contain exactly one SIP or SIPS URI in any request that can result
        # in the establishment of a dialog."
        raise RejectedError(400, "Missing Contact")
    expires = _expires(notifier, request)
    settings = notifier.settings
    if expires and notifier.held_by(subscriber) >= settings.max_per_user:
        raise RejectedError(403, "Too Many Subscriptions")
    if expires and notifier.count() >= settings.max_total:
        raise RejectedError(503, "Too Many Subscriptions", (("Retry-After", "60"),))
    local_tag = ctx.stamps.to_tag(request.headers)
    call_id = request.headers.get("call-id") or ""
    remote_tag = request.from_addr.tag or ""
    now = ctx.clock.seconds()
    peer, channel = incoming.peer, incoming.channel
    contact = our_contact(ctx, incoming)
    to, sender = request.to_addr, request.from_addr
    subscription = Subscription(
        key=notifier.key_of(call_id, remote_tag, local_tag),
        lamp=lamp,
        entity=str(_entity(uri)),
        subscriber=subscriber,
        call_id=call_id,
        local_tag=local_tag,
        remote_tag=remote_tag,
        local_uri=f"<{to.uri}>",
        remote_uri=f"<{sender.uri}>",
        remote_target=str(contacts[0].uri),
        contact=contact,
        event=request.headers.get("event") or "dialog",
        transport=peer.transport,
        host=peer.host,
        port=peer.port,
        connection_id=channel.connection_id,
        expires_at=now + expires,
        created_at=now,
    )
    # A fetch (Expires: 0) gets 200 too: RFC 6665 §8.3.1 deprecates 202.
    ctx.answer(
        incoming,
        200,
        None,
        (("Expires", str(expires)), ("Contact", contact)),
        why="notifier",
    )
    if expires:
        notifier.subscribe(subscription)
    else:
        notifier.fetch(subscription)


def _refresh(
    ctx: HandlerContext,
    notifier: Notifier,
    incoming: Incoming,
    subscription: Subscription,
) -> None:
    subscriber = _subscriber(ctx, incoming)
    if subscriber != subscription.subscriber:
        raise RejectedError(403, "Not Your Subscription")
    request = incoming.request
    if _package(request) != "dialog":
        raise RejectedError(489, "Bad Event", (("Allow-Events", ALLOW_EVENTS),))
    expires = _expires(notifier, request)
    contact = our_contact(ctx, incoming)
    ctx.answer(
        incoming,
        200,
        None,
        (("Expires", str(expires)), ("Contact", contact)),
        why="notifier",
    )
    if expires == 0:
        notifier.unsubscribe(subscription)
    else:
        notifier.refresh(
            subscription, expires, incoming.peer, incoming.channel.connection_id
        )


def _entity(uri: SipURI) -> SipURI:
    """The resource as subscribed: scheme, user and host, no port or parameters.

    The body's ``entity`` (RFC 4235 §4.1) names what the key watches as the
    phone asked for it (``sip:102@...`` for an extension, not the user's own
    AOR): a phone that matches a NOTIFY to a key by its entity compares it
    with the key's value, as the phone wrote it.
    """
    return SipURI(uri.scheme, uri.user, None, uri.host.lower(), None)


def our_contact(ctx: HandlerContext, incoming: Incoming) -> str:
    """Our Contact toward the subscriber: where its refreshes reach us."""
    peer = incoming.peer
    host, port = ctx.stamps.host_port(peer)
    param = "" if peer.transport == "udp" else f";transport={peer.transport}"
    return f"<sip:{host}:{port}{param}>"
