"""Claims that must not get a request anywhere: Route, tags, Via, Path, identity.

Each test performs one attack of issue 13 against a running twistd over real
sockets; a sink (a loopback port nobody registered) or a phone's own socket
shows what the server sent, and nothing is what it must send.
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import (
    RunningServer,
    free_port,
    start_twistd,
    status_of,
    stop,
)
from tests.security.conftest import PASSWORDS, REALM, Sink, serve_with_users
from tests.security.sipua import UA, header_values, start_line

pytestmark = pytest.mark.integration


@pytest.fixture
def ua(secured: RunningServer) -> Iterator[UA]:
    made = UA(secured.port)
    yield made
    made.close()


@pytest.fixture
def bob(secured: RunningServer) -> Iterator[UA]:
    """Bob's phone, registered with its own socket as Contact."""
    phone = UA(secured.port)
    assert status_of(phone.register("bob", PASSWORDS["bob"])) == 200
    yield phone
    phone.close()


def invite_bob(
    caller: UA,
    bob: UA,
    *,
    extra: str = "",
    call_id: str | None = None,
    from_tag: str = "attacker",
) -> bytes:
    """An outsider's INVITE to bob@REALM, as it reaches Bob's phone."""
    caller.send(
        caller.request(
            "INVITE", f"sip:bob@{REALM}", from_user="carol@evil.test",
            to=f"sip:bob@{REALM}", extra=extra, call_id=call_id, from_tag=from_tag,
        )
    )  # fmt: skip
    invite = bob.receive()
    assert invite is not None and start_line(invite).startswith("INVITE"), invite
    return invite


def registered_contacts(server: RunningServer, user: str) -> list[str]:
    """The Contacts bound to ``user``, from a REGISTER query with credentials."""
    phone = UA(server.port)
    try:
        reply = phone.authenticated(
            {
                "method": "REGISTER",
                "uri": f"sip:{REALM}",
                "from_user": f"{user}@{REALM}",
                "to": f"sip:{user}@{REALM}",
                "contact": False,
            },
            user=user,
            password=PASSWORDS[user],
        )
    finally:
        phone.close()
    assert status_of(reply) == 200, reply
    assert reply is not None
    return [c.split(";")[0] for c in header_values(reply, "Contact")]


# -- 1. registration hijack through a forged dialog ------------------------------------


@pytest.mark.parametrize("route_host", ["example.test", "127.0.0.1:{port}"])
@pytest.mark.parametrize("contact", ["<sip:evil@127.0.0.1:9>", "*"])
def test_register_with_forged_route_and_to_tag_is_challenged(
    secured: RunningServer, ua: UA, bob: UA, route_host: str, contact: str
) -> None:
    """REGISTER is never in-dialog: Route + To tag get a 401, nothing is bound."""
    before = registered_contacts(secured, "bob")
    route = route_host.format(port=secured.port)
    expires = "Expires: 0\r\n" if contact == "*" else "Expires: 3600\r\n"
    ua.send(
        ua.request(
            "REGISTER", f"sip:{REALM}", from_user=f"bob@{REALM}",
            to=f"sip:bob@{REALM}", to_tag="forged",
            extra=f"Route: <sip:{route};lr>\r\n{expires}",
        ).replace(b"Contact: <sip:bob@" + ua.sent_by.encode() + b">",
                  f"Contact: {contact}".encode())
    )  # fmt: skip
    reply = ua.final()
    assert status_of(reply) == 401, reply
    assert registered_contacts(secured, "bob") == before


# -- 1. open relay through a forged dialog ---------------------------------------------


@pytest.mark.parametrize("method", ["INVITE", "MESSAGE", "BYE"])
@pytest.mark.parametrize("token", ["", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA@"])
def test_forged_route_and_to_tag_relay_nothing(
    secured: RunningServer, ua: UA, sink: Sink, method: str, token: str
) -> None:
    """Route to us + To tag, with no or a made-up token: refused, the sink is quiet."""
    for sender in (f"alice@{REALM}", "mallory@evil.test"):
        ua.send(
            ua.request(
                method, f"sip:victim@{sink.host}:{sink.port}", from_user=sender,
                to=f"sip:victim@{sink.host}:{sink.port}", to_tag="forged",
                extra=f"Route: <sip:{token}127.0.0.1:{secured.port};lr>\r\n",
            )
        )  # fmt: skip
        reply = ua.final()
        assert status_of(reply) in (403, 407), reply
    assert sink.quiet_for(0.5), sink.received


def test_a_real_token_of_another_call_opens_nothing(
    secured: RunningServer, ua: UA, bob: UA, sink: Sink
) -> None:
    """A token copied from a call we were part of is bound to that call's dialog."""
    invite = invite_bob(ua, bob, call_id="real-call")
    record_routes = header_values(invite, "Record-Route")
    assert len(record_routes) == 2
    # The caller's route set (reversed) with its real tokens, in another dialog.
    routes = "".join(f"Route: {value}\r\n" for value in reversed(record_routes))
    ua.send(
        ua.request(
            "BYE", f"sip:victim@{sink.host}:{sink.port}", from_user="mallory@evil.test",
            to=f"sip:victim@{sink.host}:{sink.port}", to_tag="forged",
            call_id="another-call", extra=routes,
        )
    )  # fmt: skip
    assert status_of(ua.final()) == 403
    assert sink.quiet_for(0.5), sink.received


# -- 2. relay through an out-of-dialog ACK ---------------------------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_ack_to_an_internal_service_goes_nowhere(
    secured: RunningServer, ua: UA, sink: Sink, transport: str
) -> None:
    """ACK sip:x@127.0.0.1:SINK;transport=tcp with a body (Redis commands): absorbed."""
    for to_tag, route in (
        (None, ""),
        ("t", f"Route: <sip:127.0.0.1:{secured.port};lr>\r\n"),
    ):
        ua.send(
            ua.request(
                "ACK", f"sip:x@{sink.host}:{sink.port};transport={transport}",
                from_user="mallory@evil.test", to=f"sip:x@{sink.host}:{sink.port}",
                to_tag=to_tag, extra=route, body="FLUSHALL\r\nSET a b\r\n",
            ).replace(b"CSeq: 1 ACK", b"CSeq: 1 ACK")
        )  # fmt: skip
    assert sink.quiet_for(1.0), sink.received
    assert ua.drain(0.2) == []


def test_ack_to_the_proxy_itself_does_not_loop(
    tmp_path: Path, users_file: Path
) -> None:
    """An ACK addressed to the proxy is not sent back to it until Max-Forwards ends.

    The request counter of /metrics counts every ACK the server receives: one
    (ours), not the 70 a loop would make.
    """
    token = tmp_path / "admin.token"
    token.write_text("t" * 32)
    token.chmod(0o600)
    admin = free_port()
    server = serve_with_users(
        tmp_path, users_file, "--admin", f"tcp:{admin}:interface=127.0.0.1",
        "--admin-token-file", str(token),
    )  # fmt: skip
    ua = UA(server.port)
    try:
        for route in ("", f"Route: <sip:127.0.0.1:{server.port};lr>\r\n"):
            ua.send(
                ua.request(
                    "ACK", f"sip:x@127.0.0.1:{server.port}",
                    from_user="mallory@evil.test", to=f"sip:x@127.0.0.1:{server.port}",
                    to_tag="t", extra=route,
                )
            )  # fmt: skip
        ua.send(
            ua.request(
                "OPTIONS",
                f"sip:127.0.0.1:{server.port}",
                from_user="probe@example.test",
                to="sip:127.0.0.1",
            )
        )
        assert status_of(ua.final()) == 200
        request = urllib.request.Request(
            f"http://127.0.0.1:{admin}/metrics",
            headers={"Authorization": f"Bearer {'t' * 32}"},
        )
        with urllib.request.urlopen(request, timeout=5) as answer:
            metrics = answer.read().decode()
    finally:
        ua.close()
        stop(server.process)
    acks = re.search(r'^sipproxy_requests_total\{method="ACK"\} (\S+)$', metrics, re.M)
    assert acks is not None, metrics
    assert float(acks.group(1)) == 2.0
    assert "Traceback" not in server.log_text()


# -- 3. relay through a stray response -------------------------------------------------


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
def test_stray_response_naming_the_proxy_goes_nowhere(
    secured: RunningServer, ua: UA, sink: Sink, transport: str
) -> None:
    """200 with our address on top and a sink below: dropped, not relayed."""
    response = (
        "SIP/2.0 200 OK\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{secured.port};branch=z9hG4bKforged.1\r\n"
        f"Via: SIP/2.0/{transport} {sink.host}:{sink.port};branch=z9hG4bKv\r\n"
        "From: <sip:a@evil.test>;tag=a\r\nTo: <sip:b@evil.test>;tag=b\r\n"
        "Call-ID: stray\r\nCSeq: 1 INVITE\r\nContent-Length: 10\r\n\r\nFLUSHALL\r\n"
    ).encode()
    ua.send(response)
    assert sink.quiet_for(1.0), sink.received


def test_a_real_branch_with_a_changed_via_below_goes_nowhere(
    ua: UA, bob: UA, sink: Sink
) -> None:
    """Bob got a real INVITE (our real branch); he cannot redirect its 200."""
    invite = invite_bob(ua, bob)
    vias = header_values(invite, "Via")
    forged = invite.replace(
        vias[1].encode(),
        f"SIP/2.0/UDP {sink.host}:{sink.port};branch=z9hG4bKv".encode(),
    )
    bob.send(bob.answer(forged, 200))
    # The real transaction may pass its 200 upstream (to the caller); the
    # sink hears nothing. Then the same as a stray, after the transaction.
    assert sink.quiet_for(1.0), sink.received


# -- 9. caller-ID spoofing -------------------------------------------------------------


def test_identity_headers_from_outside_do_not_reach_phones(ua: UA, bob: UA) -> None:
    invite = invite_bob(
        ua,
        bob,
        extra="P-Asserted-Identity: <sip:ceo@example.test>\r\n"
        "P-Preferred-Identity: <sip:ceo@example.test>\r\n"
        "Remote-Party-ID: <sip:ceo@example.test>;party=calling\r\n",
    )
    for name in ("P-Asserted-Identity", "P-Preferred-Identity", "Remote-Party-ID"):
        assert header_values(invite, name) == [], invite


def test_an_authenticated_user_is_asserted_as_itself(ua: UA, bob: UA) -> None:
    ua.authenticated(
        {
            "method": "INVITE",
            "uri": f"sip:bob@{REALM}",
            "from_user": f"alice@{REALM}",
            "to": f"sip:bob@{REALM}",
            "extra": "P-Asserted-Identity: <sip:ceo@example.test>\r\n",
        },
        user="alice",
        password=PASSWORDS["alice"],
    )
    invites = [m for m in bob.drain(1.0) if start_line(m).startswith("INVITE")]
    assert invites, "the authenticated INVITE did not reach bob"
    assert header_values(invites[0], "P-Asserted-Identity") == [f"<sip:alice@{REALM}>"]


# -- 10. Path written by a phone -------------------------------------------------------


def test_a_phones_own_path_is_not_followed(
    secured: RunningServer, ua: UA, sink: Sink
) -> None:
    bob = UA(secured.port)
    try:
        reply = bob.register(
            "bob", PASSWORDS["bob"], extra=f"Path: <sip:{sink.host}:{sink.port};lr>\r\n"
        )
        assert status_of(reply) == 200
        assert reply is not None and header_values(reply, "Path") == []
        invite_bob(ua, bob)
    finally:
        bob.close()
    assert sink.quiet_for(0.5), sink.received


# -- request-named internal destinations -----------------------------------------------


@pytest.mark.parametrize("allowed", [False, True])
def test_an_internal_address_named_by_a_user_is_refused_unless_allowed(
    tmp_path: Path, users_file: Path, sink: Sink, allowed: bool
) -> None:
    """Alice dials sip:x@127.0.0.1:SINK: refused; allowed with --allow-destination."""
    extra = ["--allow-destination", "127.0.0.0/8"] if allowed else []
    server = serve_with_users(tmp_path, users_file, *extra)
    ua = UA(server.port)
    try:
        reply = ua.authenticated(
            {
                "method": "MESSAGE",
                "uri": f"sip:x@{sink.host}:{sink.port}",
                "from_user": f"alice@{REALM}",
                "to": f"sip:x@{sink.host}:{sink.port}",
                "body": "hello",
            },
            user="alice",
            password=PASSWORDS["alice"],
        )
        if allowed:
            sink_quiet = sink.quiet_for(1.0)
            assert not sink_quiet, "the allowed destination got nothing"
        else:
            assert status_of(reply) == 480, reply
            assert sink.quiet_for(0.5), sink.received
    finally:
        ua.close()
        stop(server.process)


# -- restarts ------------------------------------------------------------------------


def test_a_call_can_be_ended_after_the_proxy_restarts(
    tmp_path: Path, users_file: Path
) -> None:
    """The token key is kept (state directory), so an old call's BYE still counts."""
    port = free_port()
    args = [
        "--domain", REALM, "--users", str(users_file),
        "--listen", f"udp:{port}:interface=127.0.0.1",
    ]  # fmt: skip
    server = start_twistd(args, port, tmp_path / "first.log")
    caller, bob = UA(port), UA(port)
    try:
        assert status_of(bob.register("bob", PASSWORDS["bob"])) == 200
        invite = invite_bob(caller, bob, call_id="kept-call", from_tag="c1")
        bob.send(bob.answer(invite, 200, to_tag="b1"))
        ok = caller.final()
        assert status_of(ok) == 200 and ok is not None
        route_set = header_values(ok, "Record-Route")
        stop(server.process)
        server = start_twistd(args, port, tmp_path / "second.log")
        routes = "".join(f"Route: {value}\r\n" for value in reversed(route_set))
        caller.send(
            caller.request(
                "BYE", f"sip:callee@{bob.sent_by}", from_user="carol@evil.test",
                to=f"sip:bob@{REALM}", call_id="kept-call", from_tag="c1",
                to_tag="b1", cseq=2, extra=routes,
            )
        )  # fmt: skip
        bye = [m for m in bob.drain(1.0) if start_line(m).startswith("BYE")]
        assert bye, server.log_text()
    finally:
        caller.close()
        bob.close()
        stop(server.process)
