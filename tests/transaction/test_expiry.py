"""One reactor call for many timers of one length (Timers J and K)."""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock

from sipproxy.transaction.expiry import Expiry


def test_entries_expire_in_order_on_one_call() -> None:
    """Each entry goes once its delay has passed; one call is armed meanwhile."""
    clock = MemoryReactorClock()
    gone: list[str] = []
    expiry = Expiry[str](clock, 5.0, gone.append, resolution=0)
    expiry.add("a")
    clock.advance(1.5)
    expiry.add("b")
    assert (len(expiry), len(clock.getDelayedCalls())) == (2, 1)
    clock.advance(3.5)
    assert gone == ["a"]
    clock.advance(1.5)
    assert gone == ["a", "b"]
    assert (len(expiry), clock.getDelayedCalls()) == (0, [])


def test_a_bucket_shares_one_expiry_rounded_up() -> None:
    """Entries within one resolution go together at its end, never early."""
    clock = MemoryReactorClock()
    gone: list[int] = []
    expiry = Expiry[int](clock, 5.0, gone.append, resolution=1.0)
    for n in range(4):
        clock.advance(0.25)
        expiry.add(n)  # 5.25 .. 6.0: all in the bucket ending at 6
    clock.advance(4.99)  # at 5.99
    assert gone == []
    clock.advance(0.01)
    assert gone == [0, 1, 2, 3]
    assert clock.getDelayedCalls() == []


def test_the_limit_forgets_the_oldest_first() -> None:
    """Over ``limit`` the oldest entry is forgotten at once."""
    clock = MemoryReactorClock()
    gone: list[int] = []
    expiry = Expiry[int](clock, 5.0, gone.append, limit=2)
    for n in range(4):
        expiry.add(n)
    assert (gone, len(expiry)) == ([0, 1], 2)
    clock.advance(5.0)
    assert gone == [0, 1, 2, 3]
    assert clock.getDelayedCalls() == []


def test_adding_after_it_emptied_arms_again() -> None:
    """A quiet spell disarms the call; the next entry arms it again."""
    clock = MemoryReactorClock()
    gone: list[int] = []
    expiry = Expiry[int](clock, 5.0, gone.append)
    expiry.add(1)
    clock.advance(10.0)
    assert clock.getDelayedCalls() == []
    expiry.add(2)
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(5.0)
    assert gone == [1, 2]
