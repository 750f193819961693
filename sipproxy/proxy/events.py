"""What the proxy decided, as immutable values, for whoever wants to know.

The core emits one :class:`FinalDecision` per final answer it sends (its own or a
proxied one) and one :class:`DialogEvent` per change of a dialog it sees being
made or ended. Observers consume the stream: the final log line with the
metrics count (:class:`FinalLogLine`, over a
:class:`~sipproxy.proxy.observer.ProxyObserver`), and later call records and busy
lamps. They are called in order, synchronously, and must be cheap: they run on
the message path.

Costs: a decision is a tuple built once per final answer, with what is cheap to
know then (the request is kept; From, To and Call-ID are read from it only when
an observer asks). Dialog events are built only when a dialog observer is
registered.

Dialog events follow what the proxy sees of an INVITE that creates a dialog
(RFC 3261 §12, in the words of RFC 4235 §3.7.1): CREATED when it is forwarded,
EARLY on the first provisional answer with a To tag from a branch, CONFIRMED on
each 2xx, TERMINATED on a final answer that is not 2xx (rejected, cancelled,
timed out) or on a BYE inside a dialog whose token we verified. Tags are as the
message carried them: a BYE from the callee has them the other way round, so
match a dialog on its Call-ID and the pair of tags.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple, Protocol

from twisted.logger import Logger

from sipproxy.cdr.record import CHALLENGES, disposition_of
from sipproxy.sip.addressing import Peer
from sipproxy.sip.errors import ParseError
from sipproxy.sip.message import Request

if TYPE_CHECKING:
    from sipproxy.proxy.observer import ProxyObserver

#: The namespace the core's log lines had before they left proxy/core.py:
#: operators' log queries and the fail2ban example key on it.
LOG_NAMESPACE = "sipproxy.proxy.core.Proxy"
#: Methods whose successful answers are not logged one by one.
QUIET_WHEN_OK = frozenset({"REGISTER", "OPTIONS", "SUBSCRIBE", "NOTIFY", "PUBLISH"})


class FinalDecision(NamedTuple):
    """One final answer went upstream: what was asked, what was answered, and why.

    A tuple rather than a frozen dataclass: one is built per final answer, on
    the message path, and a tuple is the cheapest immutable value to build.
    """

    request: Request
    status: int
    #: where the answer came from: ``transport:host:port`` of the branch whose
    #: answer went up, or who decided here ("local", "registrar", "refused" ...)
    route: str
    #: who decided when we answered ourselves; None for a proxied answer or a
    #: plain local one
    why: str | None
    #: when the request arrived, and when the answer went (clock seconds)
    started_at: float
    ended_at: float
    #: seconds from the request to the first provisional answer of a branch
    #: (post-dial delay); None when none came
    setup: float | None
    #: the user the request authenticated as; None: not authenticated
    user: str | None
    #: where the request came from
    source: Peer | None

    @property
    def method(self) -> str:
        """The request's method."""
        return self.request.method

    @property
    def call_id(self) -> str | None:
        """The request's Call-ID."""
        return self.request.headers.get("call-id")

    @property
    def caller(self) -> str:
        """The From URI (no display name, no tag); "?" when unreadable."""
        return uri_of(self.request, "from")

    @property
    def callee(self) -> str:
        """The To URI (no display name, no tag); "?" when unreadable."""
        return uri_of(self.request, "to")

    @property
    def elapsed(self) -> float:
        """Seconds from the request to the final answer."""
        return self.ended_at - self.started_at


class DialogState(enum.Enum):
    """Where a dialog stands, as the proxy sees it (RFC 4235 §3.7.1 words)."""

    CREATED = "created"
    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


class DialogEvent(NamedTuple):
    """A dialog changed state.

    The URIs (:attr:`caller`, :attr:`callee`, :attr:`uri`) are read from the
    request when asked: the call tracker reads them once per call, most
    events are never asked (1 % of a call's instructions, bench/hotpath.py).
    """

    state: DialogState
    call_id: str
    from_tag: str | None
    to_tag: str | None
    #: the request whose dialog changed (an INVITE, or a BYE that ended it);
    #: None once :meth:`detached`
    request: Request | None
    #: clock seconds
    at: float
    #: the status of the response that changed it; None for a request
    status: int | None = None
    #: CREATED: the user the INVITE authenticated as (None: not authenticated)
    user: str | None = None
    #: CONFIRMED: the Request-URI of the branch that answered (the binding's
    #: contact, or the target a plan forwarded to)
    answered_by: str | None = None
    #: CONFIRMED: why the call was forwarded to the branch that answered (its
    #: newest Diversion reason: user-busy, no-answer...); None: not forwarded
    forwarded: str | None = None
    #: :meth:`detached`: the caller, callee and uri, read from the request
    uris: tuple[str, str, str] | None = None

    @property
    def caller(self) -> str:
        """The From URI (no display name, no tag); "?" when unreadable."""
        if self.uris is not None:
            return self.uris[0]
        assert self.request is not None
        return uri_of(self.request, "from")

    @property
    def callee(self) -> str:
        """The To URI (no display name, no tag); "?" when unreadable."""
        if self.uris is not None:
            return self.uris[1]
        assert self.request is not None
        return uri_of(self.request, "to")

    @property
    def uri(self) -> str:
        """The Request-URI of the message that changed it: what was dialled."""
        if self.uris is not None:
            return self.uris[2]
        assert self.request is not None
        return str(self.request.uri)

    def detached(self) -> DialogEvent:
        """This event with its URIs read and without its request: to keep.

        A live call keeps the event that made it (busy lamps are seeded from
        it) for as long as it lasts; the request would be some kilobytes.
        """
        request = self.request
        if request is None:
            return self
        # Built whole: _replace is a Python loop over the fields, once per call.
        return DialogEvent(
            self.state,
            self.call_id,
            self.from_tag,
            self.to_tag,
            None,
            self.at,
            self.status,
            self.user,
            self.answered_by,
            self.forwarded,
            (uri_of(request, "from"), uri_of(request, "to"), str(request.uri)),
        )


class DecisionObserver(Protocol):
    """Told of each final decision."""

    def decided(self, decision: FinalDecision) -> None:
        """One final answer went upstream."""


class DialogObserver(Protocol):
    """Told of each dialog change."""

    def dialog_changed(self, event: DialogEvent) -> None:
        """A dialog was created, became early or confirmed, or ended."""


class Events:
    """The observers of the core's events, in the order they are told."""

    def __init__(
        self,
        decisions: Sequence[DecisionObserver] = (),
        dialogs: Sequence[DialogObserver] = (),
    ) -> None:
        """Start with these observers; more may be appended to the lists."""
        self.decisions: list[DecisionObserver] = list(decisions)
        self.dialogs: list[DialogObserver] = list(dialogs)

    def decided(self, decision: FinalDecision) -> None:
        """Tell every decision observer."""
        for observer in self.decisions:
            observer.decided(decision)

    def dialog_changed(
        self,
        state: DialogState,
        message_of: Request,
        at: float,
        *,
        to_tag: str | None = None,
        status: int | None = None,
        user: str | None = None,
        answered_by: str | None = None,
        forwarded: str | None = None,
    ) -> None:
        """Tell every dialog observer; builds nothing when there is none.

        :param message_of: the request whose dialog changed (its Call-ID, From
            and To); ``to_tag`` replaces its To tag (a response's).
        :param user: who the request authenticated as; ``answered_by`` and
            ``forwarded``: the branch that answered (see :class:`DialogEvent`).
        """
        if not self.dialogs:
            return
        try:
            from_tag = message_of.from_addr.tag
            to_tag = to_tag or message_of.to_addr.tag
        except ParseError:
            return
        event = DialogEvent(
            state,
            message_of.headers.get("call-id") or "",
            from_tag,
            to_tag,
            message_of,
            at,
            status,
            user,
            answered_by,
            forwarded,
        )
        for observer in self.dialogs:
            observer.dialog_changed(event)


_LINE = (
    "{method} {call_id} {uri} from {caller} to {callee} -> {status} "
    "via {route} in {ms} ms"
)
_LINE_WITH_CALL = _LINE + ", call {call}"


class FinalLogLine:
    """Each final decision's count for the metrics, and its one log line.

    Successful refreshes and keepalives are counted but not logged.
    Counting rides along rather than being an observer of its own: every
    REGISTER and OPTIONS makes a decision, and one call fewer per message is
    measurable (bench/hotpath.py).
    """

    def __init__(self, counts: ProxyObserver | None = None) -> None:
        """Log under the namespace operators know (:data:`LOG_NAMESPACE`).

        :param counts: told ``final_sent`` of every decision (the metrics).
        """
        # An instance attribute: a class-level Logger names the class instead.
        self.log = Logger(namespace=LOG_NAMESPACE)
        self._final_sent = counts.final_sent if counts is not None else None

    def decided(self, decision: FinalDecision) -> None:
        """Count ``decision``; log it unless it is a successful refresh or keepalive."""
        request = decision.request
        if self._final_sent is not None:
            self._final_sent(
                request.method,
                decision.status,
                decision.ended_at - decision.started_at,
            )
        if decision.status < 300 and request.method in QUIET_WHEN_OK:
            # Successful refreshes and keepalives are most of the traffic, and a
            # Twisted log event costs as much as handling the request: they stay
            # out of the log (bench: 33% of CPU at 1000 REGISTER/s went here).
            return
        # Structured fields for --log-format json; credentials never appear here.
        # An INVITE's line names its call record's disposition, so the log and
        # /cdr tell one story; a challenge is no end of a call (the caller
        # answers it with the same call) and names none.
        call = (
            disposition_of(decision.status)
            if request.method == "INVITE" and decision.status not in CHALLENGES
            else None
        )
        self.log.info(
            _LINE_WITH_CALL if call is not None else _LINE,
            call=call,
            method=request.method,
            call_id=decision.call_id,
            uri=request.uri,
            caller=decision.caller,
            callee=decision.callee,
            status=decision.status,
            route=decision.route,
            ms=round(decision.elapsed * 1000),
        )


def uri_of(request: Request, name: str) -> str:
    """The URI of From or To (no display name, no tag); "?" when unreadable."""
    try:
        address = request.from_addr if name == "from" else request.to_addr
    except ParseError:
        return "?"
    return str(address.uri)


__all__ = [
    "LOG_NAMESPACE",
    "QUIET_WHEN_OK",
    "DecisionObserver",
    "DialogEvent",
    "DialogObserver",
    "DialogState",
    "Events",
    "FinalDecision",
    "FinalLogLine",
    "uri_of",
]
