"""Abuse defences: rate limit, brute-force bans, connection limits, the fail2ban filter.

Every test passes ``now`` explicitly: no sleeps, no clock.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from sipproxy.guard import (
    BanList,
    ConnectionLimiter,
    RateLimiter,
    TrustedNetworks,
    ban_line,
    source_key,
)

ROOT = Path(__file__).resolve().parent.parent
FILTER = ROOT / "etc" / "fail2ban" / "filter.d" / "sipproxy.conf"
JAIL = ROOT / "etc" / "fail2ban" / "jail.d" / "sipproxy.conf"
OFFICE = "203.0.113.10"
ATTACKER = "192.0.2.66"


def address(i: int) -> str:
    """The i-th of 16 million distinct IPv4 addresses."""
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def allowed(limiter: RateLimiter, source: str, count: int, now: float) -> int:
    return sum(limiter.allow(source, now) for _ in range(count))


# RateLimiter


def test_a_new_source_gets_the_whole_burst_then_nothing() -> None:
    """A source may send ``burst`` requests at once; the next one is refused."""
    limiter = RateLimiter(rate=10, burst=5)
    assert allowed(limiter, ATTACKER, 5, now=100.0) == 5
    assert not limiter.allow(ATTACKER, 100.0)


def test_the_bucket_refills_at_rate() -> None:
    """Tokens come back at ``rate`` a second: 0.3 s at 10/s buys 3 requests."""
    limiter = RateLimiter(rate=10, burst=5)
    allowed(limiter, ATTACKER, 5, now=100.0)
    assert allowed(limiter, ATTACKER, 10, now=100.3) == 3
    assert not limiter.allow(ATTACKER, 100.35)  # half a token is not a request
    assert limiter.allow(ATTACKER, 100.4)


def test_the_bucket_never_holds_more_than_burst() -> None:
    """After a long silence a source has ``burst`` tokens, not more."""
    limiter = RateLimiter(rate=10, burst=5)
    limiter.allow(ATTACKER, 0.0)
    assert allowed(limiter, ATTACKER, 100, now=10_000.0) == 5


def test_a_flooding_source_does_not_affect_another() -> None:
    """One source sending 100,000 requests a second leaves another's bucket alone."""
    limiter = RateLimiter()
    flood = 0
    for step in range(100):
        now = step / 100
        flood += allowed(limiter, ATTACKER, 1000, now)
        assert limiter.allow(OFFICE, now)
    assert flood <= limiter.burst + limiter.rate * 1.0
    assert allowed(limiter, OFFICE, 500, now=1.0) == 500


def test_a_clock_stepping_back_neither_refills_nor_drains() -> None:
    """``now`` going backwards leaves the bucket as it was."""
    limiter = RateLimiter(rate=10, burst=2)
    assert allowed(limiter, ATTACKER, 2, now=100.0) == 2
    assert not limiter.allow(ATTACKER, 50.0)
    assert limiter.allow(ATTACKER, 100.1)


def test_200_sources_sending_2_requests_at_once_are_all_allowed() -> None:
    """200 phones with their own addresses, challenged once each: 400 requests pass."""
    limiter = RateLimiter()
    phones = [address(i) for i in range(200)]
    assert all(limiter.allow(phone, 5.0) for phone in phones for _ in range(2))


def test_an_office_of_200_phones_behind_one_nat_is_never_limited() -> None:
    """200 phones x (REGISTER, challenged REGISTER, a retransmission) at once pass.

    The defaults admit 600 requests from one address in the same instant.
    """
    limiter = RateLimiter()
    assert allowed(limiter, OFFICE, 200 * 3, now=50.0) == 600


def test_an_office_of_200_phones_within_one_second_is_never_limited() -> None:
    """The same 600 requests spread over one second pass, with room to spare."""
    limiter = RateLimiter()
    for i in range(600):
        assert limiter.allow(OFFICE, 50.0 + i / 600)
    # ... and a second storm a minute later (phones retrying) passes as well.
    assert allowed(limiter, OFFICE, 600, now=110.0) == 600


def test_rate_limiter_memory_stays_bounded_under_a_million_sources() -> None:
    """1,000,000 distinct sources never grow the table beyond ``max_sources``."""
    limiter = RateLimiter(max_sources=1000)
    for i in range(1_000_000):
        assert limiter.allow(address(i), i / 1000)
        assert len(limiter) <= 1000
    assert len(limiter) == 1000


def test_a_busy_source_survives_a_flood_of_new_sources() -> None:
    """Eviction takes the least recently used bucket: a flooder keeps its empty one."""
    limiter = RateLimiter(rate=1, burst=3, max_sources=10)
    assert allowed(limiter, ATTACKER, 3, now=0.0) == 3
    for i in range(1000):
        limiter.allow(address(i), 0.0)
        assert not limiter.allow(ATTACKER, 0.0)


def test_forgetting_an_idle_bucket_changes_nothing() -> None:
    """A source idle for burst/rate seconds has a full bucket, remembered or not."""
    limiter = RateLimiter(rate=1, burst=3, max_sources=1)
    allowed(limiter, ATTACKER, 3, now=0.0)
    limiter.allow(OFFICE, 3.0)  # evicts ATTACKER, whose bucket is full again
    assert allowed(limiter, ATTACKER, 5, now=3.0) == 3


@pytest.mark.parametrize(
    ("rate", "burst", "max_sources"), [(0, 10, 10), (1, 0.5, 10), (1, 10, 0)]
)
def test_rate_limiter_refuses_nonsense(
    rate: float, burst: float, max_sources: int
) -> None:
    with pytest.raises(ValueError, match="must be"):
        RateLimiter(rate, burst, max_sources=max_sources)


# BanList


def test_n_failures_within_the_window_ban_the_source() -> None:
    """The 10th failure within 60 s bans the address, and says so once."""
    bans = BanList()
    results = [bans.failed(ATTACKER, 1000.0 + i) for i in range(10)]
    assert results == [False] * 9 + [True]
    assert bans.is_banned(ATTACKER, 1010.0)
    assert not bans.failed(ATTACKER, 1011.0)  # already banned: no second log line


def test_svcrack_is_banned_at_once_and_others_are_unaffected() -> None:
    """A cracker firing 10 guesses in 50 ms is banned; other addresses are not."""
    bans = BanList()
    banned_at = next(i for i in range(100) if bans.failed(ATTACKER, 7.0 + i * 0.005))
    assert banned_at == 9
    assert bans.is_banned(ATTACKER, 8.0)
    assert not bans.is_banned(OFFICE, 8.0)
    assert not bans.failed(OFFICE, 8.0)


def test_n_failures_spread_over_more_than_the_window_do_not_ban() -> None:
    """One failure every 7 s (a phone retrying a wrong password) never bans."""
    bans = BanList()
    assert not any(bans.failed(OFFICE, i * 7.0) for i in range(1000))
    assert not bans.is_banned(OFFICE, 7000.0)


def test_failures_exactly_a_window_apart_do_not_count_together() -> None:
    """The window is sliding: the first failure leaves it after ``window`` seconds."""
    bans = BanList(max_failures=3, window=60.0)
    assert not bans.failed(ATTACKER, 0.0)
    assert not bans.failed(ATTACKER, 30.0)
    assert not bans.failed(ATTACKER, 60.0)  # the one at 0 has left the window
    assert bans.failed(ATTACKER, 61.0)


def test_a_ban_ends_after_ban_time() -> None:
    """A ban lasts ``ban_time`` seconds; then the address starts with a clean slate."""
    bans = BanList(max_failures=2, ban_time=600.0)
    bans.failed(ATTACKER, 0.0)
    assert bans.failed(ATTACKER, 1.0)
    assert bans.is_banned(ATTACKER, 600.9)
    assert not bans.is_banned(ATTACKER, 601.0)
    assert bans.bans(601.0) == []
    assert not bans.failed(ATTACKER, 602.0)  # one failure, not three


def test_bans_lists_the_bans_in_force_soonest_end_first() -> None:
    bans = BanList(max_failures=1, ban_time=100.0)
    bans.failed("192.0.2.1", 10.0)
    bans.failed("192.0.2.2", 20.0)
    bans.failed("192.0.2.3", 30.0)
    assert bans.bans(15.0) == [
        ("192.0.2.1", 110.0),
        ("192.0.2.2", 120.0),
        ("192.0.2.3", 130.0),
    ]
    assert bans.bans(115.0) == [("192.0.2.2", 120.0), ("192.0.2.3", 130.0)]
    assert bans.bans(200.0) == []


def test_lift_ends_a_ban_at_once() -> None:
    """An operator lifts a ban; lifting an address that is not banned says so."""
    bans = BanList(max_failures=1)
    bans.failed(ATTACKER, 0.0)
    assert bans.lift(ATTACKER)
    assert not bans.is_banned(ATTACKER, 1.0)
    assert not bans.lift(ATTACKER)
    assert not bans.lift(OFFICE)


def test_an_office_of_200_phones_with_right_passwords_is_never_banned() -> None:
    """200 phones behind one NAT register at once: the challenges are no failures.

    Each phone's first REGISTER is answered with 401 (nothing recorded), the second
    authenticates (``succeeded``). Nothing ever counts against the address.
    """
    bans = BanList()
    for phone in range(200):
        assert not bans.is_banned(OFFICE, 100.0)
        bans.succeeded(OFFICE, 100.0, user=f"{1000 + phone}")
    assert not bans.is_banned(OFFICE, 100.0)
    assert len(bans) == 0


def test_a_success_forgives_the_same_users_failures() -> None:
    """A user who mistyped a password 9 times and then got it right starts afresh."""
    bans = BanList()
    for i in range(9):
        bans.failed(OFFICE, float(i), user="alice")
    bans.succeeded(OFFICE, 9.0, user="alice")
    assert not any(bans.failed(OFFICE, 10.0 + i, user="alice") for i in range(9))


def test_a_success_does_not_forgive_other_users_failures() -> None:
    """An attacker with a valid account cannot reset the count of guesses at others."""
    bans = BanList()
    for i in range(9):
        bans.failed(ATTACKER, float(i), user="alice")
        bans.succeeded(ATTACKER, float(i), user="mallory")
    bans.succeeded(ATTACKER, 9.0)  # no user: nothing forgiven
    assert bans.failed(ATTACKER, 9.5, user="alice")


def test_spraying_one_guess_at_many_users_is_banned() -> None:
    """Failures count per address, whatever the user: 1 guess at each of 10 bans."""
    bans = BanList()
    results = [bans.failed(ATTACKER, 1.0, user=f"{100 + i}") for i in range(10)]
    assert results[-1]


def test_an_exempt_network_is_never_banned() -> None:
    """An office listed in ``exempt`` cannot lock itself out, whatever its phones do."""
    bans = BanList(exempt=["203.0.113.0/24", "2001:db8::1"])
    assert not any(bans.failed(OFFICE, 0.0) for _ in range(100))
    assert not any(bans.failed("2001:db8::1", 0.0) for _ in range(100))
    assert not bans.is_banned(OFFICE, 0.0)
    assert any(bans.failed(ATTACKER, 0.0) for _ in range(10))
    assert not bans.failed("not an address", 0.0)  # counted, not exempt, no crash


def test_failure_memory_stays_bounded_under_a_million_sources() -> None:
    """1,000,000 sources failing once each never grow the tables beyond the bound."""
    bans = BanList(max_sources=1000)
    for i in range(1_000_000):
        bans.failed(address(i), i / 100_000, user="x" * 1000)
    assert len(bans) <= 1000


def test_ban_memory_stays_bounded_under_a_million_sources() -> None:
    """1,000,000 banned sources keep at most ``max_sources`` bans, the newest."""
    bans = BanList(max_failures=1, max_sources=1000)
    for i in range(1_000_000):
        assert bans.failed(address(i), 5.0)
        assert len(bans) <= 1000
    assert bans.is_banned(address(999_999), 5.0)
    assert not bans.is_banned(address(0), 5.0)


def test_a_flood_of_new_failures_does_not_forget_a_ban_in_progress() -> None:
    """The failures table evicts least recently failed; bans live in their own table."""
    bans = BanList(max_failures=2, max_sources=10)
    bans.failed(ATTACKER, 0.0)
    assert bans.failed(ATTACKER, 0.0)
    for i in range(1000):
        assert not bans.failed(address(i), 0.5)
    assert bans.is_banned(ATTACKER, 1.0)
    assert len(bans) <= 11


@pytest.mark.parametrize(
    "kwargs",
    [{"max_failures": 0}, {"window": 0.0}, {"ban_time": -1.0}, {"max_sources": 0}],
)
def test_ban_list_refuses_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        BanList(**kwargs)  # type: ignore[arg-type]


# ConnectionLimiter


def test_connections_beyond_the_limit_are_refused() -> None:
    limits = ConnectionLimiter(max_per_source=3)
    assert [limits.opened(ATTACKER) for _ in range(5)] == [True] * 3 + [False] * 2
    assert limits.count(ATTACKER) == 3
    assert limits.opened(OFFICE)  # another source is not affected


def test_a_closed_connection_makes_room() -> None:
    limits = ConnectionLimiter(max_per_source=2)
    limits.opened(ATTACKER)
    limits.opened(ATTACKER)
    limits.closed(ATTACKER)
    assert limits.opened(ATTACKER)
    assert not limits.opened(ATTACKER)


def test_closing_everything_forgets_the_source() -> None:
    """Memory follows open connections; an unknown close does nothing."""
    limits = ConnectionLimiter()
    limits.opened(ATTACKER)
    limits.closed(ATTACKER)
    limits.closed(ATTACKER)
    limits.closed(OFFICE)
    assert len(limits) == 0
    assert limits.count(ATTACKER) == 0


def test_an_office_reconnecting_after_an_outage_is_not_refused() -> None:
    """200 phones behind one NAT open new connections while 200 stale ones linger."""
    limits = ConnectionLimiter()
    assert all(limits.opened(OFFICE) for _ in range(2 * 200))


def test_connection_limiter_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="must be"):
        ConnectionLimiter(0)


def test_the_total_cap_refuses_every_source_once_reached() -> None:
    """Issue 13: many sources together cannot hold more than max_total open."""
    limits = ConnectionLimiter(max_per_source=2, max_total=3)
    assert limits.opened("192.0.2.1")
    assert limits.opened("192.0.2.2")
    assert limits.opened("192.0.2.3")
    assert limits.full
    assert not limits.opened("192.0.2.4")
    assert limits.total == 3
    limits.closed("192.0.2.1")
    assert not limits.full
    assert limits.opened("192.0.2.4")


def test_an_unknown_close_does_not_lower_the_total() -> None:
    limits = ConnectionLimiter(max_total=1)
    limits.opened(ATTACKER)
    limits.closed(OFFICE)
    assert limits.total == 1
    assert not limits.opened(OFFICE)


def test_connection_limiter_refuses_a_zero_total() -> None:
    with pytest.raises(ValueError, match="max_total"):
        ConnectionLimiter(max_total=0)


# IPv6 sources by /64, trusted networks


@pytest.mark.parametrize(
    ("source", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("[2001:db8:1:2::9]", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("not-an-address", "not-an-address"),
    ],
)
def test_source_key_groups_ipv6_by_64(source: str, key: str) -> None:
    """One IPv6 subscriber (a /64) is one source; IPv4 stays per address."""
    assert source_key(source) == key


def test_two_addresses_of_one_64_share_a_bucket() -> None:
    """Issue 13: rotating through a /64 earns no fresh tokens."""
    limiter = RateLimiter(rate=1, burst=10)
    assert allowed(limiter, "2001:db8::1", 6, now=0) == 6
    assert allowed(limiter, "2001:db8::ffff:2", 6, now=0) == 4
    assert allowed(limiter, "2001:db8:0:1::1", 6, now=0) == 6  # another /64


def test_two_ipv4_addresses_do_not_share_a_bucket() -> None:
    limiter = RateLimiter(rate=1, burst=2)
    assert allowed(limiter, "192.0.2.1", 3, now=0) == 2
    assert allowed(limiter, "192.0.2.2", 3, now=0) == 2


def test_failures_from_one_64_ban_the_whole_64() -> None:
    """Issue 13: guesses spread over a /64 add up, and the ban covers it all."""
    bans = BanList(max_failures=4)
    results = [bans.failed(f"2001:db8::{i}", float(i)) for i in range(1, 5)]
    assert results == [False, False, False, True]
    assert bans.is_banned("2001:db8::abcd", 5.0)
    assert not bans.is_banned("2001:db8:0:1::1", 5.0)
    # Listed (and logged) by the address that completed the count.
    assert bans.bans(5.0) == [("2001:db8::4", 604.0)]


def test_failures_from_different_64s_do_not_add_up() -> None:
    bans = BanList(max_failures=2)
    assert not bans.failed("2001:db8::1", 0.0)
    assert not bans.failed("2001:db8:0:1::1", 0.0)
    assert not bans.is_banned("2001:db8::1", 1.0)


def test_a_64_ban_is_lifted_by_any_of_its_addresses_or_its_name() -> None:
    bans = BanList(max_failures=1)
    bans.failed("2001:db8::1", 0.0)
    assert bans.lift("2001:db8::77")
    bans.failed("2001:db8::1", 0.0)
    assert bans.lift("2001:db8::/64")
    assert not bans.is_banned("2001:db8::1", 1.0)


def test_a_success_forgives_across_the_64() -> None:
    """The user's failures are counted per /64, so a success forgives them there."""
    bans = BanList(max_failures=3)
    bans.failed("2001:db8::1", 0.0, user="alice")
    bans.failed("2001:db8::1", 1.0, user="alice")
    bans.succeeded("2001:db8::2", 2.0, user="alice")
    assert not bans.failed("2001:db8::3", 3.0, user="alice")
    assert not bans.failed("2001:db8::3", 4.0, user="alice")


def test_connections_from_one_64_count_together() -> None:
    limits = ConnectionLimiter(max_per_source=2)
    assert limits.opened("2001:db8::1")
    assert limits.opened("2001:db8::2")
    assert not limits.opened("2001:db8::3")
    assert limits.opened("2001:db8:0:1::1")
    limits.closed("2001:db8::1")
    assert limits.count("2001:db8::3") == 1


@pytest.mark.parametrize(
    ("entries", "ip", "trusted"),
    [
        (["192.0.2.7"], "192.0.2.7", True),
        (["192.0.2.7"], "192.0.2.8", False),
        (["198.51.100.0/24"], "198.51.100.200", True),
        (["198.51.100.9/24"], "198.51.100.200", True),  # host bits ignored
        (["198.51.100.0/24"], "198.51.101.1", False),
        (["198.51.100.0/24"], "::ffff:198.51.100.1", True),
        (["2001:db8::/48"], "2001:db8:0:ffff::1", True),
        (["2001:db8::/48"], "[2001:db8::1]", True),
        (["2001:db8::1"], "2001:db8::2", False),
        (["192.0.2.7"], "not-an-ip", False),
        ([], "192.0.2.7", False),
    ],
)
def test_trusted_networks_membership(
    entries: list[str], ip: str, trusted: bool
) -> None:
    """--trusted entries are networks (a single address is a /32 or /128)."""
    assert (ip in TrustedNetworks(entries)) is trusted


def test_trusted_networks_reload_in_place() -> None:
    """Whoever holds the object sees a reload; a bad entry changes nothing."""
    trusted = TrustedNetworks(["192.0.2.0/24"])
    bans = BanList(exempt=trusted)
    trusted.reload(["198.51.100.0/24"])
    assert "198.51.100.1" in bans.exempt
    assert "192.0.2.1" not in trusted
    with pytest.raises(ValueError, match="nonsense"):
        trusted.reload(["203.0.113.0/24", "nonsense"])
    assert "198.51.100.1" in trusted
    assert "203.0.113.1" not in trusted


def test_trusted_networks_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="nonsense"):
        TrustedNetworks(["nonsense"])


def test_ban_list_takes_trusted_networks_as_exempt() -> None:
    """One representation: the BanList exempts exactly what TrustedNetworks holds."""
    trusted = TrustedNetworks(["203.0.113.0/24"])
    bans = BanList(max_failures=1, exempt=trusted)
    assert bans.exempt is trusted
    assert not bans.failed(OFFICE, 0.0)
    assert bans.failed(ATTACKER, 0.0)


# The ban log line and the fail2ban filter

LOG_LINE = "2024-05-01T12:00:00+0000 [sipproxy.proxy.core.Proxy#warn] " + ban_line(
    "192.0.2.7", 10, 600.0
)


def failregex() -> re.Pattern[str]:
    """The filter's failregex with <HOST> as fail2ban turns it into a group."""
    config = configparser.ConfigParser(interpolation=None)
    config.read(FILTER)
    # The first line matches twistd's text lines; the second, JSON lines
    # (tested in tests/test_operations.py).
    pattern = config["Definition"]["failregex"].strip().splitlines()[0]
    return re.compile(pattern.replace("<HOST>", r"(?P<host>\S+)"))


def test_ban_line_is_one_line_with_address_time_and_failures() -> None:
    assert ban_line("192.0.2.7", 10, 600.0) == (
        "sipproxy: banned 192.0.2.7 for 600 s after 10 failed authentications"
    )
    assert ban_line("2001:db8::7", 12, 599.6) == (
        "sipproxy: banned 2001:db8::7 for 600 s after 12 failed authentications"
    )


@pytest.mark.parametrize(
    ("prefix", "host"),
    [
        ("[sipproxy.proxy.core.Proxy#warn] ", "192.0.2.7"),
        ("[SIPDatagramProtocol (UDP)] ", "2001:db8::7"),
        ("", "198.51.100.1"),
        (" ", "198.51.100.1"),
    ],
)
def test_the_filter_matches_the_ban_line(prefix: str, host: str) -> None:
    """What remains of a log line once fail2ban has cut the time stamp matches."""
    match = failregex().search(prefix + ban_line(host, 10, 600.0))
    assert match is not None
    assert match["host"] == host


@pytest.mark.parametrize(
    "text",
    [
        "[x#info] REGISTER from 192.0.2.1 User-Agent: "
        + ban_line("198.51.100.1", 10, 600),
        "\t" + ban_line("198.51.100.1", 10, 600),  # a continuation line
        "[x#info] " + ban_line("198.51.100.1", 10, 600) + " (user-supplied tail)",
    ],
)
def test_the_filter_ignores_injected_text(text: str) -> None:
    """Text an attacker gets into another log line cannot ban an address."""
    assert failregex().search(text) is None


def fail2ban_tool(name: str) -> str:
    tool = shutil.which(name)
    if tool is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is missing (apt-get install fail2ban)")
        pytest.skip(f"{name} is not installed (apt-get install fail2ban)")
    return tool


def test_fail2ban_regex_matches_the_ban_line_and_nothing_else(tmp_path: Path) -> None:
    """fail2ban itself finds the banned address in a twistd log, and only there."""
    tool = fail2ban_tool("fail2ban-regex")
    log = tmp_path / "sipproxy.log"
    log.write_text(
        LOG_LINE + "\n"
        "2024-05-01T12:00:01+0000 [x#info] hello\n"
        "\t" + ban_line("198.51.100.1", 10, 600) + "\n"
        "2024-05-01T12:00:02+0000 [x#info] UA: "
        + ban_line("198.51.100.2", 10, 600)
        + "\n"
    )
    result = subprocess.run(
        [tool, "--print-all-matched", str(log), str(FILTER)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "4 lines, 0 ignored, 1 matched, 3 missed" in result.stdout, result.stdout
    assert "198.51.100" not in result.stdout.split("Missed line")[0]


def test_fail2ban_accepts_the_jail(tmp_path: Path) -> None:
    """The example jail and filter pass ``fail2ban-client -t`` with the stock ones."""
    tool = fail2ban_tool("fail2ban-client")
    stock = Path("/etc/fail2ban")
    if not (stock / "jail.conf").exists():
        pytest.skip("no stock fail2ban configuration in /etc/fail2ban")
    config = tmp_path / "fail2ban"
    shutil.copytree(stock, config)
    for site in (config / "jail.d").iterdir():
        site.unlink()
    shutil.copy(FILTER, config / "filter.d" / "sipproxy.conf")
    shutil.copy(JAIL, config / "jail.d" / "sipproxy.conf")
    log = tmp_path / "sipproxy.log"
    log.write_text(LOG_LINE + "\n")
    (config / "jail.d" / "sipproxy.local").write_text(f"[sipproxy]\nlogpath = {log}\n")
    result = subprocess.run(
        [tool, "-c", str(config), "-t"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    dump = subprocess.run(
        [tool, "-c", str(config), "-d"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "['set', 'sipproxy', 'maxretry', 1]" in dump
    assert "['protocol', 'udp']" in dump
    assert "['protocol', 'tcp']" in dump
    assert "--dports 5060,5061" in dump
