"""The admin HTTP API (``--admin``): JSON for operators and ``sipproxy-ctl``.

Theory of operation. :class:`AdminAPI` is one leaf ``twisted.web`` resource that
routes ``METHOD /path/segments`` to an async handler through a table, so a new
route is one :meth:`AdminAPI.add_route` call::

    api.add_route("GET", "/users/{name}/forward", show_forward)

``{name}`` matches one path segment (percent-decoded) and reaches the handler as
``call.params["name"]``. A handler takes a :class:`Call` and returns a
:class:`Reply`; raising :class:`AdminError` answers with its status and message.

Every request but ``GET /health`` needs ``Authorization: Bearer TOKEN`` (compared in
constant time). Without it the answer is 401 and says nothing more, not even
whether the path exists: the API can list, remove and forward every user's calls.
The service always gives a token on tcp (configured, or kept in its
state directory, see ``sipproxy/tokenfile.py``); on a Unix socket the socket
file's permissions are the check and the token is optional. The routes:

- ``GET /health``: 200 while listening with the store open, else 503 (public);
- ``GET /info``: version, uptime, listeners, store, domains;
- ``GET /stats``: transactions, proxy contexts, connections, registrations, bans;
- ``GET /metrics``: Prometheus text format (see ``sipproxy/metrics.py``);
- ``GET /registrations[?aor=AOR]``: bindings by address-of-record;
- ``DELETE /registrations?aor=AOR[&contact=URI]``: remove one binding or all;
- ``GET /bans``; ``DELETE /bans/{address}``: lift a ban;
- ``POST /reload``: what SIGHUP does (users, dial plan, limits);
- ``GET /calls``: calls in progress (``ringing`` or ``answered``);
- ``GET /subscriptions``: busy-lamp subscriptions served (subscriber, watched
  resource, flow, seconds left, last version, the lamp's state);
- ``GET /cdr[?since=ISO&until=ISO&user=NAME&disposition=A,B&limit=N]``: call
  detail records, newest first (``limit`` 100 by default, at most 10000);
  ``GET /cdr.csv``: the same as CSV with a header row;
- ``GET /users/{name}/forward``: the user's effective forwarding and
  do-not-disturb, and which keys were set at run time;
- ``PUT /users/{name}/forward/{kind}`` with ``{"target": "sip:..."}``: set the
  busy, no_answer, unavailable or unconditional forwarding (``""`` clears it;
  no_answer also takes ``"seconds"``);
- ``PUT /users/{name}/dnd`` with ``{"on": true}``: do-not-disturb on or off;
- ``DELETE /users/{name}/forward``: forget the run-time settings, the TOML
  ``[forward.NAME]`` values apply again.

The ``/users`` routes answer 409 when the server has no office sections, 404
for a name that is no user, 400 for a bad body, kind or target or a forwarding
loop. What they set is kept in the location store, so it survives a restart.

The API reads the location store and the ban list and asks the server (an
:class:`AdminServer`) for the rest; it holds no state of its own.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import unquote

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from typing_extensions import override

from sipproxy.cdr import CallRecordStore
from sipproxy.cdr.record import DISPOSITIONS, parse_time, to_csv
from sipproxy.guard import BanList
from sipproxy.location import Binding, LocationService
from sipproxy.metrics import CONTENT_TYPE, Metrics
from sipproxy.office.model import FORWARD_KEYS, Forwarding, forwarding_from
from sipproxy.office.preferences import OfficePreferences
from sipproxy.sip.errors import ParseError
from sipproxy.sip.uri import SipURI

__all__ = ["AdminAPI", "AdminError", "AdminServer", "Call", "CallSource", "Reply"]

_JSON = "application/json"
#: records one /cdr query returns at most
_MAX_RECORDS = 10_000


class AdminServer(Protocol):
    """What the admin API needs from the running server (server.SIPServerService)."""

    location: LocationService
    bans: BanList
    #: run-time forwarding and DND; None: no office sections
    office: OfficePreferences | None

    def seconds(self) -> float:
        """The current time, from the server's clock."""

    def health(self) -> str | None:
        """None when serving; otherwise why not (starting, store closed)."""

    def info(self) -> dict[str, Any]:
        """Version, uptime, listeners, store: JSON-ready."""

    def stats(self) -> dict[str, Any]:
        """Transactions, contexts, connections: JSON-ready, read now."""

    def reload(self) -> dict[str, Any]:
        """Re-read the configuration as SIGHUP does; what changed, JSON-ready."""


class CallSource(Protocol):
    """Live calls and their records (proxy.calls.CallTracker)."""

    @property
    def store(self) -> CallRecordStore:
        """Where the records are."""

    def live(self) -> list[dict[str, Any]]:
        """Calls in progress, JSON-ready."""


class SubscriptionSource(Protocol):
    """Busy-lamp subscriptions (proxy.notifier.Notifier)."""

    def listing(self) -> list[dict[str, Any]]:
        """Subscriptions served now, oldest first, JSON-ready."""


class AdminError(Exception):
    """An answer other than success: ``status`` and a message for the operator."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Call:
    """One HTTP request as a handler sees it."""

    method: str
    path: str
    #: the values of the route's ``{name}`` segments
    params: Mapping[str, str] = field(default_factory=dict)
    #: query arguments, the last value of each
    query: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Reply:
    """What a handler answers: a JSON value, or bytes of ``content_type``."""

    body: Any
    status: int = 200
    content_type: str = _JSON


Handler = Callable[[Call], Awaitable[Reply]]


@dataclass(frozen=True, slots=True)
class _Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    public: bool


class AdminAPI(Resource):
    """The whole API as one resource: route table, token check, JSON answers.

    :param server: the running server.
    :param token: the bearer token every non-public route needs; None: no check
        (the service passes None only for a Unix socket without a token).
    :param metrics: the counters for ``/metrics``; None: no such route.
    :param calls: live calls and call records; None: no ``/calls`` nor ``/cdr``.
    :param subscriptions: busy lamps; None: no ``/subscriptions``.
    """

    isLeaf = True  # noqa: N815 - twisted.web's name
    log = Logger()

    def __init__(
        self,
        server: AdminServer,
        *,
        token: str | None,
        metrics: Metrics | None,
        calls: CallSource | None = None,
        subscriptions: SubscriptionSource | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._server = server
        self._token = token.encode() if token is not None else None
        self._metrics = metrics
        self._routes: list[_Route] = []
        self.add_route("GET", "/health", self._health, public=True)
        self.add_route("GET", "/info", self._info)
        self.add_route("GET", "/stats", self._stats)
        if metrics is not None:
            self.add_route("GET", "/metrics", self._metrics_text)
        self.add_route("GET", "/registrations", self._registrations)
        self.add_route("DELETE", "/registrations", self._unregister)
        self.add_route("GET", "/bans", self._bans)
        self.add_route("DELETE", "/bans/{address}", self._unban)
        self.add_route("POST", "/reload", self._reload)
        self.add_route("GET", "/users/{name}/forward", self._show_forward)
        self.add_route("PUT", "/users/{name}/forward/{kind}", self._set_forward)
        self.add_route("PUT", "/users/{name}/dnd", self._set_dnd)
        self.add_route("DELETE", "/users/{name}/forward", self._reset_forward)
        self._calls = calls
        if calls is not None:
            self.add_route("GET", "/calls", self._live_calls)
            self.add_route("GET", "/cdr", self._cdr)
            self.add_route("GET", "/cdr.csv", self._cdr_csv)
        self._subscriptions = subscriptions
        if subscriptions is not None:
            self.add_route("GET", "/subscriptions", self._list_subscriptions)

    def add_route(
        self, method: str, path: str, handler: Handler, *, public: bool = False
    ) -> None:
        """Answer ``method path`` with ``handler``; ``{name}`` matches one segment.

        :param public: reachable without the token (only ``/health`` is).
        """
        regex = re.sub(
            r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(path.rstrip("/") or "/")
        )
        self._routes.append(_Route(method, re.compile(regex), handler, public))

    # -- twisted.web -----------------------------------------------------------

    @override
    def render(self, request: Request) -> bytes | int:
        method = (request.method or b"GET").decode("ascii", "replace")
        raw_path = (request.path or b"/").decode("utf-8", "replace")
        path = raw_path.rstrip("/") or "/"
        found = self._match(method, path)
        public = not isinstance(found, Reply) and found[0].public
        # Before any 404 or 405: without the token, nothing about the routes.
        if not public and not self._authorized(request):
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="sipproxy"')
            return self._write(request, _error(401, "a valid bearer token is needed"))
        if isinstance(found, Reply):
            return self._write(request, found)
        route, params = found
        query = {
            key.decode("utf-8", "replace"): values[-1].decode("utf-8", "replace")
            for key, values in (request.args or {}).items()
            if values
        }
        body = request.content.read() if request.content is not None else b""
        call = Call(method, path, params, query, body)
        finished = [False]
        request.notifyFinish().addBoth(lambda _: finished.__setitem__(0, True))

        def done(reply: Reply) -> None:
            if not finished[0]:
                request.write(_encode(request, reply))
                request.finish()

        def failed(failure: Failure) -> Reply:
            if failure.check(AdminError):
                error = failure.value
                assert isinstance(error, AdminError)
                return _error(error.status, error.message)
            self.log.failure(
                "admin API: {method} {path} failed",
                failure,
                method=call.method,
                path=call.path,
            )
            return _error(500, "internal error; see the server log")

        Deferred.fromCoroutine(_run(route.handler, call)).addErrback(
            failed
        ).addCallback(done)
        return NOT_DONE_YET

    def _match(self, method: str, path: str) -> tuple[_Route, dict[str, str]] | Reply:
        allowed = []
        for route in self._routes:
            match = route.pattern.fullmatch(path)
            if match is None:
                continue
            if route.method == method or (route.method == "GET" and method == "HEAD"):
                params = {k: unquote(v) for k, v in match.groupdict().items()}
                return route, params
            allowed.append(route.method)
        if allowed:
            return _error(405, f"{method} is not allowed on {path}", allow=allowed)
        return _error(404, f"no such resource: {path}")

    def _authorized(self, request: Request) -> bool:
        if self._token is None:
            return True
        header = request.getHeader(b"authorization") or b""
        scheme, _, given = header.partition(b" ")
        # hmac.compare_digest: the time taken does not reveal how much matched.
        return scheme.lower() == b"bearer" and hmac.compare_digest(
            given.strip(), self._token
        )

    def _write(self, request: Request, reply: Reply) -> bytes:
        return _encode(request, reply)

    # -- routes ----------------------------------------------------------------

    async def _health(self, call: Call) -> Reply:
        why = self._server.health()
        if why is None:
            return Reply({"status": "ok"})
        return Reply({"status": "unavailable", "reason": why}, status=503)

    async def _info(self, call: Call) -> Reply:
        return Reply(self._server.info())

    async def _stats(self, call: Call) -> Reply:
        stats = dict(self._server.stats())
        aors, bindings = await self._count_registrations()
        stats["registrations"] = aors
        stats["bindings"] = bindings
        stats["bans"] = len(self._server.bans.bans(self._server.seconds()))
        return Reply(stats)

    async def _metrics_text(self, call: Call) -> Reply:
        assert self._metrics is not None
        aors, bindings = await self._count_registrations()
        self._metrics.set_registrations(aors, bindings)
        return Reply(self._metrics.text(), content_type=CONTENT_TYPE)

    async def _registrations(self, call: Call) -> Reply:
        now = self._server.seconds()
        location = self._server.location
        wanted = call.query.get("aor")
        aors = [_canonical_aor(wanted)] if wanted else await location.aors(now=now)
        found = []
        for aor in aors:
            bindings = await location.bindings(aor, now=now)
            if bindings:
                found.append(
                    {"aor": aor, "bindings": [_binding(b, now) for b in bindings]}
                )
        if wanted and not found:
            raise AdminError(404, f"no registration for {aors[0]}")
        return Reply({"registrations": found})

    async def _unregister(self, call: Call) -> Reply:
        wanted = call.query.get("aor")
        if not wanted:
            raise AdminError(400, "give the address-of-record: ?aor=sip:user@domain")
        aor = _canonical_aor(wanted)
        now = self._server.seconds()
        location = self._server.location
        contact = call.query.get("contact")
        if contact is None:
            removed = await location.remove_aor(aor, now=now)
            if not removed:
                raise AdminError(404, f"no registration for {aor}")
        else:
            keys = [
                b.key
                for b in await location.bindings(aor, now=now)
                if b.contact == contact
            ]
            if not keys:
                raise AdminError(404, f"{aor} has no binding {contact}")
            await location.update(aor, remove=keys, now=now)
            removed = len(keys)
        self.log.info(
            "admin API: removed {removed} binding(s) of {aor}", removed=removed, aor=aor
        )
        return Reply({"aor": aor, "removed": removed})

    async def _bans(self, call: Call) -> Reply:
        now = self._server.seconds()
        return Reply(
            {
                "bans": [
                    {"address": ip, "remaining": round(until - now)}
                    for ip, until in self._server.bans.bans(now)
                ]
            }
        )

    async def _unban(self, call: Call) -> Reply:
        address = call.params["address"]
        if not self._server.bans.lift(address):
            raise AdminError(404, f"{address} is not banned")
        self.log.info("admin API: lifted the ban of {address}", address=address)
        return Reply({"address": address, "lifted": True})

    async def _reload(self, call: Call) -> Reply:
        result = self._server.reload()
        return Reply(result, status=200 if result.get("reloaded") else 409)

    async def _live_calls(self, call: Call) -> Reply:
        assert self._calls is not None
        return Reply({"calls": self._calls.live()})

    async def _list_subscriptions(self, call: Call) -> Reply:
        assert self._subscriptions is not None
        found = self._subscriptions.listing()
        return Reply({"count": len(found), "subscriptions": found})

    async def _cdr(self, call: Call) -> Reply:
        records = await self._records(call)
        return Reply({"records": [record.to_json() for record in records]})

    async def _cdr_csv(self, call: Call) -> Reply:
        records = await self._records(call)
        return Reply(to_csv(records).encode(), content_type="text/csv; charset=utf-8")

    async def _records(self, call: Call) -> list[Any]:
        assert self._calls is not None
        query = call.query
        times: dict[str, float | None] = {}
        for name in ("since", "until"):
            text = query.get(name)
            try:
                times[name] = None if not text else parse_time(text)
            except ValueError:
                raise AdminError(
                    400, f"{name}={text!r}: expected ISO 8601 (2026-12-04T10:00:00Z)"
                ) from None
        dispositions = None
        if query.get("disposition"):
            dispositions = frozenset(query["disposition"].split(","))
            unknown = dispositions - DISPOSITIONS
            if unknown:
                raise AdminError(
                    400,
                    f"unknown disposition {', '.join(sorted(unknown))}; use "
                    f"{', '.join(sorted(DISPOSITIONS))}",
                )
        limit_text = query.get("limit", "100")
        if not (limit_text.isascii() and limit_text.isdigit()) or not (
            1 <= int(limit_text) <= _MAX_RECORDS
        ):
            raise AdminError(400, f"limit={limit_text!r}: 1 to {_MAX_RECORDS}")
        return await self._calls.store.query(
            since=times["since"],
            until=times["until"],
            user=query.get("user") or None,
            dispositions=dispositions,
            limit=int(limit_text),
        )

    async def _count_registrations(self) -> tuple[int, int]:
        now = self._server.seconds()
        location = self._server.location
        aors = await location.aors(now=now)
        bindings = 0
        for aor in aors:
            bindings += len(await location.bindings(aor, now=now))
        return len(aors), bindings

    # -- office forwarding and do-not-disturb ----------------------------------

    async def _show_forward(self, call: Call) -> Reply:
        office, name = self._office_user(call)
        return await _forwarding_reply(office, name, await office.effective(name))

    async def _set_forward(self, call: Call) -> Reply:
        office, name = self._office_user(call)
        kind = call.params["kind"]
        body = _json_object(call)
        target = body.get("target")
        if not isinstance(target, str):
            raise AdminError(
                400, 'give the target as {"target": "sip:..."} ("" clears it)'
            )
        seconds = body.get("seconds")
        try:
            if seconds is not None:
                if kind != "no_answer":
                    raise ValueError('"seconds" applies to no_answer only')
                # Checked before anything is stored, so a bad value changes nothing.
                forwarding_from({"no_answer_seconds": seconds}, "seconds")
            forwarding = await office.set_forward(name, kind, target.strip())
            if seconds is not None:
                forwarding = await office.set_no_answer_seconds(name, seconds)
        except ValueError as error:
            raise AdminError(400, str(error)) from None
        self.log.info(
            "admin API: {user} forwarding {kind} set to {target}",
            user=name,
            kind=kind,
            target=target.strip() or "(none)",
        )
        return await _forwarding_reply(office, name, forwarding)

    async def _set_dnd(self, call: Call) -> Reply:
        office, name = self._office_user(call)
        on = _json_object(call).get("on")
        if not isinstance(on, bool):
            raise AdminError(400, 'give {"on": true} or {"on": false}')
        forwarding = await office.set_dnd(name, on)
        self.log.info(
            "admin API: {user} do-not-disturb {state}",
            user=name,
            state="on" if on else "off",
        )
        return await _forwarding_reply(office, name, forwarding)

    async def _reset_forward(self, call: Call) -> Reply:
        office, name = self._office_user(call)
        forwarding = await office.reset(name)
        self.log.info(
            "admin API: {user} forwarding reset to the configuration", user=name
        )
        return await _forwarding_reply(office, name, forwarding)

    def _office_user(self, call: Call) -> tuple[OfficePreferences, str]:
        office = self._server.office
        if office is None:
            raise AdminError(
                409,
                "no office configured: forwarding and do-not-disturb need "
                "[extensions], [[groups]] or [forward.NAME] sections in --config",
            )
        name = call.params["name"]
        if not office.is_user(name):
            raise AdminError(404, f"{name!r} is not a user")
        return office, name


async def _forwarding_reply(
    office: OfficePreferences, name: str, forwarding: Forwarding
) -> Reply:
    stored = await office.stored(name)
    body: dict[str, Any] = {key: getattr(forwarding, key) for key in FORWARD_KEYS}
    body["user"] = name
    body["set_at_run_time"] = sorted(k for k in stored if k in FORWARD_KEYS)
    return Reply(body)


class AdminSite(Site):
    """The admin API's site, without an access log.

    A scrape every 15 s would bury the SIP log; the API logs its changes itself.
    """

    @override
    def log(self, request: Any) -> None:
        pass


def _json_object(call: Call) -> dict[str, Any]:
    try:
        value = json.loads(call.body or b"null")
    except (ValueError, RecursionError):
        raise AdminError(400, "the request body is not JSON") from None
    if not isinstance(value, dict):
        raise AdminError(400, "the request body must be a JSON object")
    return value


async def _run(handler: Handler, call: Call) -> Reply:
    return await handler(call)


def _error(status: int, message: str, *, allow: list[str] | None = None) -> Reply:
    body: dict[str, Any] = {"error": message}
    if allow:
        body["allow"] = sorted(set(allow))
    return Reply(body, status=status)


def _encode(request: Request, reply: Reply) -> bytes:
    request.setResponseCode(reply.status)
    request.setHeader(b"Content-Type", reply.content_type.encode())
    request.setHeader(b"Cache-Control", b"no-store")
    if reply.status == 405 and isinstance(reply.body, dict):
        request.setHeader(b"Allow", ", ".join(reply.body.get("allow", [])).encode())
    if isinstance(reply.body, bytes):
        return reply.body
    return json.dumps(reply.body, indent=1, sort_keys=True).encode() + b"\n"


def _canonical_aor(text: str) -> str:
    """The AOR as the registrar stores it, from ``alice@example.test`` or a URI.

    RFC 3261 §10.3 step 5: scheme, unescaped user, host in lower case.
    """
    text = text.strip()
    if not text.lower().startswith(("sip:", "sips:")):
        text = f"sip:{text}"
    try:
        return SipURI.parse(text).aor()
    except ParseError:
        raise AdminError(400, f"{text!r} is not a SIP address-of-record") from None


def _binding(binding: Binding, now: float) -> dict[str, Any]:
    flow = binding.flow
    return {
        "contact": binding.contact,
        "expires_in": binding.remaining(now),
        "q": binding.q,
        "transport": flow.transport,
        "source": f"{flow.remote_host}:{flow.remote_port}",
        "user_agent": binding.user_agent,
        "instance_id": binding.instance_id,
        "reg_id": binding.reg_id,
        "path": list(binding.path),
    }
