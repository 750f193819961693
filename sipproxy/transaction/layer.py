"""The transaction layer: match or create, absorb retransmissions, hand on the rest.

Theory of operation (RFC 3261 §17). The transports give every parsed message to
:meth:`TransactionLayer.message_received`.

* A request is validated first (a :class:`ParseError` goes to the TU's
  ``message_invalid``, and no transaction exists), then its top Via is stamped with
  ``received``/``rport`` (§18.2.1). An ACK goes to the INVITE server transaction it
  acknowledges, which absorbs it, or, when it acknowledges a 2xx or matches
  nothing, to the TU without a transaction. Any other request either matches a
  server transaction (a retransmission: the transaction resends its last response)
  or creates one, which the TU receives together with the request.
* A response is matched by top Via branch and CSeq method to a client transaction,
  which passes to the TU what the TU must see; one that matches none (a stray, or a
  2xx retransmission after Timer M) goes to the TU without a transaction.
* The TU starts client transactions with :meth:`TransactionLayer.send_request`.

Transactions remove themselves from the tables when they terminate, through the
callback the layer gives them; the tables are edited only by identity, so a TU
that responds, or a timer that fires, in the middle of any of this is safe.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from sipproxy.sip.errors import ParseError
from sipproxy.sip.message import Request, Response
from sipproxy.sip.parser import validate_request, validate_response
from sipproxy.transaction.client import (
    ClientInviteTransaction,
    ClientNonInviteTransaction,
)
from sipproxy.transaction.keys import (
    ClientKey,
    ServerKey,
    ack_keys,
    cancelled_invite_key,
    client_key,
    server_key,
)
from sipproxy.transaction.server import (
    ServerInviteTransaction,
    ServerNonInviteTransaction,
)
from sipproxy.transaction.state import State
from sipproxy.transaction.timers import Timers
from sipproxy.transport.peer import Channel, Peer, stamp_received

__all__ = [
    "ClientInviteTransaction",
    "ClientNonInviteTransaction",
    "ClientTransaction",
    "ServerInviteTransaction",
    "ServerNonInviteTransaction",
    "ServerTransaction",
    "State",
    "Timers",
    "TransactionLayer",
    "TransactionUser",
]

#: Either server transaction; both have .request, .peer, .channel, .state, .key
#: and .respond(response).
ServerTransaction = ServerInviteTransaction | ServerNonInviteTransaction
#: Either client transaction; both have .request, .state, .key and .branch.
ClientTransaction = ClientInviteTransaction | ClientNonInviteTransaction


class TransactionUser(Protocol):
    """The core above the layer (RFC 3261 §17: the "TU")."""

    def request_received(
        self,
        request: Request,
        transaction: ServerTransaction | None,
        peer: Peer,
        channel: Channel,
    ) -> None:
        """A new request, never a retransmission, with its server transaction.

        ``transaction`` is None only for an ACK that no transaction absorbed (the
        ACK to a 2xx, which a proxy forwards).
        """

    def response_received(
        self,
        response: Response,
        transaction: ClientTransaction | None,
        peer: Peer,
        channel: Channel,
    ) -> None:
        """A response for ``transaction``, or None when it matched none (§16.7)."""

    def transaction_timed_out(self, transaction: ClientTransaction) -> None:
        """Timer B or F fired on ``transaction``; it is already Terminated."""

    def message_invalid(self, error: Exception, peer: Peer, channel: Channel) -> None:
        """A message that did not parse, or a request that failed validation."""


class TransactionLayer:
    """Server and client transactions keyed for matching (RFC 3261 §17).

    Implements the transports' ``MessageReceiver``.
    """

    log = Logger()

    def __init__(
        self,
        user: TransactionUser,
        clock: IReactorTime,
        timers: Timers = Timers(),  # noqa: B008 - a frozen value
    ) -> None:
        self._user = user
        self._clock = clock
        self._timers = timers
        self._servers: dict[ServerKey, ServerTransaction] = {}
        self._clients: dict[ClientKey, ClientTransaction] = {}

    # -- from the transports ---------------------------------------------------

    def message_received(self, message: object, peer: Peer, channel: Channel) -> None:
        """Route one parsed message from ``peer`` (see the module docstring)."""
        if isinstance(message, Request):
            self._request_received(message, peer, channel)
        elif isinstance(message, Response):
            self._response_received(message, peer, channel)
        else:
            self.log.warn("not a SIP message: {kind}", kind=type(message).__name__)

    def message_invalid(self, error: Exception, peer: Peer, channel: Channel) -> None:
        """Bytes that did not parse: the TU decides whether to answer."""
        self._user.message_invalid(error, peer, channel)

    # -- for the TU ------------------------------------------------------------

    def matching_invite(self, cancel: Request) -> ServerInviteTransaction | None:
        """The live INVITE server transaction ``cancel`` cancels (RFC 3261 §9.2)."""
        try:
            key = cancelled_invite_key(cancel)
        except ParseError:
            return None
        found = self._servers.get(key)
        if isinstance(found, ServerInviteTransaction):
            return found
        return None

    def send_request(
        self,
        request: Request,
        send: Callable[[bytes], None],
        *,
        reliable: bool,
        timeout: float | None = None,
    ) -> ClientTransaction:
        """Start a client transaction for ``request`` and send it (§17.1).

        ``send`` writes to the next hop; ``reliable`` says whether that transport
        retransmits for us; ``timeout`` replaces Timer B or F. An ACK is never a
        transaction (§17.1.1.3, §13.2.2.4): send it with ``send`` directly.

        :raises ValueError: for an ACK, a top Via without branch, or a branch and
            method that already have a live client transaction.
        """
        if request.method == "ACK":
            raise ValueError("ACK is not sent in a client transaction")
        try:
            key = client_key(request)
        except ParseError as error:
            raise ValueError(f"cannot start a client transaction: {error}") from None
        if key in self._clients:
            raise ValueError(f"client transaction {key} exists already")
        transaction: ClientTransaction
        kind = (
            ClientInviteTransaction
            if request.method == "INVITE"
            else ClientNonInviteTransaction
        )
        transaction = kind(
            request,
            self._user,
            send=send,
            clock=self._clock,
            reliable=reliable,
            timers=self._timers,
            timeout=timeout,
            on_terminated=self._client_terminated,
        )
        self._clients[key] = transaction
        transaction.start()
        return transaction

    def pending(self) -> int:
        """Live server transactions, in O(1): what an overload guard compares."""
        return len(self._servers)

    def counts(self) -> dict[str, int]:
        """Live transactions by kind, for tests and metrics."""
        counts = {
            "server_invite": 0,
            "server_non_invite": 0,
            "client_invite": 0,
            "client_non_invite": 0,
        }
        for server in self._servers.values():
            invite = isinstance(server, ServerInviteTransaction)
            counts["server_invite" if invite else "server_non_invite"] += 1
        for client in self._clients.values():
            invite = isinstance(client, ClientInviteTransaction)
            counts["client_invite" if invite else "client_non_invite"] += 1
        return counts

    # -- requests ----------------------------------------------------------------

    def _request_received(self, request: Request, peer: Peer, channel: Channel) -> None:
        try:
            validate_request(request)
            request = replace(request, headers=stamp_received(request.headers, peer))
        except ParseError as error:
            self._user.message_invalid(error, peer, channel)
            return
        if request.method == "ACK":
            self._ack_received(request, peer, channel)
            return
        key = server_key(request)
        existing = self._servers.get(key)
        if existing is not None:
            existing.receive_request(request)
            return
        transaction: ServerTransaction
        kind = (
            ServerInviteTransaction
            if request.method == "INVITE"
            else ServerNonInviteTransaction
        )
        transaction = kind(
            request,
            peer,
            channel,
            clock=self._clock,
            timers=self._timers,
            key=key,
            on_terminated=self._server_terminated,
        )
        self._servers[key] = transaction
        self._user.request_received(request, transaction, peer, channel)

    def _ack_received(self, ack: Request, peer: Peer, channel: Channel) -> None:
        # §17.2.3: the ACK to a non-2xx belongs to the INVITE transaction; the ACK
        # to a 2xx is a transaction of its own, which the TU (a proxy) forwards.
        for key in ack_keys(ack):
            found = self._servers.get(key)
            if isinstance(found, ServerInviteTransaction) and found.acknowledged_by(
                ack
            ):
                if found.receive_ack(ack):
                    return
                break
        self._user.request_received(ack, None, peer, channel)

    def _server_terminated(self, transaction: ServerTransaction) -> None:
        if self._servers.get(transaction.key) is transaction:
            del self._servers[transaction.key]

    # -- responses ---------------------------------------------------------------

    def _response_received(
        self, response: Response, peer: Peer, channel: Channel
    ) -> None:
        try:
            validate_response(response)
        except ParseError as error:
            # A malformed response can be neither answered nor matched: drop it.
            self.log.debug(
                "dropped response from {host}:{port}: {error}",
                host=peer.host,
                port=peer.port,
                error=error,
            )
            return
        transaction: ClientTransaction | None = None
        if response.top_via.branch:
            transaction = self._clients.get(client_key(response))
        if transaction is None:
            self._user.response_received(response, None, peer, channel)
            return
        transaction.receive_response(response, peer, channel)

    def _client_terminated(self, transaction: ClientTransaction) -> None:
        if self._clients.get(transaction.key) is transaction:
            del self._clients[transaction.key]
