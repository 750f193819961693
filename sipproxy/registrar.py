"""The registrar: REGISTER requests as RFC 3261 §10.3 processes them.

Theory of operation: :meth:`Registrar.register` first decides on values alone —
which AOR, which contacts with which lifetimes, what to remove — raising
:class:`RegisterRefusedError` with the status to answer for any rule broken
(nothing is stored then). It then reads the AOR's bindings, applies the Call-ID /
CSeq rule, caps the number of bindings, and commits one atomic update to the
location service. Only when that update returns (for SQLite: committed) does the
caller send the 200, so a registration answered 200 survives a crash.

Supported extensions: ``path`` (RFC 3327: the Path is stored and echoed when the
phone said ``Supported: path``) and ``outbound`` (RFC 5626: with
``+sip.instance`` and ``reg-id`` a binding is keyed by instance and reg-id, and a
REGISTER over a new flow replaces the old one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import formatdate

from twisted.logger import Logger

from sipproxy.location import Binding, Flow, LocationService
from sipproxy.sip.errors import ParseError
from sipproxy.sip.message import Request
from sipproxy.sip.uri import STAR, NameAddress, SipURI, parse_uri

#: Option tags a REGISTER may Require here (RFC 3261 §10.3 step 2).
SUPPORTED = frozenset({"path", "outbound"})
#: Contact parameters the registrar interprets rather than stores.
_OWN_PARAMS = frozenset({"expires", "q"})
#: Digits beyond this are a lifetime longer than the maximum anyway.
_MAX_DIGITS = 10


@dataclass(frozen=True, slots=True)
class RegistrarSettings:
    """Policy of one registrar."""

    domains: frozenset[str]
    default_expires: int = 3600
    min_expires: int = 60
    max_expires: int = 7200
    max_bindings: int = 10


@dataclass(frozen=True, slots=True)
class RegistrarAnswer:
    """What to answer: status, reason (None: standard), extra header fields."""

    status: int
    reason: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    bindings: tuple[Binding, ...] = ()


class RegisterRefusedError(Exception):
    """A REGISTER that breaks a rule; nothing is stored."""

    def __init__(
        self,
        status: int,
        reason: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(f"{status} {reason or ''}")
        self.answer = RegistrarAnswer(status, reason, tuple(headers))


@dataclass(frozen=True, slots=True)
class _Contact:
    """One Contact value of the request, decided."""

    uri: SipURI | str  # SipURI for sip/sips, the text for other schemes
    text: str
    expires: int
    q: float
    params: tuple[tuple[str, str | None], ...]
    instance_id: str | None
    reg_id: int | None


class Registrar:
    """RFC 3261 §10.3 over a location service."""

    log = Logger()

    def __init__(self, location: LocationService, settings: RegistrarSettings) -> None:
        self._location = location
        self._settings = settings

    async def register(
        self, request: Request, flow: Flow, *, now: float
    ) -> RegistrarAnswer:
        """Process a REGISTER from ``flow``: commit, then say what to answer."""
        try:
            aor, contacts, wildcard = self._decide(request)
            return await self._apply(request, flow, aor, contacts, wildcard, now)
        except RegisterRefusedError as refused:
            return refused.answer

    # -- decisions on values (no storage) ----------------------------------------

    def _decide(self, request: Request) -> tuple[str, list[_Contact], bool]:
        settings = self._settings
        # Step 1: "The registrar inspects the Request-URI to determine whether it
        # has access to bindings for the domain identified in the Request-URI."
        target = request.request_uri
        if (
            not isinstance(target, SipURI)
            or target.host.lower() not in settings.domains
        ):
            raise RegisterRefusedError(403, "Not Our Domain")
        # Step 2: "[...] the registrar MUST process the Require header field values
        # as described for UASs in Section 8.2.2."
        unknown = [
            tag
            for tag in request.headers.get_all("require")
            if tag.lower() not in SUPPORTED
        ]
        if unknown:
            raise RegisterRefusedError(
                420, None, (("Unsupported", ", ".join(unknown)),)
            )
        # Steps 3 and 4 (authentication and authorization): TODO(issue 5), the
        # digest issue; until then any From may register any To of our domains.
        # Step 5: "The registrar extracts the address-of-record from the To header
        # field of the request. If the address-of-record is not valid for the
        # domain in the Request-URI, the registrar MUST send a 404 (Not Found)."
        try:
            to_uri = request.to_addr.uri
        except ParseError:
            raise RegisterRefusedError(400, "Bad To") from None
        if not isinstance(to_uri, SipURI):
            raise RegisterRefusedError(400, "To Is Not A SIP AOR")
        if to_uri.host.lower() not in settings.domains or not to_uri.user:
            raise RegisterRefusedError(404)
        aor = to_uri.aor()
        header_expires = self._header_expires(request)
        values = request.headers.get_all("contact")
        # Step 6: "*" only with Expires: 0 and alone, else 400.
        if STAR in (v.strip() for v in values):
            if len(values) != 1 or header_expires != 0:
                raise RegisterRefusedError(400, "Bad Contact: * Needs Expires 0 Alone")
            return aor, [], True
        outbound = "outbound" in {
            t.lower() for t in request.headers.get_all("supported")
        } or "outbound" in {t.lower() for t in request.headers.get_all("require")}
        contacts = [self._contact(v, header_expires, outbound) for v in values]
        return aor, contacts, False

    def _header_expires(self, request: Request) -> int | None:
        text = request.headers.get("expires")
        if text is None:
            return None
        value = _delta_seconds(text)
        if value is None:
            raise RegisterRefusedError(400, "Bad Expires")
        return value

    def _contact(
        self, value: str, header_expires: int | None, outbound: bool
    ) -> _Contact:
        try:
            address = NameAddress.parse(value)
        except ParseError:
            raise RegisterRefusedError(400, "Bad Contact") from None
        expires_param = address.param("expires")
        if expires_param is not None:
            expires = _delta_seconds(expires_param)
            if expires is None:
                raise RegisterRefusedError(400, "Bad Contact Expires")
        elif header_expires is not None:
            expires = header_expires
        else:
            expires = self._settings.default_expires
        expires = min(expires, self._settings.max_expires)
        if 0 < expires < self._settings.min_expires:
            # §10.3 step 7: "the registrar MAY [...] reject the registration with
            # a response of 423 (Interval Too Brief)" with Min-Expires.
            raise RegisterRefusedError(
                423, None, (("Min-Expires", str(self._settings.min_expires)),)
            )
        q = 1.0
        q_param = address.param("q")
        if q_param is not None:
            try:
                q = float(q_param)
            except ValueError:
                q = -1.0
            if not 0.0 <= q <= 1.0 or q_param.strip() != q_param:
                raise RegisterRefusedError(400, "Bad Contact q")
        params = tuple(
            (name, val)
            for name, val in address.params
            if name.lower() not in _OWN_PARAMS
        )
        instance = address.param("+sip.instance")
        reg_id: int | None = None
        reg_text = address.param("reg-id")
        if outbound and instance and reg_text is not None:
            if not reg_text.isdigit() or len(reg_text) > _MAX_DIGITS:
                raise RegisterRefusedError(400, "Bad Contact reg-id")
            reg_id = int(reg_text)
        uri: SipURI | str = (
            address.uri if isinstance(address.uri, SipURI) else str(address.uri)
        )
        return _Contact(
            uri=uri,
            text=str(address.uri),
            expires=expires,
            q=q,
            params=params,
            instance_id=instance,
            reg_id=reg_id,
        )

    # -- the update ----------------------------------------------------------------

    async def _apply(
        self,
        request: Request,
        flow: Flow,
        aor: str,
        contacts: list[_Contact],
        wildcard: bool,
        now: float,
    ) -> RegistrarAnswer:
        try:
            current = await self._location.bindings(aor, now=now)
            save, remove = self._changes(
                request, flow, aor, contacts, wildcard, current, now
            )
            if save or remove:
                after = await self._location.update(
                    aor, save=save, remove=remove, now=now
                )
            else:
                after = current
        except RegisterRefusedError:
            raise
        except Exception as error:  # any store failure is a 500, never a crash
            self.log.warn(
                "location store failed for {aor}: {error}", aor=aor, error=error
            )
            return RegistrarAnswer(
                500, "Location Store Unavailable", (("Retry-After", "5"),)
            )
        return self._ok(request, after, contacts, now)

    def _changes(
        self,
        request: Request,
        flow: Flow,
        aor: str,
        contacts: list[_Contact],
        wildcard: bool,
        current: list[Binding],
        now: float,
    ) -> tuple[list[Binding], list[str]]:
        """Step 7 and 8: what to save and which keys to remove."""
        call_id = request.headers.get("call-id") or ""
        cseq = request.cseq.number
        if wildcard:
            for binding in current:
                _check_order(binding, call_id, cseq)
            return [], [b.key for b in current]
        save: list[Binding] = []
        remove: list[str] = []
        path = tuple(request.headers.get_all("path"))
        user_agent = request.headers.get("user-agent")
        for contact in contacts:
            existing = [b for b in current if _same_binding(b, contact)]
            for binding in existing:
                _check_order(binding, call_id, cseq)
                remove.append(binding.key)
            if contact.expires == 0:
                continue
            save.append(
                Binding(
                    aor=aor,
                    contact=contact.text,
                    expires_at=now + contact.expires,
                    registered_at=now,
                    call_id=call_id,
                    cseq=cseq,
                    flow=flow,
                    q=contact.q,
                    params=contact.params,
                    user_agent=user_agent,
                    path=path,
                    instance_id=contact.instance_id,
                    reg_id=contact.reg_id,
                )
            )
        # Max bindings: the oldest go, so a rebooted phone is never locked out.
        remaining = [
            b
            for b in current
            if b.key not in remove and b.key not in {s.key for s in save}
        ]
        excess = len(remaining) + len(save) - self._settings.max_bindings
        if excess > 0:
            oldest = sorted(remaining, key=lambda b: b.registered_at)[:excess]
            remove.extend(b.key for b in oldest)
            if len(save) > self._settings.max_bindings:
                save = save[-self._settings.max_bindings :]
        return save, list(dict.fromkeys(remove))

    def _ok(
        self,
        request: Request,
        bindings: list[Binding],
        contacts: list[_Contact],
        now: float,
    ) -> RegistrarAnswer:
        """Step 8: 200 listing every current binding with its remaining lifetime."""
        headers: list[tuple[str, str]] = []
        for binding in bindings:
            value = f"<{binding.contact}>"
            for name, param in binding.params:
                value += f";{name}" if param is None else f";{name}={param}"
            if binding.q != 1.0:
                value += f";q={binding.q:g}"
            value += f";expires={binding.remaining(now)}"
            headers.append(("Contact", value))
        supported = {t.lower() for t in request.headers.get_all("supported")}
        if "path" in supported:
            headers += [("Path", value) for value in request.headers.get_all("path")]
        if any(c.reg_id is not None for c in contacts):
            headers.append(("Require", "outbound"))
        headers.append(("Date", formatdate(now, usegmt=True)))
        return RegistrarAnswer(200, None, tuple(headers), tuple(bindings))


def _delta_seconds(text: str) -> int | None:
    """delta-seconds (RFC 3261 §25.1), capped: RFC 4475 scalar02 sends 10**100."""
    text = text.strip()
    if not text.isascii() or not text.isdigit():
        return None
    if len(text) > _MAX_DIGITS:
        return 2**31 - 1
    return int(text)


def _same_binding(binding: Binding, contact: _Contact) -> bool:
    if contact.reg_id is not None:
        return (
            binding.instance_id == contact.instance_id
            and binding.reg_id == contact.reg_id
        )
    if binding.reg_id is not None:
        return False
    if isinstance(contact.uri, SipURI):
        try:
            stored = parse_uri(binding.contact)
        except ParseError:
            return binding.contact == contact.text
        return isinstance(stored, SipURI) and stored.matches(contact.uri)
    return binding.contact == contact.text


def _check_order(binding: Binding, call_id: str, cseq: int) -> None:
    """§10.3 step 7: same Call-ID and a CSeq not higher -> the update fails.

    "If the binding does exist, the registrar checks the Call-ID value. If the
    Call-ID value in the existing binding differs from the Call-ID value in the
    request, the binding MUST be removed [...]. If they are the same, the
    registrar compares the CSeq value. If the value is higher than that of the
    existing binding, it MUST update or remove the binding as above. If not, the
    update MUST be aborted and the request fails."

    Answered ``400 CSeq Out Of Order``: a retransmission never gets here (the
    transaction layer absorbs it), so this is a stale or replayed request, and
    500 with Retry-After would only invite the phone to send it again.
    """
    if binding.call_id == call_id and cseq <= binding.cseq:
        raise RegisterRefusedError(400, "CSeq Out Of Order")
