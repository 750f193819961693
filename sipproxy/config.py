"""One validated, immutable settings object from the TOML file and the command line.

Nothing else in sipproxy reads options. The TOML keys are the long command-line
option names (``domain``, ``listen``, ``location``, ...), so a newcomer learns one
vocabulary; a value given on the command line replaces the file's value for that key.
Every problem is a :class:`ConfigError` naming the key, the value and what is wrong,
raised before anything listens.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sipproxy.auth.ha1 import ALGORITHMS
from sipproxy.guard import TrustedNetworks
from sipproxy.office.model import Office, parse_office
from sipproxy.options import OPTIONS, RELOADABLE, RESTART_ONLY
from sipproxy.sip.transports import KINDS, is_reliable, is_secure

#: What ``--listen`` defaults to when neither the file nor the command line names one.
DEFAULT_LISTEN = ("udp:5060", "tcp:5060")

_TRANSPORTS = tuple(KINDS)
_LISTEN_KEYWORDS = {
    "udp": {"interface"},
    "tcp": {"interface", "backlog"},
    "tls": {
        "interface",
        "backlog",
        "privateKey",
        "certKey",
        "extraCertChain",
        "caCerts",
    },
}
# RFC 1034 host names as SIP uses them (RFC 3261 §25.1 hostname), for --domain.
_HOSTNAME = re.compile(
    r"(?=.{1,253}\Z)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?\Z"
)


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the key and the value."""


@dataclass(frozen=True, slots=True)
class DialRule:
    r"""One dial-plan rule: a Request-URI that matches goes to ``to``.

    ``pattern`` is matched against the Request-URI's user part, or against the
    whole URI when ``whole_uri``; ``to`` may use its groups (``\1``, ``\g<name>``).
    """

    pattern: re.Pattern[str]
    to: str
    whole_uri: bool = False


@dataclass(frozen=True, slots=True)
class ListenSpec:
    r"""One listening address, from a Twisted-style endpoint string.

    ``udp:5060``, ``tcp:5060:interface=127.0.0.1``, ``tcp:5060:interface=\\:\\:1``
    (Twisted's escaping) or ``interface=[::1]``, and
    ``tls:5061:privateKey=key.pem:certKey=cert.pem``.
    """

    transport: str
    port: int
    interface: str = ""
    options: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str) -> ListenSpec:
        """Parse an endpoint string; raise ConfigError naming what is wrong."""
        parts = _split_endpoint(text)
        kind = parts[0].lower()
        if kind not in _TRANSPORTS:
            raise ConfigError(
                f"listen {text!r}: unknown transport {parts[0]!r} "
                f"(use {', '.join(_TRANSPORTS)})"
            )
        positional = [p for p in parts[1:] if "=" not in p]
        keywords = [p.split("=", 1) for p in parts[1:] if "=" in p]
        if len(positional) != 1:
            raise ConfigError(
                f"listen {text!r}: give exactly one port, e.g. {kind}:5060"
            )
        port = _port(positional[0], f"listen {text!r}")
        interface = ""
        options: list[tuple[str, str]] = []
        for key, value in keywords:
            if key not in _LISTEN_KEYWORDS[kind]:
                allowed = ", ".join(sorted(_LISTEN_KEYWORDS[kind]))
                raise ConfigError(
                    f"listen {text!r}: unknown option {key!r} for {kind} "
                    f"(allowed: {allowed})"
                )
            if key == "interface":
                interface = value.removeprefix("[").removesuffix("]")
                try:
                    ipaddress.ip_address(interface)
                except ValueError:
                    raise ConfigError(
                        f"listen {text!r}: interface {value!r} is not an IP address"
                    ) from None
            else:
                options.append((key, value))
        if is_secure(kind):
            given = {key for key, _ in options}
            if "privateKey" not in given:
                raise ConfigError(f"listen {text!r}: tls needs privateKey=FILE")
        return cls(kind, port, interface, tuple(options))

    @property
    def reliable(self) -> bool:
        """Stream transports deliver in order and need no retransmission (§17.1.1)."""
        return is_reliable(self.transport)

    def option(self, name: str) -> str | None:
        """The value of a keyword option such as ``certKey``."""
        for key, value in self.options:
            if key == name:
                return value
        return None

    def __str__(self) -> str:
        host = self.interface.replace(":", "\\:")
        text = f"{self.transport}:{self.port}"
        if self.interface:
            text += f":interface={host}"
        for key, value in self.options:
            text += f":{key}={value}"
        return text


@dataclass(frozen=True, slots=True)
class UnixSocketSpec:
    """The admin API on a Unix socket: its file's permissions decide who may connect.

    Twisted's endpoint syntax: ``unix:PATH`` or ``unix:address=PATH``, with
    ``mode`` (octal), ``backlog`` and ``lockfile`` (``1``: a ``PATH.lock`` lets a
    restart replace the socket a crash left behind). Unlike Twisted's default
    (``666``: anyone on the host), ``mode`` defaults to ``600``.
    """

    path: str
    mode: int = 0o600
    backlog: int = 50
    lockfile: bool = True

    def __str__(self) -> str:
        path = self.path.replace("\\", "\\\\").replace(":", "\\:")
        return f"unix:{path}:mode={self.mode:04o}"


def _split_endpoint(text: str) -> list[str]:
    """Split on ``:`` except after a backslash or inside ``[...]``."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    chars = iter(text)
    for char in chars:
        if char == "\\":
            current.append(next(chars, ""))
        elif char == "[":
            depth += 1
            current.append(char)
        elif char == "]":
            depth -= 1
            current.append(char)
        elif char == ":" and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _port(text: str, where: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise ConfigError(f"{where}: port {text!r} is not a number from 0 to 65535")
    return int(text)


def _host_port(text: str, default_port: int, where: str) -> tuple[str, int]:
    """``127.0.0.1``, ``127.0.0.1:5353``, ``[::1]:5353`` or ``::1``."""
    host, port = text, default_port
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(f"{where}: {text!r} is not HOST[:PORT]")
            port = _port(rest[1:], where)
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = _port(port_text, where)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"{where}: {host!r} is not an IP address") from None
    return host, port


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
    #: registration lifetimes, seconds (RFC 3261 §10.2.1.1, §10.3 step 7)
    default_expires: int = 3600
    min_expires: int = 60
    max_expires: int = 7200
    #: bindings one AOR may have; beyond it the oldest is evicted
    max_bindings: int = 10
    #: requests waiting for a final answer beyond which new ones get 503
    #: (answered ones kept for retransmissions do not count; issue 13)
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
    #: office PBX: extensions, ring groups, forwarding (issue 9); None: none
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

    #: several processes share each listening port (SO_REUSEPORT, issue 8)
    reuse_port: bool = False
    #: this process's own SIP URI, recorded in the bindings of connections it
    #: holds so other processes sharing the store route through it (issue 8)
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


#: Shortest admin token accepted: 16 characters is 96 bits as base64.
MIN_TOKEN_LENGTH = 16


# key -> kind, validated in _coerce.
_KEYS: dict[str, str] = {option.name: option.kind for option in OPTIONS}


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
            settings[key.replace("-", "_")] = _coerce(key, value)
    if office:
        settings["office"] = _office(office)
    if "domain" in settings:
        settings["domains"] = settings.pop("domain")
    if "alias" in settings:
        settings["aliases"] = settings.pop("alias")
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


def _as_list(key: str, value: Any) -> list[Any]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigError(f"{key} = {value!r}: expected a string or a list of strings")


def _coerce(key: str, value: Any) -> Any:
    kind = _KEYS[key]
    if kind == "hosts":
        hosts = _as_list(key, value)
        for host in hosts:
            if not _is_host(host):
                raise ConfigError(f"{key} = {host!r}: not a host name or IP address")
        if key == "domain" and not hosts:
            raise ConfigError("domain: at least one domain is needed")
        return tuple(host.lower() for host in hosts)
    if kind == "listen":
        specs = tuple(ListenSpec.parse(text) for text in _as_list(key, value))
        if not specs:
            raise ConfigError("listen: at least one listening address is needed")
        return specs
    if kind == "dns":
        return tuple(
            _host_port(text, 53, f"dns {text!r}") for text in _as_list(key, value)
        )
    if kind == "digest-algorithms":
        names = tuple(name.upper() for name in _as_list(key, value))
        unknown = [name for name in names if name not in ALGORITHMS]
        if unknown or not names or len(set(names)) != len(names):
            raise ConfigError(
                f"{key} = {value!r}: expected distinct names among "
                f"{', '.join(ALGORITHMS)}, most preferred first"
            )
        return names
    if kind == "path":
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key} = {value!r}: expected a file name")
        return value
    if kind == "networks":
        networks = _as_list(key, value)
        try:
            TrustedNetworks(networks)
        except ValueError:
            bad = next(n for n in networks if not _is_network(n))
            raise ConfigError(
                f"{key} = {bad!r}: not an IP address or network (e.g. 192.0.2.0/24)"
            ) from None
        return tuple(networks)
    if kind == "rate":
        try:
            rate = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} = {value!r}: not a number") from None
        if rate < 0 or isinstance(value, bool):
            raise ConfigError(f"{key} = {value!r}: expected 0 (off) or more")
        return rate
    if kind == "yesno":
        if isinstance(value, bool):
            return value
        if value in ("yes", "no"):
            return value == "yes"
        raise ConfigError(f"{key} = {value!r}: use yes or no")
    if kind == "dialplan":
        return _dialplan(value)
    if kind == "admin":
        return _admin(value)
    if kind == "token":
        return _token(key, value)
    if kind == "log-format":
        if value not in ("text", "json"):
            raise ConfigError(f"log-format = {value!r}: use text or json")
        return value
    if kind == "flag":
        if value in (True, 1, "true", "yes", "1"):
            return True
        if value in (False, 0, "false", "no", "0"):
            return False
        raise ConfigError(f"{key} = {value!r}: expected true or false")
    if kind == "sip-uri":
        if not isinstance(value, str) or not value.startswith(("sip:", "sips:")):
            raise ConfigError(f"{key} = {value!r}: expected a sip: or sips: URI")
        return value
    if kind == "forking":
        if value not in ("sequential", "parallel"):
            raise ConfigError(f"forking = {value!r}: use sequential or parallel")
        return value
    if kind == "location":
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key} = {value!r}: expected a non-empty string")
        if not value.startswith(("memory:", "sqlite:", "redis://")):
            # Never echo a password (rediss://:SECRET@...): errors end up in logs.
            shown = value.rpartition("@")[2] if "@" in value else value
            raise ConfigError(
                f"location = {shown!r}: use memory:, sqlite:PATH or redis://HOST:PORT/DB"
            )
        return value
    number = value
    if isinstance(value, str):
        try:
            number = float(value) if kind == "seconds" else int(value)
        except ValueError:
            raise ConfigError(f"{key} = {value!r}: not a number") from None
    if isinstance(number, bool) or not isinstance(number, int | float) or number <= 0:
        raise ConfigError(f"{key} = {value!r}: expected a positive number")
    if kind == "count":
        if int(number) != number:
            raise ConfigError(f"{key} = {value!r}: expected a whole number")
        return int(number)
    if kind == "size":
        if int(number) != number or not 1024 <= number <= 1 << 20:
            raise ConfigError(
                f"{key} = {value!r}: expected a whole number of bytes, 1024 to 1048576"
            )
        return int(number)
    return float(number)


def _admin(value: Any) -> ListenSpec | UnixSocketSpec:
    """``tcp:PORT[:interface=IP]`` (loopback without an interface) or ``unix:PATH``."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"admin = {value!r}: expected e.g. tcp:8080")
    parts = _split_endpoint(value)
    if parts[0].lower() == "unix":
        return _admin_unix(value, parts[1:])
    if parts[0].lower() != "tcp":
        raise ConfigError(
            f"admin {value!r}: use tcp or unix, e.g. tcp:8080 or "
            "unix:/run/sipproxy/admin.sock"
        )
    positional = [p for p in parts[1:] if "=" not in p]
    if len(positional) != 1:
        raise ConfigError(f"admin {value!r}: give exactly one port, e.g. tcp:8080")
    port = _port(positional[0], f"admin {value!r}")
    interface = "127.0.0.1"
    for key, _, option in (p.partition("=") for p in parts[1:] if "=" in p):
        if key != "interface":
            raise ConfigError(f"admin {value!r}: unknown option {key!r}")
        interface = option.removeprefix("[").removesuffix("]")
        try:
            ipaddress.ip_address(interface)
        except ValueError:
            raise ConfigError(
                f"admin {value!r}: interface {option!r} is not an IP address"
            ) from None
    return ListenSpec("tcp", port, interface)


def _admin_unix(value: str, parts: list[str]) -> UnixSocketSpec:
    """The options Twisted's ``unix:`` server endpoint takes, checked here."""
    path = None
    options: dict[str, str] = {}
    for part in parts:
        key, equals, option = part.partition("=")
        if not equals:
            key, option = "address", part
        if key not in ("address", "mode", "backlog", "lockfile"):
            raise ConfigError(
                f"admin {value!r}: unknown option {key!r} for unix "
                "(allowed: address, backlog, lockfile, mode)"
            )
        if key == "address":
            if path is not None:
                raise ConfigError(f"admin {value!r}: give the socket's path once")
            path = option
        else:
            options[key] = option
    if not path:
        raise ConfigError(
            f"admin {value!r}: give the socket's path, e.g. "
            "unix:/run/sipproxy/admin.sock"
        )
    spec = UnixSocketSpec(path)
    if "mode" in options:
        text = options["mode"]
        if not re.fullmatch(r"0?[0-7]{3}", text):
            raise ConfigError(
                f"admin {value!r}: mode {text!r} is not an octal mode like 0600"
            )
        spec = replace(spec, mode=int(text, 8))
    if "backlog" in options:
        text = options["backlog"]
        if not text.isdigit() or int(text) < 1:
            raise ConfigError(f"admin {value!r}: backlog {text!r} is not a number")
        spec = replace(spec, backlog=int(text))
    if "lockfile" in options:
        if options["lockfile"] not in ("0", "1"):
            raise ConfigError(f"admin {value!r}: lockfile is 0 or 1")
        spec = replace(spec, lockfile=options["lockfile"] == "1")
    if spec.mode & 0o002:
        # Write permission on a socket is what connect() checks.
        raise ConfigError(
            f"admin {value!r}: mode {spec.mode:04o} lets every user of the host "
            "in; use 0600 (or 0660 with a group of operators)"
        )
    return spec


def _token(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string")
    # Never echo the value: a token in an error message ends up in a log.
    if len(value) < MIN_TOKEN_LENGTH or any(c.isspace() for c in value):
        raise ConfigError(
            f"{key}: the token must be at least {MIN_TOKEN_LENGTH} characters "
            "without spaces (e.g. from: openssl rand -base64 24)"
        )
    return value


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
    return _token(f"admin-token-file {path!r}", text.strip())


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
    if (
        config.admin_token is None
        and not ipaddress.ip_address(config.admin.interface).is_loopback
    ):
        raise ConfigError(
            f"admin {config.admin}: a non-loopback address needs admin-token or "
            "admin-token-file"
        )


def _dialplan(value: Any) -> tuple[DialRule, ...]:
    """``[[dialplan]]`` tables: ``match`` (user part) or ``match-uri``, and ``to``."""
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ConfigError("dialplan: expected [[dialplan]] tables with match and to")
    rules = []
    for number, table in enumerate(value, 1):
        where = f"dialplan rule {number}"
        unknown = set(table) - {"match", "match-uri", "to"}
        if unknown:
            raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}")
        if ("match" in table) == ("match-uri" in table):
            raise ConfigError(f"{where}: give exactly one of match or match-uri")
        text = table.get("match", table.get("match-uri"))
        to = table.get("to")
        if not isinstance(text, str) or not isinstance(to, str):
            raise ConfigError(f"{where}: match and to must be strings")
        try:
            pattern = re.compile(text)
        except re.error as error:
            raise ConfigError(f"{where}: match {text!r} is no regex: {error}") from None
        if not to.startswith(("sip:", "sips:", "tel:")):
            raise ConfigError(f"{where}: to {to!r} must be a sip:, sips: or tel: URI")
        rules.append(DialRule(pattern, to, whole_uri="match-uri" in table))
    return tuple(rules)


def _is_network(text: str) -> bool:
    try:
        TrustedNetworks([text])
    except ValueError:
        return False
    return True


def _is_host(text: str) -> bool:
    try:
        ipaddress.ip_address(text.removeprefix("[").removesuffix("]"))
    except ValueError:
        return bool(_HOSTNAME.match(text))
    return True
