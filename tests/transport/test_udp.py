"""The UDP socket's edge cases (sipproxy.transport.udp)."""

from __future__ import annotations

from typing import Any

from sipproxy.sip.addressing import Peer
from sipproxy.testing import FakeDatagramTransport
from sipproxy.transport.udp import SIPDatagramProtocol


class _Receiver:
    def message_received(self, *args: Any) -> None:
        raise AssertionError("nothing was received")

    def message_invalid(self, *args: Any) -> None:
        raise AssertionError("nothing was received")


def test_a_send_after_the_socket_closed_is_dropped_quietly() -> None:
    """A retransmission timer firing while the server stops raises nothing."""
    protocol = SIPDatagramProtocol(_Receiver())
    transport = FakeDatagramTransport()
    protocol.makeConnection(transport)
    to = Peer("UDP", "127.0.0.1", 5070)
    protocol.send(b"before", to)
    protocol.doStop()
    protocol.send(b"after", to)
    assert transport.written == [(b"before", ("127.0.0.1", 5070))]
