"""Socket helpers shared by the tests that use real sockets (integration, stores)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (loopback only)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port on 127.0.0.1")
