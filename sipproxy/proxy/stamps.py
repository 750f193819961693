"""What the proxy writes into messages so that it knows them again, and who "us" is.

Three stamps: our Via on every forwarded request (its branch carries the loop key,
RFC 3261 §16.6 step 8, and a MAC over the Via below it), our Record-Route entries
on dialog-creating requests (each with a signed flow token, proxy/flows.py), and
nothing else. A message comes back with them: a response with our Via on top, an
in-dialog request with our Route entries. Only what verifies is acted on: a stray
2xx is relayed only to the hop our MAC names, an in-dialog request follows only a
token signed for its dialog.

"Is this us" is one question (:meth:`Stamps.is_us`): a host we answer to and, when
a port is named, a port we listen on. Request-URIs, Route entries, Vias and peers
all ask it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from dataclasses import replace
from typing import Protocol

from sipproxy.proxy.flows import Pinned, decode_flow, dialog_binding, encode_flow
from sipproxy.proxy.routing import make_branch
from sipproxy.sip.addressing import Peer, response_destination
from sipproxy.sip.errors import ParseError
from sipproxy.sip.headers import Headers
from sipproxy.sip.message import Request, Response
from sipproxy.sip.transports import TLS, UDP, kind_of
from sipproxy.sip.uri import SipURI
from sipproxy.sip.via import Via
from sipproxy.transport.sender import Transports


class LocalSettings(Protocol):
    """What "us" is, from the server's (reloadable) settings."""

    @property
    def local_hosts(self) -> frozenset[str]:
        """Our domains, aliases and listening addresses, lowercased, no brackets."""
        ...

    @property
    def local_ports(self) -> frozenset[int]:
        """The ports we listen on."""
        ...


class HasLocalSettings(Protocol):
    """Whatever holds the current settings (the proxy; they change on reload)."""

    @property
    def settings(self) -> LocalSettings:
        """The settings now."""
        ...


class HostPort(Protocol):
    """Anything that names a host and maybe a port: SipURI, Via, Peer."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int | None: ...


class Stamps:
    """Our Via and Record-Route, and the checks that a message carries them intact."""

    def __init__(
        self,
        *,
        transports: Transports,
        holder: HasLocalSettings,
        secret: bytes,
        counter: Iterator[int],
    ) -> None:
        """Take collaborators.

        :param holder: has the current settings; read on every question, not
            copied, so a reload takes effect at once (an attribute read, not a
            call: this is asked several times per message).
        :param secret: keys Record-Route tokens; Via MACs use a key derived from
            it, so a token never passes for a MAC.
        :param counter: makes each branch of ours unique.
        """
        self._transports = transports
        self._holder = holder
        self._secret = secret
        self._via_secret = hmac.new(secret, b"via", "sha256").digest()
        self._counter = counter

    # -- is this us ------------------------------------------------------------

    def is_ours(self, where: HostPort) -> bool:
        """Whether a URI, a Via or a peer names this server (port None: any).

        One question for Route entries, Request-URIs, Vias coming back and
        sources; taking the value itself keeps it one call on the message path.
        """
        settings = self._holder.settings
        if where.host.lower().strip("[]") not in settings.local_hosts:
            return False
        port = where.port
        return port is None or port in settings.local_ports

    # -- what we write ---------------------------------------------------------

    def our_via(
        self, key: str, peer: Peer, *, rport: bool, upstream: Via | None = None
    ) -> Via:
        """Our Via toward ``peer``: the address it can answer to, a loop-key branch.

        :param upstream: the Via below ours, where responses go next. The branch
            signs it, so a response that outlives its transaction is relayed only
            to the hop we really received the request from (§16.11): otherwise a
            forged Via below ours would make us a reflector.
        """
        host, port = self.host_port(peer)
        branch = make_branch(key, f"{next(self._counter):x}")
        if upstream is not None:
            branch = f"{branch}.{self._via_mac(branch, upstream)}"
        # Built as Via.parse would read it back, without writing and parsing
        # text: one per forwarded request. Every part is ours (a configured or
        # socket address, a token branch), so nothing needs checking.
        params: tuple[tuple[str, str | None], ...] = (("branch", branch),)
        if rport:
            params += (("rport", None),)
        return Via("SIP/2.0", peer.transport.upper(), host, port, params)

    def record_route(
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
        host, port = self.host_port(peer)
        token = encode_flow(
            peer, connection_id, self._secret, dialog=dialog, server_name=server_name
        )
        user = f"{token}@"
        kind = kind_of(peer.transport)
        param = "" if kind is UDP else f";transport={kind.uri_param}"
        if secure and kind.secure:
            # §16.6 step 4: for a SIPS Request-URI "the URI placed into the
            # Record-Route header field MUST be a SIPS URI". A sips: URI means
            # TLS by itself; facing a browser it still says wss (RFC 7118 §5.2.2).
            param = "" if kind is TLS else param
            return f"<sips:{user}{host}:{port}{param};lr>"
        return f"<sip:{user}{host}:{port}{param};lr>"

    def to_tag(self, headers: Headers) -> str:
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

    # -- what comes back -------------------------------------------------------

    def flow_from_routes(self, request: Request) -> Pinned | None:
        """The flow named by the last of our own leading Route entries (flows.py).

        Only the last one counts: it faces the next hop. Its token must have been
        signed for this request's dialog (Call-ID and either tag: requests from
        the callee carry the creating request's tag in To); anything else, an
        entry without a token included, names no flow and proves no dialog.
        """
        try:
            routes = request.routes
        except ParseError:
            return None
        last = None
        for route in routes:
            uri = route.uri
            if not (isinstance(uri, SipURI) and self.is_ours(uri)):
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
        return decode_flow(last.user, self._secret, dialogs=dialogs)

    def forward_stray_response(self, response: Response) -> None:
        """§16.11 / RFC 6026: a 2xx with no client transaction goes up statelessly.

        Only when the top Via is one we wrote for the Via below it (the branch
        signs it, :meth:`our_via`): a response naming us on top of a Via of the
        attacker's choice is dropped, not relayed to that choice.
        """
        try:
            top = response.top_via
        except ParseError:
            return
        if not self.is_ours(top) or not 200 <= response.status < 300:
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

    def host_port(self, peer: Peer) -> tuple[str, int]:
        """What we call ourselves toward ``peer`` (--advertise, else the socket)."""
        advertised = self._transports.advertised(peer.transport, peer.host)
        if advertised is None:
            return "127.0.0.1", 5060
        host = advertised.host
        return (f"[{host}]" if ":" in host else host), advertised.port


__all__ = ["HasLocalSettings", "LocalSettings", "Stamps"]
