"""What a reload (SIGHUP, POST /reload) reads: the file again, checked as a whole.

The configuration file, the users file and the office sections are read and
checked together before anything changes: one that does not validate leaves
the server as it was, and the log says why. Applying the result to the live
objects is the server's job (:meth:`sipproxy.server.SIPServerService.reload`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

from sipproxy.auth.digest import Authenticator
from sipproxy.auth.htdigest import UserDB, load_users
from sipproxy.config import Config, ConfigError, build_config, read_toml
from sipproxy.office.model import Office


@dataclass(frozen=True, slots=True)
class NewSettings:
    """Everything a reload read, checked; not applied yet."""

    config: Config
    #: the users file read again; None when the server does not authenticate
    users: UserDB | None
    #: the office sections, their users checked; None when the server runs none
    office: Office | None


def read_again(
    config_path: str | None,
    cli_values: Mapping[str, Any],
    *,
    authenticator: Authenticator | None,
    with_office: bool,
    log: Logger,
) -> NewSettings | dict[str, Any]:
    """The settings a reload would apply, or the answer saying why there are none.

    :param cli_values: the command line's values, which still win over the file.
    :param authenticator: the running one; its users check the office when the
        users file is not read again.
    :param with_office: the server started with office sections.
    :param log: where each refusal is logged, once.
    """
    try:
        file_values = read_toml(config_path) if config_path else {}
        new = build_config(file_values, cli_values)
    except (ConfigError, ValueError, OSError) as error:
        log.error("configuration not reloaded, keeping the old one: {why}", why=error)
        return {"reloaded": False, "error": str(error)}
    users = None
    if new.users is not None and authenticator is not None:
        try:
            users = load_users(new.users, new.domains[0])
        except (ValueError, OSError) as error:
            log.error(
                "users file not reloaded, keeping the old users (and the old "
                "configuration): {e}",
                e=error,
            )
            return {"reloaded": False, "error": f"users file: {error}"}
    office = None
    if with_office:
        # A server started with office sections reloads them too; forwarding and
        # DND set at run time stay in the store and keep winning.
        office = new.office or Office()
        known = users if users is not None else getattr(authenticator, "users", None)
        try:
            if known is not None:
                office = office.with_users(frozenset(known))
        except (ConfigError, ValueError) as error:
            log.error(
                "office configuration not reloaded, keeping the old (and the "
                "old configuration): {e}",
                e=error,
            )
            return {"reloaded": False, "error": f"office: {error}"}
    return NewSettings(new, users, office)
