"""From a --cdr string to a store: the forms, the auto default, and redaction."""

from __future__ import annotations

import re

import pytest
import pytest_twisted
from twisted.internet import reactor

from sipproxy.cdr.jsonl import JSONLinesCallRecordStore
from sipproxy.cdr.null import NullCallRecordStore
from sipproxy.cdr.redis import RedisCallRecordStore
from sipproxy.cdr.spec import cdr_from_spec, default_cdr_spec
from sipproxy.cdr.sqlite import SQLiteCallRecordStore
from tests.cdr.examples import T0, call

MEMORY = "memory:"


def test_none_keeps_nothing() -> None:
    assert isinstance(
        cdr_from_spec("none", reactor, location=MEMORY), NullCallRecordStore
    )
    assert isinstance(
        cdr_from_spec("NONE", reactor, location=MEMORY), NullCallRecordStore
    )


def test_file_stores() -> None:
    jsonl = cdr_from_spec("jsonl:/var/log/cdr.jsonl", reactor, location=MEMORY)
    assert isinstance(jsonl, JSONLinesCallRecordStore)
    assert (jsonl.path, jsonl.live_path) == (
        "/var/log/cdr.jsonl",
        "/var/log/cdr.jsonl.live.json",
    )
    sqlite = cdr_from_spec("sqlite:cdr.db", reactor, location=MEMORY)
    assert isinstance(sqlite, SQLiteCallRecordStore)
    assert sqlite.path == "cdr.db"


def test_redis() -> None:
    store = cdr_from_spec(
        "redis://:s3cret@[::1]:6380/2?prefix=pbx:", reactor, location=MEMORY
    )
    assert isinstance(store, RedisCallRecordStore)
    assert (store.host, store.port, store.db, store.prefix) == ("::1", 6380, 2, "pbx:")
    assert "s3cret" not in repr(store)
    default = cdr_from_spec("redis://127.0.0.1", reactor, location=MEMORY)
    assert isinstance(default, RedisCallRecordStore)
    assert (default.port, default.db, default.prefix) == (6379, 0, "sipproxy:")


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("memory:", "none"),
        (
            "sqlite:/var/lib/sipproxy/location.db",
            "sqlite:/var/lib/sipproxy/location-cdr.sqlite",
        ),
        ("sqlite:loc.sqlite", "sqlite:loc-cdr.sqlite"),
        ("sqlite:var/loc", "sqlite:var/loc-cdr.sqlite"),
        (
            "redis://:pw@10.0.0.1:6379/1?prefix=a:",
            "redis://:pw@10.0.0.1:6379/1?prefix=a:",
        ),
    ],
)
def test_the_auto_default_follows_the_location(location: str, expected: str) -> None:
    """Sqlite gets a file of its own beside the bindings; redis the same server."""
    assert default_cdr_spec(location) == expected


def test_auto_and_empty_use_the_default() -> None:
    for spec in ("", "auto", "AUTO"):
        store = cdr_from_spec(spec, reactor, location="sqlite:/tmp/x/loc.db")
        assert isinstance(store, SQLiteCallRecordStore)
        assert store.path == "/tmp/x/loc-cdr.sqlite"
    redis = cdr_from_spec("auto", reactor, location="redis://h:7000/3?prefix=p:")
    assert isinstance(redis, RedisCallRecordStore)
    assert (redis.host, redis.port, redis.db, redis.prefix) == ("h", 7000, 3, "p:")
    assert isinstance(cdr_from_spec("", reactor, location=MEMORY), NullCallRecordStore)


@pytest.mark.parametrize(
    "spec",
    [
        "nowhere",
        "none:x",
        "file:/tmp/cdr",
        "jsonl:",
        "sqlite:",
        "sqlite://tmp/cdr",
        "redis:/host",
        "redis://",
        "redis://host:notaport",
        "redis://host/zero",
        "redis://host/0?db=1",
        "redis://host/0#x",
    ],
)
def test_malformed_specs_are_refused_quoting_them(spec: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"bad CDR spec {spec!r}")):
        cdr_from_spec(spec, reactor, location=MEMORY)


@pytest.mark.parametrize(
    "spec",
    ["redis://:hunter2@host:notaport/0", "redis://user:hunter2@host/zero"],
)
def test_errors_never_show_the_password(spec: str) -> None:
    with pytest.raises(ValueError, match="bad CDR spec") as raised:
        cdr_from_spec(spec, reactor, location=MEMORY)
    assert "hunter2" not in str(raised.value)
    assert "***@host" in str(raised.value)


def test_an_unknown_location_has_no_default() -> None:
    with pytest.raises(ValueError, match="no CDR default") as raised:
        cdr_from_spec("auto", reactor, location="redis:/:hunter2@x")
    with pytest.raises(ValueError, match="no CDR default") as raised:
        cdr_from_spec("auto", reactor, location="bogus://:hunter2@x")
    assert "hunter2" not in str(raised.value)


@pytest_twisted.ensureDeferred
async def test_the_null_store_keeps_nothing() -> None:
    store = cdr_from_spec("none", reactor, location=MEMORY)
    await store.open()
    await store.add(call())
    await store.keep_live("p1:d1", call(end=None))
    await store.drop_live("p1:d1")
    assert await store.query(limit=10) == []
    assert await store.close_lost("p1", T0) == []
    await store.close()
