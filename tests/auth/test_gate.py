"""Who must authenticate and who may act (issue 5; RFC 3261 §22)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipproxy.auth.digest import AuthResult, Outcome
from sipproxy.auth.gate import (
    Admit,
    Challenge,
    Deny,
    credentials_header,
    decide,
    may_act,
    without_our_credentials,
)
from sipproxy.auth.ha1 import compute_ha1
from sipproxy.auth.htdigest import load_users
from sipproxy.sip.message import Request
from sipproxy.sip.parser import parse_message

DOMAINS = frozenset({"example.test"})


def make(method: str, *, from_user: str = "alice", from_host: str = "example.test",
         to_user: str = "alice", to_tag: str = "") -> Request:  # fmt: skip
    data = (
        f"{method} sip:{to_user}@example.test SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKp1\r\n"
        f"From: <sip:{from_user}@{from_host}>;tag=f\r\n"
        f"To: <sip:{to_user}@example.test>{to_tag}\r\n"
        f"Call-ID: c\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    request = parse_message(data)
    assert isinstance(request, Request)
    return request


def header(request: Request, **flags: bool) -> str | None:
    options = {
        "registering_here": False,
        "options_to_us": False,
        "in_our_dialog": False,
    }
    options.update(flags)
    return credentials_header(request, domains=DOMAINS, **options)


def test_register_here_needs_authorization() -> None:
    assert header(make("REGISTER"), registering_here=True) == "Authorization"
    assert header(make("REGISTER"), registering_here=False) is None


@pytest.mark.parametrize(
    "method", ["INVITE", "MESSAGE", "SUBSCRIBE", "REFER", "OPTIONS"]
)
def test_requests_from_our_domain_need_proxy_authorization(method: str) -> None:
    assert header(make(method, to_user="bob")) == "Proxy-Authorization"


@pytest.mark.parametrize("method", ["ACK", "CANCEL"])
def test_ack_and_cancel_are_never_challenged(method: str) -> None:
    """§22.1: ACK and CANCEL cannot be resubmitted with credentials."""
    assert header(make(method, to_user="bob")) is None


def test_in_dialog_requests_on_our_route_are_not_challenged() -> None:
    bye = make("BYE", to_user="bob", to_tag=";tag=t")
    assert header(bye, in_our_dialog=True) is None
    assert header(bye, in_our_dialog=False) == "Proxy-Authorization"


def test_options_to_the_server_and_foreign_callers_are_not_challenged() -> None:
    assert header(make("OPTIONS"), options_to_us=True) is None
    assert header(make("INVITE", from_host="carrier.example", to_user="bob")) is None


def test_the_authenticated_user_must_own_from_and_registered_to() -> None:
    assert may_act(make("REGISTER"), "alice")
    assert not may_act(make("REGISTER", to_user="bob"), "alice")  # third party
    assert not may_act(make("REGISTER", from_user="bob"), "alice")
    assert may_act(make("INVITE", to_user="bob"), "alice")
    assert not may_act(make("INVITE", from_user="bob", to_user="carol"), "alice")


def test_shipped_example_users_file_loads_and_matches_the_readme() -> None:
    """README: etc/users.htdigest.example has alice/alice-secret and bob/bob-secret."""
    path = Path(__file__).resolve().parents[2] / "etc" / "users.htdigest.example"
    users = load_users(path, "example.test")
    for user in ("alice", "bob"):
        for algorithm in ("MD5", "SHA-256"):
            expected = compute_ha1(user, "example.test", f"{user}-secret", algorithm)
            assert users.ha1(user, algorithm) == expected


def with_credentials(*fields: tuple[str, str]) -> Request:
    request = make("INVITE", to_user="bob")
    headers = request.headers
    for name, value in fields:
        headers = headers.append(name, value)
    return Request(request.method, request.uri, headers, request.body)


OURS = 'Digest username="alice", realm="example.test", nonce="n", response="r"'
THEIRS = 'Digest username="a1", realm="trunk.example", nonce="m", response="s"'


def test_our_credentials_are_consumed_others_stay() -> None:
    """RFC 3261 §22.3: ours go (both headers); another realm's are untouched."""
    request = with_credentials(
        ("Proxy-Authorization", OURS),
        ("Proxy-Authorization", THEIRS),
        ("Authorization", OURS),
        ("Authorization", THEIRS),
        ("Proxy-Authorization", 'Digest realm="example.test", nonce="unterminated'),
    )
    forwarded = without_our_credentials(request, "example.test")
    assert forwarded.headers.get_all("proxy-authorization") == [THEIRS]
    assert forwarded.headers.get_all("authorization") == [THEIRS]
    assert forwarded.headers.get("via") == request.headers.get("via")


def test_nothing_to_consume_keeps_the_request() -> None:
    request = with_credentials(("Proxy-Authorization", THEIRS))
    assert without_our_credentials(request, "example.test") is request
    ours = with_credentials(("Proxy-Authorization", OURS))
    assert without_our_credentials(ours, None) is ours


def test_good_credentials_of_the_from_user_let_the_request_through() -> None:
    ok = AuthResult(Outcome.OK, "alice")
    assert decide(make("INVITE", to_user="bob"), ok, "Proxy-Authorization") == Admit(
        "alice"
    )


def test_good_credentials_for_someone_elses_address_get_403() -> None:
    """Bob's password does not let him send as Alice or register her AOR."""
    bob = AuthResult(Outcome.OK, "bob")
    assert decide(make("INVITE"), bob, "Proxy-Authorization") == Deny(
        403, "Not Your Address"
    )
    assert decide(make("REGISTER"), bob, "Authorization") == Deny(
        403, "Not Your Address"
    )


def test_a_digest_uri_that_is_not_the_request_uri_gets_400() -> None:
    """RFC 2617 §3.2.2.5: "the server SHOULD return a 400 Bad Request error"."""
    mismatch = AuthResult(Outcome.URI_MISMATCH, reason="uri")
    decision = decide(make("REGISTER"), mismatch, "Authorization")
    assert decision == Deny(400, "Digest URI Does Not Match Request-URI")


@pytest.mark.parametrize(
    ("outcome", "stale", "counted"),
    [
        (Outcome.MISSING, False, False),
        (Outcome.UNPROVEN, False, False),
        (Outcome.STALE, True, False),
        (Outcome.FAILED, False, True),
    ],
)
def test_anything_else_is_challenged_and_only_a_wrong_answer_counts(
    outcome: Outcome, stale: bool, counted: bool
) -> None:
    """A registrar challenges with 401 (§22.1), a proxy with 407 (§22.3)."""
    result = AuthResult(outcome)
    assert decide(make("REGISTER"), result, "Authorization") == Challenge(
        401, "WWW-Authenticate", stale=stale, counted=counted
    )
    assert decide(make("INVITE"), result, "Proxy-Authorization") == Challenge(
        407, "Proxy-Authenticate", stale=stale, counted=counted
    )
