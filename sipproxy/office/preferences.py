"""Forwarding and do-not-disturb set at run time, over the TOML defaults.

Per-user values set at run time are kept in the location store, through its
:class:`~sipproxy.location.OfficePreferencesStore` side, so they survive a
restart; a value stored there wins over the TOML value of the same key, which
is the default.
:class:`OfficePreferences` is the programmatic API an admin route calls.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sipproxy.location import OfficePreferencesStore
from sipproxy.office.model import (
    TARGET_KEYS,
    Forwarding,
    Office,
    forwarding_from,
    name_of,
)

__all__ = ["OfficePreferences"]


class OfficePreferences:
    """Forwarding and do-not-disturb set at run time: what an admin route calls.

    Precedence: a key stored here wins over the same key of the TOML
    ``[forward.NAME]`` table; a key never stored falls back to the TOML value.
    :meth:`reset` forgets the stored values, so the TOML applies again.
    """

    def __init__(self, office: Office, store: OfficePreferencesStore) -> None:
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
        if kind not in TARGET_KEYS:
            raise ValueError(f"unknown forwarding {kind!r} (use {TARGET_KEYS})")
        if target:
            self.office.target(target)
        if kind == "unconditional" and target:
            self._check_no_loop(user, target)
        return await self._update(user, {kind: target})

    async def set_no_answer_seconds(self, user: str, seconds: float) -> Forwarding:
        """How long ``user``'s phones ring before the no-answer forwarding.

        :raises ValueError: an unknown user, or seconds not in (0, 600].
        """
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
        name = name_of(self.office.target(target))
        while name is not None and name not in chain:
            chain.append(name)
            text = self.office.defaults(name).unconditional
            name = name_of(self.office.target(text)) if text else None
        if name is not None:
            raise ValueError(f"forwarding loop {' -> '.join([*chain, name])}")
