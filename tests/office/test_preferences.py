"""Forwarding and DND set at run time, over the TOML defaults."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred

from sipproxy.location.memory import MemoryLocationService
from sipproxy.office.model import (
    Forwarding,
)
from sipproxy.office.preferences import OfficePreferences
from tests.office.examples import VM, office
from tests.proxy.harness import run


def wait(coroutine: Any) -> Any:
    return run(coroutine)


def preferences(**extra: Any) -> tuple[OfficePreferences, MemoryLocationService]:
    store = MemoryLocationService()
    return OfficePreferences(office(**extra), store), store


def test_stored_values_win_key_by_key_over_the_toml() -> None:
    prefs, store = preferences(forward={"bob": {"busy": VM, "no_answer": VM}})
    wait(prefs.set_forward("bob", "busy", "101"))
    effective = wait(prefs.effective("bob"))
    assert (effective.busy, effective.no_answer) == ("101", VM)
    assert wait(store.preferences("bob")) == {"busy": "101"}
    wait(prefs.set_forward("bob", "no_answer", ""))
    assert wait(prefs.effective("bob")).no_answer == ""  # "" turns it off
    assert wait(prefs.reset("bob")) == Forwarding(busy=VM, no_answer=VM)
    assert wait(store.preferences("bob")) == {}


def test_dnd_and_seconds_are_stored() -> None:
    prefs, store = preferences()
    assert wait(prefs.set_dnd("carol", True)).dnd is True
    assert wait(prefs.set_no_answer_seconds("carol", 9)).no_answer_seconds == 9.0
    assert wait(store.preferences("carol")) == {"dnd": True, "no_answer_seconds": 9.0}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: p.set_forward("zed", "busy", VM), "'zed' is not a user"),
        (lambda p: p.set_forward("bob", "sometimes", VM), "unknown forwarding"),
        (lambda p: p.set_forward("bob", "busy", "999"), "no user, extension"),
        (lambda p: p.set_dnd("zed", True), "'zed' is not a user"),
        (lambda p: p.set_no_answer_seconds("bob", 0), "no_answer_seconds"),
        (lambda p: p.set_forward("bob", "unconditional", "102"), "forwarding loop"),
        (lambda p: p.set_forward("bob", "unconditional", "alice"), "forwarding loop"),
    ],
)
def test_bad_settings_are_refused(call: Any, message: str) -> None:
    prefs, store = preferences(forward={"alice": {"unconditional": "bob"}})
    failures: list[Any] = []
    Deferred.fromCoroutine(call(prefs)).addErrback(failures.append)
    assert len(failures) == 1
    assert message in str(failures[0].value)
    assert wait(store.preferences("bob")) == {}
