"""Binding identity and time left, and the store specs of the configuration."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import reactor

from sipproxy.location.memory import MemoryLocationService
from sipproxy.location.redis import RedisLocationService
from sipproxy.location.spec import location_from_spec
from sipproxy.location.sqlite import SQLiteLocationService
from tests.location.examples import binding


def test_key_is_the_contact_without_outbound() -> None:
    """A plain binding is replaced by the same contact (RFC 3261 §10.3 step 7)."""
    assert binding("sip:a@192.0.2.1").key == "sip:a@192.0.2.1"
    assert binding("sip:a@192.0.2.1", instance_id="<urn:x>").key == "sip:a@192.0.2.1"
    assert binding("sip:a@192.0.2.1", reg_id=1).key == "sip:a@192.0.2.1"


def test_key_is_instance_and_reg_id_with_outbound() -> None:
    """An outbound binding is replaced by the same instance and reg-id (RFC 5626)."""
    found = binding("sip:a@192.0.2.1", instance_id="<urn:uuid:1>", reg_id=2)
    assert found.key == "<urn:uuid:1>;reg-id=2"


@pytest.mark.parametrize(
    ("expires_at", "now", "remaining"),
    [
        (3700, 100, 3600),
        (1_700_003_600.1, 1_700_000_000.1, 3600),  # float noise is not 3599
        (200, 199.7, 1),  # alive: never reported as expires=0
        (200, 200, 0),
        (200, 500, 0),  # never negative
    ],
)
def test_remaining_seconds(expires_at: float, now: float, remaining: int) -> None:
    """remaining() is what a 200 puts in the Contact expires (RFC 3261 §10.3)."""
    assert binding("sip:a@1", expires_at=expires_at).remaining(now) == remaining


@pytest.mark.parametrize(
    ("spec", "kind", "fields"),
    [
        ("memory:", MemoryLocationService, {}),
        ("MEMORY:", MemoryLocationService, {}),
        ("sqlite:location.db", SQLiteLocationService, {"path": "location.db"}),
        ("sqlite:/var/lib/s/l.db", SQLiteLocationService, {"path": "/var/lib/s/l.db"}),
        ("sqlite:./a b.db", SQLiteLocationService, {"path": "./a b.db"}),
        (
            "redis://localhost",
            RedisLocationService,
            {"host": "localhost", "port": 6379, "db": 0, "prefix": "sipproxy:"},
        ),
        (
            "redis://10.0.0.5:6380/3",
            RedisLocationService,
            {"host": "10.0.0.5", "port": 6380, "db": 3},
        ),
        ("redis://[::1]:7000/", RedisLocationService, {"host": "::1", "port": 7000}),
        ("redis://[::1]/2", RedisLocationService, {"host": "::1", "db": 2}),
        ("redis://h/1?prefix=edge:", RedisLocationService, {"prefix": "edge:"}),
        ("redis://:s3cret@h:6379/0", RedisLocationService, {"_password": "s3cret"}),
    ],
)
def test_spec_makes_the_store(spec: str, kind: type, fields: dict[str, Any]) -> None:
    """Each spec form gives its store, configured as written."""
    store = location_from_spec(spec, reactor)
    assert isinstance(store, kind)
    for name, value in fields.items():
        assert getattr(store, name) == value


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "memory",
        "memory:x",
        "postgres://h/db",
        "sqlite:",
        "sqlite://tmp/x.db",
        "redis:",
        "redis:h:6379",
        "redis://",
        "redis://:6379/0",
        "redis://h:notaport/0",
        "redis://h:99999/0",
        "redis://h:6379/x",
        "redis://h:6379/0/1",
        "redis://h/-1",
        "redis://h/0?timeout=3",
        "redis://h/0#frag",
        "redis://[::1/0",
    ],
)
def test_bad_specs_are_refused_by_name(spec: str) -> None:
    """A malformed spec raises ValueError quoting it, for a one-line CLI error."""
    with pytest.raises(ValueError, match="bad location spec") as caught:
        location_from_spec(spec, reactor)
    assert repr(spec) in str(caught.value)
