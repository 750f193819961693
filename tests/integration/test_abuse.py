"""Abuse from outside: a flooding source loses its excess, others are served."""

from __future__ import annotations

import contextlib
import socket
import time

import pytest

from tests.integration.conftest import RunningServer, options_request, status_of
from tests.integration.test_registrations import contacts, register

pytestmark = pytest.mark.integration


def test_one_flooding_source_does_not_starve_another(server: RunningServer) -> None:
    """A bounded flood from 127.0.0.2 is cut to its rate; 127.0.0.1 registers."""
    flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flood.bind(("127.0.0.2", 0))
    flood.setblocking(False)
    answered = 0
    try:
        started = time.monotonic()
        for number in range(5000):  # bounded in count, and below in time
            request = options_request("sip:example.test", call_id=f"flood-{number}")
            with contextlib.suppress(BlockingIOError):
                flood.sendto(request, ("127.0.0.1", server.port))
            if time.monotonic() - started > 10:
                break
        # Meanwhile a phone on another address registers and is answered at once.
        begin = time.monotonic()
        reply = register(server.port, "erin", contact="<sip:erin@127.0.0.1:5077>")
        assert status_of(reply) == 200
        assert time.monotonic() - begin < 2
        assert [c.split(";")[0] for c in contacts(reply)] == [
            "<sip:erin@127.0.0.1:5077>"
        ]
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            try:
                flood.recv(65536)
                answered += 1
            except BlockingIOError:
                time.sleep(0.01)
    finally:
        flood.close()
    # The flooder got at most its burst (600) and refill (100/s), not all 5000.
    elapsed = time.monotonic() - started
    assert 0 < answered <= 600 + 100 * elapsed + 10
