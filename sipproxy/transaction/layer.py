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
callback the layer gives them, and Completed entries (below) go when swept or
evicted; the tables are edited only by identity, so a TU that responds, or a
timer that fires, in the middle of any of this is safe.

Work and memory are counted apart, so that answered requests kept only for
retransmissions never make the server refuse new work:

* **In flight**: server transactions still waiting for the TU's final answer
  (non-INVITE Trying or Proceeding, INVITE Proceeding), which includes every
  request being proxied. This is the work the server has taken on; an overload
  guard compares :meth:`TransactionLayer.pending` and
  :meth:`TransactionLayer.pending_from` (per source: an IPv4 address or an IPv6
  /64) with its budget. The layer watches each server transaction's changes of
  state, so both are kept up to date in O(1), never by a scan.
* **Completed**: a non-INVITE server transaction over UDP that has answered stays
  for Timer J (32 s) only to send its response's bytes again to a retransmission
  (§17.2.2). That is memory, not work, so it never counts towards overload; at
  1,800 requests a second it is 57,600 entries, more than the old cap of 50,000
  live transactions, which is how a busy but healthy server came to answer 503.
  So it is kept as little as it can be: once the transaction has sent its final
  response it hands the layer its key, the response's bytes, their destination and
  channel (:attr:`ServerNonInviteTransaction.on_completed`), and the layer keeps
  only that, as a tuple in the server table under the key, with no transaction
  object and no timer of its own: one :class:`Expiry` sweeps them all (at most
  once per :data:`SWEEP_RESOLUTION`; an entry may stay that much longer than Timer
  J, never less). Over a reliable transport Timer J is zero and nothing is kept.
  The table is bounded (:data:`MAX_COMPLETED`): when full, the oldest entry is
  forgotten early. A retransmission arriving after that is taken for a new request
  and answered from the state of the moment; for a non-INVITE request that is
  safe, if not always the same answer: OPTIONS, a challenge or an error come out
  alike; a REGISTER that already took effect gets ``400 CSeq Out Of Order`` (§10.3
  step 7; its binding is stored, and the phone's next REGISTER carries a higher
  CSeq); a proxied one is forwarded again in a new client transaction, as a
  duplicated datagram upstream could have made it. And it hardly ever happens: a
  UAC that missed our final response retransmits within T2 = 4 s (§17.1.2.2), so
  an entry has done its work once T2 has passed; :data:`MAX_COMPLETED` entries
  cover T2 up to 25,000 requests a second, and all of Timer J up to about 3,000,
  more than one process serves today.

INVITE server transactions that have answered (Completed, Confirmed, Accepted)
are not in flight either and are not evicted: their lives are bounded by Timers H,
I and L, and an INVITE taken twice would ring phones twice.

A non-INVITE client transaction over UDP that has had its final response waits
Timer K (T4) only to absorb retransmissions of that response (§17.1.2.2); it
too hands over (:attr:`ClientNonInviteTransaction.on_completed`), and the layer
keeps its key alone in the client table, a response matching it absorbed, on a
second :class:`Expiry`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from sipproxy.sip.addressing import Channel, Peer, source_key, stamp_received
from sipproxy.sip.errors import ParseError
from sipproxy.sip.message import Request, Response
from sipproxy.sip.parser import validate_request, validate_response
from sipproxy.transaction.client import (
    ClientInviteTransaction,
    ClientNonInviteTransaction,
)
from sipproxy.transaction.deadlines import TimerQueue
from sipproxy.transaction.expiry import Expiry
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

__all__ = [
    "MAX_COMPLETED",
    "SWEEP_RESOLUTION",
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

#: Completed non-INVITE server transactions kept for retransmissions, at most. Each
#: costs about 1 kB with a REGISTER's 200 (its entry: key, the response's bytes,
#: destination and expiry; python -m bench.completed_memory), so a full table
#: holds about 100 MB.
MAX_COMPLETED = 100_000
#: Seconds: Completed entries (Timers J, K) expire in buckets this long, swept by
#: one timer.
SWEEP_RESOLUTION = 1.0
#: States in which a server transaction still waits for the TU's final answer.
_IN_FLIGHT = frozenset({State.TRYING, State.PROCEEDING})

#: Either server transaction; both have .request, .peer, .channel, .state, .key
#: and .respond(response).
ServerTransaction = ServerInviteTransaction | ServerNonInviteTransaction
#: Either client transaction; both have .request, .state, .key and .branch.
ClientTransaction = ClientInviteTransaction | ClientNonInviteTransaction
#: A Completed non-INVITE server transaction over UDP, as the layer keeps it:
#: (key, the final response's bytes, destination, channel).
_Completed = tuple[ServerKey, bytes, Peer, Channel]


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
        *,
        max_completed: int = MAX_COMPLETED,
        sweep_resolution: float = SWEEP_RESOLUTION,
    ) -> None:
        """Start with empty tables.

        :param max_completed: Completed non-INVITE server transactions kept for
            retransmissions at most; beyond it the oldest goes (at least 1).
        :param sweep_resolution: how much later than Timer J or K a Completed
            entry may be forgotten, in exchange for one sweep per interval (0:
            each at its own).
        """
        self._user = user
        self._clock = clock
        self._timers = timers
        # A live transaction, or a Completed non-INVITE one over UDP as an entry.
        self._servers: dict[ServerKey, ServerTransaction | _Completed] = {}
        # A live transaction, or (its key alone) a Completed non-INVITE one over
        # UDP, absorbing retransmitted responses until Timer K.
        self._clients: dict[ClientKey, ClientTransaction | ClientKey] = {}
        # Server transactions waiting for a final answer, with their source's key,
        # and how many each source holds (no zero entries: bounded by the first).
        self._in_flight: dict[ServerTransaction, str] = {}
        self._in_flight_by_source: dict[str, int] = {}
        # The entries of Completed non-INVITE transactions over UDP, each also
        # in its table under its key, until Timer J (servers) or K (clients).
        udp = timers.over(reliable=False)
        self._completed = Expiry[_Completed](
            clock,
            udp.timer_j,
            self._forget_server,
            resolution=sweep_resolution,
            limit=max_completed,
        )
        self._absorbing = Expiry[ClientKey](
            clock, udp.timer_k, self._forget_client, resolution=sweep_resolution
        )
        # Every live transaction's timers (100 Trying, A-I, L, M), on one
        # reactor call: most are cancelled long before they are due.
        self._queue = TimerQueue(clock)
        # Bound once rather than per transaction.
        self._on_server_state = self._server_state_changed
        self._on_server_terminated = self._server_terminated
        self._on_server_completed = self._server_completed
        self._on_client_completed = self._client_completed

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
            queue=self._queue,
        )
        if isinstance(transaction, ClientNonInviteTransaction):
            transaction.on_completed = self._on_client_completed
        self._clients[key] = transaction
        transaction.start()
        return transaction

    def pending(self) -> int:
        """Requests waiting for a final answer, in O(1): what overload compares.

        These are server transactions in Trying or Proceeding (proxied requests
        included); ones that answered and wait only for retransmissions are not.
        """
        return len(self._in_flight)

    def pending_from(self, peer: Peer) -> int:
        """Of :meth:`pending`, those from ``peer``'s address (IPv6: its /64)."""
        return self._in_flight_by_source.get(source_key(peer.host), 0)

    def completed(self) -> int:
        """Completed non-INVITE transactions kept for retransmissions, in O(1)."""
        return len(self._completed)

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
            invite = isinstance(client, ClientInviteTransaction)  # or an entry
            counts["client_invite" if invite else "client_non_invite"] += 1
        return counts

    # -- requests ----------------------------------------------------------------

    def _request_received(self, request: Request, peer: Peer, channel: Channel) -> None:
        try:
            validate_request(request)
            stamped = stamp_received(request.headers, peer)
            if stamped is not request.headers:
                request = request.with_headers(stamped)
        except ParseError as error:
            self._user.message_invalid(error, peer, channel)
            return
        if request.method == "ACK":
            self._ack_received(request, peer, channel)
            return
        key = server_key(request)
        existing = self._servers.get(key)
        if existing is not None:
            if isinstance(existing, tuple):
                # §17.2.2: in Completed "the server transaction MUST pass the final
                # response to the transport layer for retransmission".
                existing[3].send(existing[1], existing[2])
            else:
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
            on_terminated=self._on_server_terminated,
            queue=self._queue,
        )
        self._servers[key] = transaction
        source = source_key(peer.host)
        self._in_flight[transaction] = source
        by_source = self._in_flight_by_source
        by_source[source] = by_source.get(source, 0) + 1
        transaction.on_state = self._on_server_state
        if isinstance(transaction, ServerNonInviteTransaction):
            transaction.on_completed = self._on_server_completed
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

    def _server_state_changed(
        self, transaction: ServerTransaction, previous: State
    ) -> None:
        if transaction.state not in _IN_FLIGHT:
            self._landed(transaction)

    def _server_completed(
        self, key: ServerKey, wire: bytes, destination: Peer, channel: Channel
    ) -> None:
        """A non-INVITE transaction over UDP answered: keep its entry (§17.2.2).

        Beyond :data:`MAX_COMPLETED` the oldest goes, Timer J early: see the
        module docstring for why that is safe.
        """
        entry = (key, wire, destination, channel)
        self._servers[key] = entry
        self._completed.add(entry)

    def _forget_server(self, entry: _Completed) -> None:
        key = entry[0]
        if self._servers.get(key) is entry:
            del self._servers[key]

    def _landed(self, transaction: ServerTransaction) -> None:
        """``transaction`` no longer waits for a final answer: count it out."""
        source = self._in_flight.pop(transaction, None)
        if source is None:
            return
        by_source = self._in_flight_by_source
        left = by_source[source] - 1
        if left:
            by_source[source] = left
        else:
            del by_source[source]

    def _server_terminated(self, transaction: ServerTransaction) -> None:
        self._landed(transaction)
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
            found = self._clients.get(client_key(response))
            if isinstance(found, ClientKey):
                # §17.1.2.2: Completed, Timer K running: a retransmission of the
                # final response, absorbed.
                return
            transaction = found
        if transaction is None:
            self._user.response_received(response, None, peer, channel)
            return
        transaction.receive_response(response, peer, channel)

    def _client_completed(self, transaction: ClientNonInviteTransaction) -> None:
        """A non-INVITE transaction over UDP had its final response: Timer K."""
        key = transaction.key
        if self._clients.get(key) is transaction:
            self._clients[key] = key
            self._absorbing.add(key)

    def _forget_client(self, key: ClientKey) -> None:
        # The entry is this very key object: a later transaction's is another.
        if self._clients.get(key) is key:
            del self._clients[key]

    def _client_terminated(self, transaction: ClientTransaction) -> None:
        if self._clients.get(transaction.key) is transaction:
            del self._clients[transaction.key]
