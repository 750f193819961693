"""The core's trust rules on fakes (issue 13): tokens, signed Vias, ACKs, identity."""

from __future__ import annotations

from dataclasses import replace

from sipproxy.guard import TrustedNetworks
from sipproxy.sip.message import Request, Response
from tests.proxy.harness import ALICE, BOB, PROXY, Harness, answer, invite
from tests.security.test_invariants import make_authenticator

SINK = ("198.51.100.66", 5060)


def only(messages: list[Request | Response]) -> Request | Response:
    assert len(messages) == 1, messages
    return messages[0]


def call(h: Harness) -> tuple[Request, list[str]]:
    """Alice calls Bob; Bob answers 200; the INVITE Bob got and the route set."""
    h.register("bob", BOB)
    h.receive(invite(), ALICE)
    to_bob = only(h.sent_to(BOB))
    assert isinstance(to_bob, Request)
    h.receive(answer(to_bob, 200, contact="<sip:bob@10.0.0.62:5060>"), BOB)
    up = [m for m in h.sent_to(ALICE) if isinstance(m, Response) and m.status == 200]
    assert len(up) == 1
    return to_bob, up[0].headers.get_all("record-route")


def in_dialog(
    method: str, uri: str, routes: list[str], *, call_id: str = "call-1"
) -> bytes:
    """A request from Alice inside the call (her route set: Record-Route reversed)."""
    route = f"Route: {', '.join(routes)}\r\n" if routes else ""
    return (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {ALICE[0]}:{ALICE[1]};branch=z9hG4bK{method}x;rport\r\n"
        f"Max-Forwards: 70\r\n{route}"
        'From: "Alice" <sip:alice@example.test>;tag=a1\r\n'
        "To: <sip:bob@example.test>;tag=b1\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 2 {method}\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def test_every_record_route_entry_carries_a_token() -> None:
    h = Harness()
    _, route_set = call(h)
    assert len(route_set) == 2
    for value in route_set:
        assert "@" in value.split(";")[0], value


def test_an_in_dialog_request_goes_to_the_tokens_flow_not_its_request_uri() -> None:
    """A BYE naming another host in its Request-URI still reaches Bob's flow."""
    h = Harness()
    _, route_set = call(h)
    h.sent()
    uri = f"sip:bob@{SINK[0]}:{SINK[1]}"
    h.receive(in_dialog("BYE", uri, list(reversed(route_set))), ALICE)
    assert h.sent_to(SINK) == []
    bye = only(h.sent_to(BOB))
    assert isinstance(bye, Request) and bye.method == "BYE"


def test_a_token_of_another_call_is_no_dialog() -> None:
    h = Harness()
    _, route_set = call(h)
    h.sent()
    uri = f"sip:bob@{SINK[0]}:{SINK[1]}"
    h.receive(in_dialog("BYE", uri, list(reversed(route_set)), call_id="other"), ALICE)
    assert h.sent_to(SINK) == [] and h.sent_to(BOB) == []


def test_a_route_to_us_with_a_to_tag_is_no_dialog() -> None:
    """No token: routed as a new request, so by its Request-URI (no users here)."""
    h = Harness()
    route = [f"<sip:{PROXY[0]}:{PROXY[1]};lr>"]
    h.receive(in_dialog("BYE", "sip:bob@example.test", route), ALICE)
    statuses = [m.status for m in h.sent_to(ALICE) if isinstance(m, Response)]
    assert statuses == [404]


def test_ack_without_a_token_is_absorbed() -> None:
    h = Harness()
    uri = f"sip:x@{SINK[0]}:{SINK[1]}"
    h.receive(in_dialog("ACK", uri, []), ALICE)
    h.receive(in_dialog("ACK", uri, [f"<sip:{PROXY[0]};lr>"]), ALICE)
    assert h.sent() == []


def test_ack_with_the_calls_token_reaches_the_callee() -> None:
    h = Harness()
    _, route_set = call(h)
    h.sent()
    h.receive(in_dialog("ACK", "sip:bob@10.0.0.62", list(reversed(route_set))), ALICE)
    ack = only(h.sent_to(BOB))
    assert isinstance(ack, Request) and ack.method == "ACK"


def test_a_stray_2xx_goes_up_only_through_a_via_we_signed() -> None:
    h = Harness()
    to_bob, _ = call(h)
    h.sent()
    # Long after the transaction: a 2xx retransmission is relayed statelessly.
    h.clock.advance(64)
    h.clock.advance(64)
    late = answer(to_bob, 200, contact="<sip:bob@10.0.0.62:5060>")
    h.receive(late, BOB)
    assert [m.status for m in h.sent_to(ALICE) if isinstance(m, Response)] == [200]
    # The same 200 with the Via below ours pointing elsewhere: dropped.
    vias = late.headers.get_all("via")
    headers = late.headers.remove("Via").prepend(
        "Via", f"SIP/2.0/UDP {SINK[0]}:{SINK[1]};branch=z9hG4bKv"
    )
    headers = headers.prepend("Via", vias[0])
    h.receive(replace(late, headers=headers), BOB)
    assert h.sent() == []


def test_a_made_up_branch_naming_us_is_dropped() -> None:
    h = Harness()
    to_bob, _ = call(h)
    h.clock.advance(64)
    h.clock.advance(64)
    h.sent()
    late = answer(to_bob, 200)
    vias = late.headers.get_all("via")
    forged = vias[0].split(";branch=")[0] + ";branch=z9hG4bKabc.1.0123456789ab"
    headers = late.headers.remove("Via").append("Via", forged).append("Via", vias[1])
    h.receive(replace(late, headers=headers), BOB)
    assert h.sent() == []


def test_identity_headers_from_outside_are_removed() -> None:
    h = Harness()
    h.register("bob", BOB)
    extra = (
        "P-Asserted-Identity: <sip:ceo@example.test>\r\n"
        "Remote-Party-ID: <sip:ceo@example.test>\r\n"
    )
    h.receive(invite(extra=extra), ALICE)
    to_bob = only(h.sent_to(BOB))
    assert "p-asserted-identity" not in to_bob.headers
    assert "remote-party-id" not in to_bob.headers


def test_identity_headers_from_a_trusted_network_stay() -> None:
    h = Harness()
    h.proxy.settings = replace(
        h.proxy.settings, trusted=TrustedNetworks(["192.0.2.0/28"])
    )
    h.register("bob", BOB)
    h.receive(invite(extra="P-Asserted-Identity: <sip:+15551234@trunk>\r\n"), ALICE)
    to_bob = only(h.sent_to(BOB))
    assert to_bob.headers.get_all("p-asserted-identity") == ["<sip:+15551234@trunk>"]


def test_a_request_named_internal_address_is_refused_unless_allowed() -> None:
    h = Harness()
    internal = ("10.1.2.3", 5060)

    def message(number: int) -> bytes:
        return invite(call_id=f"c{number}", branch=f"z9hG4bKi{number}").replace(
            b"INVITE sip:bob@example.test", b"INVITE sip:x@10.1.2.3:5060"
        )

    h.receive(message(1), ALICE)
    assert h.sent_to(internal) == []
    assert [m.status for m in h.sent_to(ALICE) if isinstance(m, Response)] == [100, 480]
    h.proxy.settings = replace(
        h.proxy.settings, allowed_destinations=TrustedNetworks(["10.0.0.0/8"])
    )
    h.receive(message(2), ALICE)
    assert len(h.sent_to(internal)) == 1


def test_our_credentials_in_a_2xx_ack_stay_here() -> None:
    """A 2xx ACK repeats the INVITE's credentials (§13.2.2.4); ours are consumed."""
    h = Harness(auth=make_authenticator())
    # An outside caller needs no credentials to call one of our users.
    message = invite().replace(b"sip:alice@example.test", b"sip:carol@partner.test")
    h.register("bob", BOB)
    h.receive(message, ALICE)
    to_bob = only(h.sent_to(BOB))
    assert isinstance(to_bob, Request)
    h.receive(answer(to_bob, 200), BOB)
    ok = [m for m in h.sent_to(ALICE) if isinstance(m, Response) and m.status == 200]
    routes = list(reversed(ok[0].headers.get_all("record-route")))
    ack = in_dialog("ACK", "sip:bob@10.0.0.62", routes).replace(
        b"sip:alice@example.test", b"sip:carol@partner.test"
    )
    ours = b'Proxy-Authorization: Digest username="carol", realm="example.test"\r\n'
    theirs = b'Proxy-Authorization: Digest username="c", realm="partner.test"\r\n'
    h.receive(ack.replace(b"Content-Length", ours + theirs + b"Content-Length"), ALICE)
    forwarded = only(h.sent_to(BOB))
    assert isinstance(forwarded, Request) and forwarded.method == "ACK"
    assert [f.value for f in forwarded.headers if f.key == "proxy-authorization"] == [
        theirs.decode().partition(": ")[2].strip()
    ]
