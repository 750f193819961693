"""The office configuration as values: extensions, ring groups, forwarding.

:func:`parse_office` turns the TOML sections (``[extensions]``, ``[[groups]]``,
``[forward.NAME]``, ``max-forward-depth``) into an :class:`Office`, refusing a bad
entry with a ``ValueError`` whose message names it; :meth:`Office.with_users`
then checks the names against the users file. The configuration module wraps
these errors in its ``ConfigError``, so this module never imports it.
For each call the proxy asks :meth:`Office.destination` what a Request-URI user
part means.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_NO_ANSWER_SECONDS",
    "DEFAULT_RING_SECONDS",
    "FORWARD_KEYS",
    "TARGET_KEYS",
    "Forwarding",
    "Group",
    "GroupTarget",
    "Office",
    "Target",
    "UriTarget",
    "UserTarget",
    "forwarding_from",
    "name_of",
    "parse_office",
]

#: Forwarding depth when ``max-forward-depth`` is not given (loop guard, 482 beyond).
DEFAULT_MAX_DEPTH = 5
DEFAULT_RING_SECONDS = 20.0
DEFAULT_NO_ANSWER_SECONDS = 20.0
_NUMBER = re.compile(r"[0-9*#+]{1,32}\Z")
_NAME = re.compile(r"[A-Za-z0-9._~+-]{1,64}\Z")
#: keys of a ``[forward.NAME]`` table, as stored per user too
FORWARD_KEYS = (
    "busy",
    "no_answer",
    "no_answer_seconds",
    "unavailable",
    "unconditional",
    "dnd",
)
#: the keys of :data:`FORWARD_KEYS` that name a forwarding target
TARGET_KEYS = ("busy", "no_answer", "unavailable", "unconditional")
_GROUP_KEYS = {"number", "name", "members", "strategy", "ring_seconds"}


@dataclass(frozen=True, slots=True)
class Forwarding:
    """Where calls for one user (or group) go instead; "" means nowhere."""

    busy: str = ""
    no_answer: str = ""
    no_answer_seconds: float = DEFAULT_NO_ANSWER_SECONDS
    unavailable: str = ""
    unconditional: str = ""
    dnd: bool = False

    def merged(self, stored: Mapping[str, Any]) -> Forwarding:
        """These (TOML) defaults with the values stored at run time winning."""
        known = {k: v for k, v in stored.items() if k in FORWARD_KEYS}
        return replace(self, **known) if known else self


@dataclass(frozen=True, slots=True)
class Group:
    """A ring group: a number that rings several users."""

    number: str
    name: str
    members: tuple[str, ...]
    strategy: str = "parallel"
    ring_seconds: float = DEFAULT_RING_SECONDS


@dataclass(frozen=True, slots=True)
class UserTarget:
    """A user of ours: ring their bindings as for a call to sip:name@domain."""

    name: str


@dataclass(frozen=True, slots=True)
class GroupTarget:
    """A ring group."""

    group: Group


@dataclass(frozen=True, slots=True)
class UriTarget:
    """Any SIP URI (a voicemail server): forwarded to as it is, never further."""

    uri: str


Target = UserTarget | GroupTarget | UriTarget


def name_of(target: Target) -> str | None:
    """The user or group name whose forwarding applies; None for a URI."""
    if isinstance(target, UserTarget):
        return target.name
    if isinstance(target, GroupTarget):
        return target.group.name
    return None


@dataclass(frozen=True, slots=True)
class Office:
    """The PBX configuration: extensions, groups, default forwarding."""

    extensions: Mapping[str, str] = field(default_factory=dict)
    groups: Mapping[str, Group] = field(default_factory=dict)
    #: by user name or group name
    forwarding: Mapping[str, Forwarding] = field(default_factory=dict)
    max_depth: int = DEFAULT_MAX_DEPTH
    #: user names from --users; None: any name is taken for a user
    users: frozenset[str] | None = None

    def destination(self, user_part: str) -> UserTarget | GroupTarget | None:
        """What a Request-URI user part of our domain means; None: not ours."""
        if user_part in self.extensions:
            return UserTarget(self.extensions[user_part])
        if user_part in self.groups:
            return GroupTarget(self.groups[user_part])
        if self.users is None or user_part in self.users:
            return UserTarget(user_part)
        return None

    def target(self, text: str) -> Target:
        """A forwarding target: a SIP URI, an extension, a group number, a user.

        :raises ValueError: it is none of these.
        """
        if text.startswith(("sip:", "sips:")):
            return UriTarget(text)
        found = self.destination(text)
        if found is None:
            raise ValueError(
                f"{text!r} is no user, extension, group number or sip: URI"
            )
        return found

    def defaults(self, name: str) -> Forwarding:
        """The TOML forwarding of a user or group name."""
        return self.forwarding.get(name, _NO_FORWARDING)

    def with_users(self, users: frozenset[str]) -> Office:
        """Check every name against the users file; the Office that knows them.

        :raises ValueError: a member, extension or forwarding names no user, or
            a number or group name is also a user name.
        """
        for number, user in self.extensions.items():
            if user not in users:
                raise ValueError(
                    f"extensions: {number!r} = {user!r}: {user!r} is not a user"
                    " in the users file"
                )
            if number in users:
                raise ValueError(
                    f"extensions: {number!r} is also a user name in the users file"
                )
        names = {g.name for g in self.groups.values()}
        for group in self.groups.values():
            where = f"groups: {group.name!r}"
            if group.number in users:
                raise ValueError(
                    f"{where}: number {group.number!r} is also a user name"
                )
            if group.name in users:
                raise ValueError(f"{where}: the name is also a user name")
            for member in group.members:
                if member not in users:
                    raise ValueError(
                        f"{where}: member {member!r} is not a user in the users file"
                    )
        office = replace(self, users=users)
        for name, forwarding in self.forwarding.items():
            if name not in users and name not in names:
                raise ValueError(
                    f"forward.{name}: {name!r} is no user and no group name"
                )
            _check_targets(office, name, forwarding)
        return office


_NO_FORWARDING = Forwarding()


def parse_office(values: Mapping[str, Any]) -> Office:
    """Build the Office from the TOML sections; users are checked later.

    :param values: any of ``extensions``, ``groups``, ``forward`` and
        ``max-forward-depth`` as the TOML file gives them.
    :raises ValueError: naming the entry that is wrong.
    """
    extensions = _extensions(values.get("extensions", {}))
    groups: dict[str, Group] = {}
    names: set[str] = set()
    raw_groups = values.get("groups", [])
    if not isinstance(raw_groups, list) or not all(
        isinstance(g, dict) for g in raw_groups
    ):
        raise ValueError("groups: expected [[groups]] tables")
    for index, table in enumerate(raw_groups, 1):
        group = _group(index, table)
        if group.number in extensions or group.number in groups:
            raise ValueError(
                f"groups: {group.name!r}: number {group.number!r} is used twice"
            )
        if group.name in names:
            raise ValueError(f"groups: {group.name!r}: the name is used twice")
        names.add(group.name)
        groups[group.number] = group
    depth = values.get("max-forward-depth", DEFAULT_MAX_DEPTH)
    if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= 20:
        raise ValueError(
            f"max-forward-depth = {depth!r}: expected a whole number from 1 to 20"
        )
    raw_forward = values.get("forward", {})
    if not isinstance(raw_forward, dict) or not all(
        isinstance(v, dict) for v in raw_forward.values()
    ):
        raise ValueError("forward: expected [forward.NAME] tables")
    forwarding = {
        name: forwarding_from(table, f"forward.{name}")
        for name, table in raw_forward.items()
    }
    office = Office(extensions, groups, forwarding, depth)
    for name, entry in forwarding.items():
        _check_targets(office, name, entry)
    _check_loops(office)
    return office


def forwarding_from(
    table: Mapping[str, Any], where: str, base: Forwarding = _NO_FORWARDING
) -> Forwarding:
    """A Forwarding from a ``[forward.NAME]`` table (or stored values) over ``base``.

    :raises ValueError: an unknown key or a value of the wrong kind.
    """
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in FORWARD_KEYS:
            raise ValueError(
                f"{where}: unknown key {key!r} (known: {', '.join(FORWARD_KEYS)})"
            )
        if key == "dnd":
            if not isinstance(value, bool):
                raise ValueError(f"{where}.dnd = {value!r}: expected true or false")
        elif key == "no_answer_seconds":
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not 0 < value <= 600
            ):
                raise ValueError(
                    f"{where}.no_answer_seconds = {value!r}: expected 0 < seconds"
                    " <= 600"
                )
            value = float(value)
        elif not isinstance(value, str):
            raise ValueError(f"{where}.{key} = {value!r}: expected a string")
        values[key] = value
    return replace(base, **values)


def _extensions(raw: Any) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise ValueError("extensions: expected a table of number = user")
    extensions: dict[str, str] = {}
    for number, user in raw.items():
        if not _NUMBER.match(number):
            raise ValueError(
                f"extensions: {number!r} is not a number (digits, *, #, +)"
            )
        if not isinstance(user, str) or not _NAME.match(user):
            raise ValueError(f"extensions: {number!r} = {user!r}: expected a user")
        extensions[number] = user
    return extensions


def _group(index: int, table: Mapping[str, Any]) -> Group:
    name = table.get("name")
    where = f"groups: {name!r}" if isinstance(name, str) else f"groups: entry {index}"
    unknown = set(table) - _GROUP_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f'{where}: name must be a word such as "sales"')
    number = table.get("number")
    if isinstance(number, int) and not isinstance(number, bool):
        number = str(number)
    if not isinstance(number, str) or not _NUMBER.match(number):
        raise ValueError(f"{where}: number {number!r} is not a number")
    members = table.get("members")
    if (
        not isinstance(members, list)
        or not members
        or not all(isinstance(m, str) for m in members)
    ):
        raise ValueError(f"{where}: members must be a non-empty list of users")
    if len(set(members)) != len(members):
        raise ValueError(f"{where}: a member is listed twice")
    strategy = table.get("strategy", "parallel")
    if strategy not in ("parallel", "sequential"):
        raise ValueError(f"{where}: strategy {strategy!r}: use parallel or sequential")
    seconds = table.get("ring_seconds", DEFAULT_RING_SECONDS)
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not 0 < seconds <= 600
    ):
        raise ValueError(f"{where}: ring_seconds {seconds!r}: expected 0 < s <= 600")
    return Group(number, name, tuple(members), strategy, float(seconds))


def _check_targets(office: Office, name: str, forwarding: Forwarding) -> None:
    for key in TARGET_KEYS:
        text = getattr(forwarding, key)
        if not text:
            continue
        try:
            office.target(text)
        except ValueError as error:
            raise ValueError(f"forward.{name}.{key}: {error}") from None


def _check_loops(office: Office) -> None:
    """Unconditional forwarding that comes back to where it started is refused."""
    for start in office.forwarding:
        chain = [start]
        name: str | None = start
        while name is not None:
            text = office.defaults(name).unconditional
            if not text:
                break
            name = name_of(office.target(text))
            if name is None:
                break
            if name in chain:
                first = chain.index(name)
                loop = " -> ".join([*chain[first:], name])
                raise ValueError(
                    f"forward.{chain[first]}.unconditional: forwarding loop {loop}"
                )
            chain.append(name)
