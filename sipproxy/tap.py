"""``twistd sipproxy``: the command-line options and the one place layers are wired."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import ipaddress
import os
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.web.server import Site
from typing_extensions import override

from sipproxy import __version__
from sipproxy.admin import AdminAPI
from sipproxy.auth.digest import Authenticator
from sipproxy.auth.htdigest import load_users
from sipproxy.config import (
    Config,
    ConfigError,
    ListenSpec,
    UnixSocketSpec,
    build_config,
    read_toml,
)
from sipproxy.guard import BanList, ConnectionLimiter, RateLimiter, TrustedNetworks
from sipproxy.location import (
    LocationService,
    location_from_spec,
    redacted_spec,
    redacted_text,
)
from sipproxy.logs import use_json_logs, use_text_logs
from sipproxy.metrics import Metrics, Snapshot
from sipproxy.office.model import Office
from sipproxy.office.preferences import OfficePreferences
from sipproxy.proxy.core import Proxy, ProxySettings
from sipproxy.registrar import Registrar, RegistrarSettings
from sipproxy.resolver import make_resolver
from sipproxy.tokenfile import TokenFileError, default_path, load_or_create
from sipproxy.transport.sender import Transports
from sipproxy.transport.stream import SIPStreamFactory
from sipproxy.transport.tls import TLSClient, credentials_of, server_options
from sipproxy.transport.udp import SIPDatagramProtocol

_LOOPBACK = ("127.0.0.1", "::1", "localhost")


class Options(usage.Options):
    """Options of ``twistd sipproxy``; each may also be a key in the --config file."""

    synopsis = "[options]"
    longdesc = (
        "A SIP proxy, registrar and call router (RFC 3261). Every option can also be "
        "given as a key of the same name in the TOML file named by --config; the "
        "command line wins."
    )
    optParameters: Any = [
        ["config", "c", None, "TOML file with any of these options as keys."],
        [
            "max-message-size",
            None,
            None,
            "Largest SIP message accepted, in bytes (default 65536).",
        ],
        [
            "tcp-idle-timeout",
            None,
            None,
            "Seconds after which a silent TCP connection is closed (default 600).",
        ],
        [
            "max-connections",
            None,
            None,
            "Inbound TCP/TLS connections open at once, all sources together; "
            "beyond it new ones are closed at once (default 10000).",
        ],
        [
            "message-timeout",
            None,
            None,
            "Seconds a TCP/TLS client has to finish a message (headers and body) "
            "once it started sending it; then it is disconnected (default 10).",
        ],
        [
            "location",
            None,
            None,
            "Where registrations live: memory: (default), sqlite:PATH or "
            "redis://HOST:PORT/DB.",
        ],
        ["default-expires", None, None, "Registration lifetime if none asked (3600)."],
        ["min-expires", None, None, "Shortest registration accepted, else 423 (60)."],
        ["max-expires", None, None, "Longest registration granted (7200)."],
        ["max-bindings", None, None, "Contacts per address-of-record (10)."],
        [
            "max-pending",
            None,
            None,
            "Requests waiting for a final answer beyond which new ones get 503 "
            "(50000).",
        ],
        [
            "max-pending-per-source",
            None,
            None,
            "Of those, what one address (IPv6: one /64) may hold (5000).",
        ],
        [
            "users",
            None,
            None,
            "Apache htdigest file (realm: the first --domain): REGISTER and calls "
            "from our domains then need a password. Re-read on SIGHUP.",
        ],
        ["nonce-lifetime", None, None, "Seconds a Digest nonce stays fresh (300)."],
        ["rate-limit", None, None, "Requests/s per source address; 0: off (100)."],
        ["rate-burst", None, None, "Requests a source may send at once (600)."],
        [
            "forking",
            None,
            None,
            "Several registered phones: sequential (newest first, default) or "
            "parallel (all ring).",
        ],
        [
            "tls-verify",
            None,
            None,
            "Check the certificate of TLS servers we connect to: yes (default) or "
            "no (insecure; logs a warning).",
        ],
        [
            "tls-ca",
            None,
            None,
            "PEM file of CAs trusted for TLS servers (default: the system's).",
        ],
        [
            "admin",
            None,
            None,
            "Admin HTTP API (JSON, /metrics, /health): tcp:8080 (loopback unless "
            "interface= says otherwise; then admin-token(-file) is required) or "
            "unix:/run/sipproxy/admin.sock[:mode=0600] (the file's permissions "
            "decide who may use it).",
        ],
        [
            "admin-token",
            None,
            None,
            "Bearer token of the admin API; better: admin-token-file.",
        ],
        [
            "admin-token-file",
            None,
            None,
            "File holding the admin API's bearer token (one line; not readable by "
            "others). Default on tcp: admin-token in $STATE_DIRECTORY (else var/), "
            "made at first start.",
        ],
        ["log-format", None, None, "text (default) or json: one object per line."],
        [
            "advertise",
            None,
            None,
            "This process's own SIP URI (a listener of its own, e.g. "
            "sip:10.0.0.1:5071;transport=tcp): recorded with the bindings of its "
            "TCP connections, so processes sharing the store route calls for those "
            "phones through it (default: the first --listen).",
        ],
        [
            "secret-file",
            None,
            None,
            "File whose bytes key flow tokens and To tags; give every process of a "
            "cluster the same file (default: random per start).",
        ],
    ]
    optFlags: Any = [
        [
            "reuse-port",
            None,
            "Let several processes listen on the same ports (SO_REUSEPORT); the "
            "kernel spreads sources over them. Needs --advertise.",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        for key in ("domain", "listen", "alias", "dns", "trusted", "allow-destination"):
            self[key] = []
        self.config: Config | None = None
        #: the command line's values, applied again over the file on reload
        self.cli_values: dict[str, Any] = {}

    def opt_domain(self, value: str) -> None:
        """SIP domain this server is responsible for (repeatable; default localhost)."""
        self["domain"].append(value)

    def opt_listen(self, value: str) -> None:
        """Endpoint to listen on, e.g. tcp:5060:interface=127.0.0.1 (repeatable)."""
        self["listen"].append(value)

    def opt_alias(self, value: str) -> None:
        """Another host name or address that means this server (repeatable)."""
        self["alias"].append(value)

    def opt_trusted(self, value: str) -> None:
        """Network or address never rate limited or banned, e.g. an SBC (repeatable)."""
        self["trusted"].append(value)

    def opt_allow_destination(self, value: str) -> None:
        """Internal network a request may name as its target (repeatable)."""
        self["allow-destination"].append(value)

    def opt_dns(self, value: str) -> None:
        """DNS server for every lookup, IP[:PORT] (repeatable; default resolv.conf)."""
        self["dns"].append(value)

    opt_d = opt_domain
    opt_l = opt_listen

    def opt_version(self) -> None:
        """Print the version and exit."""
        print(f"sipproxy {__version__}")
        sys.exit(0)

    @override
    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        # twistd would print its whole usage text before our error; one line
        # naming the problem is what an operator needs.
        try:
            super().parseOptions(options)  # type: ignore[no-untyped-call]
        except usage.UsageError as error:
            raise SystemExit(f"sipproxy: error: {error}") from None

    @override
    def postOptions(self) -> None:
        cli = {
            key: self[key]
            for key in (
                "domain",
                "listen",
                "alias",
                "dns",
                "max-message-size",
                "tcp-idle-timeout",
                "max-connections",
                "message-timeout",
                "location",
                "default-expires",
                "min-expires",
                "max-expires",
                "max-bindings",
                "max-pending",
                "max-pending-per-source",
                "forking",
                "users",
                "nonce-lifetime",
                "rate-limit",
                "rate-burst",
                "trusted",
                "allow-destination",
                "tls-verify",
                "tls-ca",
                "admin",
                "admin-token",
                "admin-token-file",
                "log-format",
                "reuse-port",
                "advertise",
                "secret-file",
            )
        }
        self.cli_values = cli
        try:
            file_values = read_toml(self["config"]) if self["config"] else {}
            self.config = build_config(file_values, cli)
            # Constructing a store does no I/O; it checks the spec's form.
            location_from_spec(self.config.location, reactor=None)
            if self.config.users is not None:
                users = load_users(self.config.users, self.config.domains[0])
                if self.config.office is not None:
                    # Issue 9: members, extensions and forwarding must name users.
                    self.config = replace(
                        self.config,
                        office=self.config.office.with_users(frozenset(users)),
                    )
            tls_client(self.config)  # unreadable key, certificate or CA: say so now
            _read_secret(self.config.secret_file)
        except (ConfigError, ValueError, OSError) as error:
            raise usage.UsageError(str(error)) from None
        parent = getattr(self, "parent", None)
        # twistd picks its log observer from its own --logger option, after this
        # method and before makeService. Text lines go through our observer too:
        # twistd's own raises on bytes that are not UTF-8 and is then disabled
        # (sipproxy.logs), unless the operator chose --logger or --syslog.
        if (
            parent is not None
            and parent.get("logger") is None
            and not parent.get("syslog")
        ):
            use = use_json_logs if self.config.log_format == "json" else use_text_logs
            parent["logger"] = use(
                parent.get("logfile"), nodaemon=bool(parent.get("nodaemon"))
            )


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
        hosts = {*config.domains, *config.aliases}
        hosts.update(spec.interface for spec in config.listen if spec.interface)
        if any(not spec.interface for spec in config.listen):
            hosts.update(_LOOPBACK)
        self.transports = Transports(reactor)
        # One store, seen as bindings by the registrar and the proxy, and as
        # run-time office settings by OfficePreferences.
        store = location_from_spec(config.location, reactor)
        self.location: LocationService = store
        # An IPv6 literal domain appears in URIs with brackets; both forms match.
        domains = frozenset(
            form
            for domain in config.domains
            for form in (domain, f"[{domain}]" if ":" in domain else domain)
        )
        self.registrar = Registrar(
            self.location,
            RegistrarSettings(
                domains=domains,
                default_expires=config.default_expires,
                min_expires=config.min_expires,
                max_expires=config.max_expires,
                max_bindings=config.max_bindings,
            ),
        )
        self.transports.tls = tls_client(config)
        # With a tls: listener, DNS may pick TLS too (NAPTR/SRV "_sips._tcp").
        uses_tls = self.transports.tls is not None
        resolver = make_resolver(
            config.dns,
            reactor,
            reactor,
            transports=("udp", "tcp", "tls") if uses_tls else ("udp", "tcp"),
        )
        # Abuse defences (issue 5): a token bucket per source address and bans
        # after failed authentications, both checked before any parsing.
        self.rate_limiter = (
            RateLimiter(config.rate_limit, config.rate_burst)
            if config.rate_limit
            else None
        )
        #: the --trusted networks: the one membership test ("ip in self.trusted")
        #: for everything that treats a source as trusted; one object for the
        #: process's life, reloaded in place (hand it out, don't copy it)
        self.trusted = config.trusted_networks()
        self.bans = BanList(exempt=self.trusted)
        self.connection_limit = ConnectionLimiter(max_total=config.max_connections)
        self.authenticator: Authenticator | None = None
        if config.users is not None:
            self.authenticator = Authenticator(
                config.domains[0],
                load_users(config.users, config.domains[0]),
                os.urandom(32),
                nonce_lifetime=config.nonce_lifetime,
            )
        # Office PBX (issue 9): TOML defaults, run-time settings in the store.
        self.office = (
            OfficePreferences(config.office, store)
            if config.office is not None
            else None
        )
        self.proxy = Proxy(
            ProxySettings(
                domains=domains,
                local_hosts=frozenset(h.lower().strip("[]") for h in hosts),
                local_ports=frozenset(spec.port for spec in config.listen),
                forking=config.forking,
                dialplan=config.dialplan,
                outbound_proxy=config.outbound_proxy,
                trusted=self.trusted,
                allowed_destinations=TrustedNetworks(config.allow_destination),
                max_pending=config.max_pending,
                max_pending_per_source=config.max_pending_per_source,
            ),
            clock=reactor,
            transports=self.transports,
            location=self.location,
            registrar=self.registrar,
            resolve=resolver.resolve,
            known_user=self._known_user,
            auth=self.authenticator,
            bans=self.bans,
            office=self.office,
            observer=self.metrics,
            secret=_read_secret(config.secret_file) or self._kept_secret(),
        )
        self.stream_factories: dict[str, SIPStreamFactory] = {}
        self._purge: LoopingCall | None = None

    @override
    def privilegedStartService(self) -> None:
        # A token file we cannot use stops the start before anything listens.
        self.admin_token = self._admin_token()
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
        super().privilegedStartService()  # type: ignore[no-untyped-call]

    def _listen(self, spec: ListenSpec) -> IListeningPort:
        receiver = self.proxy.layer
        if spec.transport == "udp":
            protocol = SIPDatagramProtocol(
                receiver, self.config.max_message_size, admit=self._admit
            )
            port: IListeningPort = (
                _listen_shared(self._reactor, spec, protocol)
                if self.config.reuse_port
                else self._reactor.listenUDP(
                    spec.port, protocol, interface=spec.interface, maxPacketSize=65535
                )
            )
            _enlarge_receive_buffer(port)
            self.transports.add_udp(protocol)
            return port
        factory = self.stream_factories.setdefault(
            spec.transport,
            SIPStreamFactory(
                receiver,
                self._reactor,
                transport_name=spec.transport,
                idle_timeout=self.config.tcp_idle_timeout,
                message_timeout=self.config.message_timeout,
                max_message_size=self.config.max_message_size,
            ),
        )
        factory.admit = self._admit
        factory.limit = self.connection_limit
        if spec.transport == "tls":
            # Checked by postOptions already; read again, as files may change.
            options = server_options(
                credentials_of(spec.options), spec.option("caCerts")
            )
            if self.config.reuse_port:
                port = _listen_shared(
                    self._reactor, spec, TLSMemoryBIOFactory(options, False, factory)
                )
            else:
                port = self._reactor.listenSSL(
                    spec.port, factory, options, interface=spec.interface
                )
        elif self.config.reuse_port:
            port = _listen_shared(self._reactor, spec, factory)
        else:
            port = self._reactor.listenTCP(spec.port, factory, interface=spec.interface)
        address = port.getHost()
        self.transports.add_stream(
            spec.transport,
            factory,
            getattr(address, "host", ""),
            getattr(address, "port", 0),
        )
        return port

    def _kept_secret(self) -> bytes | None:
        """The key of dialog and flow tokens when no secret-file names one.

        Kept in the state directory like the admin token, so that the calls
        going on when the server restarts can still be hung up: their
        Record-Route tokens are the only proof that they are ours (issue 13).
        None (a random key, this run only) when the directory is not writable.
        """
        path = default_path(os.environ).with_name("dialog-secret")
        try:
            secret, _ = load_or_create(path)
        except TokenFileError as error:
            self.log.warn(
                "dialog tokens are keyed for this run only, so calls in progress "
                "cannot be ended through the proxy after a restart: {why}",
                why=str(error).replace("admin token file", "secret file"),
            )
            return None
        return secret.encode()

    def _admin_token(self) -> str | None:
        """The admin API's token; on tcp without one configured, the kept one.

        A Unix socket needs none: its file mode decides who may connect.
        """
        admin = self.config.admin
        if admin is None or self.config.admin_token is not None:
            return self.config.admin_token
        if isinstance(admin, UnixSocketSpec):
            return None
        path = default_path(os.environ)
        try:
            token, made = load_or_create(path)
        except TokenFileError as error:
            raise SystemExit(f"sipproxy: error: {error}") from None
        if made:
            self.log.info(
                "admin API token written to {path} (mode 0600); sipproxy-ctl on "
                "this host reads it",
                path=str(path),
            )
        return token

    def _listen_admin(self, spec: ListenSpec | UnixSocketSpec) -> None:
        api = AdminAPI(self, token=self.admin_token, metrics=self.metrics)
        site = _QuietSite(api)  # type: ignore[no-untyped-call]
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

    def _admit(self, source_ip: str) -> bool:
        """Banned sources are ignored; one flooding source loses only its excess."""
        if source_ip in self.trusted:
            return True
        now = self._reactor.seconds()
        if self.bans.is_banned(source_ip, now):
            self.metrics.dropped_banned()
            return False
        if self.rate_limiter is None or self.rate_limiter.allow(source_ip, now):
            return True
        self.metrics.rate_limited()
        return False

    def _known_user(self, aor: str) -> bool:
        """Whether an AOR is a user of ours (no binding then means 480, not 404)."""
        if self.authenticator is None:
            return False
        user = aor.partition(":")[2].rpartition("@")[0]
        return user in self.authenticator.users

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
                f"{spec.transport} {_hostport(port)}" for spec, port in self.ports
            ],
            "admin": _admin_address(self.admin_port) if self.admin_port else None,
            "location": _redacted(self.config.location),
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
        try:
            file_values = read_toml(self._config_path) if self._config_path else {}
            new = build_config(file_values, self._cli_values)
        except (ConfigError, ValueError, OSError) as error:
            self.log.error(
                "configuration not reloaded, keeping the old one: {why}", why=error
            )
            return {"reloaded": False, "error": str(error)}
        users = None
        if new.users is not None and self.authenticator is not None:
            try:
                users = load_users(new.users, new.domains[0])
            except (ValueError, OSError) as error:
                self.log.error(
                    "users file not reloaded, keeping the old users (and the old "
                    "configuration): {e}",
                    e=error,
                )
                return {"reloaded": False, "error": f"users file: {error}"}
        office = None
        if self.office is not None:
            # Issue 9: a server started with office sections reloads them too;
            # forwarding and DND set at run time stay in the store and keep winning.
            office = new.office or Office()
            known = (
                users
                if users is not None
                else getattr(self.authenticator, "users", None)
            )
            try:
                if known is not None:
                    office = office.with_users(frozenset(known))
            except (ConfigError, ValueError) as error:
                self.log.error(
                    "office configuration not reloaded, keeping the old (and the "
                    "old configuration): {e}",
                    e=error,
                )
                return {"reloaded": False, "error": f"office: {error}"}
        old = self.config
        changed = [key for key in _RELOADABLE if getattr(old, key) != getattr(new, key)]
        restart = [
            key for key in _RESTART_ONLY if getattr(old, key) != getattr(new, key)
        ]
        if self.authenticator is None and new.users is not None:
            restart.append("users")
            changed = [key for key in changed if key != "users"]
        if self.authenticator is not None and new.users is None:
            restart.append("users")
            changed = [key for key in changed if key != "users"]
        kept = {key: getattr(old, key) for key in (*_RESTART_ONLY, *restart)}
        self.config = dataclasses.replace(new, **kept)
        self._apply(self.config, users)
        if office is not None and self.office is not None:
            self.office.office = office
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

    def _apply(self, config: Config, users: Any) -> None:
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
        if not config.rate_limit:
            self.rate_limiter = None
        elif self.rate_limiter is None:
            self.rate_limiter = RateLimiter(config.rate_limit, config.rate_burst)
        else:
            # The buckets (who has spent what) stay; only the rules change.
            self.rate_limiter.rate = config.rate_limit
            self.rate_limiter.burst = config.rate_burst
            self.rate_limiter.refill_time = config.rate_burst / config.rate_limit
        self.trusted.reload(config.trusted)  # the same object everywhere
        if self.authenticator is not None:
            self.authenticator.nonce_lifetime = config.nonce_lifetime

    @override
    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        Deferred.fromCoroutine(self.location.open()).addCallbacks(
            self._serving, self._cannot_open
        )

    def _serving(self, _: object) -> None:
        self._open = True
        if hasattr(signal, "SIGHUP"):
            signal.signal(
                signal.SIGHUP,
                lambda *_: self._reactor.callFromThread(self.reload),
            )
        # Everything built at start-up lives as long as the process: keep the
        # collector from walking it again on every full collection.
        gc.freeze()
        # Young collections every 700 allocations cost a REGISTER burst dearly;
        # our garbage is short-lived messages, not cycles (bench/, issue 8).
        gc.set_threshold(50_000, 20, 20)
        where = ", ".join(
            f"{spec.transport} {_hostport(port)}" for spec, port in self.ports
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
            location=_redacted(self.config.location),
        )

    def _cannot_open(self, failure: Failure) -> None:
        self.log.critical(
            "sipproxy: error: cannot open location {location}: {why}",
            location=_redacted(self.config.location),
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
        return Deferred.fromCoroutine(self.location.close())


def tls_client(config: Config) -> TLSClient | None:
    """How we open TLS connections, if any ``tls:`` listener is configured.

    Each listener's key and certificate are read (and checked) here; the first
    one's is also our client certificate, for servers that ask for one (mutual
    TLS trunks). Without a TLS listener we neither accept nor open TLS: our Via
    and Record-Route could name no TLS address.
    """
    tls = [spec for spec in config.listen if spec.transport == "tls"]
    if not tls:
        return None
    credentials = [credentials_of(spec.options) for spec in tls]
    for spec in tls:
        server_options(credentials_of(spec.options), spec.option("caCerts"))
    return TLSClient(
        verify=config.tls_verify, ca_file=config.tls_ca, credentials=credentials[0]
    )


def _enlarge_receive_buffer(port: IListeningPort) -> None:
    """Let a burst (every phone re-registering after an outage) queue, not drop.

    The default UDP receive buffer (~200 KB) fills within one garbage-collector
    pause at a thousand requests a second; the kernel caps what we ask for at
    net.core.rmem_max.
    """
    sock = getattr(port, "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)


class _QuietSite(Site):
    """The admin API's site, without an access log.

    A scrape every 15 s would bury the SIP log; the API logs its changes itself.
    """

    @override
    def log(self, request: Any) -> None:
        pass


#: Config fields a reload applies (see SIPServerService.reload).
_RELOADABLE = (
    "users", "nonce_lifetime", "dialplan", "outbound_proxy", "forking",
    "rate_limit", "rate_burst", "trusted", "default_expires", "min_expires",
    "max_expires", "max_bindings", "allow_destination", "max_pending",
    "max_pending_per_source",
)  # fmt: skip
#: Config fields only a restart changes: sockets, the store, the log set-up.
_RESTART_ONLY = (
    "domains", "aliases", "listen", "location", "dns", "max_message_size",
    "tcp_idle_timeout", "admin", "admin_token", "admin_token_file", "log_format",
    "reuse_port", "advertise", "secret_file", "max_connections", "message_timeout",
)  # fmt: skip


def _is_loopback(spec: ListenSpec) -> bool:
    try:
        return ipaddress.ip_address(spec.interface.strip("[]")).is_loopback
    except ValueError:
        return False  # no interface (all of them) or a name


def _redacted(location: str) -> str:
    """A location spec without its password (redis://:SECRET@host)."""
    return redacted_spec(location)


def _listen_shared(reactor: Any, spec: ListenSpec, receiver: Any) -> IListeningPort:
    """Listen with SO_REUSEPORT, so other processes may listen on the same port.

    Twisted's listenUDP/listenTCP cannot set it before bind(), so the socket is
    made here and handed to the reactor, which takes a duplicate of it.
    """
    interface = spec.interface or "0.0.0.0"
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    kind = socket.SOCK_DGRAM if spec.transport == "udp" else socket.SOCK_STREAM
    try:
        with socket.socket(family, kind) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((interface, spec.port))
            sock.setblocking(False)
            if kind == socket.SOCK_DGRAM:
                return reactor.adoptDatagramPort(  # type: ignore[no-any-return]
                    sock.fileno(), family, receiver, maxPacketSize=65535
                )
            sock.listen(int(spec.option("backlog") or 50))
            return reactor.adoptStreamPort(  # type: ignore[no-any-return]
                sock.fileno(), family, receiver
            )
    except OSError as error:
        raise CannotListenError(interface, spec.port, error) from None


def _first_listener(ports: list[tuple[ListenSpec, IListeningPort]]) -> str | None:
    """The first listener as a SIP URI, if it names one address (not a wildcard)."""
    for spec, port in ports[:1]:
        address = port.getHost()
        host = getattr(address, "host", "")
        if not host or host in ("0.0.0.0", "::"):
            return None
        host = f"[{host}]" if ":" in host else host
        param = "" if spec.transport == "udp" else f";transport={spec.transport}"
        return f"sip:{host}:{getattr(address, 'port', 5060)}{param}"
    return None


def _read_secret(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        secret = Path(path).read_bytes()
    except OSError as error:
        raise ConfigError(f"secret-file {path!r}: {error.strerror}") from None
    if len(secret) < 16:
        raise ConfigError(f"secret-file {path!r}: needs at least 16 bytes")
    return secret


def _admin_address(port: IListeningPort) -> str:
    address = port.getHost()
    name = getattr(address, "name", None)
    if name is not None:
        return f"unix:{os.fsdecode(name)}"
    return _hostport(port)


def _hostport(port: IListeningPort) -> str:
    address = port.getHost()
    host = getattr(address, "host", "")
    host = f"[{host}]" if ":" in host else host or "*"
    return f"{host}:{getattr(address, 'port', '?')}"


def makeService(options: Options) -> IService:
    """Build the service twistd runs, from parsed options."""
    from twisted.internet import reactor

    assert options.config is not None  # set by postOptions
    return SIPServerService(
        options.config,
        reactor,
        config_path=options["config"],
        cli_values=options.cli_values,
    )
