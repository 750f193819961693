"""Who sent a request, as far as the proxy can vouch for it (RFC 3261 §22.3, RFC 3325).

:func:`~sipproxy.auth.gate.decide` says whether credentials admit, deny or call for
a challenge; :class:`Identity` carries that out: the ban list, the counters, the
log lines fail2ban reads, and the challenge. It also rewrites the caller's
identity headers: from outside the trust domain they are claims and go; an
authenticated user of ours is asserted as the user we verified.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from sipproxy.auth.digest import Authenticator, Outcome
from sipproxy.auth.gate import Admit, Deny, decide
from sipproxy.guard import BanList, ban_line
from sipproxy.proxy.checks import RejectedError
from sipproxy.proxy.events import LOG_NAMESPACE
from sipproxy.proxy.observer import ProxyObserver
from sipproxy.sip.addressing import Peer
from sipproxy.sip.errors import ParseError
from sipproxy.sip.message import Request
from sipproxy.sip.uri import SipURI

#: Identity headers only a trusted domain may assert (RFC 3325 §5, and the older
#: Remote-Party-ID that some trunks still read as the caller's number).
IDENTITY_HEADERS = ("P-Asserted-Identity", "P-Preferred-Identity", "Remote-Party-ID")

#: Module level: a class-level Logger would name its class, and the ban line
#: keeps the namespace operators' filters know.
_log = Logger(namespace=LOG_NAMESPACE)


class Identity:
    """Authentication as the proxy applies it, and the identity it asserts."""

    def __init__(
        self,
        *,
        clock: IReactorTime,
        auth: Authenticator | None,
        bans: BanList | None,
        observer: ProxyObserver | None,
    ) -> None:
        """Take collaborators.

        :param auth: None: nobody is challenged.
        :param bans: None: failures ban nobody.
        :param observer: counts failed authentications and bans.
        """
        self._clock = clock
        #: Public: replaced on reload, read by the auth gate and target lookup.
        self.auth = auth
        self.bans = bans
        self._observer = observer

    @property
    def realm(self) -> str | None:
        """Our realm, whose credentials are never forwarded; None without auth."""
        return self.auth.realm if self.auth is not None else None

    def authenticate(self, request: Request, header: str, peer: Peer) -> str:
        """The authenticated user, or a RejectedError with a challenge, 400 or 403.

        Only wrong answers to a nonce issued to this very address count towards
        a ban, so a spoofed source cannot get someone else banned; the challenge
        is bound to ``peer``'s address for the same reason.
        """
        assert self.auth is not None
        now = self._clock.seconds()
        result = self.auth.verify(request, now, source=peer.host, header=header)
        ok = result.outcome is Outcome.OK and result.user is not None
        if ok and self.bans is not None:
            self.bans.succeeded(peer.host, now, user=result.user)
        decision = decide(request, result, header)
        if isinstance(decision, Admit):
            return decision.user
        if isinstance(decision, Deny):
            if decision.status == 400:
                _log.info("from {host}: {reason}", host=peer.host, reason=result.reason)
            raise RejectedError(decision.status, decision.reason)
        if decision.counted:
            _log.info(
                "authentication failed from {host}: {reason}",
                host=peer.host,
                reason=result.reason,
            )
            if self._observer is not None:
                self._observer.auth_failed()
            if self.bans is not None and self.bans.failed(peer.host, now):
                if self._observer is not None:
                    self._observer.banned()
                _log.warn(
                    "{line}",
                    line=ban_line(
                        peer.host, self.bans.max_failures, self.bans.ban_time
                    ),
                )
        elif result.outcome is Outcome.UNPROVEN:
            _log.debug(
                "credentials from {host} not counted: {reason}",
                host=peer.host,
                reason=result.reason,
            )
        raise RejectedError(
            decision.status,
            None,
            tuple(
                (decision.header, v)
                for v in self.auth.challenge(
                    now, source=peer.host, stale=decision.stale
                )
            ),
        )


def asserted_identity(
    request: Request, user: str | None, trusted_source: bool
) -> Request:
    """RFC 3325: who the caller is, as this server can vouch for it.

    Identity headers from outside the trust domain are claims and go; an
    authenticated user of ours is asserted as the user we verified, whatever
    it wrote (towards a trunk, that is the number it is billed for).
    """
    headers = request.headers
    if user is None and (
        trusted_source or not any(name.lower() in headers for name in IDENTITY_HEADERS)
    ):
        return request
    for name in IDENTITY_HEADERS:
        headers = headers.remove(name)
    if user is not None:
        try:
            caller = request.from_addr.uri
        except ParseError:
            caller = None
        if isinstance(caller, SipURI):
            headers = headers.append(
                "P-Asserted-Identity", f"<{caller.scheme}:{user}@{caller.host}>"
            )
    return request.with_headers(headers)


def wants_privacy(request: Request) -> bool:
    """RFC 3323/3325: ``Privacy: id`` asks that the asserted identity stay inside."""
    values = ",".join(request.headers.get_all("privacy"))
    return "id" in (v.strip().lower() for v in values.replace(";", ",").split(","))


__all__ = [
    "IDENTITY_HEADERS",
    "Identity",
    "asserted_identity",
    "wants_privacy",
]
