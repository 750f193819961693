"""The registrar: REGISTER requests as RFC 3261 §10.3 processes them.

Theory of operation: :meth:`Registrar.register` runs in three stages.

1. :func:`decide_registration` looks at the request alone (steps 1, 2, 5, 6 and
   the per-contact part of 7): which AOR, which contacts with which lifetimes,
   or a ``*`` removing them all. It raises :class:`RegisterRefusedError` with the
   answer for any rule broken, before anything is read or stored.
2. :func:`decide_changes` takes that decision and the AOR's current bindings:
   it applies the Call-ID / CSeq rule (step 7), turns the contacts into
   :class:`~sipproxy.location.Binding` values on the flow the request came in
   on, and evicts the oldest bindings beyond ``max_bindings``.
3. The registrar commits the change with one
   :meth:`~sipproxy.location.LocationService.update` and builds the 200 with
   :func:`answer_ok` (step 8). The caller sends the response only after
   :meth:`Registrar.register` returns, so for a persistent store a 200 always
   describes bindings that are already on disk.

Stages 1 and 2 are pure functions over values; only stage 3 awaits the store.
Within one process, REGISTERs for the same AOR are handled one at a time, so
the read in stage 2 and the write in stage 3 see no interleaved update.

Supported extensions: ``path`` (RFC 3327: the Path is stored in the binding,
and echoed in the 200 when the phone said ``Supported: path``) and ``outbound``
(RFC 5626 §6: with ``+sip.instance`` and ``reg-id`` and ``outbound`` signalled,
a binding is keyed by instance and reg-id, so a REGISTER over a new flow
replaces the old one, and the 200 says ``Require: outbound``).

Authentication (§10.3 steps 3 and 4) happens before a REGISTER gets here: the
proxy's auth gate (``sipproxy.auth.gate``) challenges it and checks that the user
may change the AOR, when a users file is configured.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from email.utils import formatdate

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from sipproxy.location import Binding, Flow, LocationService
from sipproxy.sip.errors import ParseError
from sipproxy.sip.message import Request
from sipproxy.sip.uri import STAR, AbsoluteURI, NameAddress, SipURI, parse_uri

__all__ = [
    "SUPPORTED",
    "ContactRequest",
    "RegisterRefusedError",
    "Registrar",
    "RegistrarAnswer",
    "RegistrarSettings",
    "Registration",
    "answer_ok",
    "decide_changes",
    "decide_registration",
]

#: Option tags a REGISTER may Require here (RFC 3261 §10.3 step 2, §8.2.2.3).
SUPPORTED = frozenset({"path", "outbound"})
#: Contact parameters the registrar interprets itself; the others are stored.
_OWN_PARAMS = frozenset({"expires", "q"})
#: A lifetime with more digits than this is longer than any maximum anyway.
_MAX_DIGITS = 10
_DIGITS = re.compile(r"[0-9]+")
# qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )   (RFC 3261 §25.1)
_QVALUE = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")
#: What a store failure tells the phone: try again shortly (RFC 3261 §21.5.1).
_RETRY_AFTER = "5"


@dataclass(slots=True, unsafe_hash=True)  # immutable by convention (sip/headers.py)
class RegistrarSettings:
    """Policy of one registrar.

    ``domains`` are the lowercased host names this registrar keeps bindings for;
    lifetimes are in seconds.
    """

    domains: frozenset[str]
    default_expires: int = 3600
    min_expires: int = 60
    max_expires: int = 7200
    max_bindings: int = 10


@dataclass(slots=True, unsafe_hash=True)  # immutable by convention (sip/headers.py)
class RegistrarAnswer:
    """What to answer a REGISTER with.

    The caller builds the response with ``request.response(status, reason,
    to_tag=..., headers=headers)``; ``reason`` ``None`` means the standard
    phrase. ``bindings`` are the AOR's bindings after the change (200 only).
    """

    status: int
    reason: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    bindings: tuple[Binding, ...] = ()


class RegisterRefusedError(Exception):
    """A REGISTER that breaks a rule; ``answer`` says how to refuse it.

    Raised only before anything is stored, so a refused request changes nothing.
    """

    def __init__(
        self,
        status: int,
        reason: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(f"{status} {reason or ''}".rstrip())
        self.answer = RegistrarAnswer(status, reason, tuple(headers))


@dataclass(slots=True, unsafe_hash=True)  # immutable by convention (sip/headers.py)
class ContactRequest:
    """One Contact value of a REGISTER, with its lifetime decided."""

    uri: SipURI | AbsoluteURI
    expires: int
    """Seconds, already capped at ``max_expires``; 0 asks for removal."""
    q: float = 1.0
    params: tuple[tuple[str, str | None], ...] = ()
    """Contact parameters other than ``expires`` and ``q``, as written."""
    instance_id: str | None = None
    reg_id: int | None = None
    """Set only when outbound applies (RFC 5626 §6); it then keys the binding."""

    @property
    def text(self) -> str:
        """The URI as registered, escapes and all (RFC 4475 escnull, regescrt)."""
        return str(self.uri)


@dataclass(slots=True, unsafe_hash=True)  # immutable by convention (sip/headers.py)
class Registration:
    """What one REGISTER asks for, decided from the request alone."""

    aor: str
    call_id: str
    cseq: int
    contacts: tuple[ContactRequest, ...] = ()
    """Empty and ``wildcard`` false: a query, which changes nothing."""
    wildcard: bool = False
    """``Contact: *`` with ``Expires: 0``: remove every binding of the AOR."""
    path: tuple[str, ...] = ()
    echo_path: bool = False
    """The phone said ``Supported: path``: the 200 carries the Path (RFC 3327)."""
    user_agent: str | None = None

    @property
    def outbound(self) -> bool:
        """Whether outbound processing applied, so the 200 Requires it."""
        return any(c.reg_id is not None for c in self.contacts)


def decide_registration(request: Request, settings: RegistrarSettings) -> Registration:
    """Check a REGISTER against every rule that needs no stored binding.

    :raises RegisterRefusedError: with 400, 403, 404, 420 or 423 as the
        rule broken says.
    """
    # Step 1: "The registrar inspects the Request-URI to determine whether it has
    # access to bindings for the domain identified in the Request-URI."
    try:
        target = request.request_uri
    except ParseError:
        raise RegisterRefusedError(400, "Bad Request-URI") from None
    if not isinstance(target, SipURI) or target.host.lower() not in settings.domains:
        raise RegisterRefusedError(403, "Not Our Domain")
    # Step 2: "the registrar MUST process the Require header field values as
    # described for UASs in Section 8.2.2", which answers 420 with Unsupported.
    unknown = [
        tag
        for tag in request.headers.get_all("require")
        if tag and tag.lower() not in SUPPORTED
    ]
    if unknown:
        raise RegisterRefusedError(420, None, (("Unsupported", ", ".join(unknown)),))
    # Steps 3 and 4 (authenticate, may this user change this AOR) were done by
    # the auth gate before the request got here; without a users file anyone
    # may register any AOR of our domains, including a third party's.
    aor = _address_of_record(request, settings)
    try:
        call_id = request.call_id
    except ParseError:
        raise RegisterRefusedError(400, "Missing Call-ID") from None
    try:
        cseq = request.cseq.number
    except ParseError:
        # RFC 4475 scalar02: validate_request answers this before we see it.
        raise RegisterRefusedError(400, "Bad CSeq") from None
    header_expires = _header_expires(request)
    values = request.headers.get_all("contact")
    supported = {t.lower() for t in request.headers.get_all("supported")}
    wildcard = any(v == STAR for v in values)
    contacts: tuple[ContactRequest, ...] = ()
    if wildcard:
        # Step 6: "If the request contains the special value '*', and the Expires
        # header field is not present or has a value other than zero, the
        # registrar MUST reject the request with a 400." Nor may '*' share the
        # request with another Contact (§10.2.2).
        if len(values) != 1 or header_expires != 0:
            raise RegisterRefusedError(400, "Bad Contact: * Needs Expires: 0 Alone")
    else:
        # RFC 5626 §6: reg-id counts only when the phone signals outbound support.
        required = {t.lower() for t in request.headers.get_all("require")}
        outbound = "outbound" in supported | required
        try:
            addresses = request.contacts
        except ParseError:
            raise RegisterRefusedError(400, "Bad Contact") from None
        contacts = tuple(
            _contact(address, header_expires, outbound, settings)
            for address in addresses
        )
    return Registration(
        aor=aor,
        call_id=call_id,
        cseq=cseq,
        contacts=contacts,
        wildcard=wildcard,
        path=tuple(request.headers.get_all("path")),
        echo_path="path" in supported,
        user_agent=request.headers.get("user-agent"),
    )


def _address_of_record(request: Request, settings: RegistrarSettings) -> str:
    # Step 5: "The registrar extracts the address-of-record from the To header
    # field of the request. If the address-of-record is not valid for the domain
    # in the Request-URI, the registrar MUST send a 404 (Not Found) response."
    # The canonical form is "sip:user@domain" (scheme, unescaped user, host).
    try:
        to_uri = request.to_addr.uri
    except ParseError:
        raise RegisterRefusedError(400, "Bad To") from None
    if not isinstance(to_uri, SipURI):
        # RFC 4475 §3.3.4 (unksm2): To: isbn:... is no AOR a registrar can hold.
        raise RegisterRefusedError(400, "Bad To: Not A SIP URI")
    if to_uri.host.lower() not in settings.domains or not to_uri.user:
        raise RegisterRefusedError(404)
    return to_uri.aor()


def _header_expires(request: Request) -> int | None:
    text = request.headers.get("expires")
    if text is None:
        return None
    value = _delta_seconds(text)
    if value is None:
        raise RegisterRefusedError(400, "Bad Expires")
    return value


def _contact(
    address: NameAddress,
    header_expires: int | None,
    outbound: bool,
    settings: RegistrarSettings,
) -> ContactRequest:
    """One Contact value to a :class:`ContactRequest` (RFC 3261 §10.3 step 7)."""
    # Step 7: "the expiration interval is taken from the 'expires' parameter of
    # the Contact, else the Expires header field, else a locally-configured
    # default"; "The registrar MAY choose an expiration less than the requested".
    expires_param = address.param("expires")
    if expires_param is not None:
        expires = _delta_seconds(expires_param)
        if expires is None:
            raise RegisterRefusedError(400, "Bad Contact: expires")
    elif header_expires is not None:
        expires = header_expires
    else:
        expires = settings.default_expires
    expires = min(expires, settings.max_expires)
    if 0 < expires < settings.min_expires:
        # §10.3 step 7: if the interval "is greater than zero AND smaller than one
        # hour AND less than a registrar-configured minimum, the registrar MAY
        # reject the registration with a response of 423 (Interval Too Brief)",
        # and §20.23: the 423 MUST carry Min-Expires.
        raise RegisterRefusedError(
            423, None, (("Min-Expires", str(settings.min_expires)),)
        )
    q = 1.0
    q_param = address.param("q")
    if q_param is not None:
        if not _QVALUE.fullmatch(q_param):
            raise RegisterRefusedError(400, "Bad Contact: q")
        q = float(q_param)
    # Unknown parameters stay Contact parameters, never URI parameters: without
    # <> they belong to the header field (RFC 4475 §3.3.12, cparam01).
    params = tuple(
        (name, param)
        for name, param in address.params
        if name.lower() not in _OWN_PARAMS
    )
    instance = address.param("+sip.instance")
    reg_id: int | None = None
    reg_text = address.param("reg-id")
    if outbound and instance and reg_text is not None:
        # reg-id = "reg-id" EQUAL 1*10DIGIT, 1..2**31-1 (RFC 5626 §12)
        if not _DIGITS.fullmatch(reg_text) or len(reg_text) > _MAX_DIGITS:
            raise RegisterRefusedError(400, "Bad Contact: reg-id")
        reg_id = int(reg_text)
    return ContactRequest(
        uri=address.uri,
        expires=expires,
        q=q,
        params=params,
        instance_id=instance or None,
        reg_id=reg_id,
    )


@functools.lru_cache(maxsize=4)
def _http_date(second: int) -> str:
    # Every 200 in a second carries the same Date: format it once (hot path).
    return formatdate(second, usegmt=True)


def decide_changes(
    registration: Registration,
    current: Sequence[Binding],
    flow: Flow,
    *,
    now: float,
    max_bindings: int,
) -> tuple[list[Binding], list[str]]:
    """What to save and which binding keys to remove (RFC 3261 §10.3 step 7).

    ``current`` are the AOR's unexpired bindings. New bindings are registered
    on ``flow``: a phone behind NAT is reached back through the address its
    REGISTER came from, not the private one in its Contact (RFC 5626 §5.3).
    Beyond ``max_bindings``, the oldest bindings by ``registered_at`` go, so a
    phone that reboots with a new Call-ID is never locked out; a single
    REGISTER listing more contacts than that keeps its last ``max_bindings``.

    :raises RegisterRefusedError: 400 when a binding it changes has the
        request's Call-ID and a CSeq not lower than the request's.
    """
    call_id, cseq = registration.call_id, registration.cseq
    if registration.wildcard:
        # Step 6: '*' removes every binding, "subject to the Call-ID / CSeq
        # rule" of step 7 for each.
        for binding in current:
            _check_order(binding, call_id, cseq)
        return [], [b.key for b in current]
    save: list[Binding] = []
    remove: list[str] = []
    for contact in registration.contacts:
        for binding in current:
            if _same_binding(binding, contact):
                _check_order(binding, call_id, cseq)
                remove.append(binding.key)
        if contact.expires == 0:
            continue
        save.append(
            Binding(
                aor=registration.aor,
                contact=contact.text,
                expires_at=now + contact.expires,
                registered_at=now,
                call_id=call_id,
                cseq=cseq,
                flow=flow,
                q=contact.q,
                params=contact.params,
                user_agent=registration.user_agent,
                path=registration.path,
                instance_id=contact.instance_id,
                reg_id=contact.reg_id,
            )
        )
    if len(save) > max_bindings:
        save = save[-max_bindings:]
    saved_keys = {b.key for b in save}
    removed_keys = set(remove)
    kept = [b for b in current if b.key not in removed_keys | saved_keys]
    excess = len(kept) + len(save) - max_bindings
    if excess > 0:
        oldest = sorted(kept, key=lambda b: b.registered_at)[:excess]
        remove.extend(b.key for b in oldest)
    return save, list(dict.fromkeys(remove))


def _same_binding(binding: Binding, contact: ContactRequest) -> bool:
    """Whether ``contact`` updates ``binding`` (RFC 3261 §10.3 step 7).

    "the registrar then searches the list of current bindings using the URI
    comparison rules"; an outbound contact is the same binding when instance
    and reg-id are (RFC 5626 §6), whatever its URI.
    """
    if contact.reg_id is not None:
        return (
            binding.instance_id == contact.instance_id
            and binding.reg_id == contact.reg_id
        )
    if binding.reg_id is not None:
        return False
    try:
        stored = parse_uri(binding.contact)
    except ParseError:
        return binding.contact == contact.text
    return stored.matches(contact.uri)


def _check_order(binding: Binding, call_id: str, cseq: int) -> None:
    """Refuse an update that is older than the binding (RFC 3261 §10.3 step 7).

    "If the Call-ID value in the existing binding differs from the Call-ID
    value in the request, the binding MUST be removed if the expiration time is
    zero and updated otherwise. If they are the same, the registrar compares
    the CSeq value. If the value is higher than that of the existing binding,
    it MUST update or remove the binding as above. If not, the update MUST be
    aborted and the request fails."

    Answered ``400 CSeq Out Of Order`` rather than 500 with Retry-After: a
    retransmission is absorbed by the transaction layer before it gets here,
    so this is a stale or replayed request, and inviting the phone to send it
    again would only fail again.
    """
    if binding.call_id == call_id and cseq <= binding.cseq:
        raise RegisterRefusedError(400, "CSeq Out Of Order")


def answer_ok(
    registration: Registration, bindings: Sequence[Binding], *, now: float
) -> RegistrarAnswer:
    """The 200 for a REGISTER that succeeded (RFC 3261 §10.3 step 8).

    "The registrar returns a 200 (OK) response. The response MUST contain
    Contact header field values enumerating all current bindings. Each Contact
    value MUST feature an 'expires' parameter indicating its expiration
    interval chosen by the registrar. The response SHOULD include a Date header
    field." Stored Contact parameters come back as registered; the Path comes
    back when the phone supports it (RFC 3327 §5.3); ``Require: outbound`` when
    outbound processing applied (RFC 5626 §6).
    """
    headers: list[tuple[str, str]] = []
    for binding in bindings:
        value = f"<{binding.contact}>"
        for name, param in binding.params:
            value += f";{name}" if param is None else f";{name}={param}"
        if binding.q != 1.0:
            value += f";q={binding.q:g}"
        value += f";expires={binding.remaining(now)}"
        headers.append(("Contact", value))
    if registration.echo_path:
        headers += [("Path", value) for value in registration.path]
    if registration.outbound:
        headers.append(("Require", "outbound"))
    headers.append(("Date", _http_date(int(now))))
    return RegistrarAnswer(200, None, tuple(headers), tuple(bindings))


def _delta_seconds(text: str) -> int | None:
    """delta-seconds (RFC 3261 §25.1), or ``None`` when it is not one.

    Overlong values are capped, not refused: RFC 4475 §3.1.2.4 (scalar02) sends
    ``Expires: 1`` followed by 100 zeros, which an element may treat as large.
    """
    text = text.strip(" \t")
    if not _DIGITS.fullmatch(text):
        return None
    if len(text.lstrip("0")) > _MAX_DIGITS:
        return 2**32 - 1
    return int(text)


class Registrar:
    """RFC 3261 §10.3 over a location service.

    One instance serves every REGISTER of the process; it holds no bindings
    itself, only a lock per AOR being updated.
    """

    log = Logger()

    def __init__(self, location: LocationService, settings: RegistrarSettings) -> None:
        self._location = location
        self._settings = settings
        #: AORs being changed -> the REGISTERs waiting for them, in order
        self._busy: dict[str, list[Deferred[None]]] = {}

    def reconfigure(
        self,
        *,
        default_expires: int,
        min_expires: int,
        max_expires: int,
        max_bindings: int,
    ) -> None:
        """Change the limits at run time (SIGHUP); stored bindings are untouched.

        The next REGISTER of each AOR is judged by the new limits.
        """
        self._settings = replace(
            self._settings,
            default_expires=default_expires,
            min_expires=min_expires,
            max_expires=max_expires,
            max_bindings=max_bindings,
        )

    async def register(
        self, request: Request, flow: Flow, *, now: float
    ) -> RegistrarAnswer:
        """Process a REGISTER that arrived on ``flow``; say what to answer.

        Returns only once the change is committed to the store, so the caller
        may send the answer straight away. Refusals change nothing:

        - 403: the Request-URI is not one of our domains (step 1);
        - 420 with Unsupported: Require names an extension other than ``path``
          and ``outbound`` (step 2);
        - 400: To is not a SIP or SIPS URI, a Contact, Expires, q or reg-id does
          not parse, or ``*`` comes without ``Expires: 0`` or not alone;
        - 404: To names an AOR outside our domains (step 5);
        - 423 with Min-Expires: a lifetime below ``min_expires`` (step 7);
        - ``400 CSeq Out Of Order``: the request has the Call-ID of a binding it
          would change and a CSeq not higher than that binding's (step 7). 400,
          not 500 with Retry-After: retransmissions never reach the registrar
          (the transaction layer absorbs them), so this request is stale and
          retrying it cannot succeed;
        - 500 with ``Retry-After: 5``: the location store failed.

        :param flow: how the request reached us, stored in every new binding.
        :param now: the current time, the base of ``expires_at``.
        """
        try:
            registration = decide_registration(request, self._settings)
        except RegisterRefusedError as refused:
            return refused.answer
        # One change per AOR at a time: a store may suspend between reading the
        # bindings and writing them. Uncontended (nearly always), this costs no
        # Deferred; a waiter gets the AOR handed over still marked busy.
        aor = registration.aor
        waiters = self._busy.get(aor)
        if waiters is None:
            self._busy[aor] = []
        else:
            turn: Deferred[None] = Deferred()
            waiters.append(turn)
            await turn
        try:
            return await self._commit(registration, flow, now)
        finally:
            waiters = self._busy[aor]
            if waiters:
                waiters.pop(0).callback(None)
            else:
                del self._busy[aor]

    async def _commit(
        self, registration: Registration, flow: Flow, now: float
    ) -> RegistrarAnswer:
        aor = registration.aor
        try:
            current = await self._location.bindings(aor, now=now)
            save, remove = decide_changes(
                registration,
                current,
                flow,
                now=now,
                max_bindings=self._settings.max_bindings,
            )
            if save or remove:
                after = await self._location.update(
                    aor, save=save, remove=remove, now=now
                )
            else:
                after = current
        except RegisterRefusedError as refused:
            return refused.answer
        except Exception:
            # Whatever the store raised, the phone hears 500 and tries again later;
            # a REGISTER must never take the server down (STYLE principle 6).
            self.log.failure("location store failed on REGISTER for {aor}", aor=aor)
            return RegistrarAnswer(
                500, "Location Service Unavailable", (("Retry-After", _RETRY_AFTER),)
            )
        return answer_ok(registration, after, now=now)
