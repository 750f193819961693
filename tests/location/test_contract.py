"""The behaviour every location store shares, run against memory, SQLite and Redis."""

from __future__ import annotations

import pytest_twisted

from sipproxy.location import Binding, Flow, LocationService
from tests.location.examples import ALICE, BOB, binding


def contacts(found: list[Binding]) -> list[str]:
    return [b.contact for b in found]


@pytest_twisted.ensureDeferred
async def test_newest_binding_comes_first(location: LocationService) -> None:
    """bindings() lists the most recently registered contact first."""
    await location.update(ALICE, save=[binding("sip:a@192.0.2.1")], now=100)
    await location.update(
        ALICE, save=[binding("sip:a@192.0.2.2", registered_at=200)], now=200
    )
    found = await location.bindings(ALICE, now=300)
    assert contacts(found) == ["sip:a@192.0.2.2", "sip:a@192.0.2.1"]


@pytest_twisted.ensureDeferred
async def test_same_time_orders_by_q_then_contact(location: LocationService) -> None:
    """Bindings registered together come highest q first, then by contact."""
    save = [
        binding("sip:a@192.0.2.3", q=0.5),
        binding("sip:a@192.0.2.2", q=1.0),
        binding("sip:a@192.0.2.1", q=0.5),
    ]
    found = await location.update(ALICE, save=save, now=100)
    expected = ["sip:a@192.0.2.2", "sip:a@192.0.2.1", "sip:a@192.0.2.3"]
    assert contacts(found) == expected
    assert contacts(await location.bindings(ALICE, now=100)) == expected


@pytest_twisted.ensureDeferred
async def test_saving_the_same_contact_replaces_it(location: LocationService) -> None:
    """A refresh of a contact replaces its binding (RFC 3261 §10.3 step 7)."""
    await location.update(ALICE, save=[binding("sip:a@192.0.2.1", cseq=1)], now=100)
    refreshed = binding("sip:a@192.0.2.1", cseq=2, registered_at=200, expires_at=3800)
    found = await location.update(ALICE, save=[refreshed], now=200)
    assert found == [refreshed]
    assert await location.bindings(ALICE, now=200) == [refreshed]


@pytest_twisted.ensureDeferred
async def test_outbound_binding_is_replaced_by_instance_and_reg_id(
    location: LocationService,
) -> None:
    """A phone re-registering from a new address replaces its flow (RFC 5626 §6)."""
    instance = "<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>"
    old = binding("sip:a@192.0.2.1", instance_id=instance, reg_id=1)
    other_flow = binding("sip:a@192.0.2.1", instance_id=instance, reg_id=2)
    await location.update(ALICE, save=[old, other_flow], now=100)
    new = binding(
        "sip:a@203.0.113.9", instance_id=instance, reg_id=1, registered_at=200
    )
    found = await location.update(ALICE, save=[new], now=200)
    assert found == [new, other_flow]
    assert new.key == f"{instance};reg-id=1"


@pytest_twisted.ensureDeferred
async def test_remove_deletes_by_key(location: LocationService) -> None:
    """Expires: 0 on one contact removes that binding only (RFC 3261 §10.3 step 7)."""
    save = [binding("sip:a@192.0.2.1"), binding("sip:a@192.0.2.2")]
    await location.update(ALICE, save=save, now=100)
    found = await location.update(ALICE, remove=["sip:a@192.0.2.1"], now=110)
    assert contacts(found) == ["sip:a@192.0.2.2"]
    assert contacts(await location.bindings(ALICE, now=110)) == ["sip:a@192.0.2.2"]


@pytest_twisted.ensureDeferred
async def test_remove_of_an_unknown_key_is_harmless(location: LocationService) -> None:
    """Removing what is not there changes nothing and raises nothing."""
    await location.update(ALICE, save=[binding("sip:a@192.0.2.1")], now=100)
    found = await location.update(ALICE, remove=["sip:nobody@192.0.2.9"], now=100)
    assert contacts(found) == ["sip:a@192.0.2.1"]
    assert await location.update(BOB, remove=["sip:b@192.0.2.1"], now=100) == []


@pytest_twisted.ensureDeferred
async def test_update_removes_then_saves_and_returns_the_result(
    location: LocationService,
) -> None:
    """One update removes first, then saves, and returns the bindings after both."""
    await location.update(
        ALICE,
        save=[binding("sip:a@192.0.2.1"), binding("sip:a@192.0.2.2")],
        now=100,
    )
    again = binding("sip:a@192.0.2.1", registered_at=150, cseq=5)
    found = await location.update(
        ALICE,
        save=[again, binding("sip:a@192.0.2.3", registered_at=150)],
        remove=["sip:a@192.0.2.1", "sip:a@192.0.2.2"],
        now=150,
    )
    assert contacts(found) == ["sip:a@192.0.2.1", "sip:a@192.0.2.3"]
    assert found[0] == again
    assert await location.bindings(ALICE, now=150) == found


@pytest_twisted.ensureDeferred
async def test_update_of_one_aor_leaves_others_alone(location: LocationService) -> None:
    """Bindings belong to their address-of-record only."""
    await location.update(ALICE, save=[binding("sip:a@192.0.2.1")], now=100)
    bob = binding("sip:b@192.0.2.1", aor=BOB)
    await location.update(BOB, save=[bob], now=100)
    await location.update(ALICE, remove=["sip:a@192.0.2.1"], now=100)
    assert await location.bindings(ALICE, now=100) == []
    assert await location.bindings(BOB, now=100) == [bob]


@pytest_twisted.ensureDeferred
async def test_expired_bindings_are_invisible_before_any_purge(
    location: LocationService,
) -> None:
    """A binding is gone at its expiry, for every read (RFC 3261 §10.2.1.1)."""
    save = [
        binding("sip:a@192.0.2.1", expires_at=200),
        binding("sip:a@192.0.2.2", expires_at=300),
    ]
    await location.update(ALICE, save=save, now=100)
    assert contacts(await location.bindings(ALICE, now=199.5)) == [
        "sip:a@192.0.2.1",
        "sip:a@192.0.2.2",
    ]
    assert contacts(await location.bindings(ALICE, now=200)) == ["sip:a@192.0.2.2"]
    assert await location.aors(now=250) == [ALICE]
    assert await location.bindings(ALICE, now=300) == []
    assert await location.aors(now=300) == []
    assert await location.update(ALICE, now=300) == []


@pytest_twisted.ensureDeferred
async def test_saving_an_expired_binding_removes_it(location: LocationService) -> None:
    """A binding saved with no time left is deleted, never stored as lasting."""
    await location.update(ALICE, save=[binding("sip:a@192.0.2.1")], now=100)
    lapsed = binding("sip:a@192.0.2.1", registered_at=500, expires_at=500)
    assert await location.update(ALICE, save=[lapsed], now=500) == []
    assert await location.bindings(ALICE, now=100) == []
    assert await location.aors(now=100) == []


@pytest_twisted.ensureDeferred
async def test_purge_deletes_expired_bindings(location: LocationService) -> None:
    """purge() deletes what has expired, and only that."""
    await location.update(
        ALICE,
        save=[
            binding("sip:a@192.0.2.1", expires_at=200),
            binding("sip:a@192.0.2.2", expires_at=400),
        ],
        now=100,
    )
    await location.update(
        BOB, save=[binding("sip:b@192.0.2.1", aor=BOB, expires_at=150)], now=100
    )
    assert await location.purge(now=100) == 0
    assert await location.purge(now=250) == 2
    assert await location.purge(now=250) == 0
    # Looking back in time shows the purged bindings are really gone.
    assert contacts(await location.bindings(ALICE, now=100)) == ["sip:a@192.0.2.2"]
    assert await location.bindings(BOB, now=100) == []
    assert await location.aors(now=100) == [ALICE]


@pytest_twisted.ensureDeferred
async def test_purge_stops_at_its_limit(location: LocationService) -> None:
    """purge(limit=n) deletes at most n bindings; the next call carries on."""
    save = [binding(f"sip:a@192.0.2.{i}", expires_at=200) for i in range(3)]
    await location.update(ALICE, save=save, now=100)
    assert await location.purge(now=300, limit=2) == 2
    assert await location.purge(now=300, limit=2) == 1
    assert await location.purge(now=300, limit=2) == 0
    assert await location.bindings(ALICE, now=100) == []


@pytest_twisted.ensureDeferred
async def test_remove_aor_removes_every_binding(location: LocationService) -> None:
    """Contact: * removes all bindings of the AOR (RFC 3261 §10.3 step 6)."""
    save = [
        binding("sip:a@192.0.2.1"),
        binding("sip:a@192.0.2.2"),
        binding("sip:a@192.0.2.3", expires_at=150),
    ]
    await location.update(ALICE, save=save, now=100)
    await location.update(BOB, save=[binding("sip:b@h", aor=BOB)], now=100)
    assert await location.remove_aor(ALICE, now=200) == 2
    assert await location.bindings(ALICE, now=100) == []
    assert await location.aors(now=200) == [BOB]
    assert await location.remove_aor(ALICE, now=200) == 0


@pytest_twisted.ensureDeferred
async def test_aors_lists_each_live_aor_once_sorted(location: LocationService) -> None:
    """aors() is sorted, without duplicates, and only with unexpired bindings."""
    carol = "sip:carol@example.com"
    await location.update(
        BOB, save=[binding("sip:b@1", aor=BOB), binding("sip:b@2", aor=BOB)], now=100
    )
    await location.update(ALICE, save=[binding("sip:a@1")], now=100)
    await location.update(carol, save=[binding("sip:c@1", expires_at=150)], now=100)
    assert await location.aors(now=100) == [ALICE, BOB, carol]
    assert await location.aors(now=150) == [ALICE, BOB]
    assert await location.bindings("sip:nobody@example.com", now=100) == []


@pytest_twisted.ensureDeferred
async def test_every_field_survives_the_store(location: LocationService) -> None:
    """What is saved comes back equal, flow, parameters and Path included."""
    full = Binding(
        aor=ALICE,
        contact="sip:alice@[2001:db8::1]:5070;transport=tcp;ob",
        expires_at=1_700_003_600.123456,
        registered_at=1_700_000_000.654321,
        call_id="843817637684230@998sdasdh09",
        cseq=2**31 - 1,
        flow=Flow(
            "tls",
            "2001:db8::10",
            5061,
            "2001:db8::1",
            49152,
            connection_id="tls-42",
            owner="sip:127.0.0.1:5062;transport=tcp",
        ),
        q=0.25,
        params=(
            ("+sip.instance", '"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>"'),
            ("reg-id", "1"),
            ("unknownparam", None),
            ("+sip.pttaccept", ""),
        ),
        user_agent="Softphone Beta1.5 ünï",
        path=("<sip:edge1.example.net;lr>", "<sip:edge2.example.net;lr;ob>"),
        instance_id="<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>",
        reg_id=1,
    )
    plain = binding(
        "sip:alice@192.0.2.4", registered_at=1_600_000_000, expires_at=1_700_000_001
    )
    assert await location.update(ALICE, save=[full, plain], now=1_700_000_000) == [
        full,
        plain,
    ]
    assert await location.bindings(ALICE, now=1_700_000_000) == [full, plain]


@pytest_twisted.ensureDeferred
async def test_escaped_nul_contacts_are_distinct(location: LocationService) -> None:
    """sip:%00@... and sip:%00%00@... are two bindings (RFC 4475 §3.1.1.6, escnull)."""
    aor = "sip:null-user@example.com"
    one = binding("sip:%00@host5.example.com", aor=aor)
    two = binding("sip:%00%00@host5.example.com", aor=aor)
    await location.update(aor, save=[one, two], now=100)
    found = await location.bindings(aor, now=100)
    assert sorted(contacts(found)) == [
        "sip:%00%00@host5.example.com",
        "sip:%00@host5.example.com",
    ]


@pytest_twisted.ensureDeferred
async def test_unicode_aor_and_contact(location: LocationService) -> None:
    """Non-ASCII text in the AOR, contact and key round-trips unchanged."""
    aor = "sip:jérôme@例え.example.com"
    contact = "sip:jérôme@192.0.2.1;x-note=日本"
    saved = binding(contact, aor=aor, params=(("x-note", "日本"),))
    assert await location.update(aor, save=[saved], now=100) == [saved]
    assert await location.bindings(aor, now=100) == [saved]
    assert await location.aors(now=100) == [aor]
    assert await location.update(aor, remove=[contact], now=100) == []


@pytest_twisted.ensureDeferred
async def test_numeric_looking_text_stays_text(location: LocationService) -> None:
    """Values that look like numbers are not turned into numbers by any store."""
    aor = "sip:1234@example.com"
    saved = binding("1234", aor=aor, call_id="5678", user_agent="1e3")
    assert await location.update(aor, save=[saved], now=100) == [saved]
    assert await location.bindings(aor, now=100) == [saved]
