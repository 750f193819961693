"""Busy lamps: the notifier of the dialog event package (RFC 6665, RFC 4235).

Theory of operation. :class:`Notifier` is an observer of ``Proxy.events``
(proxy/events.py, dialog changes) that keeps, per user of ours, the calls the
proxy sees them in (``_lines``), and the subscriptions phones made to watch
them (``_subscriptions``). The SUBSCRIBE handler (proxy/subscribe.py) decides
on the request and calls :meth:`Notifier.subscribe`, :meth:`~Notifier.refresh`
or :meth:`~Notifier.unsubscribe`; everything else happens here:

- a lamp is a user name (``"bob"``) or a ring group (``"group:sales"``, lit
  while any member is in a call); :class:`Lamps` resolves what a Request-URI's
  user part means (a user, an extension, a group number);
- a dialog change of a call to or from a user updates that user's lines and
  sends one NOTIFY with the full state (RFC 4235 §4.1: ``state="full"``) to
  each subscription of the user's lamp, and of each group lamp the user is in;
- NOTIFYs of one subscription never overlap (``in_flight``): a change while
  one is out marks the subscription ``pending``, and the next NOTIFY, sent
  when the answer comes, carries the state then (coalesced to the latest
  full state). Over UDP two NOTIFYs in flight can arrive the other way
  round, and a phone that applies the older one last shows a stale lamp;
  RFC 6665 §4.2.2 lets the notifier throttle, and full state loses nothing;
- a NOTIFY is sent in a client transaction (``send``: HandlerContext's
  ``send_request``), so over UDP it is retransmitted (RFC 3261 §17.1.2.2)
  before it fails: one lost datagram never ends a subscription. Its final
  answer decides: 2xx keeps it; a timeout (408), 481 or any other failure,
  including a transport error (503 from ``send_request``), ends it
  (RFC 6665 §4.2.2: a failed NOTIFY removes a subscription made by SUBSCRIBE);
- NOTIFYs go only to the flow the SUBSCRIBE (or its last refresh) came from,
  never to the Contact it names (docs/security.md: "NOTIFY to a subscriber's
  flow"); the Contact is only the Request-URI, the dialog's remote target
  (RFC 3261 §12.2.1.1);
- each subscription expires on a timer of its own, with a last NOTIFY
  ``terminated;reason=timeout`` (RFC 6665 §4.2.2);
- subscriptions are written to the store (:class:`SubscriptionStore`) with the
  version of their last NOTIFY, so that after a restart :meth:`start` serves
  them on, with versions that keep increasing (RFC 4235 §4.1: a subscriber
  ignores a version it has seen). Writes are Deferreds nobody waits for; a
  store that fails is logged once and counted, never raised into the proxy.

Costs: observers run on the message path, and most calls are of users nobody
watches. With a source of live calls (:meth:`Notifier.follow`: the call
tracker, as server.py wires it), the notifier keeps only the calls of watched
users (the members of the lamps that have a subscription), and is off the
event stream while nobody is watched: a call then costs nothing here, and the
proxy builds no dialog event for the notifier's sake. A user who becomes
watched (a new subscription, one taken in from a shared store by
:meth:`~Notifier.sync`, a group that gained a member on reload) is seeded from
the live calls, so the first NOTIFY shows a call already going. Without a
source (the unit tests' bare proxy) every call is kept. Calls kept are capped
at ``max_calls``; subscriptions are capped per subscriber and in total.
"""

from __future__ import annotations

import hashlib
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from sipproxy.location import SubscriptionStore
from sipproxy.office.model import GroupTarget, Office, UserTarget
from sipproxy.proxy.events import DialogEvent, DialogObserver, DialogState, Events
from sipproxy.sip.addressing import Peer
from sipproxy.sip.dialoginfo import CONTENT_TYPE, Dialog, dialog_info, most_telling
from sipproxy.sip.errors import ParseError
from sipproxy.sip.headers import Headers
from sipproxy.sip.message import Request, Response
from sipproxy.sip.uri import SipURI

__all__ = [
    "DEFAULT_EXPIRES",
    "GROUP",
    "Lamps",
    "LiveCalls",
    "Notifier",
    "NotifierSettings",
    "NotifyObserver",
    "SendRequest",
    "Subscription",
]

#: Expires of a SUBSCRIBE without one (RFC 4235 §3.2: "default [...] 3600").
DEFAULT_EXPIRES = 3600
#: The prefix of a ring group's lamp.
GROUP = "group:"
#: Calls tracked at most (a few hundred bytes each).
DEFAULT_MAX_CALLS = 100_000
#: A call older than this is taken for over (``--max-call-seconds``).
DEFAULT_MAX_CALL_SECONDS = 14_400.0

#: ``send(request, peer, on_response, connection_id)``: a request of our own in
#: a client transaction (HandlerContext.send_request); every response reaches
#: ``on_response``, a timeout as 408 and a transport error as 503.
SendRequest = Callable[[Request, Peer, Callable[[Response], None], str | None], object]


class LiveCalls(Protocol):
    """The calls in progress, as the dialog events that made them (CallTracker)."""

    def live_events(self) -> list[tuple[DialogEvent, ...]]:
        """Each call in progress: its created, first early and confirmed events."""

    def events_of(self, call_id: str, from_tag: str) -> tuple[DialogEvent, ...]:
        """One call's events, as :meth:`live_events`; empty if not in progress."""


class NotifyObserver(Protocol):
    """Told how each NOTIFY's transaction ended (the metrics)."""

    def notify_result(self, result: str) -> None:
        """``ok``, ``timeout``, ``gone`` (481) or ``error``."""


@dataclass(frozen=True, slots=True)
class NotifierSettings:
    """Limits on subscriptions (options subscribe-min-expires and following)."""

    #: shorter subscriptions get 423 (RFC 6665 §4.2.1.1)
    min_expires: int = 60
    #: longer ones are cut to this
    max_expires: int = 3600
    #: subscriptions one subscriber may hold; beyond: 403
    max_per_user: int = 200
    #: subscriptions in all; beyond: 503
    max_total: int = 10_000
    #: one dialog per body (phones that crash on several)
    single_dialog: bool = False


@dataclass(slots=True)
class Subscription:
    """One subscription we serve: its dialog (RFC 6665 §4.1.2) and its flow.

    We are the notifier: ``local_tag`` is the To tag of our 200, the
    subscriber's From tag is ``remote_tag``. ``peer`` and ``connection_id``
    are where the SUBSCRIBE came from, the only place its NOTIFYs go.
    """

    key: str
    #: the lamp: a user name, or ``group:NAME``
    lamp: str
    #: the resource as subscribed (the Request-URI): the body's entity
    entity: str
    #: who subscribed (the authenticated user)
    subscriber: str
    call_id: str
    local_tag: str
    remote_tag: str
    #: the SUBSCRIBE's To and From addresses without tags: our NOTIFY's From and To
    local_uri: str
    remote_uri: str
    #: the subscriber's Contact URI: the NOTIFY's Request-URI
    remote_target: str
    #: our Contact
    contact: str
    #: the SUBSCRIBE's Event value, ``id`` included (RFC 6665 §8.2.1)
    event: str
    transport: str
    host: str
    port: int
    connection_id: str | None
    expires_at: float
    created_at: float
    #: the CSeq of our last NOTIFY
    cseq: int = 0
    #: the version of the next body (RFC 4235 §4.1: from 0, one more each)
    version: int = 0
    # -- not stored --
    in_flight: bool = field(default=False, compare=False)
    pending: bool = field(default=False, compare=False)
    #: set once the subscription ended: the reason of its last NOTIFY
    ending: str | None = field(default=None, compare=False)
    #: the last NOTIFY (terminated) went out, or must not: nothing more goes
    finished: bool = field(default=False, compare=False)
    timer: IDelayedCall | None = field(default=None, compare=False, repr=False)

    @property
    def peer(self) -> Peer:
        """The subscriber's flow."""
        return Peer(self.transport, self.host, self.port)

    def to_json(self) -> dict[str, Any]:
        """The record the store keeps."""
        # Not dataclasses.asdict: it deep-copies every field, the timer too.
        return {name: getattr(self, name) for name in _STORED}

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> Subscription:
        """A subscription from its stored record.

        :raises KeyError, TypeError, ValueError: not a record of ours.
        """
        return cls(**{name: record[name] for name in _STORED if name in record})


#: The fields of a :class:`Subscription` the store keeps.
_STORED = tuple(
    name
    for name in Subscription.__dataclass_fields__
    if name not in ("in_flight", "pending", "ending", "finished", "timer")
)


class Lamps:
    """What a user part of our domain means for busy lamps; the office if any.

    :param office: the current office configuration (it changes on reload);
        None without an office.
    :param is_user: whether a name is a user of ours (the users file); None:
        any name is.
    """

    def __init__(
        self,
        office: Callable[[], Office | None] = lambda: None,
        is_user: Callable[[str], bool] | None = None,
    ) -> None:
        self._office = office
        self._is_user = is_user

    def office(self) -> Office | None:
        """The office configuration now (a reload replaces it)."""
        return self._office()

    def lamp(self, user_part: str) -> str | None:
        """The lamp a SUBSCRIBE to ``user_part`` watches; None: nobody of ours."""
        office = self._office()
        if office is not None:
            found = office.destination(user_part)
            if isinstance(found, GroupTarget):
                return GROUP + found.group.name
            if isinstance(found, UserTarget):
                return found.name if self._known(found.name) else None
            return None
        return user_part if self._known(user_part) else None

    def users(self, user_part: str) -> tuple[str, ...]:
        """The users a call to ``user_part`` rings: one, a group's members, none."""
        office = self._office()
        if office is not None:
            found = office.destination(user_part)
            if isinstance(found, GroupTarget):
                return found.group.members
            if isinstance(found, UserTarget):
                return (found.name,)
            return ()
        return (user_part,)

    def groups_of(self, user: str) -> list[str]:
        """The group lamps ``user`` lights."""
        office = self._office()
        if office is None:
            return []
        return [GROUP + g.name for g in office.groups.values() if user in g.members]

    def members(self, lamp: str) -> tuple[str, ...]:
        """The users whose calls light ``lamp``."""
        if not lamp.startswith(GROUP):
            return (lamp,)
        office = self._office()
        if office is None:
            return ()
        name = lamp[len(GROUP) :]
        for group in office.groups.values():
            if group.name == name:
                return group.members
        return ()

    def _known(self, name: str) -> bool:
        return self._is_user is None or self._is_user(name)


@dataclass(slots=True)
class _Line:
    """One call of one user, as its lamp shows it."""

    dialog_id: str
    call_id: str
    #: the caller's From tag, and the callee's To tag once known
    caller_tag: str
    callee_tag: str | None
    #: "recipient": a call to the user; "initiator": from the user
    direction: str
    state: str
    local: str
    remote: str
    created_at: float
    event: str | None = None
    code: int | None = None

    def dialog(self, now: float) -> Dialog:
        recipient = self.direction == "recipient"
        return Dialog(
            id=self.dialog_id,
            state=self.state,
            call_id=self.call_id,
            local_tag=self.callee_tag if recipient else self.caller_tag,
            remote_tag=self.caller_tag if recipient else self.callee_tag,
            direction=self.direction,
            event=self.event,
            code=self.code,
            duration=round(now - self.created_at),
            local_identity=self.local,
            remote_identity=self.remote,
        )


@dataclass(slots=True)
class _Call:
    """Who a call concerns: the users it rings, and the caller if ours."""

    callees: tuple[str, ...]
    caller: str | None
    #: clock seconds of the INVITE
    at: float


def _dialog_id(call_id: str, caller_tag: str) -> str:
    text = f"{call_id}\x00{caller_tag}".encode("utf-8", "surrogateescape")
    return hashlib.blake2b(text, digest_size=8).hexdigest()


def _terminated_by(status: int) -> str:
    """RFC 4235 §4.1.2's event for a call attempt ended by a final non-2xx."""
    if status == 487:
        return "cancelled"
    if status == 408:
        return "timeout"
    return "rejected"


class Notifier:
    """Serves dialog-package subscriptions from the proxy's dialog events.

    :param store: where subscriptions are kept (the location store).
    :param clock: timers (expiry) and "now".
    :param send: sends a NOTIFY in a client transaction (see :data:`SendRequest`).
    :param lamps: what user parts mean (users, extensions, groups).
    :param domains: our domains now (they change on reload).
    :param max_calls: calls tracked at most; beyond, new ones light no lamp.
    :param max_call_seconds: a call this old is over, BYE or not.
    """

    log = Logger()

    def __init__(
        self,
        store: SubscriptionStore,
        clock: IReactorTime,
        *,
        send: SendRequest,
        lamps: Lamps,
        domains: Callable[[], frozenset[str]],
        settings: NotifierSettings | None = None,
        max_calls: int = DEFAULT_MAX_CALLS,
        max_call_seconds: float = DEFAULT_MAX_CALL_SECONDS,
    ) -> None:
        self.store = store
        self.settings = settings or NotifierSettings()
        self.lamps = lamps
        self.max_calls = max_calls
        self.max_call_seconds = max_call_seconds
        self._clock = clock
        self._send = send
        self._domains = domains
        self._subscriptions: dict[str, Subscription] = {}
        self._by_lamp: dict[str, set[str]] = {}
        self._per_user: Counter[str] = Counter()
        #: per user: their calls by (Call-ID, caller's From tag)
        self._lines: dict[str, dict[tuple[str, str], _Line]] = {}
        self._calls: dict[tuple[str, str], _Call] = {}
        #: NOTIFY answers by result: ok, timeout, gone (481), error
        self.results: Counter[str] = Counter()
        #: store operations that failed (the first one is logged)
        self.store_errors = 0
        #: calls not tracked because ``max_calls`` were
        self.untracked = 0
        #: told of each NOTIFY's result (the metrics), if set
        self.observer: NotifyObserver | None = None
        #: the store is shared with other processes (Redis): :meth:`sync`
        #: takes in what they did
        self.shared = False
        self._sync: IDelayedCall | None = None
        #: keys ended here lately, so a sync that read the store before their
        #: removal landed does not bring them back
        self._gone: deque[str] = deque(maxlen=1024)
        #: with a source (:meth:`follow`): the users whose calls are kept;
        #: None: every user's
        self._watched: frozenset[str] | None = None
        self._source: LiveCalls | None = None
        self._events: Events | None = None
        #: the office the watched set was made with (a reload changes groups)
        self._watched_office: Office | None = None
        #: a lamp gained its first subscription or lost its last one
        self._lamps_changed = False
        #: subscriptions ended whose last NOTIFY is not answered yet, and
        #: fetches: their lamps stay watched until then, so that NOTIFY shows
        #: the calls
        self._closing: dict[str, Subscription] = {}
        #: replaying live calls: no NOTIFY for what was already the state
        self._seeding = False
        #: telling an event: the watched set changes only after it
        self._busy = False

    # -- life -------------------------------------------------------------------

    async def start(self) -> int:
        """Serve on the subscriptions the store kept (a restart); return how many."""
        now = self._clock.seconds()
        records = await self.store.subscriptions(now=now)
        for record in records:
            try:
                subscription = Subscription.from_json(record)
            except (KeyError, TypeError, ValueError):
                continue
            if subscription.key not in self._subscriptions:
                self._add(subscription)
        self._rewatch()
        return len(records)

    def follow(self, calls: LiveCalls, events: Events) -> None:
        """Keep only watched users' calls; be on ``events`` only while watching.

        :param calls: the calls in progress, to seed users as they become
            watched; it must see every call the proxy makes (the call tracker
            on the same ``events``), or a subscription made during a call it
            missed shows that call only from its next change.
        :param events: the proxy's event stream; the notifier takes itself
            off its dialog observers while nobody is watched.
        """
        self._source = calls
        self._events = events
        self._watched = frozenset()
        self._calls.clear()
        self._lines.clear()
        self._lamps_changed = True
        self._rewatch()

    def sync_every(self, seconds: float) -> None:
        """On a shared store: :meth:`sync` every ``seconds`` from now on."""
        self.shared = True

        def tick() -> None:
            self._sync = self._clock.callLater(seconds, tick)
            self._write(self.sync())

        self._sync = self._clock.callLater(seconds, tick)

    async def sync(self) -> None:
        """Take in what other processes sharing the store did.

        Several processes on one Redis store (docs/scale-out.md) each see the
        calls they proxy. A subscription made through another process is
        served here too, for the calls this process sees; one gone from the
        store (ended elsewhere) is dropped here without a NOTIFY; a refresh
        elsewhere moves the expiry and the flow; versions and CSeqs go on from
        the highest either side has (RFC 4235 §4.1: the subscriber ignores a
        version it has seen).
        """
        started = self._clock.seconds()
        stored: dict[str, Subscription] = {}
        for record in await self.store.subscriptions(now=started):
            try:
                theirs = Subscription.from_json(record)
            except (KeyError, TypeError, ValueError):
                continue
            stored[theirs.key] = theirs
        for key, theirs in stored.items():
            mine = self._subscriptions.get(key)
            if mine is None:
                if key not in self._gone:
                    self._add(theirs)
                continue
            mine.version = max(mine.version, theirs.version)
            mine.cseq = max(mine.cseq, theirs.cseq)
            if theirs.expires_at > mine.expires_at:
                mine.expires_at = theirs.expires_at
                mine.transport, mine.host = theirs.transport, theirs.host
                mine.port, mine.connection_id = theirs.port, theirs.connection_id
                self._arm(mine)
        for key, mine in list(self._subscriptions.items()):
            # A subscription younger than this read may not be stored yet.
            if key not in stored and mine.created_at < started - 1:
                # Ended through another process, which sent the last NOTIFY.
                mine.ending, mine.finished = "", True
                self._remove(mine)
        self._rewatch()

    def stop(self) -> None:
        """Cancel the timers; the subscriptions stay in the store."""
        if self._sync is not None and self._sync.active():
            self._sync.cancel()
        self._sync = None
        for subscription in self._subscriptions.values():
            if subscription.timer is not None and subscription.timer.active():
                subscription.timer.cancel()
            subscription.timer = None

    def office_changed(self) -> None:
        """A reload replaced the office: groups may have other members now.

        A new member of a watched group is seeded at once; the next call
        would notice it too (see :meth:`dialog_changed`), too late for a
        call already going.
        """
        if self._watched is not None:
            self._lamps_changed = True
            self._rewatch()

    def count(self) -> int:
        """Subscriptions served now."""
        return len(self._subscriptions)

    def kept(self) -> int:
        """Calls kept now: those of watched users (of every user without a source)."""
        return len(self._calls)

    def find(self, key: str) -> Subscription | None:
        """The subscription of a dialog key (:meth:`key_of`), if we serve it."""
        return self._subscriptions.get(key)

    @staticmethod
    def key_of(call_id: str, remote_tag: str, local_tag: str) -> str:
        """A subscription's key: its dialog id (RFC 3261 §12)."""
        return f"{call_id};{remote_tag};{local_tag}"

    def held_by(self, subscriber: str) -> int:
        """Subscriptions ``subscriber`` holds."""
        return self._per_user[subscriber]

    def listing(self) -> list[dict[str, Any]]:
        """Subscriptions for the admin API's ``/subscriptions``, oldest first."""
        now = self._clock.seconds()
        rows = sorted(self._subscriptions.values(), key=lambda s: s.created_at)
        return [
            {
                "subscriber": s.subscriber,
                "entity": s.entity,
                "lamp": s.lamp,
                "flow": f"{s.transport}:{s.host}:{s.port}",
                "expires": max(0, round(s.expires_at - now)),
                "version": s.version,
                "state": self._lamp_state(s.lamp),
                "call_id": s.call_id,
            }
            for s in rows
        ]

    # -- what the SUBSCRIBE handler calls ---------------------------------------

    def subscribe(self, subscription: Subscription) -> None:
        """A new subscription was accepted (200 sent): keep it, NOTIFY at once.

        RFC 6665 §4.2.1.2: "Upon successfully accepting or refreshing a
        subscription, notifiers MUST send a NOTIFY request immediately".
        """
        self._add(subscription)
        # Before the first NOTIFY: it must show a call the user is already in.
        self._rewatch()
        self._save(subscription)
        self._notify(subscription)

    def refresh(
        self,
        subscription: Subscription,
        expires: int,
        peer: Peer,
        connection_id: str | None,
    ) -> None:
        """A refresh (RFC 6665 §4.2.1.4) from the authenticated subscriber.

        The flow follows the refresh (a phone behind NAT may have a new
        mapping); a NOTIFY goes at once (RFC 6665 §4.2.1.2).
        """
        subscription.expires_at = self._clock.seconds() + expires
        subscription.transport, subscription.host = peer.transport, peer.host
        subscription.port, subscription.connection_id = peer.port, connection_id
        self._arm(subscription)
        self._save(subscription)
        self._notify(subscription)

    def unsubscribe(
        self, subscription: Subscription, reason: str | None = None
    ) -> None:
        """End a subscription with a last NOTIFY ``terminated`` (RFC 6665 §4.2.1.4).

        :param reason: the Subscription-State reason; None for an unsubscribe.
        """
        if subscription.ending is not None:
            return
        subscription.ending = reason or ""
        self._remove(subscription)
        self._closing[subscription.key] = subscription
        self._notify(subscription)

    def fetch(self, subscription: Subscription) -> None:
        """A SUBSCRIBE with Expires 0 and no dialog: one NOTIFY, nothing kept.

        A fetch (RFC 6665 §4.4.3, polling): the NOTIFY says
        ``terminated;reason=timeout``.
        """
        subscription.ending = "timeout"
        # Watched until its NOTIFY is answered: the body shows the calls.
        self._closing[subscription.key] = subscription
        self._lamps_changed = True
        self._rewatch()
        self._notify(subscription)

    # -- the event stream --------------------------------------------------------

    def dialog_changed(self, event: DialogEvent) -> None:
        """A dialog was created, became early or confirmed, or ended."""
        if (
            event.state is DialogState.CREATED
            and self._watched is not None
            and self.lamps.office() is not self._watched_office
        ):
            self._lamps_changed = True  # a reload: groups may have new members
            self._rewatch()
        self._busy = True
        try:
            self._dialog_changed(event)
        finally:
            self._busy = False
        if self._lamps_changed:
            # A NOTIFY that failed at once ended a subscription meanwhile.
            self._rewatch()

    def _dialog_changed(self, event: DialogEvent) -> None:
        state = event.state
        if state is DialogState.CREATED:
            self._created(event)
            return
        key = (event.call_id, event.from_tag or "")
        call = self._calls.get(key)
        by_callee = False
        if call is None and state is DialogState.TERMINATED and event.status is None:
            # A BYE from the callee: the tags the other way round.
            key = (event.call_id, event.to_tag or "")
            call = self._calls.get(key)
            by_callee = True
        if call is None:
            if state is DialogState.CONFIRMED and event.forwarded is not None:
                call = self._forwarded_to_watched(key, event)
            if call is None:
                return
        if state is DialogState.EARLY:
            self._update(call, key, "early", event.to_tag)
        elif state is DialogState.CONFIRMED:
            self._confirmed(call, key, event)
        else:
            self._ended(call, key, event, by_callee)

    def _created(self, event: DialogEvent, *, anyway: bool = False) -> None:
        """A call started: keep it if it concerns a watched user (or ``anyway``)."""
        key = (event.call_id, event.from_tag or "")
        if key in self._calls:
            return  # the office plan rings on: the same call
        self._forget_old(event.at)
        callees = self._ours(event.uri or event.callee)
        caller = event.user or self._caller(event.caller)
        if not callees and caller is None:
            return
        callees = tuple(user for user in callees if user != caller)
        watched = self._watched
        if (
            watched is not None
            and not anyway
            and caller not in watched
            and watched.isdisjoint(callees)
        ):
            return
        if len(self._calls) >= self.max_calls:
            self.untracked += 1
            return
        self._calls[key] = call = _Call(callees, caller, event.at)
        dialog_id = _dialog_id(*key)
        touched: list[str] = []
        for user in call.callees:
            self._lines.setdefault(user, {})[key] = _Line(
                dialog_id, key[0], key[1], None, "recipient", "trying",
                local=self._aor(user), remote=event.caller, created_at=event.at,
            )  # fmt: skip
            touched.append(user)
        if caller is not None:
            self._lines.setdefault(caller, {})[key] = _Line(
                dialog_id, key[0], key[1], None, "initiator", "trying",
                local=self._aor(caller), remote=event.callee, created_at=event.at,
            )  # fmt: skip
            touched.append(caller)
        self._changed(touched)

    def _forwarded_to_watched(
        self, key: tuple[str, str], event: DialogEvent
    ) -> _Call | None:
        """A call not kept, forwarded by the office plan, answered by a watched user.

        Neither the dialled users nor the caller are watched, so the call was
        not kept; the user who answered is, and their lamp lights now. The
        call is taken from the source as it began (its start, its caller).
        """
        watched, source = self._watched, self._source
        answered = _user_part(event.answered_by)
        if watched is None or source is None or answered not in watched:
            return None
        began = source.events_of(*key)
        self._created(began[0] if began else event, anyway=True)
        return self._calls.get(key)

    def _update(
        self, call: _Call, key: tuple[str, str], state: str, to_tag: str | None
    ) -> None:
        touched = []
        for user in self._users(call):
            line = self._lines.get(user, {}).get(key)
            if line is None or line.state == state:
                continue
            line.state = state
            line.callee_tag = to_tag or line.callee_tag
            touched.append(user)
        self._changed(touched)

    def _confirmed(self, call: _Call, key: tuple[str, str], event: DialogEvent) -> None:
        answered = _user_part(event.answered_by)
        if (
            event.forwarded is not None
            and answered is not None
            and answered not in call.callees
            and answered != call.caller
            and self.lamps.lamp(answered) == answered
        ):
            # The office plan forwarded the call (busy, no answer...) to
            # another user of ours, who answered: that user's lamp is lit,
            # the dialled user's phones stopped ringing.
            self._end_lines(call.callees, key, "cancelled", None)
            call.callees = (answered,)
            self._lines.setdefault(answered, {})[key] = _Line(
                _dialog_id(*key), key[0], key[1], event.to_tag, "recipient",
                "trying", local=self._aor(answered), remote=event.caller,
                created_at=event.at,
            )  # fmt: skip
        elif len(call.callees) > 1 and answered in call.callees:
            # A group call: the member whose phone answered is in the call,
            # the others stop ringing (RFC 4235 §4.1.2: "cancelled").
            others = [user for user in call.callees if user != answered]
            call.callees = (answered,)
            self._end_lines(others, key, "cancelled", None)
        self._update(call, key, "confirmed", event.to_tag)

    def _ended(
        self, call: _Call, key: tuple[str, str], event: DialogEvent, by_callee: bool
    ) -> None:
        del self._calls[key]
        users = self._users(call)
        if event.status is not None:
            self._end_lines(users, key, _terminated_by(event.status), event.status)
            return
        # A BYE: who sent it ended it (RFC 4235 §4.1.2 local-bye, remote-bye).
        for user in users:
            line = self._lines.get(user, {}).get(key)
            if line is None:
                continue
            mine = (line.direction == "recipient") == by_callee
            self._end_lines([user], key, "local-bye" if mine else "remote-bye", None)

    def _end_lines(
        self, users: Iterable[str], key: tuple[str, str], why: str, code: int | None
    ) -> None:
        touched = []
        for user in users:
            line = self._lines.get(user, {}).get(key)
            if line is None:
                continue
            line.state, line.event, line.code = "terminated", why, code
            touched.append(user)
        # The NOTIFYs sent now show the call terminated; later ones no more.
        self._changed(touched)
        for user in touched:
            lines = self._lines[user]
            del lines[key]
            if not lines:
                del self._lines[user]

    def _forget_old(self, now: float) -> None:
        """End the calls older than ``max_call_seconds`` (oldest come first).

        A BYE this process never saw (a phone that lost power, a BYE through
        another process) must not light a lamp for ever, nor fill the table
        until no call is tracked; as for call records (``--max-call-seconds``).
        """
        while self._calls:
            key, call = next(iter(self._calls.items()))
            if now - call.at < self.max_call_seconds:
                return
            del self._calls[key]
            self._end_lines(self._users(call), key, "timeout", None)

    @staticmethod
    def _users(call: _Call) -> list[str]:
        return [*call.callees, *([call.caller] if call.caller else [])]

    def _ours(self, uri: str) -> tuple[str, ...]:
        """The users a call to ``uri`` rings, if it is in one of our domains."""
        parsed = _sip_uri(uri)
        if parsed is None or parsed.user is None:
            return ()
        if parsed.host.lower().strip("[]") not in self._domains():
            return ()
        return self.lamps.users(parsed.unescaped_user or parsed.user)

    def _caller(self, uri: str) -> str | None:
        parsed = _sip_uri(uri)
        if parsed is None or parsed.user is None:
            return None
        if parsed.host.lower().strip("[]") not in self._domains():
            return None
        name = parsed.unescaped_user or parsed.user
        return name if self.lamps.lamp(name) == name else None

    def _aor(self, user: str) -> str:
        domains = sorted(self._domains())
        return f"sip:{user}@{domains[0]}" if domains else f"sip:{user}"

    # -- who is watched ---------------------------------------------------------

    def _rewatch(self) -> None:
        """After lamps gained or lost subscriptions: keep the calls of who is watched.

        Calls of users no longer watched are dropped; users newly watched
        are seeded from the live calls; the notifier is on the event stream
        only while somebody is watched.
        """
        if self._source is None or not self._lamps_changed or self._busy:
            return
        self._lamps_changed = False
        before = self._watched or frozenset()
        self._watched_office = self.lamps.office()
        lamps = {*self._by_lamp, *(s.lamp for s in self._closing.values())}
        watched = frozenset(user for lamp in lamps for user in self.lamps.members(lamp))
        self._watched = watched
        for key, call in list(self._calls.items()):
            users = self._users(call)
            if watched.isdisjoint(users):
                del self._calls[key]
                for user in users:
                    lines = self._lines.get(user)
                    if lines is not None:
                        lines.pop(key, None)
                        if not lines:
                            del self._lines[user]
        if not watched.issubset(before):
            self._seed()
        self._listen(bool(watched))

    def _seed(self) -> None:
        """Replay the live calls not kept, keeping those of watched users.

        Quietly: the NOTIFYs that follow (the new subscription's first one)
        carry the state; a subscription already served saw no change.
        """
        assert self._source is not None
        self._seeding = True
        try:
            for events in self._source.live_events():
                first = events[0]
                if (first.call_id, first.from_tag or "") in self._calls:
                    continue
                for event in events:
                    self._dialog_changed(event)
        finally:
            self._seeding = False

    def _listen(self, on: bool) -> None:
        """Be on the proxy's dialog observers, or off them.

        A new list rather than a change in place: this may run while the
        stream is telling its observers (a NOTIFY that fails at once ends a
        subscription), and a list changed under that loop skips an observer.
        """
        events = self._events
        if events is None:
            return
        me: DialogObserver = self
        others = [observer for observer in events.dialogs if observer is not me]
        if on:
            others.append(me)
        if others != events.dialogs:
            events.dialogs = others

    # -- NOTIFYs -----------------------------------------------------------------

    def _changed(self, users: Iterable[str]) -> None:
        """NOTIFY each subscription watching one of ``users`` (once each)."""
        if self._seeding:
            return
        keys: set[str] = set()
        for user in users:
            for lamp in (user, *self.lamps.groups_of(user)):
                keys.update(self._by_lamp.get(lamp, ()))
        for key in sorted(keys):
            subscription = self._subscriptions.get(key)
            if subscription is not None:
                self._notify(subscription)

    def _dialogs(self, lamp: str) -> list[Dialog]:
        now = self._clock.seconds()
        members = self.lamps.members(lamp)
        if len(members) == 1:
            lines = self._lines.get(members[0], {})
            return [line.dialog(now) for line in lines.values()]
        # A group: one dialog per call, the most telling of its members' lines.
        by_call: dict[str, list[Dialog]] = {}
        for member in members:
            for line in self._lines.get(member, {}).values():
                by_call.setdefault(line.dialog_id, []).append(line.dialog(now))
        return [d for d in map(most_telling, by_call.values()) if d is not None]

    def _lamp_state(self, lamp: str) -> str:
        best = most_telling(self._dialogs(lamp))
        return "idle" if best is None or best.state == "terminated" else best.state

    def _notify(self, subscription: Subscription) -> None:
        if subscription.finished:
            return
        if subscription.in_flight:
            # Never two in flight (see the module's notes): the next one says
            # whatever the state is when this one is answered.
            subscription.pending = True
            return
        subscription.pending = False
        subscription.in_flight = True
        request = self._request(subscription)
        # The version is stored as it is used, before the NOTIFY leaves: what
        # a restart goes on from, and what another process sharing the store
        # reads when the subscriber's next refresh reaches it (waiting for the
        # 200 let a quick refresh elsewhere read the old version and send a
        # version the phone had seen, which RFC 4235 §4.1 says it ignores).
        self._save(subscription)
        peer = subscription.peer

        def answered(response: Response) -> None:
            if response.status >= 200:
                self._answered(subscription, response.status)

        self._send(request, peer, answered, subscription.connection_id)

    def _request(self, subscription: Subscription) -> Request:
        now = self._clock.seconds()
        subscription.cseq += 1
        version = subscription.version
        subscription.version += 1
        if subscription.ending is None:
            remaining = max(1, round(subscription.expires_at - now))
            state = f"active;expires={remaining}"
        else:
            subscription.finished = True
            state = "terminated"
            if subscription.ending:
                state += f";reason={subscription.ending}"
        body = dialog_info(
            subscription.entity,
            version,
            self._dialogs(subscription.lamp),
            single=self.settings.single_dialog,
        )
        headers = Headers.of(
            ("Max-Forwards", "70"),
            ("From", f"{subscription.local_uri};tag={subscription.local_tag}"),
            ("To", f"{subscription.remote_uri};tag={subscription.remote_tag}"),
            ("Call-ID", subscription.call_id),
            ("CSeq", f"{subscription.cseq} NOTIFY"),
            ("Contact", subscription.contact),
            ("Event", subscription.event),
            ("Subscription-State", state),
        )
        request = Request("NOTIFY", subscription.remote_target, headers)
        return request.with_body(body, CONTENT_TYPE)

    def _answered(self, subscription: Subscription, status: int) -> None:
        subscription.in_flight = False
        self._answered_with(subscription, status)
        if (
            not subscription.in_flight
            and self._closing.pop(subscription.key, None) is not None
        ):
            # Its last NOTIFY is answered (or never goes): its lamp may go.
            self._lamps_changed = True
        self._rewatch()

    def _answered_with(self, subscription: Subscription, status: int) -> None:
        if status < 300:
            self._count("ok")
            if subscription.pending:
                # The latest state, or the last NOTIFY of one that ended
                # while this one was out.
                self._notify(subscription)
            return
        self._count({408: "timeout", 481: "gone"}.get(status, "error"))
        if subscription.ending is not None:
            return
        # RFC 6665 §4.2.2: a NOTIFY that fails (timeout, 481, any final error
        # without Retry-After) ends the subscription; no last NOTIFY is sent
        # where the last one failed.
        self.log.info(
            "subscription of {subscriber} to {entity} ended: NOTIFY got {status}",
            subscriber=subscription.subscriber,
            entity=subscription.entity,
            status=status,
        )
        subscription.ending = "deactivated"
        subscription.finished = True
        self._remove(subscription)

    def _count(self, result: str) -> None:
        self.results[result] += 1
        if self.observer is not None:
            self.observer.notify_result(result)

    # -- the table ---------------------------------------------------------------

    def _add(self, subscription: Subscription) -> None:
        """Keep ``subscription``; the caller then calls :meth:`_rewatch`."""
        self._subscriptions[subscription.key] = subscription
        if subscription.lamp not in self._by_lamp:
            self._lamps_changed = True
        self._by_lamp.setdefault(subscription.lamp, set()).add(subscription.key)
        self._per_user[subscription.subscriber] += 1
        self._arm(subscription)

    def _remove(self, subscription: Subscription) -> None:
        if self._subscriptions.pop(subscription.key, None) is None:
            return
        self._gone.append(subscription.key)
        keys = self._by_lamp.get(subscription.lamp)
        if keys is not None:
            keys.discard(subscription.key)
            if not keys:
                del self._by_lamp[subscription.lamp]
                self._lamps_changed = True
        self._per_user[subscription.subscriber] -= 1
        if self._per_user[subscription.subscriber] <= 0:
            del self._per_user[subscription.subscriber]
        if subscription.timer is not None and subscription.timer.active():
            subscription.timer.cancel()
        subscription.timer = None
        self._write(self.store.remove_subscription(subscription.key))

    def _arm(self, subscription: Subscription) -> None:
        if subscription.timer is not None and subscription.timer.active():
            subscription.timer.cancel()
        delay = max(0.0, subscription.expires_at - self._clock.seconds())
        subscription.timer = self._clock.callLater(delay, self._expired, subscription)

    def _expired(self, subscription: Subscription) -> None:
        subscription.timer = None
        if self._subscriptions.get(subscription.key) is subscription:
            self.unsubscribe(subscription, "timeout")

    def _save(self, subscription: Subscription) -> None:
        if subscription.ending is not None:
            return
        self._write(
            self.store.save_subscription(
                subscription.key,
                subscription.to_json(),
                expires_at=subscription.expires_at,
            )
        )

    def _write(self, work: Coroutine[Any, Any, Any]) -> Deferred[Any]:
        return Deferred.fromCoroutine(work).addErrback(self._store_failed)

    def _store_failed(self, failure: Failure) -> None:
        self.store_errors += 1
        if self.store_errors == 1:
            # Once: a store that is down fails every write; later ones counted.
            self.log.failure("subscriptions cannot be stored", failure)


def _sip_uri(text: str | None) -> SipURI | None:
    if not text:
        return None
    try:
        return SipURI.parse(text)
    except (ParseError, ValueError):
        return None


def _user_part(uri: str | None) -> str | None:
    parsed = _sip_uri(uri)
    return None if parsed is None or parsed.user is None else parsed.unescaped_user
