"""Option values: what each kind of option accepts, and the value it becomes.

``config`` knows the keys and merges the file with the command line; this module
knows the kinds (``hosts``, ``listen``, ``seconds``...) that the option table
(:data:`sipproxy.options.OPTIONS`) gives each key, and the values they parse into:
listening and admin endpoints, dial-plan rules, networks, tokens. Every problem is a
:class:`ConfigError` naming the key, the value and what is wrong.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from sipproxy.auth.ha1 import ALGORITHMS
from sipproxy.guard import TrustedNetworks
from sipproxy.sip.addressing import ip_of
from sipproxy.sip.transports import KINDS, is_reliable, is_secure

_TRANSPORTS = tuple(KINDS)
_TLS_KEYWORDS = {
    "interface",
    "backlog",
    "privateKey",
    "certKey",
    "extraCertChain",
    "caCerts",
}
_LISTEN_KEYWORDS = {
    "udp": {"interface"},
    "tcp": {"interface", "backlog"},
    "tls": _TLS_KEYWORDS,
    "ws": {"interface", "backlog"},
    # The same TLS settings and certificate handling as tls: (transport/tls.py).
    "wss": _TLS_KEYWORDS,
}
# A browser's Origin (RFC 6454 §6.1): scheme://host[:port], no path.
_ORIGIN = re.compile(r"(https?)://([^/?#\s]+)\Z", re.IGNORECASE)
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
        parts = split_endpoint(text)
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
                if ip_of(value) is None:
                    raise ConfigError(
                        f"listen {text!r}: interface {value!r} is not an IP address"
                    )
            else:
                options.append((key, value))
        if is_secure(kind):
            given = {key for key, _ in options}
            if "privateKey" not in given:
                raise ConfigError(f"listen {text!r}: {kind} needs privateKey=FILE")
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


def split_endpoint(text: str) -> list[str]:
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


def host_port(text: str, default_port: int, where: str) -> tuple[str, int]:
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
    if ip_of(host) is None:
        raise ConfigError(f"{where}: {host!r} is not an IP address")
    return host, port


#: Shortest admin token accepted: 16 characters is 96 bits as base64.
MIN_TOKEN_LENGTH = 16


def _as_list(key: str, value: Any) -> list[Any]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigError(f"{key} = {value!r}: expected a string or a list of strings")


def coerce(kind: str, key: str, value: Any) -> Any:
    """``value`` given for ``key`` as the value of its ``kind``.

    :raises ConfigError: naming the key and the value, if it cannot be used.
    """
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
            host_port(text, 53, f"dns {text!r}") for text in _as_list(key, value)
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
    if kind == "origins":
        return tuple(_origin(key, text) for text in _as_list(key, value))
    if kind == "admin":
        return _admin(value)
    if kind == "token":
        return check_token(key, value)
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
    if kind == "cdr":
        # The form is checked by cdr_from_spec when the options are read (tap).
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{key} = {value!r}: expected a non-empty string")
        return value.strip()
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


def _origin(key: str, text: str) -> str:
    """An Origin as browsers send it: lower-case scheme and host, no slash."""
    match = _ORIGIN.match(text.strip().rstrip("/"))
    if match is None:
        raise ConfigError(
            f"{key} = {text!r}: expected an origin such as https://phone.example.com"
        )
    return f"{match.group(1).lower()}://{match.group(2).lower()}"


def _admin(value: Any) -> ListenSpec | UnixSocketSpec:
    """``tcp:PORT[:interface=IP]`` (loopback without an interface) or ``unix:PATH``."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"admin = {value!r}: expected e.g. tcp:8080")
    parts = split_endpoint(value)
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
        if ip_of(option) is None:
            raise ConfigError(
                f"admin {value!r}: interface {option!r} is not an IP address"
            )
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


def check_token(key: str, value: Any) -> str:
    """``value`` as a bearer token of the admin API, checked but never echoed."""
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string")
    # Never echo the value: a token in an error message ends up in a log.
    if len(value) < MIN_TOKEN_LENGTH or any(c.isspace() for c in value):
        raise ConfigError(
            f"{key}: the token must be at least {MIN_TOKEN_LENGTH} characters "
            "without spaces (e.g. from: openssl rand -base64 24)"
        )
    return value


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
    return ip_of(text) is not None or bool(_HOSTNAME.match(text))
