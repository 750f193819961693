"""Every option of sipproxy, described once.

The command line (``tap.Options``), the TOML keys (``config.build_config``), what a
reload applies or reports (:data:`RELOADABLE`, :data:`RESTART_ONLY`) and the
option tables of the README and docs/ (``tests/test_options.py``) derive from
:data:`OPTIONS`. Values are checked by ``config``; defaults are ``config.Config``'s.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Option:
    """One setting: its key, its check, its help, its command-line form, its reload."""

    #: the TOML key and the long command-line option
    name: str
    #: how the value is checked (``config_values.coerce``)
    kind: str
    #: the command line's help
    help: str
    #: "value" (``--name V``), "list" (repeatable), "flag", or "" (TOML only)
    cli: str = "value"
    short: str | None = None
    #: "apply" (a reload applies it), "restart" (a reload reports it, keeps the
    #: old value), "office" (reloaded with the office sections) or "ignored"
    #: (read at start only; a reload neither applies nor reports it)
    reload: str = "restart"
    #: the Config field it sets; default: the name with ``_`` for ``-``
    field: str = ""

    @property
    def config_field(self) -> str:
        """The ``config.Config`` field this option sets."""
        return self.field or self.name.replace("-", "_")


OPTIONS: tuple[Option, ...] = (
    Option(
        "domain",
        "hosts",
        "SIP domain this server is responsible for (repeatable; default localhost).",
        cli="list",
        short="d",
        field="domains",
    ),
    Option(
        "listen",
        "listen",
        "Endpoint to listen on, e.g. tcp:5060:interface=127.0.0.1; udp:, tcp:, "
        "tls:, ws: and wss: (repeatable).",
        cli="list",
        short="l",
    ),
    Option(
        "alias",
        "hosts",
        "Another host name or address that means this server (repeatable).",
        cli="list",
        field="aliases",
    ),
    Option(
        "dns",
        "dns",
        "DNS server for every lookup, IP[:PORT] (repeatable; default resolv.conf).",
        cli="list",
    ),
    Option(
        "max-message-size",
        "size",
        "Largest SIP message accepted, in bytes (default 65536).",
    ),
    Option(
        "tcp-idle-timeout",
        "seconds",
        "Seconds after which a silent TCP, TLS or WebSocket connection is "
        "closed (default 600).",
    ),
    Option(
        "max-connections",
        "count",
        "Inbound TCP/TLS/WebSocket connections open at once, all sources "
        "together; beyond it new ones are closed at once (default 10000).",
    ),
    Option(
        "message-timeout",
        "seconds",
        "Seconds a TCP/TLS/WebSocket client has to finish a message (headers "
        "and body), a TLS handshake or a WebSocket upgrade once it started "
        "sending it; then it is disconnected (default 10).",
    ),
    Option(
        "ws-origin",
        "origins",
        "Origin a browser's WebSocket upgrade may come from, e.g. "
        "https://phone.example.com (repeatable); others get 403. None given: "
        "any origin (logged at start).",
        cli="list",
        field="ws_origins",
    ),
    Option(
        "location",
        "location",
        "Where registrations live: memory: (default), sqlite:PATH or "
        "redis://HOST:PORT/DB.",
    ),
    Option(
        "cdr",
        "cdr",
        "Where call detail records go: auto (default: beside an sqlite: or "
        "redis:// location, none for memory:), none, jsonl:PATH, sqlite:PATH or "
        "redis://HOST:PORT/DB.",
    ),
    Option(
        "max-call-seconds",
        "seconds",
        "A call nothing is heard of (no BYE, re-INVITE or UPDATE) for this many "
        "seconds is recorded as ended by timeout (14400).",
        reload="apply",
    ),
    Option(
        "subscribe-min-expires",
        "count",
        "Shortest busy-lamp subscription (SUBSCRIBE, Event: dialog) accepted, "
        "else 423 (60).",
        reload="apply",
    ),
    Option(
        "subscribe-max-expires",
        "count",
        "Longest busy-lamp subscription granted; longer ones are cut (3600).",
        reload="apply",
    ),
    Option(
        "max-subscriptions",
        "count",
        "Busy-lamp subscriptions served at most, in all; beyond it 503 (10000).",
        reload="apply",
    ),
    Option(
        "max-subscriptions-per-user",
        "count",
        "Busy-lamp subscriptions one user may hold; beyond it 403 (200).",
        reload="apply",
    ),
    Option(
        "blf-single-dialog",
        "yesno",
        "Busy-lamp NOTIFYs carry one dialog element only, the busiest: yes or "
        "no (default; for phones that mishandle several).",
        reload="apply",
    ),
    Option(
        "users",
        "path",
        "Apache htdigest file (realm: the first --domain): REGISTER and calls "
        "from our domains then need a password. Re-read on SIGHUP.",
        reload="apply",
    ),
    Option(
        "digest-algorithms",
        "digest-algorithms",
        "Digest algorithms challenges offer, most preferred first: MD5, "
        "SHA-256 (repeatable; default MD5 only, which every phone answers).",
        cli="list",
    ),
    Option(
        "nonce-lifetime",
        "seconds",
        "Seconds a Digest nonce stays fresh (300).",
        reload="apply",
    ),
    Option(
        "dialplan",
        "dialplan",
        "[[dialplan]] rules: match (user part) or match-uri, and to.",
        cli="",
        reload="apply",
    ),
    Option(
        "outbound-proxy",
        "sip-uri",
        "Proxy every request routed by a dial-plan rule goes through first.",
        cli="",
        reload="apply",
    ),
    Option(
        "forking",
        "forking",
        "Several registered phones: sequential (newest first, default) or "
        "parallel (all ring).",
        reload="apply",
    ),
    Option(
        "rate-limit",
        "rate",
        "Requests/s per source address; 0: off (100).",
        reload="apply",
    ),
    Option(
        "rate-burst",
        "seconds",
        "Requests a source may send at once (600).",
        reload="apply",
    ),
    Option(
        "trusted",
        "networks",
        "Network or address never rate limited or banned, e.g. an SBC (repeatable).",
        cli="list",
        reload="apply",
    ),
    Option(
        "default-expires",
        "count",
        "Registration lifetime if none asked (3600).",
        reload="apply",
    ),
    Option(
        "min-expires",
        "count",
        "Shortest registration accepted, else 423 (60).",
        reload="apply",
    ),
    Option(
        "max-expires", "count", "Longest registration granted (7200).", reload="apply"
    ),
    Option(
        "max-bindings", "count", "Contacts per address-of-record (10).", reload="apply"
    ),
    Option(
        "allow-destination",
        "networks",
        "Internal network a request may name as its target (repeatable).",
        cli="list",
        reload="apply",
    ),
    Option(
        "max-pending",
        "count",
        "Requests waiting for a final answer beyond which new ones get 503 (50000).",
        reload="apply",
    ),
    Option(
        "max-pending-per-source",
        "count",
        "Of those, what one address (IPv6: one /64) may hold (5000).",
        reload="apply",
    ),
    Option(
        "tls-verify",
        "yesno",
        "Check the certificate of TLS servers we connect to: yes (default) or "
        "no (insecure; logs a warning).",
        reload="ignored",
    ),
    Option(
        "tls-ca",
        "path",
        "PEM file of CAs trusted for TLS servers (default: the system's).",
        reload="ignored",
    ),
    # Office PBX sections, validated together by pbx.parse_office.
    Option(
        "extensions",
        "office",
        "[extensions] table: extension number -> user.",
        cli="",
        reload="office",
        field="office",
    ),
    Option(
        "groups",
        "office",
        "[groups.NAME] ring groups: members, strategy, timeouts.",
        cli="",
        reload="office",
        field="office",
    ),
    Option(
        "forward",
        "office",
        "[forward.USER] default call forwarding of a user.",
        cli="",
        reload="office",
        field="office",
    ),
    Option(
        "max-forward-depth",
        "office",
        "How many forwardings one call may follow.",
        cli="",
        reload="office",
        field="office",
    ),
    Option(
        "admin",
        "admin",
        "Admin HTTP API (JSON, /metrics, /health): tcp:8080 (loopback unless "
        "interface= says otherwise; then admin-token(-file) is required) or "
        "unix:/run/sipproxy/admin.sock[:mode=0600] (the file's permissions "
        "decide who may use it).",
    ),
    Option(
        "admin-token",
        "token",
        "Bearer token of the admin API; better: admin-token-file.",
    ),
    Option(
        "admin-token-file",
        "path",
        "File holding the admin API's bearer token (one line; not readable by "
        "others). Default on tcp: admin-token in $STATE_DIRECTORY (else var/), "
        "made at first start.",
    ),
    Option(
        "log-format",
        "log-format",
        "text (default) or json: one object per line.",
    ),
    Option(
        "reuse-port",
        "flag",
        "Let several processes listen on the same ports (SO_REUSEPORT); the "
        "kernel spreads sources over them. Needs --advertise.",
        cli="flag",
    ),
    Option(
        "advertise",
        "sip-uri",
        "This process's own SIP URI (a listener of its own, e.g. "
        "sip:10.0.0.1:5071;transport=tcp): recorded with the bindings of its "
        "TCP connections, so processes sharing the store route calls for those "
        "phones through it (default: the first --listen).",
    ),
    Option(
        "secret-file",
        "path",
        "File whose bytes key flow tokens and To tags; give every process of a "
        "cluster the same file (default: random per start).",
    ),
)

#: Config fields a reload applies (see server.SIPServerService.reload).
RELOADABLE = tuple(o.config_field for o in OPTIONS if o.reload == "apply")
#: Config fields only a restart changes: sockets, the store, the log set-up.
RESTART_ONLY = tuple(
    dict.fromkeys(o.config_field for o in OPTIONS if o.reload == "restart")
)
