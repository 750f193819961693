"""Digest authentication: RFC test vectors, then challenge and verify round trips."""

from __future__ import annotations

import base64
import hmac

import pytest

from sipproxy.auth import digest
from sipproxy.auth.digest import (
    Authenticator,
    AuthResult,
    Outcome,
    compute_response,
    parse_credentials,
)
from sipproxy.auth.ha1 import compute_ha1, hash_hex
from sipproxy.auth.htdigest import UserDB
from sipproxy.sip.errors import ParseError
from sipproxy.sip.headers import Headers
from sipproxy.sip.message import Request
from tests.support import user_db

REALM = "example.test"
URI = "sip:example.test"
SECRET = b"k" * 32
NOW = 1_000_000.0


@pytest.fixture
def auth() -> Authenticator:
    return Authenticator(
        REALM, user_db(REALM, alice="wonderland", bob="builder"), SECRET
    )


def answer(
    challenge: str,
    user: str,
    password: str,
    *,
    method: str = "REGISTER",
    uri: str = URI,
    nc: str = "00000001",
    cnonce: str = "0a4f113b",
    realm: str | None = None,
) -> str:
    """The Authorization value a UA computes for ``challenge``."""
    scheme, params = parse_credentials(challenge)
    assert scheme == "Digest"
    algorithm = params["algorithm"]
    realm = params["realm"] if realm is None else realm
    ha1 = compute_ha1(user, realm, password, algorithm)
    response = compute_response(
        ha1,
        algorithm=algorithm,
        method=method,
        uri=uri,
        nonce=params["nonce"],
        qop="auth",
        nc=nc,
        cnonce=cnonce,
    )
    return (
        f'Digest username="{user}", realm="{realm}", nonce="{params["nonce"]}", '
        f'uri="{uri}", response="{response}", algorithm={algorithm}, '
        f'cnonce="{cnonce}", opaque="{params["opaque"]}", qop=auth, nc={nc}'
    )


def request(
    *credentials: str,
    method: str = "REGISTER",
    uri: str = URI,
    header: str = "Authorization",
) -> Request:
    pairs = [
        ("Via", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1"),
        ("From", f"<sip:alice@{REALM}>;tag=1"),
        ("To", f"<sip:alice@{REALM}>"),
        ("Call-ID", "c1"),
        ("CSeq", f"1 {method}"),
    ]
    pairs += [(header, value) for value in credentials]
    return Request(method, uri, Headers.of(*pairs))


# -- RFC test vectors ---------------------------------------------------------


def test_rfc2617_example() -> None:
    """The RFC 2617 §3.5 example: MD5, qop=auth, Mufasa at testrealm@host.com."""
    ha1 = compute_ha1("Mufasa", "testrealm@host.com", "Circle Of Life", "MD5")
    response = compute_response(
        ha1,
        algorithm="MD5",
        method="GET",
        uri="/dir/index.html",
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        qop="auth",
        nc="00000001",
        cnonce="0a4f113b",
    )
    assert response == "6629fae49393a05397450978507c4ef1"


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        (
            "SHA-256",
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
        ),
    ],
)
def test_rfc7616_examples(algorithm: str, expected: str) -> None:
    """The RFC 7616 §3.9.1 examples, MD5 and SHA-256, give the published responses."""
    ha1 = compute_ha1("Mufasa", "http-auth@example.org", "Circle of Life", algorithm)
    response = compute_response(
        ha1,
        algorithm=algorithm,
        method="GET",
        uri="/dir/index.html",
        nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
        qop="auth",
        nc="00000001",
        cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
    )
    assert response == expected


def test_rfc2617_authorization_header_parses() -> None:
    """The RFC 2617 §3.5 Authorization value parses into its parameters."""
    scheme, params = parse_credentials(
        'Digest username="Mufasa",\r\n realm="testrealm@host.com",\r\n'
        ' nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",\r\n uri="/dir/index.html",\r\n'
        " qop=auth,\r\n nc=00000001,\r\n"
        ' cnonce="0a4f113b",\r\n response="6629fae49393a05397450978507c4ef1",\r\n'
        ' opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    assert scheme == "Digest"
    assert params["username"] == "Mufasa"
    assert params["qop"] == "auth"
    assert params["nc"] == "00000001"
    assert params["response"] == "6629fae49393a05397450978507c4ef1"


# -- parsing credentials ------------------------------------------------------


def test_parse_unescapes_quoted_pairs_and_lowercases_names() -> None:
    """Quoted-pairs are unescaped, names are case-insensitive, spaces tolerated."""
    scheme, params = parse_credentials(
        'digest  USERNAME = "a\\"b\\\\c" ,Realm="x, y",, nc =00000001 , '
        'Algorithm="SHA-256"'
    )
    assert scheme == "digest"
    assert params == {
        "username": 'a"b\\c',
        "realm": "x, y",
        "nc": "00000001",
        "algorithm": "SHA-256",
    }


@pytest.mark.parametrize(
    "value",
    [
        "",
        "=x",
        'Digest username="alice',
        "Digest username",
        'Digest username="a" realm="b"',
        'Digest username="a", username="b"',
        'Digest username="a", =b',
        'Digest"username="a"',
    ],
)
def test_parse_rejects_malformed(value: str) -> None:
    """Unterminated quotes, missing '=' or commas, repeated names: ParseError."""
    with pytest.raises(ParseError):
        parse_credentials(value)


def test_compute_response_without_qop_is_rfc2069() -> None:
    """Without qop the digest is H(HA1:nonce:HA2) (RFC 2069, RFC 2617 §3.2.2.1)."""
    ha1 = compute_ha1("Mufasa", "testrealm@host.com", "Circle Of Life", "MD5")
    ha2 = hash_hex("MD5", "GET:/dir/index.html")
    assert compute_response(
        ha1, algorithm="MD5", method="GET", uri="/dir/index.html", nonce="n"
    ) == hash_hex("MD5", f"{ha1}:n:{ha2}")
    with pytest.raises(ValueError, match="qop"):
        compute_response(
            ha1, algorithm="MD5", method="GET", uri="/", nonce="n", qop="auth-int"
        )


# -- challenges ---------------------------------------------------------------


def test_challenge_offers_sha256_then_md5_with_one_nonce(auth: Authenticator) -> None:
    """One challenge per algorithm, SHA-256 first, sharing nonce and opaque."""
    values = auth.challenge(NOW)
    parsed = [parse_credentials(v) for v in values]
    assert [p["algorithm"] for _, p in parsed] == ["SHA-256", "MD5"]
    assert {p["nonce"] for _, p in parsed} == {parsed[0][1]["nonce"]}
    for scheme, params in parsed:
        assert scheme == "Digest"
        assert params["realm"] == REALM
        assert params["qop"] == "auth"
        assert params["opaque"] == auth.opaque
        assert "stale" not in params
    assert values[0].startswith(f'Digest realm="{REALM}", nonce="')
    assert values[0].endswith(', algorithm=SHA-256, qop="auth"')


def test_stale_challenge_says_so(auth: Authenticator) -> None:
    """After a stale nonce the challenge carries stale=true (RFC 7616 §3.3)."""
    for value in auth.challenge(NOW, stale=True):
        assert parse_credentials(value)[1]["stale"] == "true"


def test_each_challenge_has_its_own_nonce(auth: Authenticator) -> None:
    """Two challenges at the same instant (an office behind one NAT) differ."""
    nonces = {parse_credentials(auth.challenge(NOW)[0])[1]["nonce"] for _ in range(50)}
    assert len(nonces) == 50


def test_opaque_is_constant_per_secret() -> None:
    """The opaque depends only on the secret."""
    users = user_db(REALM, alice="x")
    assert Authenticator(REALM, users, SECRET).opaque == (
        Authenticator("other", users, SECRET).opaque
    )
    assert Authenticator(REALM, users, SECRET).opaque != (
        Authenticator(REALM, users, b"other secret").opaque
    )


def test_only_md5_offered_when_a_user_lacks_sha256() -> None:
    """A users file from plain htdigest has no SHA-256 HA1: offer MD5 alone."""
    users = UserDB(
        REALM,
        {
            "alice": {"MD5": compute_ha1("alice", REALM, "pw", "MD5")},
            "bob": {
                "MD5": compute_ha1("bob", REALM, "pw", "MD5"),
                "SHA-256": compute_ha1("bob", REALM, "pw", "SHA-256"),
            },
        },
    )
    auth = Authenticator(REALM, users, SECRET)
    assert auth.offered_algorithms() == ("MD5",)
    [value] = auth.challenge(NOW)
    assert verify(auth, answer(value, "alice", "pw")).outcome is Outcome.OK


def test_bad_configuration_is_refused() -> None:
    """Unknown algorithms, an empty secret or a zero lifetime raise ValueError."""
    users = user_db(REALM, alice="x")
    with pytest.raises(ValueError, match="algorithms"):
        Authenticator(REALM, users, SECRET, algorithms=("SHA-512-256",))
    with pytest.raises(ValueError, match="secret"):
        Authenticator(REALM, users, b"")
    with pytest.raises(ValueError, match="positive"):
        Authenticator(REALM, users, SECRET, nonce_lifetime=0)


# -- verification round trips -------------------------------------------------


def verify(
    auth: Authenticator,
    *credentials: str,
    now: float = NOW + 1,
    uri: str = URI,
    method: str = "REGISTER",
) -> AuthResult:
    return auth.verify(request(*credentials, uri=uri, method=method), now)


@pytest.mark.parametrize("index", [0, 1], ids=["SHA-256", "MD5"])
def test_right_password_is_ok(auth: Authenticator, index: int) -> None:
    """A UA answering either challenge with the right password is the user."""
    value = auth.challenge(NOW)[index]
    result = verify(auth, answer(value, "alice", "wonderland"))
    assert result == AuthResult(Outcome.OK, "alice")


def test_no_credentials_is_missing(auth: Authenticator) -> None:
    """A request without Authorization needs a challenge."""
    result = verify(auth)
    assert result.outcome is Outcome.MISSING
    assert result.user is None


def test_wrong_password_fails(auth: Authenticator) -> None:
    """A wrong password is FAILED, without a user."""
    value = auth.challenge(NOW)[0]
    result = verify(auth, answer(value, "alice", "guess"))
    assert result.outcome is Outcome.FAILED
    assert result.user is None


def test_unknown_user_fails_like_a_wrong_password(auth: Authenticator) -> None:
    """An unknown user gets the outcome and the reason of a wrong password."""
    unknown = verify(auth, answer(auth.challenge(NOW)[0], "mallory", "guess"))
    wrong = verify(auth, answer(auth.challenge(NOW)[0], "alice", "guess"))
    assert unknown.outcome is wrong.outcome is Outcome.FAILED
    assert unknown.reason.replace("mallory", "alice") == wrong.reason


def test_unknown_user_costs_the_same_work(
    auth: Authenticator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unknown user's response is computed and compared like a known one's.

    Timing would otherwise tell a scanner which users exist (issue 5).
    """
    calls: list[str] = []
    compares: list[bytes] = []
    real_compute = digest.compute_response

    def counting_compute(ha1: str, **kwargs: str) -> str:
        calls.append(ha1)
        return real_compute(ha1, **kwargs)

    def recording_compare(a: bytes, b: bytes) -> bool:
        compares.append(a)
        return a == b

    monkeypatch.setattr(digest, "compute_response", counting_compute)
    monkeypatch.setattr("hmac.compare_digest", recording_compare)
    verify(auth, answer(auth.challenge(NOW)[0], "mallory", "guess"))
    verify(auth, answer(auth.challenge(NOW)[0], "alice", "guess"))
    assert len(calls) == 2
    assert len(compares) == 6  # nonce MAC, opaque, response: each time
    assert len(calls[0]) == len(calls[1])  # a dummy HA1 of the same algorithm


def test_expired_nonce_with_right_password_is_stale(auth: Authenticator) -> None:
    """An expired nonce with a correct response is STALE: re-challenge."""
    value = auth.challenge(NOW)[0]
    result = verify(auth, answer(value, "alice", "wonderland"), now=NOW + 301)
    assert result.outcome is Outcome.STALE
    assert result.user is None


def test_nonce_fresh_until_its_lifetime(auth: Authenticator) -> None:
    """A nonce is good for exactly nonce_lifetime seconds."""
    value = auth.challenge(NOW)[0]
    result = verify(auth, answer(value, "alice", "wonderland"), now=NOW + 300)
    assert result.outcome is Outcome.OK


def test_expired_nonce_with_wrong_password_fails(auth: Authenticator) -> None:
    """Stale is only said to someone who knows the password."""
    value = auth.challenge(NOW)[0]
    for user in ("alice", "mallory"):
        result = verify(auth, answer(value, user, "guess"), now=NOW + 301)
        assert result.outcome is Outcome.FAILED


def test_nonce_from_the_future_is_stale(auth: Authenticator) -> None:
    """A nonce stamped after now (the clock went back) is not fresh."""
    value = auth.challenge(NOW)[0]
    result = verify(auth, answer(value, "alice", "wonderland"), now=NOW - 10)
    assert result.outcome is Outcome.STALE


def tampered(value: str) -> str:
    _, params = parse_credentials(value)
    nonce = params["nonce"]
    raw = bytearray(base64.urlsafe_b64decode(nonce + "="))
    raw[0] ^= 0x01  # move the timestamp
    forged = base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    return value.replace(nonce, forged)


@pytest.mark.parametrize(
    "change",
    [
        tampered,
        lambda v: v.replace('nonce="', 'nonce="x'),
        lambda v: v.replace(
            parse_credentials(v)[1]["nonce"], "dcd98b7102dd2f0e8b11d0f600bfb0c093"
        ),
    ],
    ids=["timestamp changed", "longer", "not ours"],
)
def test_tampered_nonce_proves_nothing(auth: Authenticator, change: object) -> None:
    """A nonce we did not issue, or altered, is UNPROVEN even with the password.

    Anyone can write one without a round trip, so it is never counted (issue 13).
    """
    assert callable(change)
    value = change(auth.challenge(NOW)[0])
    for password in ("wonderland", "guess"):
        result = verify(auth, answer(value, "alice", password))
        assert result.outcome is Outcome.UNPROVEN
        assert "nonce" in result.reason


def test_nonce_of_another_secret_proves_nothing(auth: Authenticator) -> None:
    """A nonce from a previous run (another secret) is refused, not counted."""
    other = Authenticator(REALM, auth.users, b"previous run")
    value = other.challenge(NOW)[0].replace(other.opaque, auth.opaque)
    assert verify(auth, answer(value, "alice", "wonderland")).outcome is (
        Outcome.UNPROVEN
    )


def test_wrong_opaque_fails(auth: Authenticator) -> None:
    """An opaque that is not ours is refused; leaving it out is accepted."""
    value = auth.challenge(NOW)[0]
    creds = answer(value, "alice", "wonderland")
    wrong = creds.replace(auth.opaque, "bm90IG91cnM")
    assert verify(auth, wrong).outcome is Outcome.UNPROVEN
    without = creds.replace(f', opaque="{auth.opaque}"', "")
    assert verify(auth, without).outcome is Outcome.OK


def test_replayed_nc_is_refused_not_counted(auth: Authenticator) -> None:
    """The same Authorization sent twice is refused the second time.

    A replay is no password guess, and whoever captured it can send it with the
    victim's address: UNPROVEN, not counted towards a ban.
    """
    creds = answer(auth.challenge(NOW)[0], "alice", "wonderland")
    assert verify(auth, creds).outcome is Outcome.OK
    replay = verify(auth, creds, now=NOW + 2)
    assert replay.outcome is Outcome.UNPROVEN
    assert "replayed" in replay.reason


def test_higher_nc_is_ok_lower_fails(auth: Authenticator) -> None:
    """A UA reusing a nonce with a growing nc is accepted; a lower nc is not."""
    value = auth.challenge(NOW)[0]
    for nc, outcome in [
        ("00000001", Outcome.OK),
        ("00000003", Outcome.OK),
        ("00000002", Outcome.UNPROVEN),
        ("00000003", Outcome.UNPROVEN),
        ("0000000A", Outcome.OK),
    ]:
        result = verify(auth, answer(value, "alice", "wonderland", nc=nc))
        assert result.outcome is outcome, nc


def test_nc_zero_fails(auth: Authenticator) -> None:
    """The nonce count starts at 1 (RFC 7616 §3.4)."""
    value = auth.challenge(NOW)[0]
    result = verify(auth, answer(value, "alice", "wonderland", nc="00000000"))
    assert result.outcome is Outcome.UNPROVEN


def test_a_wrong_answer_burns_its_nonce(
    auth: Authenticator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One guess per nonce: after a wrong answer, nothing on it is even computed.

    Every further guess costs a round trip for a new nonce (issue 13, "one nonce
    serves every guess"); the right password on a burnt nonce is UNPROVEN too,
    so a burnt nonce is no oracle. A new nonce works.
    """
    value = auth.challenge(NOW)[0]
    bad = answer(value, "alice", "guess", nc="00000005")
    assert verify(auth, bad).outcome is Outcome.FAILED
    calls: list[str] = []
    real_compute = digest.compute_response

    def counting_compute(ha1: str, **kwargs: str) -> str:
        calls.append(ha1)
        return real_compute(ha1, **kwargs)

    monkeypatch.setattr(digest, "compute_response", counting_compute)
    for password, nc in [("guess2", "00000006"), ("wonderland", "00000001")]:
        again = verify(auth, answer(value, "alice", password, nc=nc))
        assert again.outcome is Outcome.UNPROVEN
        assert "spent" in again.reason
    assert calls == []
    good = answer(auth.challenge(NOW)[0], "alice", "wonderland")
    assert verify(auth, good).outcome is Outcome.OK


def test_a_wrong_answer_after_success_burns_the_nonce(auth: Authenticator) -> None:
    """A nonce a phone reuses (growing nc) is burnt by one wrong answer on it."""
    value = auth.challenge(NOW)[0]
    assert verify(auth, answer(value, "alice", "wonderland")).outcome is Outcome.OK
    wrong = answer(value, "alice", "guess", nc="00000002")
    assert verify(auth, wrong).outcome is Outcome.FAILED
    later = answer(value, "alice", "wonderland", nc="00000003")
    assert verify(auth, later).outcome is Outcome.UNPROVEN


def test_burnt_nonces_stay_bounded() -> None:
    """Burnt nonces share the bounded nc memory; forgetting one opens nothing.

    A burnt nonce pushed out is, like any forgotten one, STALE with the right
    password and FAILED with a wrong one: never OK.
    """
    auth = Authenticator(
        REALM, user_db(REALM, alice="wonderland"), SECRET, max_nonces=2
    )
    first = auth.challenge(NOW)[0]
    assert verify(auth, answer(first, "alice", "guess")).outcome is Outcome.FAILED
    for _ in range(3):
        other = answer(auth.challenge(NOW)[0], "alice", "guess")
        assert verify(auth, other).outcome is Outcome.FAILED
    assert len(auth._counts) == 2
    right = answer(first, "alice", "wonderland", nc="00000002")
    assert verify(auth, right).outcome is Outcome.STALE


def test_forgotten_nonce_is_stale_not_replayable() -> None:
    """When the nc memory is full, an evicted nonce is STALE, never replayable."""
    auth = Authenticator(
        REALM, user_db(REALM, alice="wonderland"), SECRET, max_nonces=2
    )
    first = answer(auth.challenge(NOW)[0], "alice", "wonderland")
    assert verify(auth, first).outcome is Outcome.OK
    for _ in range(2):
        other = answer(auth.challenge(NOW)[0], "alice", "wonderland")
        assert verify(auth, other).outcome is Outcome.OK
    assert len(auth._counts) == 2
    assert verify(auth, first).outcome is Outcome.STALE
    # A nonce issued after the eviction is still accepted.
    later = answer(auth.challenge(NOW + 1)[0], "alice", "wonderland")
    assert verify(auth, later, now=NOW + 2).outcome is Outcome.OK


def test_expired_nonces_are_dropped_from_memory(auth: Authenticator) -> None:
    """Counts of expired nonces do not accumulate."""
    for i in range(5):
        value = auth.challenge(NOW + i * 1000)[0]
        creds = answer(value, "alice", "wonderland")
        assert verify(auth, creds, now=NOW + i * 1000).outcome is Outcome.OK
    assert len(auth._counts) == 1


def test_other_realm_is_ignored(auth: Authenticator) -> None:
    """Credentials for another realm are for another server (RFC 3261 §22.3)."""
    value = auth.challenge(NOW)[0].replace(REALM, "elsewhere.test")
    creds = answer(value, "alice", "wonderland")
    assert verify(auth, creds).outcome is Outcome.MISSING
    ours = answer(auth.challenge(NOW)[0], "alice", "wonderland")
    assert verify(auth, creds, ours) == AuthResult(Outcome.OK, "alice")


def test_other_schemes_are_ignored(auth: Authenticator) -> None:
    """A Basic or other credential is not ours."""
    assert verify(auth, "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==").outcome is (
        Outcome.MISSING
    )


@pytest.mark.parametrize(
    ("digest_uri", "request_uri"),
    [
        ("SIP:EXAMPLE.test", "sip:example.test"),
        ("sip:example.test;lr", "sip:example.test"),
        (
            "sip:bob@example.test;transport=udp;x=1",
            "sip:bob@example.test;x=1;transport=UDP",
        ),
        ("sip:127.0.0.1:5070", "sip:127.0.0.1:5070"),
        ("sip:b%6fb@example.test", "sip:bob@example.test"),
    ],
)
def test_an_equivalent_uri_is_accepted(
    auth: Authenticator, digest_uri: str, request_uri: str
) -> None:
    """The digest uri may be any form equivalent by RFC 3261 §19.1.4."""
    value = auth.challenge(NOW)[0]
    creds = answer(value, "alice", "wonderland", uri=digest_uri)
    assert verify(auth, creds, uri=request_uri).outcome is Outcome.OK


@pytest.mark.parametrize(
    ("digest_uri", "request_uri"),
    [
        ("sip:other.test", "sip:example.test"),
        # §19.1.4: "a URI omitting any component with a default value will not
        # match a URI explicitly containing that component with its default value"
        ("sip:example.test:5060", "sip:example.test"),
        ("sip:127.0.0.1:5070", "sip:example.test"),
        ("sips:example.test", "sip:example.test"),
        ("sip:Bob@example.test", "sip:bob@example.test"),
        ("sip:example.test;transport=tcp", "sip:example.test"),
        ("not a uri", "sip:example.test"),
    ],
)
def test_another_uri_is_a_mismatch_not_a_failure(
    auth: Authenticator, digest_uri: str, request_uri: str
) -> None:
    """A uri naming another resource is URI_MISMATCH (400), even with the password.

    RFC 2617 §3.2.2.5: "if they are not, the server SHOULD return a 400 Bad
    Request error"; it is no password guess, and the nonce stays usable.
    """
    value = auth.challenge(NOW)[0]
    for password in ("wonderland", "guess"):
        creds = answer(value, "alice", password, uri=digest_uri)
        result = verify(auth, creds, uri=request_uri)
        assert result.outcome is Outcome.URI_MISMATCH
        assert "uri" in result.reason
    right = answer(value, "alice", "wonderland", uri=request_uri)
    assert verify(auth, right, uri=request_uri).outcome is Outcome.OK


def test_method_is_part_of_the_digest(auth: Authenticator) -> None:
    """A response computed for REGISTER does not authorise an INVITE."""
    creds = answer(auth.challenge(NOW)[0], "alice", "wonderland")
    assert verify(auth, creds, method="INVITE").outcome is Outcome.FAILED


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda c: c.replace(", qop=auth", "").replace(", nc=00000001", ""), "qop"),
        (lambda c: c.replace("qop=auth", "qop=auth-int"), "qop"),
        (lambda c: c.replace("nc=00000001", "nc=1"), "nc"),
        (lambda c: c.replace('cnonce="0a4f113b"', 'cnonce=""'), "cnonce"),
        (lambda c: c.replace("algorithm=SHA-256", "algorithm=SHA-512-256"), "algor"),
        (lambda c: c + ", userhash=true", "userhash"),
        (lambda c: c.replace('username="alice"', 'username=""'), "username"),
        (lambda c: c.replace('uri="sip:example.test", ', ""), "uri"),
    ],
)
def test_incomplete_credentials_fail(
    auth: Authenticator, edit: object, reason: str
) -> None:
    """Missing or unsupported parameters are UNPROVEN, with a reason to log."""
    assert callable(edit)
    creds = edit(answer(auth.challenge(NOW)[0], "alice", "wonderland"))
    result = verify(auth, creds)
    assert result.outcome is Outcome.UNPROVEN
    assert reason in result.reason


def test_malformed_header_proves_nothing(auth: Authenticator) -> None:
    """An unreadable Authorization is refused but not counted: it costs no trip."""
    result = verify(auth, 'Digest username="alice, realm=')
    assert result.outcome is Outcome.UNPROVEN


def test_default_algorithm_is_md5(auth: Authenticator) -> None:
    """Without an algorithm parameter the response is MD5 (RFC 7616 §3.3)."""
    creds = answer(auth.challenge(NOW)[1], "alice", "wonderland")
    assert verify(auth, creds.replace("algorithm=MD5, ", "")).outcome is Outcome.OK


def test_tolerant_of_case_and_spacing(auth: Authenticator) -> None:
    """Names in any case, quoted tokens and extra spaces still verify."""
    creds = answer(auth.challenge(NOW)[0], "alice", "wonderland")
    creds = (
        creds.replace("username=", "UserName = ")
        .replace(", ", " ,  ")
        .replace("qop=auth", 'qop="auth"')
        .replace("algorithm=SHA-256", 'ALGORITHM="sha-256"')
    )
    assert verify(auth, creds).outcome is Outcome.OK


def test_uppercase_response_hex_is_accepted(auth: Authenticator) -> None:
    """The response is hex; its case does not matter."""
    creds = answer(auth.challenge(NOW)[0], "alice", "wonderland")
    response = parse_credentials(creds)[1]["response"]
    assert verify(auth, creds.replace(response, response.upper())).outcome is (
        Outcome.OK
    )


def test_proxy_authorization(auth: Authenticator) -> None:
    """After a 407 the credentials come in Proxy-Authorization (RFC 3261 §22.3)."""
    value = auth.challenge(NOW)[0]
    creds = answer(value, "alice", "wonderland", method="INVITE", uri="sip:bob@x")
    req = request(creds, method="INVITE", uri="sip:bob@x", header="Proxy-Authorization")
    assert auth.verify(req, NOW + 1).outcome is Outcome.MISSING
    result = auth.verify(req, NOW + 1, header="Proxy-Authorization")
    assert result == AuthResult(Outcome.OK, "alice")
    with pytest.raises(ValueError, match="credentials"):
        auth.verify(req, NOW, header="Via")


def test_new_users_take_effect(auth: Authenticator) -> None:
    """Replacing ``users`` (a reloaded file) changes who may log in."""
    value = auth.challenge(NOW)[0]
    auth.users = user_db(REALM, carol="pw")
    assert verify(auth, answer(value, "carol", "pw")).outcome is Outcome.OK
    assert verify(auth, answer(value, "alice", "wonderland")).outcome is (
        Outcome.FAILED
    )


def test_non_ascii_user(auth: Authenticator) -> None:
    """User names and passwords are hashed as UTF-8."""
    auth.users = user_db(REALM, **{"zoë": "pässword"})
    value = auth.challenge(NOW)[0]
    assert verify(auth, answer(value, "zoë", "pässword")) == AuthResult(
        Outcome.OK, "zoë"
    )


def test_outcomes_are_the_six() -> None:
    """Callers switch over exactly these outcomes."""
    assert {o.name for o in Outcome} == {
        "OK",
        "MISSING",
        "STALE",
        "FAILED",
        "UNPROVEN",
        "URI_MISMATCH",
    }


# -- nonces bound to the source (issue 13) ---------------------------------------


def verify_from(auth: Authenticator, creds: str, source: str | None) -> AuthResult:
    return auth.verify(request(creds), NOW + 1, source=source)


@pytest.mark.parametrize(
    ("issued_to", "answered_from"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2::1", "2001:db8:1:2:aaaa::9"),  # the same /64
        ("[2001:db8:1:2::1]", "2001:db8:1:2::1"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
    ],
)
def test_a_nonce_is_good_from_where_it_was_sent(
    auth: Authenticator, issued_to: str, answered_from: str
) -> None:
    """A nonce works from the address (IPv6: the /64) its challenge went to."""
    value = auth.challenge(NOW, source=issued_to)[0]
    creds = answer(value, "alice", "wonderland")
    assert verify_from(auth, creds, answered_from) == AuthResult(Outcome.OK, "alice")


@pytest.mark.parametrize(
    ("issued_to", "answered_from"),
    [
        ("192.0.2.7", "192.0.2.8"),
        ("2001:db8:1:2::1", "2001:db8:1:3::1"),  # another /64
        ("192.0.2.7", None),
        (None, "192.0.2.7"),
    ],
)
def test_a_nonce_from_elsewhere_proves_nothing(
    auth: Authenticator, issued_to: str | None, answered_from: str | None
) -> None:
    """A nonce issued to another address is UNPROVEN, right password or wrong.

    Issue 13: a failure counts towards a ban only when getting its nonce cost a
    round trip from the address it comes from; a spoofed source cannot make one.
    """
    value = auth.challenge(NOW, source=issued_to)[0]
    for password in ("guess", "wonderland"):
        result = verify_from(auth, answer(value, "alice", password), answered_from)
        assert result.outcome is Outcome.UNPROVEN
        assert "source" in result.reason
    # Nothing was burnt by the stranger: the rightful owner still gets in.
    right = answer(value, "alice", "wonderland")
    assert verify_from(auth, right, issued_to).outcome is Outcome.OK


def test_a_wrong_answer_from_the_nonce_owner_fails(auth: Authenticator) -> None:
    """From the address the nonce went to, a wrong answer is FAILED (counted)."""
    value = auth.challenge(NOW, source="192.0.2.7")[0]
    result = verify_from(auth, answer(value, "alice", "guess"), "192.0.2.7")
    assert result.outcome is Outcome.FAILED


@pytest.mark.parametrize(
    ("source", "key"),
    [
        (None, b""),
        ("192.0.2.7", b"4\xc0\x00\x02\x07"),
        ("::ffff:192.0.2.7", b"4\xc0\x00\x02\x07"),
        ("2001:db8::1", b"6" + bytes.fromhex("20010db800000000")),
        ("[2001:db8::1%eth0]", b"6" + bytes.fromhex("20010db800000000")),
        ("Host.Example", b"nhost.example"),
    ],
)
def test_source_key(source: str | None, key: bytes) -> None:
    assert digest.source_key(source) == key


def test_a_nonce_has_one_spelling(auth: Authenticator) -> None:
    """A burnt nonce respelt (the unused low bits of its last character) is UNPROVEN.

    43 base64url characters carry 258 bits for 256; a spelling that sets the
    other two would decode to the same nonce and, keyed by its text, serve four
    guesses where one is allowed.
    """
    value = auth.challenge(NOW)[0]
    nonce = parse_credentials(value)[1]["nonce"]
    assert verify(auth, answer(value, "alice", "guess")).outcome is Outcome.FAILED
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(nonce[-1])
    respelt = nonce[:-1] + alphabet[last + 1]
    again = verify(auth, answer(value.replace(nonce, respelt), "alice", "guess2"))
    assert again.outcome is Outcome.UNPROVEN


@pytest.mark.parametrize("secret", [b"k" * 32, b"s" * 64, b"long" * 40, b"\x00"])
def test_the_nonce_mac_is_hmac_sha256(secret: bytes) -> None:
    """The precomputed pads give HMAC-SHA-256 of timestamp, salt and source."""
    auth = Authenticator(REALM, user_db(REALM, alice="wonderland"), secret)
    body = bytes(range(16))
    for source in ("192.0.2.7", "2001:db8::1", None):
        expected = hmac.digest(secret, body + digest.source_key(source), "sha256")
        assert auth._mac(body, source) == expected[:16]
