"""Authentication at the trust boundary, on fakes (issue 13, items 4, 8 and 12).

A failure counts towards a ban only if its nonce was issued to the sender's
address; our credentials are consumed; challenges are not retransmitted; an
outsider cannot tell unknown users from unregistered ones.
"""

from __future__ import annotations

import itertools

from sipproxy.auth.digest import Authenticator, compute_response
from sipproxy.auth.ha1 import compute_ha1
from sipproxy.auth.htdigest import UserDB
from sipproxy.guard import BanList
from sipproxy.sip.message import Request, Response
from tests.proxy.harness import ALICE, BOB, Harness, invite

REALM = "example.test"
MALLORY = ("198.51.100.66", 5070)
_branches = itertools.count(1)


def secured(*, max_failures: int = 3) -> Harness:
    """A harness with users alice and bob, digest on, and a ban list."""
    h = Harness(known_users=frozenset({"sip:carol@example.test"}))
    users = UserDB(
        REALM,
        {
            user: {a: compute_ha1(user, REALM, pw, a) for a in ("MD5", "SHA-256")}
            for user, pw in {"alice": "wonderland", "bob": "builder"}.items()
        },
    )
    h.proxy.identity.auth = Authenticator(REALM, users, b"n" * 32)
    h.proxy.identity.bans = BanList(max_failures=max_failures)
    return h


def from_(where: tuple[str, int], data: bytes) -> bytes:
    """``data`` as sent from ``where``: its Via names that address."""
    return data.replace(
        f"{ALICE[0]}:{ALICE[1]}".encode(), f"{where[0]}:{where[1]}".encode()
    )


def request_to(
    user: str, where: tuple[str, int], *, extra: str = "", uri: str | None = None
) -> bytes:
    """A new INVITE from alice (a new transaction each time) sent from ``where``."""
    n = next(_branches)
    data = from_(
        where,
        invite(user, call_id=f"c{n}", branch=f"z9hG4bKt{n}", extra=extra),
    )
    if uri is not None:
        data = data.replace(f"INVITE sip:{user}@example.test".encode(), uri.encode())
    return data


def nonce_for(h: Harness, where: tuple[str, int]) -> str:
    """The nonce of the 407 a round trip from ``where`` gets."""
    h.receive(request_to("bob", where), where)
    challenge = [m for m in h.sent_to(where) if isinstance(m, Response)][-1]
    assert challenge.status == 407
    value = challenge.headers.get("proxy-authenticate") or ""
    return value.split('nonce="')[1].split('"')[0]


def credentials(
    nonce: str, password: str, *, uri: str = "sip:bob@example.test", realm: str = REALM
) -> str:
    ha1 = compute_ha1("alice", realm, password, "MD5")
    response = compute_response(
        ha1, algorithm="MD5", method="INVITE", uri=uri, nonce=nonce,
        qop="auth", nc="00000001", cnonce="c0ffee",
    )  # fmt: skip
    return (
        f'Proxy-Authorization: Digest username="alice", realm="{realm}", '
        f'nonce="{nonce}", uri="{uri}", response="{response}", algorithm=MD5, '
        'qop=auth, nc=00000001, cnonce="c0ffee"\r\n'
    )


def statuses(messages: list[Request | Response]) -> list[int]:
    return [m.status for m in messages if isinstance(m, Response)]


def test_a_nonce_we_never_issued_does_not_count() -> None:
    """Garbage nonces from a (spoofable) address never get it banned (item 4)."""
    h = secured()
    for _ in range(10):
        forged = credentials("x" * 43, "guess")
        h.receive(request_to("bob", MALLORY, extra=forged), MALLORY)
        assert statuses(h.sent_to(MALLORY)) == [407]
    assert h.proxy.identity.bans is not None
    assert not h.proxy.identity.bans.is_banned(MALLORY[0], h.clock.seconds())


def test_a_nonce_issued_to_another_address_does_not_count() -> None:
    """A nonce fetched from one address and used from another is not counted."""
    h = secured()
    stolen = nonce_for(h, ALICE)
    for _ in range(10):
        extra = credentials(stolen, "guess")
        h.receive(request_to("bob", MALLORY, extra=extra), MALLORY)
        assert statuses(h.sent_to(MALLORY)) == [407]
    assert h.proxy.identity.bans is not None
    assert not h.proxy.identity.bans.is_banned(MALLORY[0], h.clock.seconds())
    # Neither is the nonce burnt for the address it was issued to.
    h.register("bob", BOB)
    h.receive(request_to("bob", ALICE, extra=credentials(stolen, "wonderland")), ALICE)
    assert len(h.sent_to(BOB)) == 1


def test_wrong_answers_to_our_own_nonces_ban_the_guesser() -> None:
    """Each wrong answer to a nonce issued to that address counts (svcrack)."""
    h = secured(max_failures=3)
    for _ in range(3):
        nonce = nonce_for(h, MALLORY)
        h.receive(
            request_to("bob", MALLORY, extra=credentials(nonce, "guess")), MALLORY
        )
    assert h.proxy.identity.bans is not None
    assert h.proxy.identity.bans.is_banned(MALLORY[0], h.clock.seconds())


def test_one_nonce_serves_one_guess() -> None:
    """After a wrong answer, guesses on its nonce are neither tried nor counted.

    Each guess costs a new round trip (issue 13, "one nonce serves every guess").
    """
    h = secured(max_failures=2)
    nonce = nonce_for(h, MALLORY)
    for password in ("guess", "guess2", "guess3", "wonderland"):
        h.receive(
            request_to("bob", MALLORY, extra=credentials(nonce, password)), MALLORY
        )
        assert statuses(h.sent_to(MALLORY)) == [407]
    assert h.proxy.identity.bans is not None
    assert not h.proxy.identity.bans.is_banned(MALLORY[0], h.clock.seconds())


def test_a_digest_uri_naming_another_resource_gets_400() -> None:
    """RFC 2617 §3.2.2.5: 400, naming the problem; not counted as a failure."""
    h = secured(max_failures=1)
    nonce = nonce_for(h, ALICE)
    extra = credentials(nonce, "wonderland", uri="sip:bob@127.0.0.1:5060")
    h.receive(request_to("bob", ALICE, extra=extra), ALICE)
    [refusal] = [m for m in h.sent_to(ALICE) if isinstance(m, Response)]
    assert refusal.status == 400
    assert "Digest URI" in refusal.reason
    assert h.proxy.identity.bans is not None
    assert not h.proxy.identity.bans.is_banned(ALICE[0], h.clock.seconds())


def test_an_equivalent_digest_uri_is_accepted() -> None:
    """§19.1.4: host case and parameter order do not make another resource."""
    h = secured()
    h.register("bob", BOB)
    nonce = nonce_for(h, ALICE)
    extra = credentials(nonce, "wonderland", uri="sip:bob@EXAMPLE.TEST;x=1")
    h.receive(
        request_to("bob", ALICE, extra=extra, uri="INVITE sip:bob@example.test;x=1"),
        ALICE,
    )
    assert len(h.sent_to(BOB)) == 1


def test_our_credentials_are_not_forwarded_others_are() -> None:
    """RFC 3261 §22.3: we consume our realm's credentials, keep other realms'."""
    h = secured()
    h.register("bob", BOB)
    nonce = nonce_for(h, ALICE)
    theirs = credentials("their-nonce", "x", realm="trunk.example")
    h.receive(
        request_to("bob", ALICE, extra=credentials(nonce, "wonderland") + theirs),
        ALICE,
    )
    [forwarded] = h.sent_to(BOB)
    assert isinstance(forwarded, Request)
    values = forwarded.headers.get_all("proxy-authorization")
    assert len(values) == 1
    assert 'realm="trunk.example"' in values[0]
    assert REALM not in str(forwarded.headers.get_all("authorization"))


def test_a_challenge_to_an_invite_is_sent_once() -> None:
    """No Timer G for a 407 to an unauthenticated INVITE (item 12).

    A retransmitted INVITE gets the same 407 again.
    """
    h = secured()
    data = request_to("bob", MALLORY)
    h.receive(data, MALLORY)
    h.clock.advance(5)
    assert statuses(h.sent_to(MALLORY)) == [407]
    h.receive(data, MALLORY)
    [again] = h.sent_to(MALLORY)
    assert isinstance(again, Response)
    assert again.status == 407
    h.clock.advance(30)
    assert h.sent_to(MALLORY) == []


def outsider_call(user: str) -> bytes:
    """An INVITE from a caller of another domain: never challenged, never ours."""
    n = next(_branches)
    data = from_(MALLORY, invite(user, call_id=f"o{n}", branch=f"z9hG4bKo{n}"))
    return data.replace(b"<sip:alice@example.test>", b"<sip:eve@elsewhere.example>")


def test_outsiders_cannot_tell_unknown_from_unregistered_users() -> None:
    """Same answer, 480, for an unknown and an unregistered user (item 12)."""
    h = secured()
    h.receive(outsider_call("carol"), MALLORY)  # a user of ours, no phone
    h.receive(outsider_call("nobody"), MALLORY)
    assert statuses(h.sent_to(MALLORY)) == [100, 480, 100, 480]


def test_our_authenticated_users_still_get_404_for_unknown_users() -> None:
    """An authenticated user of ours learns 404 vs 480: they may know the list."""
    h = secured()
    for user, status in [("carol", 480), ("nobody", 404)]:
        nonce = nonce_for(h, ALICE)
        h.receive(
            request_to(
                user,
                ALICE,
                extra=credentials(nonce, "wonderland", uri=f"sip:{user}@example.test"),
            ),
            ALICE,
        )
        assert statuses(h.sent_to(ALICE)) == [100, status]
