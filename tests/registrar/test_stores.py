"""A subset of the registrar rules over the SQLite store, and over memory alike."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from sipproxy.location import LocationService
from sipproxy.location.memory import MemoryLocationService
from sipproxy.location.sqlite import SQLiteLocationService
from sipproxy.registrar import RegistrarSettings
from tests.registrar.helpers import (
    ALICE,
    DOMAIN,
    NAT_FLOW,
    TCP_FLOW,
    Phone,
    contacts,
    header_values,
)

PHONE = "sip:alice@10.0.0.5:5060"
LAPTOP = "sip:alice@10.0.0.6:5060"


@pytest.fixture(params=["memory", "sqlite"])
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest_twisted.async_yield_fixture
async def location(store_kind: str, tmp_path: Path) -> AsyncIterator[LocationService]:
    """An opened store, closed after the test."""
    store: LocationService
    if store_kind == "memory":
        store = MemoryLocationService()
    else:
        store = SQLiteLocationService(str(tmp_path / "location.db"), reactor=reactor)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_two_contacts_are_listed(location: LocationService) -> None:
    """Two contacts in one REGISTER: both stored, both in the 200."""
    answer = await Phone(location).send(f"Contact: <{PHONE}>, <{LAPTOP}>;q=0.5")
    assert answer.status == 200
    assert header_values(answer, "Contact") == [
        f"<{PHONE}>;expires=3600",
        f"<{LAPTOP}>;q=0.5;expires=3600",
    ]
    assert contacts(await location.bindings(ALICE, now=1000.0)) == [PHONE, LAPTOP]


@pytest_twisted.ensureDeferred
async def test_expires_zero_removes_one(location: LocationService) -> None:
    """Expires 0 on one contact removes that binding only (RFC 3261 §10.3 step 7)."""
    phone = Phone(location)
    await phone.send(f"Contact: <{PHONE}>, <{LAPTOP}>")
    answer = await phone.send(f"Contact: <{LAPTOP}>", "Expires: 0")
    assert header_values(answer, "Contact") == [f"<{PHONE}>;expires=3600"]
    assert contacts(await location.bindings(ALICE, now=1000.0)) == [PHONE]


@pytest_twisted.ensureDeferred
async def test_star_removes_all(location: LocationService) -> None:
    """Contact: * with Expires: 0 removes every binding (RFC 3261 §10.3 step 6)."""
    phone = Phone(location)
    await phone.send(f"Contact: <{PHONE}>, <{LAPTOP}>")
    answer = await phone.send("Contact: *", "Expires: 0")
    assert answer.status == 200
    assert await location.bindings(ALICE, now=1000.0) == []


@pytest_twisted.ensureDeferred
async def test_out_of_order_cseq_changes_nothing(location: LocationService) -> None:
    """A stale CSeq on the same Call-ID is refused and the store is untouched."""
    phone = Phone(location)
    await phone.send(f"Contact: <{PHONE}>", cseq=10)
    before = await location.bindings(ALICE, now=1000.0)
    answer = await phone.send(f"Contact: <{PHONE}>;expires=0", cseq=9)
    assert (answer.status, answer.reason) == (400, "CSeq Out Of Order")
    assert await location.bindings(ALICE, now=1000.0) == before


@pytest_twisted.ensureDeferred
async def test_eviction_at_the_maximum(location: LocationService) -> None:
    """Beyond max_bindings the oldest binding goes, so a new phone gets in."""
    phone = Phone(location, RegistrarSettings(frozenset({DOMAIN}), max_bindings=2))
    for i in range(3):
        await phone.send(
            f"Contact: <sip:alice@10.0.0.{i}>", call_id=f"boot-{i}", now=1000.0 + i
        )
    found = await location.bindings(ALICE, now=1002.0)
    assert contacts(found) == ["sip:alice@10.0.0.2", "sip:alice@10.0.0.1"]


@pytest_twisted.ensureDeferred
async def test_the_flow_and_every_field_survive_the_store(
    location: LocationService,
) -> None:
    """What the 200 reports is what a later lookup reads back, flow included."""
    phone = Phone(location)
    answer = await phone.send(
        f'Contact: <{PHONE}>;q=0.25;+sip.instance="<urn:uuid:1>";reg-id=1;video',
        "Supported: outbound, path",
        "Path: <sip:edge.example.com;lr;ob>",
        "User-Agent: Phone/2",
        flow=TCP_FLOW,
    )
    assert answer.status == 200
    found = await location.bindings(ALICE, now=1000.0)
    assert list(answer.bindings) == found
    [binding] = found
    assert binding.flow == TCP_FLOW != NAT_FLOW
    assert (binding.reg_id, binding.path) == (1, ("<sip:edge.example.com;lr;ob>",))


@pytest_twisted.ensureDeferred
async def test_registrations_survive_a_restart(tmp_path: Path) -> None:
    """With SQLite, a binding answered 200 is found again after reopening the file."""
    path = str(tmp_path / "location.db")
    store = SQLiteLocationService(path, reactor=reactor)
    await store.open()
    answer = await Phone(store).send(f"Contact: <{PHONE}>", now=1000.0)
    await store.close()
    assert answer.status == 200

    again = SQLiteLocationService(path, reactor=reactor)
    await again.open()
    try:
        query = await Phone(again).send(now=1500.0)
        assert header_values(query, "Contact") == [f"<{PHONE}>;expires=3100"]
        assert list(query.bindings) == list(answer.bindings)
    finally:
        await again.close()
