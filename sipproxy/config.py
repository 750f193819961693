"""One validated, immutable settings object from the TOML file and the command line.

Nothing else in sipproxy reads options. The TOML keys are the long command-line
option names (``domain``, ``listen``, ``location``, ...), so a newcomer learns one
vocabulary; a value given on the command line replaces the file's value for that key.
Every problem is a :class:`ConfigError` naming the key, the value and what is wrong,
raised before anything listens.
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sipproxy.config_values import (
    MIN_TOKEN_LENGTH,
    ConfigError,
    DialRule,
    ListenSpec,
    UnixSocketSpec,
    check_token,
    coerce,
)
from sipproxy.guard import TrustedNetworks
from sipproxy.office.model import Office, parse_office
from sipproxy.options import OPTIONS, RELOADABLE, RESTART_ONLY
from sipproxy.sip.addressing import ip_of

# The values are defined next to their checks; callers keep importing them here.
__all__ = [
    "DEFAULT_LISTEN",
    "MIN_TOKEN_LENGTH",
    "Config",
    "ConfigError",
    "DialRule",
    "ListenSpec",
    "UnixSocketSpec",
    "build_config",
    "read_toml",
    "reloaded",
]

#: What ``--listen`` defaults to when neither the file nor the command line names one.
DEFAULT_LISTEN = ("udp:5060", "tcp:5060")


@dataclass(frozen=True, slots=True)
class Config:
    """Every setting of one server process."""

    domains: tuple[str, ...] = ("localhost",)
    listen: tuple[ListenSpec, ...] = field(
        default_factory=lambda: tuple(ListenSpec.parse(s) for s in DEFAULT_LISTEN)
    )
    #: host names or addresses that also mean "this server" in a Request-URI
    aliases: tuple[str, ...] = ()
    location: str = "memory:"
    #: where call detail records go (``cdr.spec.cdr_from_spec``); auto: beside
    #: the location store
    cdr: str = "auto"
    #: a call silent this long is over (hangup_by "timeout")
    max_call_seconds: float = 14_400.0
    #: busy-lamp subscriptions (RFC 6665): shortest accepted (else 423),
    #: longest granted
    subscribe_min_expires: int = 60
    subscribe_max_expires: int = 3600
    #: busy-lamp subscriptions served at most, in all and per subscriber
    max_subscriptions: int = 10_000
    max_subscriptions_per_user: int = 200
    #: one dialog element per NOTIFY body (phones that crash on several)
    blf_single_dialog: bool = False
    #: DNS servers for every lookup the server makes; empty: the system's resolv.conf
    dns: tuple[tuple[str, int], ...] = ()
    max_message_size: int = 65536
    #: a TCP/TLS connection with no traffic (not even a CRLF keepalive) is closed
    tcp_idle_timeout: float = 600.0
    #: inbound TCP/TLS connections open at once, from all sources; beyond it new
    #: ones are closed at once (the per-source cap is ConnectionLimiter's)
    max_connections: int = 10_000
    #: seconds a TCP/TLS client has to finish a message (header section and body)
    #: once it has sent its first byte; a slow sender (slowloris) is disconnected
    message_timeout: float = 10.0
    #: origins a browser's WebSocket upgrade may come from (RFC 6455 §10.2),
    #: lower case; empty: any
    ws_origins: tuple[str, ...] = ()
    #: registration lifetimes, seconds (RFC 3261 §10.2.1.1, §10.3 step 7)
    default_expires: int = 3600
    min_expires: int = 60
    max_expires: int = 7200
    #: bindings one AOR may have; beyond it the oldest is evicted
    max_bindings: int = 10
    #: requests waiting for a final answer beyond which new ones get 503
    #: (answered ones kept for retransmissions cost memory, not work: they do
    #: not count)
    max_pending: int = 50_000
    #: of those, how many one source (IPv4 address, IPv6 /64) may hold
    max_pending_per_source: int = 5_000
    #: several bindings: "sequential" (newest first) or "parallel" (all at once)
    forking: str = "sequential"
    #: routing rules for numbers and other domains, tried in order
    dialplan: tuple[DialRule, ...] = ()
    #: every request routed by a dial-plan rule goes through this proxy first
    outbound_proxy: str | None = None
    #: Apache htdigest file of users (realm: the first domain); None: no auth
    users: str | None = None
    #: seconds a Digest nonce stays fresh; after it, a correct answer gets stale=true
    nonce_lifetime: float = 300.0
    #: offered in this order (RFC 8760). SHA-256 is opt-in: UAs on libre 1.x
    #: (baresip) and many desk phones abandon a challenge when any of its
    #: WWW-Authenticate values names an algorithm they lack, even beside MD5.
    digest_algorithms: tuple[str, ...] = ("MD5",)
    #: requests per second per source address (token bucket); 0 turns it off
    rate_limit: float = 100.0
    #: requests a source may send at once before the rate applies
    rate_burst: float = 600.0
    #: networks (or single addresses) never rate limited or banned, as written;
    #: :meth:`trusted_networks` is the membership test built from them
    trusted: tuple[str, ...] = ()
    #: internal networks (loopback, private...) a request may name as its target
    allow_destination: tuple[str, ...] = ()
    #: TLS we open: check the server's certificate chain and name (RFC 5922)
    tls_verify: bool = True
    #: PEM file of CAs trusted for servers we connect to; None: the system's
    tls_ca: str | None = None
    #: office PBX: extensions, ring groups, forwarding; None: none
    office: Office | None = None
    #: the admin HTTP API's address: tcp (loopback unless an interface is given)
    #: or a unix socket
    admin: ListenSpec | UnixSocketSpec | None = None
    #: the bearer token of the admin API (from admin-token or admin-token-file);
    #: None on tcp: the service keeps one in its state directory (tokenfile.py)
    admin_token: str | None = None
    #: the file admin_token was read from, if any
    admin_token_file: str | None = None
    #: "text" (twistd's lines) or "json" (one object per line, for log shippers)
    log_format: str = "text"

    #: several processes share each listening port (SO_REUSEPORT), to use more
    #: than one CPU
    reuse_port: bool = False
    #: this process's own SIP URI, recorded in the bindings of connections it
    #: holds so other processes sharing the store route through it
    advertise: str | None = None
    #: file whose bytes key flow tokens and To tags: the same file for every
    #: process of a cluster, so each understands the others' Record-Routes
    secret_file: str | None = None

    def trusted_networks(self) -> TrustedNetworks:
        """``trusted`` as one membership test: ``ip in config.trusted_networks()``.

        Build it once and keep it (each call parses the entries again); every
        place that treats a source as trusted asks the same object.
        """
        return TrustedNetworks(self.trusted)


# key -> kind; options.py is the one table, config_values checks each kind.
_KEYS: dict[str, str] = {option.name: option.kind for option in OPTIONS}
#: key -> the Config field it sets
_FIELDS: dict[str, str] = {option.name: option.config_field for option in OPTIONS}


def read_toml(path: str) -> dict[str, Any]:
    """Read a TOML file; a missing or broken file is a ConfigError naming it."""
    try:
        with Path(path).open("rb") as file:
            return tomllib.load(file)
    except OSError as error:
        raise ConfigError(f"config {path!r}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config {path!r}: {error}") from None


def build_config(
    file_values: Mapping[str, Any], cli_values: Mapping[str, Any]
) -> Config:
    """Merge the file's values with the command line's (which win) and validate.

    :raises ConfigError: for an unknown key or a value that cannot be used.
    """
    for key in file_values:
        if key not in _KEYS:
            known = ", ".join(sorted(_KEYS))
            raise ConfigError(f"config: unknown key {key!r} (known keys: {known})")
    merged = {**file_values, **{k: v for k, v in cli_values.items() if v}}
    settings: dict[str, Any] = {}
    office = {k: v for k, v in merged.items() if _KEYS[k] == "office"}
    for key, value in merged.items():
        if key not in office:
            settings[_FIELDS[key]] = coerce(_KEYS[key], key, value)
    if office:
        settings["office"] = _office(office)
    if "admin_token_file" in settings:
        if "admin_token" in settings:
            raise ConfigError("admin-token and admin-token-file: give only one")
        settings["admin_token"] = _read_token(settings["admin_token_file"])
    config = Config(**settings)
    _check_admin(config)
    if config.reuse_port and config.advertise is None:
        # The shared port names no process in particular: a binding recording it
        # could not say which process holds the phone's connection.
        raise ConfigError(
            "reuse-port: also give advertise, a SIP URI of a listener of this "
            "process alone (e.g. sip:10.0.0.1:5071;transport=tcp)"
        )
    if not config.min_expires <= config.default_expires <= config.max_expires:
        raise ConfigError(
            f"expiry: need min-expires ({config.min_expires}) <= default-expires "
            f"({config.default_expires}) <= max-expires ({config.max_expires})"
        )
    if config.subscribe_min_expires > config.subscribe_max_expires:
        raise ConfigError(
            "subscription expiry: need subscribe-min-expires "
            f"({config.subscribe_min_expires}) <= subscribe-max-expires "
            f"({config.subscribe_max_expires})"
        )
    return config


def reloaded(
    old: Config, new: Config, *, authenticating: bool
) -> tuple[Config, list[str], list[str]]:
    """What a reload makes of ``new``: the config to run, and the fields that differ.

    Returns the config (restart-only fields keep their old values), the changed
    fields a reload applies and those that need a restart. Turning authentication
    on or off (``users`` given or not, as ``authenticating`` says today) is
    restart-only too: the server has, or has not, an authenticator.
    """
    changed = [key for key in RELOADABLE if getattr(old, key) != getattr(new, key)]
    restart = [key for key in RESTART_ONLY if getattr(old, key) != getattr(new, key)]
    if authenticating != (new.users is not None):
        restart.append("users")
        changed = [key for key in changed if key != "users"]
    kept = {key: getattr(old, key) for key in (*RESTART_ONLY, *restart)}
    return replace(new, **kept), changed, restart


def _office(values: Mapping[str, Any]) -> Office:
    """The office sections as an Office; their ValueError becomes a ConfigError."""
    try:
        return parse_office(values)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _read_token(path: str) -> str:
    try:
        mode = os.stat(path).st_mode
        if mode & 0o007:
            # As ssh does with a private key: a token others can read or replace
            # opens the API to every user of the host.
            raise ConfigError(
                f"admin-token-file {path!r}: other users may use it (mode "
                f"{stat.S_IMODE(mode):04o}); chmod o-rwx it (0600, or 0640 with "
                "the service's group)"
            )
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"admin-token-file {path!r}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"admin-token-file {path!r}: not UTF-8 text") from None
    return check_token(f"admin-token-file {path!r}", text.strip())


def _check_admin(config: Config) -> None:
    """Refuse an admin API that anyone on the network could use."""
    if config.admin is None:
        if config.admin_token is not None:
            raise ConfigError("admin-token: set, but admin (the API's address) is not")
        return
    if isinstance(config.admin, UnixSocketSpec):
        return
    # The token made at first start is for this host's sipproxy-ctl; an API on
    # the network gets a token the operator chose and distributes.
    address = ip_of(config.admin.interface)
    if config.admin_token is None and (address is None or not address.is_loopback):
        raise ConfigError(
            f"admin {config.admin}: a non-loopback address needs admin-token or "
            "admin-token-file"
        )
