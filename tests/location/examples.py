"""Bindings for the location tests, plain unless a test says otherwise."""

from __future__ import annotations

import dataclasses
from typing import Any

from sipproxy.location import Binding, Flow

ALICE = "sip:alice@example.com"
BOB = "sip:bob@example.com"
UDP = Flow("udp", "192.0.2.10", 5060, "198.51.100.7", 40123)


def binding(
    contact: str,
    *,
    aor: str = ALICE,
    registered_at: float = 100,
    expires_at: float = 3700,
    **fields: Any,
) -> Binding:
    """A binding of ``aor`` with everything not given set to something plain."""
    return dataclasses.replace(
        Binding(
            aor=aor,
            contact=contact,
            expires_at=expires_at,
            registered_at=registered_at,
            call_id="a84b4c76e66710@pc33.example.com",
            cseq=1,
            flow=UDP,
        ),
        **fields,
    )
