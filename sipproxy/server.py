"""The one place the layers are wired: sockets, transports, core, store, admin API.

``build_server(config, reactor)`` makes the service ``twistd sipproxy`` runs and the
tests start; it owns start-up, shutdown, reload and what the admin API asks.
"""

from __future__ import annotations

import dataclasses
import os
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override

from sipproxy import __version__
from sipproxy.admin import AdminAPI, AdminSite
from sipproxy.admission import Admission
from sipproxy.auth.digest import Authenticator
from sipproxy.auth.htdigest import UserDB, load_users
from sipproxy.cdr import CallRecordStore
from sipproxy.cdr.spec import cdr_from_spec
from sipproxy.collector import Collector
from sipproxy.config import (
    Config,
    ListenSpec,
    UnixSocketSpec,
    reloaded,
)
from sipproxy.guard import BanList, ConnectionLimiter, TrustedNetworks
from sipproxy.keys import admin_token, kept_secret, read_secret
from sipproxy.location import LocationService, LocationStore
from sipproxy.location.spec import location_from_spec, redacted_spec, redacted_text
from sipproxy.metrics import CallMetrics, Metrics, Snapshot, SubscriptionMetrics
from sipproxy.office.preferences import OfficePreferences
from sipproxy.proxy.calls import CallTracker
from sipproxy.proxy.core import Proxy, ProxySettings
from sipproxy.proxy.notifier import Lamps, Notifier, NotifierSettings
from sipproxy.proxy.observer import ProxyObserver
from sipproxy.registrar import Registrar, RegistrarSettings
from sipproxy.reload import NewSettings, read_again
from sipproxy.resolver import make_resolver
from sipproxy.sip.addressing import Peer, ip_of
from sipproxy.sip.message import Request, Response
from sipproxy.sip.transports import KINDS, TLS, UDP, WS, WSS, is_secure, kind_of
from sipproxy.sip.uri import SipURI
from sipproxy.transport.listeners import host_port, listen_stream, listen_udp
from sipproxy.transport.sender import Transports
from sipproxy.transport.stream import SIPStreamFactory
from sipproxy.transport.tls import TLSClient, credentials_of, server_options
from sipproxy.transport.udp import SIPDatagramProtocol
from sipproxy.transport.ws import WebSocketFactory

_LOOPBACK = ("127.0.0.1", "::1", "localhost")
#: On a shared store, how often each process reads the busy-lamp subscriptions
#: the others made or ended (a refresh that reaches us reads them at once).
SYNC_SECONDS = 10.0


class SIPServerService(MultiService):
    """Listens on every configured address and hands messages to the core."""

    log = Logger()

    def __init__(
        self,
        config: Config,
        reactor: Any,
        *,
        config_path: str | None = None,
        cli_values: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.config = config
        self._reactor = reactor
        # Reload (SIGHUP, POST /reload) reads the file again under the same
        # command line, which still wins.
        self._config_path = config_path
        self._cli_values = dict(cli_values or {})
        self.started_at = reactor.seconds()
        self.metrics = Metrics(self._snapshot)
        self.admin_port: IListeningPort | None = None
        #: what the admin API checks: configured, or kept in the state directory
        self.admin_token = config.admin_token
        self._open = False
        self.ports: list[tuple[ListenSpec, IListeningPort]] = []
        # One store, seen as bindings by the registrar and the proxy, and as
        # run-time office settings by OfficePreferences.
        store = location_from_spec(config.location, reactor)
        self.location: LocationService = store
        self.admission = Admission(config, reactor, self.metrics)
        # The same objects as admission's: the admin API lists and lifts bans.
        self.trusted = self.admission.trusted
        self.bans = self.admission.bans
        self.connection_limit = ConnectionLimiter(max_total=config.max_connections)
        self.authenticator: Authenticator | None = None
        if config.users is not None:
            self.authenticator = Authenticator(
                config.domains[0],
                load_users(config.users, config.domains[0]),
                os.urandom(32),
                nonce_lifetime=config.nonce_lifetime,
                algorithms=config.digest_algorithms,
            )
        resolver = make_resolver(
            config.dns, reactor, reactor, transports=sendable_transports(config)
        )
        core = build_core(
            config,
            reactor,
            location=store,
            authenticator=self.authenticator,
            resolve=resolver.resolve,
            trusted=self.trusted,
            bans=self.bans,
            observer=self.metrics,
            secret=read_secret(config.secret_file) or kept_secret(self.log),
        )
        self.transports = core.transports
        self.registrar = core.registrar
        self.office = core.office
        self.proxy = core.proxy
        self.notifier = core.notifier
        self.notifier.observer = SubscriptionMetrics(
            self.metrics.registry, self.notifier.count
        )
        self.stream_factories: dict[str, SIPStreamFactory] = {}
        self._purge: LoopingCall | None = None
        self._collector: Collector | None = None
        self.cdr: CallRecordStore = cdr_from_spec(
            config.cdr, reactor, location=config.location
        )
        # The owner is named once the listeners are known (privilegedStartService);
        # the tracker watches the proxy only once the store is open.
        self.calls = CallTracker(
            self.cdr,
            reactor,
            owner="sipproxy",
            max_call_seconds=config.max_call_seconds,
            observer=CallMetrics(
                self.metrics.registry,
                self._active_calls,
                pending_writes=lambda: self.calls.pending_writes(),
                store_errors=lambda: self.calls.store_errors,
                untracked=lambda: self.calls.untracked,
            ),
        )
        # Busy lamps keep only watched users' calls, seeded from the tracker's
        # live calls: a call nobody watches costs the notifier nothing.
        self.notifier.follow(self.calls, self.proxy.events)

    @override
    def privilegedStartService(self) -> None:
        # A token file we cannot use stops the start before anything listens.
        self.admin_token = admin_token(self.config, self.log)
        # Bind here so that a port below 1024 works before twistd drops privileges.
        for spec in self.config.listen:
            try:
                self.ports.append((spec, self._listen(spec)))
            except CannotListenError as error:
                # One line for the operator, not a traceback; nothing half-runs.
                for _, port in self.ports:
                    port.stopListening()
                raise SystemExit(
                    f"sipproxy: error: cannot listen on {spec}: {error.socketError}"
                ) from None
        if self.config.admin is not None:
            self._listen_admin(self.config.admin)
        self.proxy.instance = self.config.advertise or _first_listener(self.ports)
        # Live call records are keyed by who keeps them, so that a restart closes
        # its own leftovers as lost and never another process's on a shared
        # store: --advertise, else the first listener, is what tells processes
        # apart and stays the same across restarts.
        self.calls.owner = self.proxy.instance or "sipproxy"
        super().privilegedStartService()  # type: ignore[no-untyped-call]

    def _listen(self, spec: ListenSpec) -> IListeningPort:
        receiver = self.proxy.layer
        shared = self.config.reuse_port
        if not spec.reliable:
            protocol = SIPDatagramProtocol(
                receiver, self.config.max_message_size, admit=self.admission.admit
            )
            port = listen_udp(self._reactor, spec, protocol, shared=shared)
            self.transports.add_udp(protocol)
            return port
        factory = self.stream_factories.get(spec.transport)
        if factory is None:
            settings: dict[str, Any] = {
                "transport_name": spec.transport,
                "idle_timeout": self.config.tcp_idle_timeout,
                "message_timeout": self.config.message_timeout,
                "max_message_size": self.config.max_message_size,
            }
            factory = self.stream_factories[spec.transport] = (
                WebSocketFactory(
                    receiver,
                    self._reactor,
                    origins=frozenset(self.config.ws_origins),
                    **settings,
                )
                if is_websocket(spec.transport)
                else SIPStreamFactory(receiver, self._reactor, **settings)
            )
        factory.admit = self.admission.admit
        factory.limit = self.connection_limit
        port = listen_stream(self._reactor, spec, factory, shared=shared)
        address = port.getHost()
        self.transports.add_stream(
            spec.transport,
            factory,
            getattr(address, "host", ""),
            getattr(address, "port", 0),
        )
        return port

    def _listen_admin(self, spec: ListenSpec | UnixSocketSpec) -> None:
        api = AdminAPI(
            self,
            token=self.admin_token,
            metrics=self.metrics,
            calls=self.calls,
            subscriptions=self.notifier,
        )
        site = AdminSite(api)  # type: ignore[no-untyped-call]
        site.noisy = False
        site.displayTracebacks = False
        try:
            if isinstance(spec, UnixSocketSpec):
                self.admin_port = self._reactor.listenUNIX(
                    spec.path,
                    site,
                    backlog=spec.backlog,
                    mode=spec.mode,
                    wantPID=spec.lockfile,
                )
            else:
                self.admin_port = self._reactor.listenTCP(
                    spec.port, site, interface=spec.interface
                )
        except CannotListenError as error:
            for _, port in self.ports:
                port.stopListening()
            raise SystemExit(
                f"sipproxy: error: cannot listen on admin {spec}: {error.socketError}"
            ) from None

    # -- what the admin API asks (sipproxy.admin.AdminServer) -------------------

    def seconds(self) -> float:
        """The current time, from the reactor."""
        return float(self._reactor.seconds())

    def health(self) -> str | None:
        """None while listening with the store open; else why not."""
        if not self._open:
            return "location store not open" if self.ports else "not listening"
        if not self.ports:
            return "not listening"
        return None

    def info(self) -> dict[str, Any]:
        """Version, uptime, listeners, store; JSON-ready."""
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime": round(self.seconds() - self.started_at, 1),
            "domains": list(self.config.domains),
            "listeners": [
                f"{spec.transport} {host_port(port)}" for spec, port in self.ports
            ],
            "admin": _admin_address(self.admin_port) if self.admin_port else None,
            "location": redacted_spec(self.config.location),
            "users": self.config.users,
            "forking": self.config.forking,
            "dialplan_rules": len(self.config.dialplan),
            "rate_limit": self.config.rate_limit,
            "rate_burst": self.config.rate_burst,
            "max_bindings": self.config.max_bindings,
        }

    def stats(self) -> dict[str, Any]:
        """Transactions, proxy contexts, connections, read now; JSON-ready."""
        snapshot = self._snapshot()
        return {
            "transactions": dict(snapshot.transactions),
            "proxy_contexts": snapshot.proxy_contexts,
            "pending": snapshot.pending,
            "completed": snapshot.completed,
            "connections": dict(snapshot.connections),
            "uptime": round(snapshot.uptime, 1),
        }

    def _snapshot(self) -> Snapshot:
        now = self.seconds()
        return Snapshot(
            transactions=self.proxy.layer.counts(),
            proxy_contexts=self.proxy.pending_contexts(),
            pending=self.proxy.layer.pending(),
            completed=self.proxy.layer.completed(),
            connections={
                name: len(factory.connections)
                for name, factory in self.stream_factories.items()
            },
            bans=len(self.bans.bans(now)),
            uptime=now - self.started_at,
        )

    def reload(self) -> dict[str, Any]:
        """SIGHUP and POST /reload: apply the file's users, dial plan and limits.

        Registrations, transactions and connections are untouched. A file that
        does not validate changes nothing and the log says why. Options that only
        a restart can change (addresses, store, admin API) are reported, not
        applied.
        """
        read = read_again(
            self._config_path,
            self._cli_values,
            authenticator=self.authenticator,
            with_office=self.office is not None,
            log=self.log,
        )
        if not isinstance(read, NewSettings):
            return read
        new, users, office = read.config, read.users, read.office
        self.config, changed, restart = reloaded(
            self.config, new, authenticating=self.authenticator is not None
        )
        self._apply(self.config, users)
        if office is not None and self.office is not None:
            self.office.office = office
            self.notifier.office_changed()
            self.log.info(
                "office configuration reloaded: {n} extensions, {g} groups",
                n=len(office.extensions),
                g=len(office.groups),
            )
        option = [key.replace("_", "-") for key in changed]
        needs_restart = sorted({key.replace("_", "-") for key in restart})
        self.log.info(
            "configuration reloaded; changed: {changed}",
            changed=", ".join(option) or "nothing",
        )
        if needs_restart:
            self.log.warn(
                "configuration: {keys} changed but need a restart; not applied",
                keys=", ".join(needs_restart),
            )
        return {"reloaded": True, "changed": option, "needs_restart": needs_restart}

    def _apply(self, config: Config, users: UserDB | None) -> None:
        """Put a reloaded config's run-time settings into the live objects."""
        if users is not None and self.authenticator is not None:
            self.authenticator.users = users
            self.log.info("users file reloaded: {n} users", n=len(users.entries))
        self.proxy.settings = dataclasses.replace(
            self.proxy.settings,
            forking=config.forking,
            dialplan=config.dialplan,
            outbound_proxy=config.outbound_proxy,
            allowed_destinations=TrustedNetworks(config.allow_destination),
            max_pending=config.max_pending,
            max_pending_per_source=config.max_pending_per_source,
        )
        self.registrar.reconfigure(
            default_expires=config.default_expires,
            min_expires=config.min_expires,
            max_expires=config.max_expires,
            max_bindings=config.max_bindings,
        )
        self.admission.reconfigure(config)
        if self.authenticator is not None:
            self.authenticator.nonce_lifetime = config.nonce_lifetime
        self.calls.max_call_seconds = config.max_call_seconds
        self.notifier.settings = notifier_settings(config)
        self.notifier.max_call_seconds = config.max_call_seconds

    @override
    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        Deferred.fromCoroutine(self.location.open()).addCallbacks(
            self._serving, self._cannot_open
        )
        Deferred.fromCoroutine(self.cdr.open()).addCallbacks(
            self._recording, self._cannot_record
        )

    def _active_calls(self) -> int:
        return self.calls.active()

    def _recording(self, _: object) -> None:
        events = self.proxy.events
        events.decisions.append(self.calls)
        events.dialogs.append(self.calls)

        def lost(records: list[Any] | None) -> None:
            if records:
                self.log.warn(
                    "{n} calls in progress when the last run ended are recorded "
                    "as lost",
                    n=len(records),
                )

        self.calls.start().addCallback(lost)

    def _cannot_record(self, failure: Failure) -> None:
        self.log.critical(
            "sipproxy: error: cannot open call records {cdr}: {why}",
            cdr=redacted_spec(self.config.cdr),
            why=redacted_text(failure.getErrorMessage(), self.config.cdr),
        )
        # As for the location: a provider bills from these records, so running
        # without them must not go unnoticed.
        self._reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        self._reactor.stop()

    def _serving(self, _: object) -> None:
        self._open = True

        def served(count: int) -> None:
            if count:
                self.log.info("serving {n} busy-lamp subscriptions kept", n=count)

        def unreadable(failure: Failure) -> None:
            self.log.warn(
                "cannot read the kept subscriptions: {why}",
                why=failure.getErrorMessage(),
            )

        Deferred.fromCoroutine(self.notifier.start()).addCallbacks(served, unreadable)
        if self.config.location.lower().startswith("redis"):
            # Other processes on the store make and end subscriptions too.
            self.notifier.sync_every(SYNC_SECONDS)
        if hasattr(signal, "SIGHUP"):
            signal.signal(
                signal.SIGHUP,
                lambda *_: self._reactor.callFromThread(self.reload),
            )
        # What lives on is frozen out of the collector's walks (sipproxy.collector):
        # long collection pauses made phones retransmit.
        self._collector = Collector(self._reactor)
        self._collector.start()
        where = ", ".join(
            f"{spec.transport} {host_port(port)}" for spec, port in self.ports
        )
        self._purge = LoopingCall(self._purge_expired)
        self._purge.clock = self._reactor
        self._purge.start(10.0, now=False)
        public = [spec for spec in self.config.listen if not _is_loopback(spec)]
        if self.authenticator is None and public:
            # Without users nobody is authenticated, so nothing tells a caller
            # from an attacker: fine on loopback or a closed LAN, not online.
            self.log.warn(
                "no users file: anyone who reaches {where} may register any "
                "user of our domains and call anywhere; set users before "
                "exposing the server",
                where=", ".join(str(spec) for spec in public),
            )
        websocket = [s for s in self.config.listen if is_websocket(s.transport)]
        if websocket and not self.config.ws_origins:
            # RFC 6455 §10.2: the Origin check is what keeps another site's
            # page from using a visitor's browser as a phone of ours.
            self.log.warn(
                "no ws-origin: browser pages from any origin may use {where}",
                where=", ".join(str(spec) for spec in websocket),
            )
        if self.transports.tls is not None and not self.transports.tls.verify:
            self.log.warn(
                "tls-verify is off: servers we connect to over TLS are not "
                "authenticated, so anyone on the path can read and change calls"
            )
        self.log.info(
            "sipproxy {version} serving {domains} on {where}; location {location}",
            version=__version__,
            domains=", ".join(self.config.domains),
            where=where,
            location=redacted_spec(self.config.location),
        )

    def _cannot_open(self, failure: Failure) -> None:
        self.log.critical(
            "sipproxy: error: cannot open location {location}: {why}",
            location=redacted_spec(self.config.location),
            why=redacted_text(failure.getErrorMessage(), self.config.location),
        )
        # Serving without a place to keep registrations would answer 500 to
        # every phone; stop, and exit non-zero so systemd or the operator sees it.
        self._reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        self._reactor.stop()

    def _purge_expired(self) -> Deferred[object]:
        def failed(failure: Failure) -> None:
            self.log.warn(
                "purging expired bindings failed: {why}", why=failure.getErrorMessage()
            )

        return Deferred.fromCoroutine(
            self.location.purge(now=self._reactor.seconds())
        ).addErrback(failed)

    @override
    def stopService(self) -> Any:
        self._open = False
        if self._purge is not None and self._purge.running:
            self._purge.stop()
        if self._collector is not None:
            self._collector.stop()
            self._collector = None
        if self.admin_port is not None:
            self.admin_port.stopListening()
            self.admin_port = None
        for _, port in self.ports:
            port.stopListening()
        for factory in self.stream_factories.values():
            for connection in list(factory.connections.values()):
                connection.transport.loseConnection()  # type: ignore[union-attr]
        self.ports.clear()
        super().stopService()  # type: ignore[no-untyped-call]
        written = self.calls.stop()
        self.notifier.stop()
        events = self.proxy.events
        if self.calls in events.decisions:
            events.decisions.remove(self.calls)
            events.dialogs.remove(self.calls)
        # Calls still in progress stay live in the store: the next start records
        # them as lost, with the end it notices.
        closed = Deferred.fromCoroutine(self.location.close())

        def close_cdr(result: object) -> Deferred[object]:
            # The location's result (or failure) is what stopping reports.
            # Records of calls that ended just now are written before closing.
            return written.addCallback(
                lambda _: Deferred.fromCoroutine(self.cdr.close())
            ).addCallback(lambda _: result)

        return closed.addBoth(close_cdr)


@dataclass(frozen=True, slots=True)
class Core:
    """The layers between the sockets and the store, wired; nothing listens yet."""

    #: the way out: sockets are added as listeners open
    transports: Transports
    registrar: Registrar
    #: extensions, ring groups and run-time forwarding; None without an office
    office: OfficePreferences | None
    #: the transaction user; ``proxy.layer`` is what listeners hand messages to
    proxy: Proxy
    #: busy lamps: dialog-package subscriptions, served from the proxy's events
    notifier: Notifier


def build_core(
    config: Config,
    reactor: Any,
    *,
    location: LocationStore,
    authenticator: Authenticator | None = None,
    resolve: Callable[[SipURI], Awaitable[list[Peer]]] | None = None,
    known_user: Callable[[str], bool] | None = None,
    trusted: TrustedNetworks | None = None,
    bans: BanList | None = None,
    observer: ProxyObserver | None = None,
    secret: bytes | None = None,
    registers: bool = True,
) -> Core:
    """Wire the core for ``config``: the one place it is built, server or test.

    Everything that touches the world comes in: the reactor (clock, outbound
    connections), the store, DNS, and the policy objects the listeners share.

    :param reactor: time for every timer; outbound TCP and TLS connect through it.
    :param location: the store, already made (not necessarily open).
    :param authenticator: digest authentication; None: nobody is challenged.
    :param resolve: RFC 3263 lookup of targets outside our domains; None: none.
    :param known_user: whether an AOR is a user of ours (no binding then means
        480, not 404); default: a user in ``authenticator``'s users file now.
    :param trusted: the --trusted networks object the listeners also ask;
        default: a new one from ``config``.
    :param bans: where failed authentications ban sources; None: no bans.
    :param observer: told what the proxy decides (metrics); None: nobody.
    :param secret: keys dialog and flow tokens; None: random for this run.
    :param registers: False: the proxy forwards REGISTER like any request
        instead of answering it with the registrar.
    """
    domains = frozenset(
        # An IPv6 literal domain appears in URIs with brackets; both forms match.
        form
        for domain in config.domains
        for form in (domain, f"[{domain}]" if ":" in domain else domain)
    )
    hosts = {*config.domains, *config.aliases}
    hosts.update(spec.interface for spec in config.listen if spec.interface)
    if any(not spec.interface for spec in config.listen):
        hosts.update(_LOOPBACK)
    registrar = Registrar(
        location,
        RegistrarSettings(
            domains=domains,
            default_expires=config.default_expires,
            min_expires=config.min_expires,
            max_expires=config.max_expires,
            max_bindings=config.max_bindings,
        ),
    )
    # Office PBX: TOML defaults, run-time settings (forwarding, DND) in the store.
    office = (
        OfficePreferences(config.office, location)
        if config.office is not None
        else None
    )
    transports = Transports(reactor, tls=tls_client(config))
    proxy = Proxy(
        ProxySettings(
            domains=domains,
            local_hosts=frozenset(h.lower().strip("[]") for h in hosts),
            local_ports=frozenset(spec.port for spec in config.listen),
            forking=config.forking,
            dialplan=config.dialplan,
            outbound_proxy=config.outbound_proxy,
            trusted=trusted if trusted is not None else config.trusted_networks(),
            allowed_destinations=TrustedNetworks(config.allow_destination),
            max_pending=config.max_pending,
            max_pending_per_source=config.max_pending_per_source,
        ),
        clock=reactor,
        transports=transports,
        location=location,
        registrar=registrar if registers else None,
        resolve=resolve,
        known_user=known_user or _users_of(authenticator),
        auth=authenticator,
        bans=bans,
        office=office,
        observer=observer,
        secret=secret,
    )
    notifier = build_notifier(config, reactor, proxy, location, authenticator)
    return Core(transports, registrar, office, proxy, notifier)


def notifier_settings(config: Config) -> NotifierSettings:
    """The busy-lamp limits of ``config``."""
    return NotifierSettings(
        min_expires=config.subscribe_min_expires,
        max_expires=config.subscribe_max_expires,
        max_per_user=config.max_subscriptions_per_user,
        max_total=config.max_subscriptions,
        single_dialog=config.blf_single_dialog,
    )


def build_notifier(
    config: Config,
    reactor: Any,
    proxy: Proxy,
    store: LocationStore,
    authenticator: Authenticator | None,
) -> Notifier:
    """The busy-lamp notifier: SUBSCRIBE's handler finds it on the context.

    It watches the proxy's dialog events from now on; the subscriptions the
    store kept come back with :meth:`Notifier.start`, once the store is open.
    """
    context = proxy.context

    def send(
        request: Request,
        peer: Peer,
        on_response: Callable[[Response], None],
        connection_id: str | None,
    ) -> None:
        context.send_request(request, peer, on_response, connection_id=connection_id)

    office = proxy.office
    lamps = Lamps(
        (lambda: office.office) if office is not None else (lambda: None),
        (lambda name: name in authenticator.users)
        if authenticator is not None
        else None,
    )
    notifier = Notifier(
        store,
        reactor,
        send=send,
        lamps=lamps,
        domains=lambda: proxy.settings.domains,
        settings=notifier_settings(config),
        max_call_seconds=config.max_call_seconds,
    )
    context.notifier = notifier
    proxy.events.dialogs.append(notifier)
    return notifier


def _users_of(authenticator: Authenticator | None) -> Callable[[str], bool]:
    """Whether an AOR's user is in the users file (as reloaded, when asked)."""

    def known(aor: str) -> bool:
        if authenticator is None:
            return False
        user = aor.partition(":")[2].rpartition("@")[0]
        return user in authenticator.users

    return known


def is_websocket(transport: str) -> bool:
    """Whether ``transport`` is SIP over WebSocket (RFC 7118)."""
    return transport in (WS.name, WSS.name)


def sendable_transports(config: Config) -> tuple[str, ...]:
    """The transports DNS may pick (RFC 3263): TLS too only with a tls: listener.

    Without one we have no TLS client (:func:`tls_client`), and a target
    reached over TLS could not be told where to answer. WebSocket never: we
    open no WebSocket connections (sip/transports.py).
    """
    uses_tls = any(spec.transport == TLS.name for spec in config.listen)
    return tuple(
        k.name for k in KINDS.values() if k.dialable and (uses_tls or not k.secure)
    )


def tls_client(config: Config) -> TLSClient | None:
    """How we open TLS connections, if any ``tls:`` listener is configured.

    Each TLS listener's key and certificate (``wss:`` ones too) are read (and
    checked) here; the first ``tls:`` one's is also our client certificate, for
    servers that ask for one (mutual TLS trunks). Without a TLS listener we
    neither accept nor open TLS: our Via and Record-Route could name no TLS
    address.
    """
    secure = [spec for spec in config.listen if is_secure(spec.transport)]
    for spec in secure:
        server_options(credentials_of(spec.options), spec.option("caCerts"))
    tls = [spec for spec in secure if spec.transport == TLS.name]
    if not tls:
        return None
    credentials = [credentials_of(spec.options) for spec in tls]
    return TLSClient(
        verify=config.tls_verify, ca_file=config.tls_ca, credentials=credentials[0]
    )


def _is_loopback(spec: ListenSpec) -> bool:
    address = ip_of(spec.interface)  # None: no interface (all of them)
    return address is not None and address.is_loopback


def _first_listener(ports: list[tuple[ListenSpec, IListeningPort]]) -> str | None:
    """The first listener as a SIP URI, if it names one address (not a wildcard)."""
    for spec, port in ports[:1]:
        address = port.getHost()
        host = getattr(address, "host", "")
        if not host or host in ("0.0.0.0", "::"):
            return None
        host = f"[{host}]" if ":" in host else host
        kind = kind_of(spec.transport)
        param = "" if kind is UDP else f";transport={kind.uri_param}"
        return f"sip:{host}:{getattr(address, 'port', 5060)}{param}"
    return None


def _admin_address(port: IListeningPort) -> str:
    address = port.getHost()
    name = getattr(address, "name", None)
    if name is not None:
        return f"unix:{os.fsdecode(name)}"
    return host_port(port)


def build_server(
    config: Config,
    reactor: Any,
    *,
    config_path: str | None = None,
    cli_values: Mapping[str, Any] | None = None,
) -> SIPServerService:
    """Wire every layer for ``config`` on ``reactor``; nothing listens until started.

    :param config_path: the TOML file a reload reads again.
    :param cli_values: the command line's values, which win over the file on reload.
    """
    return SIPServerService(
        config, reactor, config_path=config_path, cli_values=cli_values
    )
