"""Target lookup: where a request goes (RFC 3261 §16.5), as copies to send.

The lookup beside the registrar's save. For a request to one of our users the
location service gives bindings, and each binding gives the destinations it can
be reached at: its Path (RFC 3327), the process that holds its connection
(several processes sharing one store), its flow (RFC 5626, RFC 3581) or, when
nothing says NAT, its Contact. Any other request goes along its Route set or to
its Request-URI, resolved by RFC 3263; what the request names itself never
reaches an internal network unless the operator allows it (docs/security.md).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from sipproxy.guard import TrustedNetworks
from sipproxy.location import Binding, Flow, LocationService
from sipproxy.proxy.checks import RejectedError
from sipproxy.proxy.flows import Pinned
from sipproxy.proxy.forking import Destination
from sipproxy.proxy.routing import copy_with, next_hop
from sipproxy.sip.addressing import Peer, ip_of, same_address
from sipproxy.sip.errors import ParseError
from sipproxy.sip.message import Request
from sipproxy.sip.transports import (
    KINDS,
    TLS,
    UDP,
    by_uri_param,
    is_reliable,
    is_secure,
)
from sipproxy.sip.uri import SipURI
from sipproxy.transport.sender import Transports


class TargetSettings(Protocol):
    """What target lookup reads from the server's (reloadable) settings."""

    @property
    def allowed_destinations(self) -> TrustedNetworks:
        """--allow-destination: internal networks a request may name."""
        ...


class TargetLookup:
    """Bindings, Route sets and Request-URIs turned into destinations."""

    log = Logger()

    def __init__(
        self,
        *,
        clock: IReactorTime,
        transports: Transports,
        location: LocationService,
        settings: Callable[[], TargetSettings],
        is_ours: Callable[[SipURI], bool],
        auth_required: Callable[[], bool],
        counter: Iterator[int],
        resolve: Callable[[SipURI], Awaitable[list[Peer]]] | None = None,
        known_user: Callable[[str], bool] | None = None,
    ) -> None:
        """Take collaborators; nothing is looked up until asked.

        :param settings: the current settings (they change on reload).
        :param is_ours: whether a URI names this server.
        :param auth_required: whether users must authenticate (then an outsider
            learns nothing about which users exist).
        :param counter: numbers for the groups of one DNS lookup.
        :param resolve: RFC 3263 lookup for targets outside our domains.
        :param known_user: whether an AOR is a user of ours.
        """
        self._clock = clock
        self._transports = transports
        self._location = location
        self._settings = settings
        self._is_ours = is_ours
        self._auth_required = auth_required
        self._counter = counter
        self._resolve = resolve
        self._known_user = known_user

    async def for_request(
        self,
        request: Request,
        flow: Pinned | None,
        has_route: bool,
        ours_domain: bool,
        *,
        caller: str | None = None,
        vouched: bool = False,
    ) -> list[Destination]:
        """The target set (RFC 3261 §16.5) as copies to send, in order of trial.

        :param caller: the authenticated user of ours who sent the request, if any.
        :param vouched: the Request-URI was chosen by another process of ours.
        """
        if has_route or not ours_domain or flow is not None:
            return await self.by_uri(request, flow, named_by_request=not vouched)
        uri = request.request_uri
        assert isinstance(uri, SipURI)
        if uri.user is None:
            raise RejectedError(404)
        bindings = await self._location.bindings(uri.aor(), now=self._clock.seconds())
        if not bindings:
            # RFC 5630: sip: and sips: forms of an AOR name the same user; a
            # phone registers one of them, callers may use either (a SIPS call
            # then reaches only its TLS bindings: tls_only).
            scheme, _, rest = uri.aor().partition(":")
            other = f"{'sip' if scheme == 'sips' else 'sips'}:{rest}"
            bindings = await self._location.bindings(other, now=self._clock.seconds())
        if not bindings:
            known = self._known_user is not None and self._known_user(uri.aor())
            # No user oracle: with users to authenticate, an outsider
            # gets 480 for unknown and unregistered users alike (480 tells a
            # caller of a real user to try later; 404 would end the search).
            outsider = caller is None and self._auth_required()
            raise RejectedError(480 if known or outsider else 404)
        targets: list[Destination] = []
        for binding in bindings:
            targets.extend(await self.for_binding(request, binding))
        if not targets:
            raise RejectedError(480)
        return targets

    async def for_binding(
        self, request: Request, binding: Binding
    ) -> list[Destination]:
        """Where one binding of a user is reached; [] if nowhere right now."""
        copy = copy_with(request, binding.contact, request.headers)
        if binding.path:
            # RFC 3327 §5.3: the Path is the route to the phone; we follow it.
            return await self.by_uri(with_routes(copy, binding.path), None)
        flow = binding.flow
        if self._held_elsewhere(flow):
            return await self._targets_via_owner(copy, flow)
        direct = _direct_contact(binding)
        if direct is not None and self._transports.can_reach(direct):
            return [Destination(copy, direct)]
        peer = Peer(flow.transport, flow.remote_host, flow.remote_port)
        if (
            is_reliable(flow.transport)
            and self._transports.connection(flow.connection_id) is None
        ):
            # The phone's connection is gone; its source port was ephemeral, so
            # the only address left to try is the one its Contact names.
            try:
                return await self.by_uri(copy, None)
            except RejectedError:
                return []
        if not self._transports.can_reach(peer):
            return []
        return [Destination(copy, peer, flow.connection_id, pinned=True)]

    async def by_uri(
        self,
        request: Request,
        flow: Pinned | None,
        *,
        named_by_request: bool = False,
    ) -> list[Destination]:
        """Forward along the Route set or to the Request-URI (§16.5, §16.6).

        :param named_by_request: the hop is whatever the sender wrote (its
            Request-URI or preloaded Route), not a binding, a dial-plan rule or
            a signed token: internal networks are then out of reach.
        """
        copy, hop = next_hop(request)
        if flow is not None:
            return [
                Destination(
                    copy,
                    flow.peer,
                    flow.connection_id,
                    pinned=True,
                    server_name=flow.server_name,
                )
            ]
        if not isinstance(hop, SipURI):
            raise RejectedError(416)
        peers = await self._lookup(hop)
        if named_by_request:
            peers = [p for p in peers if self._may_name(p, hop)]
        if not peers:
            # An IP we have no socket for: nobody reachable (480). A name that
            # resolves to no SIP server: no such destination (404), not a 503,
            # which would tell the previous hop that we are the ones failing.
            raise RejectedError(480 if ip_of(hop.host) is not None else 404)
        # RFC 5922 §4: a TLS server proves the host of the URI, not its address.
        name = hop.host.strip("[]")
        # The addresses of one name are one destination with fallbacks, never
        # rung in parallel: a domain with many records must not fan one request
        # out to many hosts ; one group per lookup keeps them in order.
        group = next(self._counter)
        return [
            Destination(copy, peer, None, server_name=name, group=group)
            for peer in peers
        ]

    def tls_only(self, targets: list[Destination]) -> list[Destination]:
        """RFC 3261 §26.2.2: a SIPS Request-URI goes over TLS hops only (wss too).

        "the request MUST be sent [...] over TLS": a target reachable only over
        UDP or TCP is dropped rather than downgraded. None left: 416 if this
        server has no TLS at all (it cannot handle SIPS), else 480 (the callee
        has no secure way to be reached now).
        """
        secure = [t for t in targets if is_secure(t.peer.transport)]
        if not secure:
            if not any(self._transports.supports(k) for k in KINDS if is_secure(k)):
                raise RejectedError(416)
            raise RejectedError(480, "No TLS Path To Target")
        return secure

    async def _lookup(self, uri: SipURI) -> list[Peer]:
        peer = _peer_of(uri)
        if ip_of(peer.host) is not None:
            return [peer] if self._transports.can_reach(peer) else []
        if self._resolve is None:
            return []
        found = await self._resolve(uri)
        return [p for p in found if self._transports.can_reach(p)]

    def _held_elsewhere(self, flow: Flow) -> bool:
        """Whether another process holds this binding's connection."""
        if flow.owner is None or not is_reliable(flow.transport):
            return False
        try:
            owner = SipURI.parse(flow.owner)
        except ParseError:
            return False
        return not self._is_ours(owner)

    async def _targets_via_owner(
        self, request: Request, flow: Flow
    ) -> list[Destination]:
        """Send through the process that holds the phone's connection."""
        assert flow.owner is not None
        try:
            return await self.by_uri(with_routes(request, [f"<{flow.owner}>"]), None)
        except RejectedError:
            return []

    def _may_name(self, peer: Peer, hop: SipURI) -> bool:
        """Whether a request may send us to ``peer`` by naming it itself.

        Not to an internal address (loopback, private, link-local...) unless the
        operator allows its network: the Request-URI or a preloaded Route would
        otherwise reach services behind the proxy.
        """
        address = ip_of(peer.host)
        if address is None or not _is_internal(address):
            return True
        if peer.host in self._settings().allowed_destinations:
            return True
        self.log.info(
            "refused to send to {host}:{port} ({uri}): an internal address named "
            "by the request (allow-destination allows a network)",
            host=peer.host,
            port=peer.port,
            uri=str(hop),
        )
        return False


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
    if flow.transport != UDP.name or binding.reg_id is not None:
        return None
    try:
        uri = SipURI.parse(binding.contact)
    except ParseError:
        return None
    host = uri.host.strip("[]")
    if ip_of(host) is None or not same_address(host, flow.remote_host):
        return None
    transport = (uri.transport or UDP.uri_param).lower()
    if by_uri_param(transport) is not UDP:
        return None
    return Peer(UDP.name, flow.remote_host, uri.port or UDP.default_port)


def _peer_of(uri: SipURI) -> Peer:
    """RFC 3261 §19.1.2 defaults for an IP-addressed URI."""
    implied = TLS if uri.scheme.lower() == "sips" else UDP
    named = uri.transport.lower() if uri.transport else implied.uri_param
    kind = by_uri_param(named)
    host = (uri.param("maddr") or uri.host).strip("[]")
    if kind is None:  # one we do not carry keeps its name: nothing sends to it
        return Peer(named, host, uri.port or UDP.default_port)
    return Peer(kind.name, host, uri.port or kind.default_port)


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


def with_routes(request: Request, routes: Sequence[str]) -> Request:
    """``request`` with ``routes`` put on top of its Route set, in order."""
    headers = request.headers
    for value in reversed(routes):
        headers = headers.prepend("Route", value)
    return request.with_headers(headers)


__all__ = ["TargetLookup", "TargetSettings", "with_routes"]
