"""``twistd sipproxy``: the command-line options and the one place layers are wired."""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure
from typing_extensions import override

from sipproxy import __version__
from sipproxy.config import Config, ConfigError, ListenSpec, build_config, read_toml
from sipproxy.digest import Authenticator
from sipproxy.guard import BanList, ConnectionLimiter, RateLimiter
from sipproxy.htdigest import load_users
from sipproxy.location import location_from_spec
from sipproxy.proxy.core import Proxy, ProxySettings
from sipproxy.registrar import Registrar, RegistrarSettings
from sipproxy.resolver import make_resolver
from sipproxy.transport.sender import Transports
from sipproxy.transport.stream import SIPStreamFactory
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
        for key in ("domain", "listen", "alias", "dns", "trusted"):
            self[key] = []
        self.config: Config | None = None

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
        """Address never rate limited or banned, e.g. an SBC (repeatable)."""
        self["trusted"].append(value)

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
                "location",
                "default-expires",
                "min-expires",
                "max-expires",
                "max-bindings",
                "forking",
                "users",
                "nonce-lifetime",
                "rate-limit",
                "rate-burst",
                "trusted",
                "reuse-port",
                "advertise",
                "secret-file",
            )
        }
        try:
            file_values = read_toml(self["config"]) if self["config"] else {}
            self.config = build_config(file_values, cli)
            # Constructing a store does no I/O; it checks the spec's form.
            location_from_spec(self.config.location, reactor=None)
            if self.config.users is not None:
                load_users(self.config.users, self.config.domains[0])
            _read_secret(self.config.secret_file)
        except (ConfigError, ValueError, OSError) as error:
            raise usage.UsageError(str(error)) from None


class SIPServerService(MultiService):
    """Listens on every configured address and hands messages to the core."""

    log = Logger()

    def __init__(self, config: Config, reactor: Any) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.config = config
        self._reactor = reactor
        self.ports: list[tuple[ListenSpec, IListeningPort]] = []
        hosts = {*config.domains, *config.aliases}
        hosts.update(spec.interface for spec in config.listen if spec.interface)
        if any(not spec.interface for spec in config.listen):
            hosts.update(_LOOPBACK)
        self.transports = Transports(reactor)
        self.location = location_from_spec(config.location, reactor)
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
        resolver = make_resolver(config.dns, reactor, reactor)
        # Abuse defences (issue 5): a token bucket per source address and bans
        # after failed authentications, both checked before any parsing.
        self.rate_limiter = (
            RateLimiter(config.rate_limit, config.rate_burst)
            if config.rate_limit
            else None
        )
        self.bans = BanList(exempt=config.trusted)
        self.connection_limit = ConnectionLimiter()
        self.authenticator: Authenticator | None = None
        if config.users is not None:
            self.authenticator = Authenticator(
                config.domains[0],
                load_users(config.users, config.domains[0]),
                os.urandom(32),
                nonce_lifetime=config.nonce_lifetime,
            )
        self.proxy = Proxy(
            ProxySettings(
                domains=domains,
                local_hosts=frozenset(h.lower().strip("[]") for h in hosts),
                local_ports=frozenset(spec.port for spec in config.listen),
                forking=config.forking,
                dialplan=config.dialplan,
                outbound_proxy=config.outbound_proxy,
            ),
            clock=reactor,
            transports=self.transports,
            location=self.location,
            registrar=self.registrar,
            resolve=resolver.resolve,
            known_user=self._known_user,
            auth=self.authenticator,
            bans=self.bans,
            secret=_read_secret(config.secret_file),
        )
        self.stream_factories: dict[str, SIPStreamFactory] = {}
        self._purge: LoopingCall | None = None

    @override
    def privilegedStartService(self) -> None:
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
        if spec.transport == "tls":
            raise ConfigError(f"listen {spec}: TLS is not available yet")
        factory = self.stream_factories.setdefault(
            spec.transport,
            SIPStreamFactory(
                receiver,
                self._reactor,
                transport_name=spec.transport,
                idle_timeout=self.config.tcp_idle_timeout,
                max_message_size=self.config.max_message_size,
            ),
        )
        factory.admit = self._admit
        factory.limit = self.connection_limit
        port = (
            _listen_shared(self._reactor, spec, factory)
            if self.config.reuse_port
            else self._reactor.listenTCP(spec.port, factory, interface=spec.interface)
        )
        address = port.getHost()
        self.transports.add_stream(
            spec.transport,
            factory,
            getattr(address, "host", ""),
            getattr(address, "port", 0),
        )
        return port

    def _admit(self, source_ip: str) -> bool:
        """Banned sources are ignored; one flooding source loses only its excess."""
        if source_ip in self.config.trusted:
            return True
        now = self._reactor.seconds()
        if self.bans.is_banned(source_ip, now):
            return False
        return self.rate_limiter is None or self.rate_limiter.allow(source_ip, now)

    def _known_user(self, aor: str) -> bool:
        """Whether an AOR is a user of ours (no binding then means 480, not 404)."""
        if self.authenticator is None:
            return False
        user = aor.partition(":")[2].rpartition("@")[0]
        return user in self.authenticator.users

    def reload_users(self) -> None:
        """SIGHUP: re-read the users file; a broken one keeps the old users."""
        if self.authenticator is None or self.config.users is None:
            return
        try:
            users = load_users(self.config.users, self.config.domains[0])
        except (ValueError, OSError) as error:
            self.log.error(
                "users file not reloaded, keeping the old users: {e}", e=error
            )
            return
        self.authenticator.users = users
        self.log.info("users file reloaded: {n} users", n=len(users.entries))

    @override
    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        Deferred.fromCoroutine(self.location.open()).addCallbacks(
            self._serving, self._cannot_open
        )

    def _serving(self, _: object) -> None:
        if hasattr(signal, "SIGHUP"):
            signal.signal(
                signal.SIGHUP,
                lambda *_: self._reactor.callFromThread(self.reload_users),
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
        self.log.info(
            "sipproxy {version} serving {domains} on {where}; location {location}",
            version=__version__,
            domains=", ".join(self.config.domains),
            where=where,
            location=self.config.location,
        )

    def _cannot_open(self, failure: Failure) -> None:
        self.log.critical(
            "sipproxy: error: cannot open location {location}: {why}",
            location=self.config.location,
            why=failure.getErrorMessage(),
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
        if self._purge is not None and self._purge.running:
            self._purge.stop()
        for _, port in self.ports:
            port.stopListening()
        for factory in self.stream_factories.values():
            for connection in list(factory.connections.values()):
                connection.transport.loseConnection()  # type: ignore[union-attr]
        self.ports.clear()
        super().stopService()  # type: ignore[no-untyped-call]
        return Deferred.fromCoroutine(self.location.close())


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


def _hostport(port: IListeningPort) -> str:
    address = port.getHost()
    host = getattr(address, "host", "")
    host = f"[{host}]" if ":" in host else host or "*"
    return f"{host}:{getattr(address, 'port', '?')}"


def makeService(options: Options) -> IService:
    """Build the service twistd runs, from parsed options."""
    from twisted.internet import reactor

    assert options.config is not None  # set by postOptions
    return SIPServerService(options.config, reactor)
