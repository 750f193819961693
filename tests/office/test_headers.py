"""Diversion (RFC 5806) and History-Info (RFC 7044) of a forwarded call."""

from __future__ import annotations

from urllib.parse import unquote

from sipproxy.office.headers import diversion_headers, history_info_headers
from sipproxy.office.plan import (
    AttemptOutcome,
    Hop,
)
from tests.office.examples import VM


def test_diversion_newest_first_rfc_5806() -> None:
    hops = [
        Hop("sip:alice@example.test", AttemptOutcome.UNCONDITIONAL),
        Hop("sip:bob@example.test", AttemptOutcome.BUSY),
    ]
    assert diversion_headers(hops) == [
        "<sip:bob@example.test>;reason=user-busy;counter=1",
        "<sip:alice@example.test>;reason=unconditional;counter=1",
    ]


def test_history_info_has_reason_cause_index_and_mp_rfc_7044() -> None:
    hops = [Hop("sip:bob@example.test", AttemptOutcome.NO_ANSWER)]
    values = history_info_headers(hops, VM)
    assert values == [
        "<sip:bob@example.test?Reason=SIP%3Bcause%3D408>;index=1",
        f"<{VM};cause=408>;index=1.1;mp=1",
    ]
    assert unquote(values[0]).endswith("Reason=SIP;cause=408>;index=1")
    assert history_info_headers([], VM) == []
