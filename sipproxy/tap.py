"""``twistd sipproxy``: the command-line options; :mod:`sipproxy.server` wires."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from twisted.application.service import IService
from twisted.python import usage
from typing_extensions import override

from sipproxy import __version__
from sipproxy.config import (
    Config,
    ConfigError,
    build_config,
    read_toml,
)
from sipproxy.htdigest import load_users
from sipproxy.location import location_from_spec
from sipproxy.logs import use_json_logs, use_text_logs
from sipproxy.server import build_server, read_secret, tls_client


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
            read_secret(self.config.secret_file)
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


def makeService(options: Options) -> IService:
    """Build the service twistd runs, from parsed options."""
    from twisted.internet import reactor

    assert options.config is not None  # set by postOptions
    return build_server(
        options.config,
        reactor,
        config_path=options["config"],
        cli_values=options.cli_values,
    )
