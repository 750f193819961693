"""Bindings held by another process of a cluster (issue 8, scale-out, on fakes).

A process stores, with each binding of a connection it holds, its own URI with a
token naming that connection (``Flow.owner``). Another process finding the
binding sends the request there as a Route; the owner delivers it on the flow.
"""

from __future__ import annotations

from sipproxy.auth.digest import Authenticator
from sipproxy.auth.htdigest import UserDB
from sipproxy.location import Binding, Flow
from sipproxy.proxy.flows import encode_flow
from sipproxy.sip.addressing import Peer
from sipproxy.sip.message import Request, Response
from tests.proxy.harness import ALICE, BOB, PROXY, Harness, invite, run

OWNER = ("192.0.2.50", 5071)


def store(h: Harness, flow: Flow) -> None:
    binding = Binding(
        aor="sip:bob@example.test",
        contact="sip:bob@10.0.0.7:5060;transport=tcp",
        expires_at=3600,
        registered_at=0,
        call_id="reg-bob",
        cseq=1,
        flow=flow,
    )
    run(h.location.update(binding.aor, save=[binding], now=0))


def test_a_connection_held_elsewhere_is_reached_through_its_owner() -> None:
    h = Harness()
    owner = f"sip:T0KEN@{OWNER[0]}:{OWNER[1]};lr"
    store(h, Flow("tcp", "192.0.2.50", 5060, *BOB, "tcp-1", owner=owner))
    h.receive(invite(), ALICE)
    sent = h.sent_to(OWNER)
    assert len(sent) == 1, h.sent()
    forwarded = sent[0]
    assert isinstance(forwarded, Request)
    assert forwarded.headers.get_all("route") == [f"<{owner}>"]
    assert str(forwarded.uri) == "sip:bob@10.0.0.7:5060;transport=tcp"


def test_our_own_connection_is_not_sent_to_ourselves() -> None:
    """Owner naming this process: the flow's connection is ours (gone here)."""
    h = Harness()
    owner = f"sip:T0KEN@{PROXY[0]}:{PROXY[1]};lr"
    store(h, Flow("tcp", *PROXY, *BOB, "tcp-1", owner=owner))
    h.receive(invite(), ALICE)
    assert h.sent_to(OWNER) == []
    assert all(addr != PROXY for _, addr in h.sent())


def test_the_owner_records_itself_for_connection_flows_only() -> None:
    h = Harness()
    h.proxy.instance = "sip:127.0.0.1:5060;transport=tcp"
    tcp = Flow("tcp", *PROXY, *BOB, "tcp-9")
    recorded = h.proxy.owners.with_owner(tcp, Peer("tcp", *BOB))
    assert recorded.owner is not None
    assert recorded.owner.startswith("sip:")
    assert recorded.owner.endswith("@127.0.0.1:5060;transport=tcp;lr")
    udp = Flow("udp", *PROXY, *BOB)
    assert h.proxy.owners.with_owner(udp, Peer("udp", *BOB)).owner is None
    h.proxy.instance = None
    assert h.proxy.owners.with_owner(tcp, Peer("tcp", *BOB)).owner is None


def _with_auth(h: Harness) -> None:
    users = UserDB("example.test", {"alice": {"MD5": "0" * 32}})
    h.proxy.identity.auth = Authenticator("example.test", users, b"n" * 32)


def test_an_owner_token_delivers_on_its_flow_without_a_new_challenge() -> None:
    """The process that looked the phone up checked the caller already."""
    h = Harness()
    _with_auth(h)
    token = encode_flow(Peer("udp", *BOB), None, h.proxy.owners.secret)
    route = f"Route: <sip:{token}@{PROXY[0]}:{PROXY[1]};lr>\r\n"
    h.receive(invite(extra=route), ALICE)
    forwarded = h.sent_to(BOB)
    assert len(forwarded) == 1, h.sent()
    assert isinstance(forwarded[0], Request)
    assert "route" not in forwarded[0].headers


def test_a_record_route_token_is_no_owner_token() -> None:
    """A phone that saw a Record-Route token cannot skip authentication with it."""
    h = Harness()
    _with_auth(h)
    token = encode_flow(Peer("udp", *BOB), None, b"s" * 32)  # the harness's secret
    route = f"Route: <sip:{token}@{PROXY[0]}:{PROXY[1]};lr>\r\n"
    h.receive(invite(extra=route), ALICE)
    assert h.sent_to(BOB) == []
    answers = [m for m in h.sent_to(ALICE) if isinstance(m, Response)]
    assert [m.status for m in answers][-1] == 407


def test_an_owner_token_for_a_closed_connection_routes_to_the_contact() -> None:
    """As for our own bindings: with the connection gone, only the Contact is left."""
    h = Harness()
    phone = Peer("tcp", "192.0.2.99", 40000)
    gone = encode_flow(phone, "tcp-77", h.proxy.owners.secret)
    route = f"Route: <sip:{gone}@{PROXY[0]}:{PROXY[1]};lr>\r\n"
    request = invite(extra=route).replace(
        b"INVITE sip:bob@example.test", f"INVITE sip:bob@{BOB[0]}:{BOB[1]}".encode()
    )
    h.receive(request, ALICE)
    forwarded = h.sent_to(BOB)
    assert len(forwarded) == 1, h.sent()
    assert isinstance(forwarded[0], Request)
