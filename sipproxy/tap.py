"""``twistd sipproxy``: the command-line options; :mod:`sipproxy.server` wires."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from twisted.application.service import IService
from twisted.python import usage
from typing_extensions import override

from sipproxy import __version__
from sipproxy.auth.htdigest import load_users
from sipproxy.cdr.spec import cdr_from_spec
from sipproxy.config import (
    Config,
    ConfigError,
    build_config,
    read_toml,
)
from sipproxy.keys import read_secret
from sipproxy.location.spec import location_from_spec
from sipproxy.logs import use_json_logs, use_text_logs
from sipproxy.options import OPTIONS, Option
from sipproxy.server import build_server, tls_client


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
        *([o.name, o.short, None, o.help] for o in OPTIONS if o.cli == "value"),
    ]
    optFlags: Any = [[o.name, o.short, o.help] for o in OPTIONS if o.cli == "flag"]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        for option in OPTIONS:
            if option.cli == "list":
                self[option.name] = []
        self.config: Config | None = None
        #: the command line's values, applied again over the file on reload
        self.cli_values: dict[str, Any] = {}

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
        cli = {option.name: self[option.name] for option in OPTIONS if option.cli}
        self.cli_values = cli
        try:
            file_values = read_toml(self["config"]) if self["config"] else {}
            self.config = build_config(file_values, cli)
            # Constructing a store does no I/O; it checks the spec's form.
            location_from_spec(self.config.location, reactor=None)
            cdr_from_spec(self.config.cdr, None, location=self.config.location)
            if self.config.users is not None:
                users = load_users(self.config.users, self.config.domains[0])
                if self.config.office is not None:
                    # Members, extensions and forwarding must name users that exist:
                    # a typo would otherwise ring nobody, silently.
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


def _repeatable(option: Option) -> Callable[[Options, str], None]:
    """``--NAME VALUE`` given several times: every value, in order."""

    def add(self: Options, value: str) -> None:
        self[option.name].append(value)

    add.__doc__ = option.help
    return add


for _option in OPTIONS:
    if _option.cli == "list":
        _add = _repeatable(_option)
        setattr(Options, f"opt_{_option.name.replace('-', '_')}", _add)
        if _option.short:
            setattr(Options, f"opt_{_option.short}", _add)


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
