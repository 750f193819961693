"""The office used by the office tests: two extensions and a ring group."""

from __future__ import annotations

from typing import Any

from sipproxy.office.model import Office, parse_office

USERS = frozenset({"alice", "bob", "carol"})
VM = "sip:vm@127.0.0.1:5070"
BASE: dict[str, Any] = {
    "extensions": {"101": "alice", "102": "bob"},
    "groups": [{"number": "200", "name": "sales", "members": ["alice", "bob"]}],
}


def office(**extra: Any) -> Office:
    return parse_office({**BASE, **extra}).with_users(USERS)
