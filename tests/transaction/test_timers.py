"""Timer values (RFC 3261 §17, Table 4, with RFC 6026's L and M)."""

from __future__ import annotations

import pytest

from sipproxy.transaction.timers import Timers


def test_defaults_are_the_rfc_values() -> None:
    """T1 = 500 ms, T2 = 4 s, T4 = 5 s (RFC 3261 Table 4)."""
    timers = Timers()
    assert (timers.t1, timers.t2, timers.t4) == (0.5, 4.0, 5.0)


@pytest.mark.parametrize(
    ("name", "udp", "reliable"),
    [
        ("timer_a", 0.5, 0.5),
        ("timer_b", 32.0, 32.0),
        ("timer_d", 32.0, 0.0),
        ("timer_e", 0.5, 0.5),
        ("timer_f", 32.0, 32.0),
        ("timer_g", 0.5, 0.5),
        ("timer_h", 32.0, 32.0),
        ("timer_i", 5.0, 0.0),
        ("timer_j", 32.0, 0.0),
        ("timer_k", 5.0, 0.0),
        ("timer_l", 32.0, 32.0),
        ("timer_m", 32.0, 32.0),
    ],
)
def test_derived_timers(name: str, udp: float, reliable: float) -> None:
    """Each timer as Table 4 derives it; D, I, J, K are zero when reliable."""
    assert getattr(Timers(), name) == udp
    assert getattr(Timers().over(reliable=True), name) == reliable


def test_timer_c_is_more_than_three_minutes() -> None:
    """§16.6 step 11: Timer C "MUST be set [...] greater than 3 minutes"."""
    assert Timers().timer_c > 180


def test_timers_follow_t1() -> None:
    """Changing T1 moves every 64*T1 timer with it."""
    timers = Timers(t1=0.1)
    assert timers.timer_b == timers.timer_f == timers.timer_h == pytest.approx(6.4)
    assert timers.timer_l == timers.timer_m == pytest.approx(6.4)


def test_over_is_identity_for_same_transport() -> None:
    """The view for the transport it already describes is the same object."""
    timers = Timers()
    assert timers.over(reliable=False) is timers
    assert timers.over(reliable=True).reliable
