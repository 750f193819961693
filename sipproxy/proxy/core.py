"""The server core: every message the transports parse comes here.

Theory of operation (for now, before the transaction layer): a request is
validated (RFC 3261 §16.3), its top Via stamped with ``received``/``rport``
(§18.2.1, RFC 3581), and then either answered here (OPTIONS to the server itself,
§11) or refused with the status that says why. Responses that match no
transaction of ours are dropped (§16.7, a proxy with no client transaction has
nothing to forward them to). Every refusal goes through :meth:`Proxy._respond`,
the one place that turns a decision into a response, and is logged in one line.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence

from twisted.logger import Logger

from sipproxy.proxy.checks import (
    RejectedError,
    check_max_forwards,
    check_proxy_require,
    check_require,
    check_uri_scheme,
    is_local_uri,
)
from sipproxy.sip.errors import ParseError
from sipproxy.sip.headers import Headers
from sipproxy.sip.message import Request, Response, response_from_headers
from sipproxy.sip.parser import validate_request, validate_response
from sipproxy.transport.peer import (
    Channel,
    Peer,
    response_destination,
    stamp_received,
)

#: Methods this server handles today; OPTIONS answers list them (RFC 3261 §11.2).
ALLOW = ("OPTIONS",)
#: Option tags we support (RFC 3261 §19.2); Require/Proxy-Require beyond them -> 420.
SUPPORTED: tuple[str, ...] = ()
#: Bodies we understand as a UAS (OPTIONS answers, §11.2).
ACCEPT = "application/sdp"


class Proxy:
    """Decides what to do with each message; the transports only move bytes."""

    log = Logger()

    def __init__(
        self,
        *,
        local_hosts: Collection[str],
        local_ports: Collection[int],
        secret: bytes,
    ) -> None:
        """Take what identifies this server; no I/O happens here.

        :param local_hosts: lowercased names and addresses that mean "us".
        :param local_ports: ports we listen on.
        :param secret: per-start random bytes that make our To tags unguessable.
        """
        self._hosts = frozenset(h.lower().strip("[]") for h in local_hosts)
        self._ports = frozenset(local_ports)
        self._secret = secret

    def message_received(self, message: object, peer: Peer, channel: Channel) -> None:
        """A parsed message arrived from ``peer``."""
        if isinstance(message, Response):
            self._response_received(message, peer)
        elif isinstance(message, Request):
            self._request_received(message, peer, channel)

    def message_invalid(self, error: Exception, peer: Peer, channel: Channel) -> None:
        """Bytes that are no acceptable message: answer if we can, else drop.

        "If a request fails [the syntax check] the element MUST behave as a UAS
        and respond with an error code" (RFC 3261 §16.3 step 1); a response is
        never answered, and neither is an ACK.
        """
        if not isinstance(error, ParseError):
            raise error
        self._refuse_malformed(error, peer, channel, _cseq_method(error.headers))

    def _refuse_malformed(
        self, error: ParseError, peer: Peer, channel: Channel, method: str | None
    ) -> None:
        headers = error.headers
        if headers is None or method == "ACK":
            self.log.info(
                "dropped malformed message from {host}:{port} over {transport}: "
                "{reason}",
                host=peer.host,
                port=peer.port,
                transport=peer.transport,
                reason=error.reason,
            )
            return
        self._respond(
            headers, error.status, None, error.extra, peer, channel, error.reason
        )

    def _response_received(self, response: Response, peer: Peer) -> None:
        try:
            validate_response(response)
        except ParseError as error:
            self.log.info(
                "dropped malformed response from {host}:{port}: {reason}",
                host=peer.host,
                port=peer.port,
                reason=error.reason,
            )
            return
        self.log.debug(
            "dropped stray {status} response from {host}:{port}",
            status=response.status,
            host=peer.host,
            port=peer.port,
        )

    def _request_received(self, request: Request, peer: Peer, channel: Channel) -> None:
        try:
            validate_request(request)
        except ParseError as error:
            self._refuse_malformed(error, peer, channel, request.method)
            return
        if request.method == "ACK":
            # An ACK matching no transaction of ours is for a response we sent
            # statelessly (§17.2.1 absorbs it); it is never answered.
            return
        try:
            extra = self._answer_here(request)
        except RejectedError as rejection:
            self._respond(
                request.headers,
                rejection.status,
                rejection.reason,
                rejection.extra,
                peer,
                channel,
                f"{request.method} refused",
            )
            return
        self._respond(request.headers, 200, None, extra, peer, channel, None)

    def _answer_here(self, request: Request) -> tuple[tuple[str, str], ...]:
        """Apply RFC 3261 §16.3; the extra header fields of a 200 we answer with.

        :raises RejectedError: with the status to refuse the request with.
        """
        check_uri_scheme(request)
        to_us = is_local_uri(request.request_uri, self._hosts, self._ports)
        answering_here = to_us and request.method == "OPTIONS"
        check_max_forwards(request, answering_here=answering_here)
        check_proxy_require(request, SUPPORTED)
        if answering_here:
            check_require(request, SUPPORTED)
            return (
                ("Allow", ", ".join(ALLOW)),
                ("Accept", ACCEPT),
                ("Supported", ", ".join(SUPPORTED)),
            )
        if request.method == "CANCEL":
            # §16.10 / §9.2: a CANCEL matching no transaction of ours.
            raise RejectedError(481)
        raise RejectedError(501)

    def _respond(
        self,
        headers: Headers,
        status: int,
        reason: str | None,
        extra: Sequence[tuple[str, str]],
        peer: Peer,
        channel: Channel,
        why: str | None,
    ) -> None:
        """Answer statelessly (RFC 3261 §8.2.6, §18.2.2); the one response path.

        A request whose Via or identifying fields are too broken to address a
        response the RFC way still gets its 400 when it has a Via at all: back on
        its connection, or over UDP to the address and port it came from.
        """
        to_tag = self._to_tag(headers) if status > 100 else None
        try:
            try:
                stamped = stamp_received(headers, peer)
                response = response_from_headers(
                    stamped, status, reason, to_tag=to_tag, extra=tuple(extra)
                )
                destination = (
                    peer
                    if peer.reliable
                    else response_destination(response.top_via, peer)
                )
            except ParseError:
                response = response_from_headers(
                    headers, status, reason, to_tag=to_tag, extra=tuple(extra),
                    strict=False,
                )  # fmt: skip
                destination = peer
        except ParseError as error:
            self.log.info(
                "dropped malformed message from {host}:{port} over {transport}: "
                "{reason}",
                host=peer.host,
                port=peer.port,
                transport=peer.transport,
                reason=error.reason,
            )
            return
        if why is not None:
            self.log.info(
                "answered {status} to {host}:{port} over {transport}: {why}",
                status=status,
                host=peer.host,
                port=peer.port,
                transport=peer.transport,
                why=why,
            )
        channel.send(response.to_bytes(), destination)

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
            key.encode("utf-8", "surrogateescape"), key=self._secret, digest_size=6
        )
        return digest.hexdigest()


def _cseq_method(headers: Headers | None) -> str | None:
    value = headers.get("cseq") if headers is not None else None
    if value is None:
        return None
    parts = value.split()
    return parts[1] if len(parts) == 2 else None
