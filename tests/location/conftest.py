"""Fixtures for the location store tests: a real redis-server, and each store opened."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from sipproxy.location import LocationStore
from sipproxy.location.memory import MemoryLocationService
from sipproxy.location.redis import RedisLocationService
from sipproxy.location.sqlite import SQLiteLocationService
from tests.support import free_port

STORES = ["memory", "sqlite", "redis"]


def _wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"redis-server exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except OSError:
            time.sleep(0.05)
        else:
            return
    pytest.fail(f"redis-server did not listen on port {port} within 10 s")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A throwaway redis-server on a free loopback port; yields the port.

    Skipped without redis-server on PATH, except under CI=true, where a missing
    server must not pass as a green run.
    """
    executable = shutil.which("redis-server")
    if executable is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not on PATH, and CI=true forbids skipping")
        pytest.skip("redis-server is not on PATH")
    port = free_port()
    directory = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [
            *(executable, "--port", str(port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", "--dir", str(directory)),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, process)
        yield port
    finally:
        process.kill()
        process.wait()


def redis_store(port: int, prefix: str) -> RedisLocationService:
    """A store on the test server under ``prefix``, not yet opened."""
    return RedisLocationService(port=port, prefix=prefix, reactor=reactor)


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix of its own, so tests sharing the server never see each other."""
    return f"test-{uuid.uuid4().hex}:"


@pytest.fixture(params=STORES)
def store_kind(request: pytest.FixtureRequest) -> str:
    """Which store the contract test runs against."""
    kind: str = request.param
    if kind == "redis":
        request.getfixturevalue("redis_server")
    return kind


@pytest_twisted.async_yield_fixture
async def location(
    store_kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[LocationStore]:
    """An opened store of each kind, closed after the test."""
    store: LocationStore
    if store_kind == "memory":
        store = MemoryLocationService()
    elif store_kind == "sqlite":
        store = SQLiteLocationService(str(tmp_path / "location.db"), reactor=reactor)
    else:
        port = request.getfixturevalue("redis_server")
        store = redis_store(port, request.getfixturevalue("redis_prefix"))
    await store.open()
    try:
        yield store
    finally:
        await store.close()
