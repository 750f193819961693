"""Office PBX features: extensions, ring groups, call forwarding, do-not-disturb.

Signalling only: voicemail and announcements live on a media server that calls
are forwarded to. Theory of operation: :func:`parse_office` turns the TOML
sections (``[extensions]``, ``[[groups]]``, ``[forward.NAME]``,
``max-forward-depth``) into an :class:`Office`, refusing bad entries with a
:class:`~sipproxy.config.ConfigError` that names them. For each call the proxy
core asks :meth:`Office.destination` what a Request-URI user part means, then
walks a :class:`CallPlan`: a sans-IO state machine that says what to ring
(:class:`Ring`), where to forward (:class:`Forward`) or what to answer
(:class:`Refuse`), given the outcome of each attempt (:class:`Outcome`). The
core does the I/O: binding lookups, branches, timers, CANCELs.

Forwarded INVITEs carry Diversion (RFC 5806) and History-Info (RFC 7044, with
the RFC 4458 ``cause`` URI parameter), built from the plan's :class:`Hop` list.

Per-user forwarding and do-not-disturb set at run time are kept in the location
store (``preferences``/``set_preferences``), so they survive a restart; a value
stored there wins over the TOML value of the same key, which is the default.
:class:`OfficePreferences` is the programmatic API an admin route calls.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol
from urllib.parse import quote

from sipproxy.config import ConfigError

__all__ = [
    "FORWARD_KEYS",
    "CallPlan",
    "Forward",
    "Forwarding",
    "Group",
    "GroupTarget",
    "Hop",
    "Office",
    "OfficePreferences",
    "Outcome",
    "Refuse",
    "Ring",
    "Target",
    "UriTarget",
    "UserTarget",
    "diversion_headers",
    "history_info_headers",
    "outcome_of",
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
_TARGET_KEYS = ("busy", "no_answer", "unavailable", "unconditional")
_GROUP_KEYS = {"number", "name", "members", "strategy", "ring_seconds"}


class Outcome(enum.Enum):
    """Why an attempt ended without an answer; the Diversion reason (RFC 5806)."""

    UNCONDITIONAL = "unconditional"
    BUSY = "user-busy"
    NO_ANSWER = "no-answer"
    UNAVAILABLE = "unavailable"
    DND = "do-not-disturb"

    @property
    def cause(self) -> int:
        """The RFC 4458 §3.4 cause: 486 busy, 408 no reply, 302, 404 not available."""
        return _CAUSES[self]


_CAUSES = {
    Outcome.UNCONDITIONAL: 302,
    Outcome.BUSY: 486,
    Outcome.NO_ANSWER: 408,
    Outcome.UNAVAILABLE: 404,
    Outcome.DND: 486,
}


def outcome_of(status: int, *, rang_out: bool) -> Outcome | None:
    """Classify a final non-2xx answer; None: pass it to the caller as it is.

    :param rang_out: our own no-answer timer ended the attempt.
    """
    if rang_out:
        return Outcome.NO_ANSWER
    if status in (486, 600):
        return Outcome.BUSY
    if status in (408, 480, 503):
        return Outcome.UNAVAILABLE
    return None


@dataclass(frozen=True, slots=True)
class Forwarding:
    """Where calls for one user (or group) go instead; "" means nowhere."""

    busy: str = ""
    no_answer: str = ""
    no_answer_seconds: float = DEFAULT_NO_ANSWER_SECONDS
    unavailable: str = ""
    unconditional: str = ""
    dnd: bool = False

    def target(self, outcome: Outcome) -> str:
        """The forwarding target for ``outcome``, or ""."""
        if outcome in (Outcome.BUSY, Outcome.DND):
            return self.busy
        if outcome is Outcome.NO_ANSWER:
            return self.no_answer
        if outcome is Outcome.UNAVAILABLE:
            return self.unavailable
        return self.unconditional

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

        :raises ConfigError: a member, extension or forwarding names no user, or
            a number or group name is also a user name.
        """
        for number, user in self.extensions.items():
            if user not in users:
                raise ConfigError(
                    f"extensions: {number!r} = {user!r}: {user!r} is not a user"
                    " in the users file"
                )
            if number in users:
                raise ConfigError(
                    f"extensions: {number!r} is also a user name in the users file"
                )
        names = {g.name for g in self.groups.values()}
        for group in self.groups.values():
            where = f"groups: {group.name!r}"
            if group.number in users:
                raise ConfigError(
                    f"{where}: number {group.number!r} is also a user name"
                )
            if group.name in users:
                raise ConfigError(f"{where}: the name is also a user name")
            for member in group.members:
                if member not in users:
                    raise ConfigError(
                        f"{where}: member {member!r} is not a user in the users file"
                    )
        office = replace(self, users=users)
        for name, forwarding in self.forwarding.items():
            if name not in users and name not in names:
                raise ConfigError(
                    f"forward.{name}: {name!r} is no user and no group name"
                )
            _check_targets(office, name, forwarding)
        return office


_NO_FORWARDING = Forwarding()


def parse_office(values: Mapping[str, Any]) -> Office:
    """Build the Office from the TOML sections; users are checked later.

    :param values: any of ``extensions``, ``groups``, ``forward`` and
        ``max-forward-depth`` as the TOML file gives them.
    :raises ConfigError: naming the entry that is wrong.
    """
    extensions = _extensions(values.get("extensions", {}))
    groups: dict[str, Group] = {}
    names: set[str] = set()
    raw_groups = values.get("groups", [])
    if not isinstance(raw_groups, list) or not all(
        isinstance(g, dict) for g in raw_groups
    ):
        raise ConfigError("groups: expected [[groups]] tables")
    for index, table in enumerate(raw_groups, 1):
        group = _group(index, table)
        if group.number in extensions or group.number in groups:
            raise ConfigError(
                f"groups: {group.name!r}: number {group.number!r} is used twice"
            )
        if group.name in names:
            raise ConfigError(f"groups: {group.name!r}: the name is used twice")
        names.add(group.name)
        groups[group.number] = group
    depth = values.get("max-forward-depth", DEFAULT_MAX_DEPTH)
    if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= 20:
        raise ConfigError(
            f"max-forward-depth = {depth!r}: expected a whole number from 1 to 20"
        )
    raw_forward = values.get("forward", {})
    if not isinstance(raw_forward, dict) or not all(
        isinstance(v, dict) for v in raw_forward.values()
    ):
        raise ConfigError("forward: expected [forward.NAME] tables")
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

    :raises ConfigError: an unknown key or a value of the wrong kind.
    """
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in FORWARD_KEYS:
            raise ConfigError(
                f"{where}: unknown key {key!r} (known: {', '.join(FORWARD_KEYS)})"
            )
        if key == "dnd":
            if not isinstance(value, bool):
                raise ConfigError(f"{where}.dnd = {value!r}: expected true or false")
        elif key == "no_answer_seconds":
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not 0 < value <= 600
            ):
                raise ConfigError(
                    f"{where}.no_answer_seconds = {value!r}: expected 0 < seconds"
                    " <= 600"
                )
            value = float(value)
        elif not isinstance(value, str):
            raise ConfigError(f"{where}.{key} = {value!r}: expected a string")
        values[key] = value
    return replace(base, **values)


def _extensions(raw: Any) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise ConfigError("extensions: expected a table of number = user")
    extensions: dict[str, str] = {}
    for number, user in raw.items():
        if not _NUMBER.match(number):
            raise ConfigError(
                f"extensions: {number!r} is not a number (digits, *, #, +)"
            )
        if not isinstance(user, str) or not _NAME.match(user):
            raise ConfigError(f"extensions: {number!r} = {user!r}: expected a user")
        extensions[number] = user
    return extensions


def _group(index: int, table: Mapping[str, Any]) -> Group:
    name = table.get("name")
    where = f"groups: {name!r}" if isinstance(name, str) else f"groups: entry {index}"
    unknown = set(table) - _GROUP_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f'{where}: name must be a word such as "sales"')
    number = table.get("number")
    if isinstance(number, int) and not isinstance(number, bool):
        number = str(number)
    if not isinstance(number, str) or not _NUMBER.match(number):
        raise ConfigError(f"{where}: number {number!r} is not a number")
    members = table.get("members")
    if (
        not isinstance(members, list)
        or not members
        or not all(isinstance(m, str) for m in members)
    ):
        raise ConfigError(f"{where}: members must be a non-empty list of users")
    if len(set(members)) != len(members):
        raise ConfigError(f"{where}: a member is listed twice")
    strategy = table.get("strategy", "parallel")
    if strategy not in ("parallel", "sequential"):
        raise ConfigError(f"{where}: strategy {strategy!r}: use parallel or sequential")
    seconds = table.get("ring_seconds", DEFAULT_RING_SECONDS)
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not 0 < seconds <= 600
    ):
        raise ConfigError(f"{where}: ring_seconds {seconds!r}: expected 0 < s <= 600")
    return Group(number, name, tuple(members), strategy, float(seconds))


def _check_targets(office: Office, name: str, forwarding: Forwarding) -> None:
    for key in _TARGET_KEYS:
        text = getattr(forwarding, key)
        if not text:
            continue
        try:
            office.target(text)
        except ValueError as error:
            raise ConfigError(f"forward.{name}.{key}: {error}") from None


def _name_of(target: Target) -> str | None:
    if isinstance(target, UserTarget):
        return target.name
    if isinstance(target, GroupTarget):
        return target.group.name
    return None


def _check_loops(office: Office) -> None:
    """Unconditional forwarding that comes back to where it started is refused."""
    for start in office.forwarding:
        chain = [start]
        name: str | None = start
        while name is not None:
            text = office.defaults(name).unconditional
            if not text:
                break
            name = _name_of(office.target(text))
            if name is None:
                break
            if name in chain:
                first = chain.index(name)
                loop = " -> ".join([*chain[first:], name])
                raise ConfigError(
                    f"forward.{chain[first]}.unconditional: forwarding loop {loop}"
                )
            chain.append(name)


# -- one call -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hop:
    """One retargeting: from ``uri`` for ``outcome`` (History-Info, Diversion)."""

    uri: str
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class Ring:
    """Ring these users now; end the attempt after ``seconds`` (None: never).

    ``newest_only``: each member's newest binding only (ring groups); otherwise
    every binding, as for a call to the user (the proxy's forking setting).
    """

    users: tuple[str, ...] = ()
    uri: str | None = None
    seconds: float | None = None
    newest_only: bool = False
    parallel: bool | None = None


@dataclass(frozen=True, slots=True)
class Forward:
    """Retarget the call to ``target`` (already resolved) for ``outcome``."""

    target: Target
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class Refuse:
    """Answer the caller with ``status``."""

    status: int
    reason: str | None = None


Step = Ring | Forward | Refuse


class CallPlan:
    """Decides, for one call, what to ring and where to go when nobody answers.

    No I/O: the caller looks up bindings and stored forwarding and reports each
    attempt's :class:`Outcome`. Sequence: :meth:`enter` a destination with its
    effective forwarding; it answers Ring, Forward or Refuse. After a Ring the
    caller reports :meth:`ended`, which answers another Ring (the next member of
    a sequential group), a Forward, a Refuse or None (pass the answer up). After
    a Forward the caller checks :meth:`retarget` (depth) and enters the target.
    """

    def __init__(self, office: Office, domain: str) -> None:
        """:param domain: the host of the Request-URI, for Diversion URIs."""
        self.office = office
        self.domain = domain
        self.hops: list[Hop] = []
        self.current: Target | None = None
        self.forwarding = _NO_FORWARDING
        self._waiting: list[str] = []
        self._outcomes: list[Outcome] = []

    def uri_of(self, target: Target) -> str:
        """The URI a target is called at (Diversion, History-Info, Request-URI)."""
        if isinstance(target, UriTarget):
            return target.uri
        if isinstance(target, GroupTarget):
            return f"sip:{target.group.number}@{self.domain}"
        return f"sip:{target.name}@{self.domain}"

    def name_of(self, target: Target) -> str | None:
        """The user or group name whose forwarding applies; None for a URI."""
        return _name_of(target)

    def enter(self, target: Target, forwarding: Forwarding) -> Step:
        """Start calling ``target`` whose effective forwarding is ``forwarding``."""
        self.current = target
        self.forwarding = forwarding
        self._outcomes = []
        if isinstance(target, UriTarget):
            return Ring(uri=target.uri)
        if forwarding.unconditional:
            return self._forward(forwarding.unconditional, Outcome.UNCONDITIONAL)
        if forwarding.dnd:
            if forwarding.busy:
                return self._forward(forwarding.busy, Outcome.DND)
            return Refuse(486, "Busy Here")
        if isinstance(target, GroupTarget):
            group = target.group
            if group.strategy == "parallel":
                return Ring(
                    group.members, seconds=group.ring_seconds, newest_only=True,
                    parallel=True,
                )  # fmt: skip
            self._waiting = list(group.members[1:])
            return Ring(group.members[:1], seconds=group.ring_seconds, newest_only=True)
        seconds = forwarding.no_answer_seconds if forwarding.no_answer else None
        return Ring((target.name,), seconds=seconds)

    def ended(self, outcome: Outcome | None) -> Step | None:
        """The current Ring ended unanswered; what next (None: pass it up)."""
        if outcome is not None:
            self._outcomes.append(outcome)
        if isinstance(self.current, UriTarget):
            return None
        if self._waiting:
            member = self._waiting.pop(0)
            assert isinstance(self.current, GroupTarget)
            return Ring(
                (member,), seconds=self.current.group.ring_seconds, newest_only=True
            )
        if isinstance(self.current, GroupTarget):
            # The whole group: nobody answered if anyone rang out, else busy if
            # anyone was busy, else nobody could be reached.
            outcome = next(
                (
                    o
                    for o in (Outcome.NO_ANSWER, Outcome.BUSY, Outcome.UNAVAILABLE)
                    if o in self._outcomes
                ),
                None,
            )
        if outcome is None:
            return None
        text = self.forwarding.target(outcome)
        if text:
            return self._forward(text, outcome)
        if outcome is Outcome.NO_ANSWER:
            # Our own CANCEL made the 487s; the caller hears nobody answered.
            return Refuse(480, "Temporarily Unavailable")
        return None

    def retarget(self, step: Forward) -> Refuse | None:
        """Record the hop away from the current target; 482 beyond the depth."""
        assert self.current is not None
        self.hops.append(Hop(self.uri_of(self.current), step.outcome))
        if len(self.hops) > self.office.max_depth:
            return Refuse(482, "Loop Detected")
        return None

    def _forward(self, text: str, outcome: Outcome) -> Step:
        try:
            return Forward(self.office.target(text), outcome)
        except ValueError:
            # A stored target whose user has since gone from the users file.
            return Refuse(480, "Temporarily Unavailable")


def diversion_headers(hops: Sequence[Hop]) -> list[str]:
    """Diversion values, the most recent first (RFC 5806 §4)."""
    return [
        f"<{hop.uri}>;reason={hop.outcome.value};counter=1" for hop in reversed(hops)
    ]


def history_info_headers(hops: Sequence[Hop], target_uri: str) -> list[str]:
    """History-Info entries (RFC 7044) for the chain ending at ``target_uri``.

    Each retargeted-from entry carries the Reason as an escaped header of its
    URI (RFC 7044 §4.2.1); each new target the RFC 4458 ``cause`` parameter and
    ``mp`` naming the entry it was mapped from (§9.1).
    """
    values = []
    index = "1"
    parent = ""
    for number, hop in enumerate(hops):
        reason = quote(f"SIP;cause={hop.outcome.cause}", safe="")
        uri = hop.uri if number == 0 else _with_cause(hop.uri, hops[number - 1])
        tail = f";mp={parent}" if parent else ""
        values.append(f"<{uri}?Reason={reason}>;index={index}{tail}")
        parent, index = index, f"{index}.1"
    if hops:
        uri = _with_cause(target_uri, hops[-1])
        values.append(f"<{uri}>;index={index};mp={parent}")
    return values


def _with_cause(uri: str, hop: Hop) -> str:
    return f"{uri};cause={hop.outcome.cause}"


# -- run-time settings, kept in the location store -----------------------------


class PreferenceStore(Protocol):
    """The part of a location store that keeps per-user preferences."""

    async def preferences(self, user: str) -> dict[str, Any]:
        """The stored preferences of ``user``; {} when none."""

    async def set_preferences(self, user: str, prefs: Mapping[str, Any]) -> None:
        """Replace the stored preferences of ``user``; {} deletes them."""


class OfficePreferences:
    """Forwarding and do-not-disturb set at run time: what an admin route calls.

    Precedence: a key stored here wins over the same key of the TOML
    ``[forward.NAME]`` table; a key never stored falls back to the TOML value.
    :meth:`reset` forgets the stored values, so the TOML applies again.
    """

    def __init__(self, office: Office, store: PreferenceStore) -> None:
        """Take the configuration (defaults) and the store (what was set)."""
        self.office = office
        self.store = store

    async def effective(self, name: str) -> Forwarding:
        """The forwarding that applies to a user or group now."""
        stored = await self.store.preferences(name)
        return self.office.defaults(name).merged(stored)

    async def set_forward(self, user: str, kind: str, target: str) -> Forwarding:
        """Set one forwarding of ``user``; return the effective forwarding.

        :param kind: busy, no_answer, unavailable or unconditional.
        :param target: a user, extension, group number, SIP URI, or "" (off).

        :raises ValueError: an unknown user, kind or target, or a forwarding loop.
        """
        self._check_user(user)
        if kind not in _TARGET_KEYS:
            raise ValueError(f"unknown forwarding {kind!r} (use {_TARGET_KEYS})")
        if target:
            self.office.target(target)
        if kind == "unconditional" and target:
            self._check_no_loop(user, target)
        return await self._update(user, {kind: target})

    async def set_no_answer_seconds(self, user: str, seconds: float) -> Forwarding:
        """How long ``user``'s phones ring before the no-answer forwarding."""
        self._check_user(user)
        forwarding_from({"no_answer_seconds": seconds}, f"forward.{user}")
        return await self._update(user, {"no_answer_seconds": float(seconds)})

    async def set_dnd(self, user: str, on: bool) -> Forwarding:
        """Turn do-not-disturb on or off for ``user``."""
        self._check_user(user)
        return await self._update(user, {"dnd": bool(on)})

    async def reset(self, user: str) -> Forwarding:
        """Forget what was set at run time; the TOML values apply again."""
        self._check_user(user)
        await self.store.set_preferences(user, {})
        return self.office.defaults(user)

    async def _update(self, user: str, change: Mapping[str, Any]) -> Forwarding:
        stored = {**await self.store.preferences(user), **change}
        await self.store.set_preferences(user, stored)
        return self.office.defaults(user).merged(stored)

    def is_user(self, name: str) -> bool:
        """Whether ``name`` is a user whose settings can be changed here."""
        users = self.office.users
        return users is None or name in users

    async def stored(self, name: str) -> dict[str, Any]:
        """The values set at run time for ``name`` (they win over the TOML)."""
        return await self.store.preferences(name)

    def _check_user(self, user: str) -> None:
        if not self.is_user(user):
            raise ValueError(f"{user!r} is not a user")

    def _check_no_loop(self, user: str, target: str) -> None:
        # Only the TOML chain is checked here; stored chains are caught per
        # call by the depth limit (482).
        chain = [user]
        name = _name_of(self.office.target(target))
        while name is not None and name not in chain:
            chain.append(name)
            text = self.office.defaults(name).unconditional
            name = _name_of(self.office.target(text)) if text else None
        if name is not None:
            raise ValueError(f"forwarding loop {' -> '.join([*chain, name])}")
