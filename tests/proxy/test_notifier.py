"""Busy lamps on the harness's proxy: SUBSCRIBE, NOTIFY and the call states.

MemoryReactorClock time, fake UDP sockets, the memory store: RFC 6665
subscriptions and RFC 4235 bodies driven by the proxy's own dialog events.
"""

from __future__ import annotations

import functools
import re
import xml.etree.ElementTree as ET
from dataclasses import replace

import pytest

from sipproxy.auth.digest import Authenticator
from sipproxy.auth.ha1 import compute_ha1
from sipproxy.auth.htdigest import UserDB
from sipproxy.office.model import parse_office
from sipproxy.proxy.notifier import Lamps, Notifier, NotifierSettings, Subscription
from sipproxy.sip.dialoginfo import NAMESPACE
from sipproxy.sip.message import Request, Response
from sipproxy.testing import run
from tests.proxy.harness import ALICE, BOB, BOB2, Harness, answer, invite
from tests.proxy.test_calls import bye_from_alice, requests

NS = {"d": NAMESPACE}


@pytest.fixture(autouse=True, params=["every call", "watched calls"])
def lamps_follow(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> str:
    """Each test twice: the bare proxy, and the proxy as the server wires it.

    The bare proxy's notifier keeps every call; the server's keeps only
    watched users' calls, seeded from the call tracker's live calls. The
    lamps must behave the same.
    """
    if request.param == "watched calls":
        monkeypatch.setitem(
            globals(), "Harness", functools.partial(Harness, track_calls=True)
        )
    return str(request.param)


#: The subscriber: Carol's phone, with a BLF key for Bob.
CAROL = ("192.0.2.30", 5080)


def subscribe(
    target: str = "bob",
    *,
    expires: int | None = 600,
    event: str | None = "dialog",
    call_id: str = "sub-1",
    cseq: int = 1,
    to_tag: str | None = None,
    branch: str = "z9hG4bKsub1",
    from_user: str = "carol",
    from_host: str = "example.test",
    request_uri: str | None = None,
    extra: str = "",
) -> bytes:
    headers = [
        f"SUBSCRIBE {request_uri or f'sip:{target}@example.test'} SIP/2.0",
        f"Via: SIP/2.0/UDP {CAROL[0]}:{CAROL[1]};branch={branch};rport",
        "Max-Forwards: 70",
        f"From: <sip:{from_user}@{from_host}>;tag=c1",
        f"To: <sip:{target}@example.test>" + (f";tag={to_tag}" if to_tag else ""),
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} SUBSCRIBE",
        f"Contact: <sip:{from_user}@10.0.0.30:5080>",
    ]
    if event is not None:
        headers.append(f"Event: {event}")
    if expires is not None:
        headers.append(f"Expires: {expires}")
    return (
        "\r\n".join(headers) + "\r\n" + extra + "Content-Length: 0\r\n\r\n"
    ).encode()


def notifier_of(h: Harness) -> Notifier:
    notifier = h.proxy.context.notifier
    assert notifier is not None
    return notifier


def subscribed(
    h: Harness, target: str = "bob", **options: object
) -> tuple[Response, Request]:
    """Carol subscribes; returns the 200 and the first NOTIFY (answered 200)."""
    h.receive(subscribe(target, **options), CAROL)  # type: ignore[arg-type]
    sent = h.sent_to(CAROL)
    [ok] = [m for m in sent if isinstance(m, Response)]
    assert ok.status == 200, ok
    [first] = requests(sent, "NOTIFY")
    h.receive(first.response(200), CAROL)
    return ok, first


def notifies(h: Harness, *, reply: bool = True) -> list[Request]:
    """The NOTIFYs sent to Carol since last asked, each answered 200."""
    found = requests(h.sent_to(CAROL), "NOTIFY")
    if reply:
        for notify in found:
            h.receive(notify.response(200), CAROL)
    return found


def body(notify: Request) -> ET.Element:
    assert notify.headers.get("content-type") == "application/dialog-info+xml"
    return ET.fromstring(notify.body)


def states(notify: Request) -> list[str]:
    return [
        d.findtext("d:state", namespaces=NS) or ""
        for d in body(notify).findall("d:dialog", NS)
    ]


def version(notify: Request) -> int:
    return int(body(notify).get("version") or -1)


def test_subscribe_is_answered_and_notified_at_once_with_an_idle_dialog() -> None:
    """RFC 6665 §4.2.1.1: 200 with Expires, then a NOTIFY of the full state."""
    h = Harness()
    ok, first = subscribed(h)
    assert ok.headers.get("expires") == "600"
    assert ok.headers.get("contact") == "<sip:127.0.0.1:5060>"
    to_tag = ok.to_addr.tag
    assert first.uri == "sip:carol@10.0.0.30:5080"
    assert first.headers.get("event") == "dialog"
    assert first.headers.get("subscription-state") == "active;expires=600"
    assert first.from_addr.tag == to_tag
    assert first.to_addr.tag == "c1"
    assert first.headers.get("call-id") == "sub-1"
    root = body(first)
    assert root.get("entity") == "sip:bob@example.test"
    assert root.get("state") == "full"
    assert version(first) == 0
    # Yealink and Bria show nothing for a body without a dialog element.
    assert states(first) == ["terminated"]
    assert notifier_of(h).count() == 1


def test_a_call_to_the_monitored_user_lights_the_lamp_step_by_step() -> None:
    """Trying, early (the caller named), confirmed, terminated; versions + 1."""
    h = Harness()
    h.register("bob", BOB)
    subscribed(h)
    h.receive(invite(), ALICE)
    [to_bob] = requests(h.sent_to(BOB), "INVITE")
    [trying] = notifies(h)
    assert states(trying) == ["trying"]
    h.receive(answer(to_bob, 180), BOB)
    [early] = notifies(h)
    dialog = body(early).find("d:dialog", NS)
    assert dialog is not None
    assert dialog.get("direction") == "recipient"
    assert dialog.findtext("d:state", namespaces=NS) == "early"
    assert (
        dialog.findtext("d:remote/d:identity", namespaces=NS)
        == "sip:alice@example.test"
    )
    assert dialog.findtext("d:local/d:identity", namespaces=NS) == (
        "sip:bob@example.test"
    )
    h.receive(answer(to_bob, 200, contact="<sip:bob@10.0.0.62:5060>"), BOB)
    [confirmed] = notifies(h)
    assert states(confirmed) == ["confirmed"]
    ok = next(
        m for m in h.sent_to(ALICE) if isinstance(m, Response) and m.status == 200
    )
    h.receive(bye_from_alice(ok), ALICE)
    [ended] = notifies(h)
    assert states(ended) == ["terminated"]
    dialog = body(ended).find("d:dialog", NS)
    assert dialog is not None
    state = dialog.find("d:state", NS)
    assert state is not None
    assert state.get("event") == "remote-bye"
    assert [version(n) for n in (trying, early, confirmed, ended)] == [1, 2, 3, 4]
    # Idle again: the next body has the idle dialog only.
    assert notifier_of(h).listing()[0]["state"] == "idle"


def test_a_rejected_call_ends_with_its_status() -> None:
    h = Harness()
    h.register("bob", BOB)
    subscribed(h)
    h.receive(invite(), ALICE)
    [to_bob] = requests(h.sent_to(BOB), "INVITE")
    notifies(h)
    h.receive(answer(to_bob, 486), BOB)
    [ended] = notifies(h)
    state = body(ended).find("d:dialog/d:state", NS)
    assert state is not None
    assert (state.text, state.get("event"), state.get("code")) == (
        "terminated",
        "rejected",
        "486",
    )


def test_the_caller_lamp_shows_an_outgoing_call() -> None:
    """A lamp watches its user's calls both ways: direction initiator."""
    h = Harness()
    h.register("bob", BOB)
    subscribed(h, "alice")
    h.receive(invite(), ALICE)
    [trying] = notifies(h)
    dialog = body(trying).find("d:dialog", NS)
    assert dialog is not None
    assert dialog.get("direction") == "initiator"
    assert dialog.findtext("d:remote/d:identity", namespaces=NS) == (
        "sip:bob@example.test"
    )


def test_never_two_notifies_in_flight_and_the_next_one_is_the_latest() -> None:
    """One NOTIFY at a time per subscription; changes meanwhile coalesce."""
    h = Harness()
    h.register("bob", BOB)
    subscribed(h)
    h.receive(invite(), ALICE)
    [to_bob] = requests(h.sent_to(BOB), "INVITE")
    [trying] = notifies(h, reply=False)
    h.receive(answer(to_bob, 180), BOB)
    h.receive(answer(to_bob, 200, contact="<sip:bob@10.0.0.62:5060>"), BOB)
    assert notifies(h, reply=False) == []  # waiting for the answer to the first
    h.receive(trying.response(200), CAROL)
    [latest] = notifies(h)
    assert states(latest) == ["confirmed"]
    assert version(latest) == version(trying) + 1


def test_a_lost_notify_over_udp_is_retransmitted_not_dropped() -> None:
    """The client transaction resends (§17.1.2.2); the subscription lives on."""
    h = Harness()
    h.register("bob", BOB)
    subscribed(h)
    h.receive(invite(), ALICE)
    [trying] = notifies(h, reply=False)
    h.clock.advance(0.5)
    [again] = notifies(h, reply=False)
    assert again.headers.get("cseq") == trying.headers.get("cseq")
    h.receive(again.response(200), CAROL)
    assert notifier_of(h).count() == 1


def test_a_notify_that_times_out_ends_the_subscription() -> None:
    """Timer F (32 s) fires as 408: the subscription is dropped (RFC 6665 §4.2.2)."""
    h = Harness()
    h.register("bob", BOB)
    subscribed(h)
    h.receive(invite(), ALICE)
    notifies(h, reply=False)
    for _ in range(40):
        h.clock.advance(1)
    assert notifier_of(h).count() == 0
    assert notifier_of(h).results["timeout"] == 1
    assert run(h.location.subscriptions(now=h.clock.seconds())) == []


def test_a_notify_answered_481_ends_the_subscription() -> None:
    h = Harness()
    h.register("bob", BOB)
    subscribed(h)
    h.receive(invite(), ALICE)
    [trying] = notifies(h, reply=False)
    h.receive(trying.response(481), CAROL)
    assert notifier_of(h).count() == 0
    assert notifier_of(h).results["gone"] == 1


def test_refresh_in_the_dialog_keeps_it_and_notifies() -> None:
    """RFC 6665 §4.2.1.2: a refresh gets 200 and an immediate NOTIFY."""
    h = Harness()
    ok, _ = subscribed(h)
    h.clock.advance(300)
    h.receive(
        subscribe(to_tag=ok.to_addr.tag, cseq=2, branch="z9hG4bKsub2", expires=900),
        CAROL,
    )
    sent = h.sent_to(CAROL)
    [refreshed] = [m for m in sent if isinstance(m, Response)]
    assert (refreshed.status, refreshed.headers.get("expires")) == (200, "900")
    [notify] = requests(sent, "NOTIFY")
    assert notify.headers.get("subscription-state") == "active;expires=900"
    assert version(notify) == 1
    [record] = run(h.location.subscriptions(now=h.clock.seconds()))
    assert record["expires_at"] == 1200


def test_unsubscribe_sends_a_last_terminated_notify() -> None:
    """Expires: 0 in the dialog: 200, then Subscription-State: terminated."""
    h = Harness()
    ok, _ = subscribed(h)
    h.receive(
        subscribe(to_tag=ok.to_addr.tag, cseq=2, branch="z9hG4bKsub2", expires=0),
        CAROL,
    )
    sent = h.sent_to(CAROL)
    assert [m.status for m in sent if isinstance(m, Response)] == [200]
    [last] = requests(sent, "NOTIFY")
    assert last.headers.get("subscription-state") == "terminated"
    assert states(last) == ["terminated"]
    assert notifier_of(h).count() == 0
    assert run(h.location.subscriptions(now=h.clock.seconds())) == []


def test_a_subscription_expires_with_reason_timeout() -> None:
    h = Harness()
    subscribed(h)
    h.clock.advance(601)
    [last] = notifies(h)
    assert last.headers.get("subscription-state") == "terminated;reason=timeout"
    assert notifier_of(h).count() == 0


def test_an_unknown_dialog_gets_481() -> None:
    h = Harness()
    h.receive(subscribe(to_tag="nope", cseq=2), CAROL)
    [refused] = h.sent_to(CAROL)
    assert isinstance(refused, Response)
    assert refused.status == 481


def test_too_brief_gets_423_with_min_expires_and_long_is_cut() -> None:
    """RFC 6665 §4.2.1.1: 423 and Min-Expires; longer than the maximum is cut."""
    h = Harness()
    h.receive(subscribe(expires=10), CAROL)
    [refused] = h.sent_to(CAROL)
    assert isinstance(refused, Response)
    assert (refused.status, refused.headers.get("min-expires")) == (423, "60")
    ok, _ = subscribed(h, expires=999_999, branch="z9hG4bKlong", call_id="sub-2")
    assert ok.headers.get("expires") == "3600"


def test_no_expires_means_an_hour() -> None:
    """RFC 4235 §3.2: the default subscription duration is 3600 seconds."""
    h = Harness()
    ok, _ = subscribed(h, expires=None)
    assert ok.headers.get("expires") == "3600"


def test_unknown_or_missing_event_packages_get_489() -> None:
    """RFC 6665 §8.3.2: 489 Bad Event with Allow-Events; no Event is no package."""
    h = Harness()
    for index, event in enumerate(("foo", None)):
        h.receive(subscribe(event=event, branch=f"z9hG4bKev{index}"), CAROL)
        [refused] = h.sent_to(CAROL)
        assert isinstance(refused, Response)
        assert refused.status == 489
        assert refused.headers.get("allow-events") == "dialog"


def test_presence_and_message_summary_still_go_to_the_phones() -> None:
    """Packages the phones serve are proxied to the user's bindings, as before."""
    h = Harness()
    h.register("bob", BOB)
    for index, event in enumerate(("presence", "message-summary")):
        h.receive(subscribe(event=event, branch=f"z9hG4bKp{index}"), CAROL)
        [forwarded] = requests(h.sent_to(BOB), "SUBSCRIBE")
        assert forwarded.headers.get("event") == event
    assert notifier_of(h).count() == 0


def test_an_extension_number_watches_its_user() -> None:
    """SUBSCRIBE sip:102@domain watches the user extension 102 belongs to."""
    office = parse_office({"extensions": {"102": "bob"}})
    h = Harness(office=office)
    h.register("bob", BOB)
    _, first = subscribed(h, "102")
    assert body(first).get("entity") == "sip:102@example.test"
    assert notifier_of(h).listing()[0]["lamp"] == "bob"
    h.receive(invite("102"), ALICE)
    [trying] = notifies(h)
    assert states(trying) == ["trying"]


def test_a_group_lamp_is_lit_while_any_member_is_in_a_call() -> None:
    """A ring group monitored as one lamp: the members' calls, one dialog each."""
    office = parse_office(
        {"groups": [{"number": "600", "name": "sales", "members": ["bob", "dave"]}]}
    )
    h = Harness(office=office)
    h.register("bob", BOB)
    _, first = subscribed(h, "600")
    assert states(first) == ["terminated"]
    h.receive(invite("bob"), ALICE)
    [trying] = notifies(h)
    assert states(trying) == ["trying"]


def test_an_outsider_cannot_subscribe() -> None:
    """The subscriber must be ours: a From in our domains (no users file)."""
    h = Harness()
    h.receive(subscribe(from_host="evil.example"), CAROL)
    [refused] = h.sent_to(CAROL)
    assert isinstance(refused, Response)
    assert refused.status == 403
    assert notifier_of(h).count() == 0


def test_an_unauthenticated_subscribe_is_challenged() -> None:
    """With a users file, SUBSCRIBE from our domain gets 407 like any request."""
    users = UserDB(
        "example.test",
        {"carol": {"MD5": compute_ha1("carol", "example.test", "pw", "MD5")}},
    )
    h = Harness()
    h.proxy.identity.auth = Authenticator("example.test", users, b"k" * 32)
    h.receive(subscribe(), CAROL)
    [challenge] = h.sent_to(CAROL)
    assert isinstance(challenge, Response)
    assert challenge.status == 407
    assert notifier_of(h).count() == 0


def test_notifies_go_to_the_subscribers_flow_not_its_contact() -> None:
    """docs/security.md: a NOTIFY goes where the SUBSCRIBE came from, only."""
    h = Harness()
    h.receive(
        subscribe(extra="", request_uri=None).replace(
            b"Contact: <sip:carol@10.0.0.30:5080>",
            b"Contact: <sip:victim@198.51.100.7:5060>",
        ),
        CAROL,
    )
    [notify] = requests(h.sent_to(CAROL), "NOTIFY")
    assert notify.uri == "sip:victim@198.51.100.7:5060"
    assert h.sent() == []


def test_caps_per_user_and_in_total() -> None:
    h = Harness()
    notifier = notifier_of(h)
    notifier.settings = replace(notifier.settings, max_per_user=1, max_total=2)
    subscribed(h, call_id="a")
    h.receive(subscribe(call_id="b", branch="z9hG4bKb"), CAROL)
    [refused] = h.sent_to(CAROL)
    assert isinstance(refused, Response)
    assert refused.status == 403
    subscribed(h, from_user="dave", call_id="c", branch="z9hG4bKc")
    h.receive(subscribe(from_user="erin", call_id="d", branch="z9hG4bKd"), CAROL)
    [busy] = h.sent_to(CAROL)
    assert isinstance(busy, Response)
    assert (busy.status, busy.headers.get("retry-after")) == (503, "60")


def test_a_restart_serves_the_kept_subscriptions_with_increasing_versions() -> None:
    """The store keeps the dialog and version; a new notifier goes on from them."""
    h = Harness()
    h.register("bob", BOB)
    subscribed(h)
    kept = run(h.location.subscriptions(now=h.clock.seconds()))
    assert [r["version"] for r in kept] == [1]
    fresh = Harness()
    fresh.register("bob", BOB)
    for record in kept:
        run(fresh.location.save_subscription(record["key"], record, expires_at=600))
    assert run(notifier_of(fresh).start()) == 1
    fresh.receive(invite(), ALICE)
    [notify] = requests(fresh.sent_to(CAROL), "NOTIFY")
    assert version(notify) == 1
    assert notify.headers.get("cseq") == "2 NOTIFY"


def test_single_dialog_bodies_when_asked() -> None:
    h = Harness()
    h.register("bob", BOB)
    h.register("bob", BOB2)
    notifier_of(h).settings = NotifierSettings(single_dialog=True)
    subscribed(h)
    h.receive(invite(call_id="x1"), ALICE)
    h.receive(invite(call_id="x2", branch="z9hG4bKx2"), ALICE)
    found = notifies(h)
    assert found
    assert all(len(states(n)) == 1 for n in found)


def test_a_subscription_record_round_trips() -> None:
    h = Harness()
    subscribed(h)
    [record] = run(h.location.subscriptions(now=h.clock.seconds()))
    again = Subscription.from_json(record)
    assert again.to_json() == record
    assert re.fullmatch(r"sub-1;c1;[0-9a-f]+", again.key)


def test_a_fetch_gets_200_and_one_terminated_notify() -> None:
    """Expires: 0 out of a dialog (RFC 6665 §4.4.3): the state once, nothing kept."""
    h = Harness()
    h.receive(subscribe(expires=0), CAROL)
    sent = h.sent_to(CAROL)
    assert [m.status for m in sent if isinstance(m, Response)] == [200]
    [notify] = requests(sent, "NOTIFY")
    assert notify.headers.get("subscription-state") == "terminated;reason=timeout"
    assert states(notify) == ["terminated"]
    assert notifier_of(h).count() == 0


def test_a_call_forwarded_to_another_user_lights_that_users_lamp() -> None:
    """Bob busy, forwarded to Dave who answers: Bob's lamp goes dark, Dave's lit."""
    office = parse_office({"forward": {"bob": {"busy": "dave"}}})
    h = Harness(office=office)
    dave = ("192.0.2.40", 5090)
    h.register("bob", BOB)
    h.register("dave", dave)
    subscribed(h, "bob", call_id="watch-bob")
    subscribed(h, "dave", call_id="watch-dave", branch="z9hG4bKdave")
    h.receive(invite(), ALICE)
    [to_bob] = requests(h.sent_to(BOB), "INVITE")
    [trying] = notifies(h)
    assert trying.headers.get("call-id") == "watch-bob"
    h.receive(answer(to_bob, 486), BOB)
    [to_dave] = requests(h.sent_to(dave), "INVITE")
    assert notifies(h) == []
    h.receive(answer(to_dave, 200, to_tag="d1", contact="<sip:dave@10.0.0.40>"), dave)
    found = {n.headers.get("call-id"): states(n) for n in notifies(h)}
    assert found == {"watch-bob": ["terminated"], "watch-dave": ["confirmed"]}


def test_processes_sharing_a_store_serve_each_others_subscriptions() -> None:
    """Redis scale-out: one process serves a subscription made on another.

    An unsubscribe through the first ends it on the second at its next sync.
    """
    one, two = Harness(), Harness()
    two.register("bob", BOB)
    shared = notifier_of(two)
    shared.store = one.location
    shared.shared = True
    ok, _ = subscribed(one)
    run(shared.sync())
    assert shared.count() == 1
    # A call through the second process: its NOTIFY goes on from the version.
    two.receive(invite(), ALICE)
    [notify] = requests(two.sent_to(CAROL), "NOTIFY")
    assert version(notify) == 1
    assert notify.headers.get("cseq") == "2 NOTIFY"
    # Unsubscribed through the first: the second drops it at its next sync.
    one.clock.advance(5)
    two.clock.advance(5)
    one.receive(
        subscribe(to_tag=ok.to_addr.tag, cseq=2, branch="z9hG4bKsub2", expires=0),
        CAROL,
    )
    run(shared.sync())
    assert shared.count() == 0


def test_a_refresh_reaching_another_process_is_served_there() -> None:
    one, two = Harness(), Harness()
    shared = notifier_of(two)
    shared.store = one.location
    shared.shared = True
    ok, _ = subscribed(one)
    two.receive(
        subscribe(to_tag=ok.to_addr.tag, cseq=2, branch="z9hG4bKsub2", expires=900),
        CAROL,
    )
    sent = two.sent_to(CAROL)
    assert [m.status for m in sent if isinstance(m, Response)] == [200]
    [notify] = requests(sent, "NOTIFY")
    assert version(notify) == 1


def test_metrics_are_told_each_result() -> None:
    h = Harness()
    results: list[str] = []

    class Observer:
        def notify_result(self, result: str) -> None:
            results.append(result)

    notifier_of(h).observer = Observer()
    subscribed(h)
    assert results == ["ok"]


def test_a_call_never_ended_goes_dark_after_max_call_seconds() -> None:
    """A BYE never seen: the next call after max_call_seconds ends the old one."""
    h = Harness()
    h.register("bob", BOB)
    notifier = notifier_of(h)
    notifier.max_call_seconds = 100
    subscribed(h, expires=3600)
    h.receive(invite(call_id="lost"), ALICE)
    [to_bob] = requests(h.sent_to(BOB), "INVITE")
    assert [states(n) for n in notifies(h)] == [["trying"]]
    h.receive(answer(to_bob, 200, contact="<sip:bob@10.0.0.62:5060>"), BOB)
    assert [states(n) for n in notifies(h)] == [["confirmed"]]
    h.clock.advance(101)
    h.receive(invite(call_id="next", branch="z9hG4bKnext"), ALICE)
    [gone] = notifies(h)
    assert states(gone) == ["terminated"]
    [fresh] = notifies(h)  # queued behind the first (one in flight)
    assert states(fresh) == ["trying"]


def test_an_unsubscribe_while_a_notify_is_out_sends_the_last_one_after_it() -> None:
    """The terminated NOTIFY waits for the one in flight, then goes (in order)."""
    h = Harness()
    h.register("bob", BOB)
    ok, _ = subscribed(h)
    h.receive(invite(), ALICE)
    [trying] = notifies(h, reply=False)
    h.receive(
        subscribe(to_tag=ok.to_addr.tag, cseq=2, branch="z9hG4bKsub2", expires=0),
        CAROL,
    )
    sent = h.sent_to(CAROL)
    assert [m.status for m in sent if isinstance(m, Response)] == [200]
    assert requests(sent, "NOTIFY") == []
    h.receive(trying.response(200), CAROL)
    [last] = notifies(h)
    assert last.headers.get("subscription-state") == "terminated"
    assert version(last) == version(trying) + 1
    h.receive(answer(requests(h.sent_to(BOB), "INVITE")[0], 180), BOB)
    assert notifies(h) == []


def test_a_subscriber_that_accepts_no_dialog_info_gets_406() -> None:
    """A resource-list-only Accept (RFC 4662) is no body we can send."""
    h = Harness()
    h.receive(subscribe(extra="Accept: application/rlmi+xml\r\n"), CAROL)
    [refused] = h.sent_to(CAROL)
    assert isinstance(refused, Response)
    assert (refused.status, refused.headers.get("accept")) == (
        406,
        "application/dialog-info+xml",
    )
    ok, _ = subscribed(
        h,
        branch="z9hG4bKacc",
        call_id="sub-acc",
        extra="Accept: application/dialog-info+xml, multipart/related\r\n",
    )
    assert ok.status == 200


def test_lamps_resolve_users_extensions_and_groups() -> None:
    """What a SUBSCRIBE's user part watches; unknown names watch nothing."""
    office = parse_office(
        {
            "extensions": {"102": "bob"},
            "groups": [{"number": "600", "name": "sales", "members": ["bob", "dave"]}],
        }
    )
    users = {"alice", "bob", "dave"}
    lamps = Lamps(lambda: office, users.__contains__)
    assert lamps.lamp("bob") == "bob"
    assert lamps.lamp("102") == "bob"
    assert lamps.lamp("600") == "group:sales"
    assert lamps.lamp("mallory") is None
    assert lamps.users("600") == ("bob", "dave")
    assert lamps.groups_of("dave") == ["group:sales"]
    assert lamps.members("group:sales") == ("bob", "dave")
    assert lamps.members("group:gone") == ()
    bare = Lamps()
    assert bare.lamp("anyone") == "anyone"
    assert bare.groups_of("anyone") == []


def dialog_of(notify: Request) -> ET.Element:
    [dialog] = body(notify).findall("d:dialog", NS)
    return dialog


def test_a_subscription_made_while_the_user_rings_shows_the_call_at_once() -> None:
    """RFC 6665 §4.2.1.2: the first NOTIFY carries the state now: early, then on."""
    h = Harness()
    h.register("bob", BOB)
    h.receive(invite(), ALICE)
    [to_bob] = requests(h.sent_to(BOB), "INVITE")
    h.receive(answer(to_bob, 180), BOB)
    _, first = subscribed(h)
    dialog = dialog_of(first)
    assert dialog.findtext("d:state", namespaces=NS) == "early"
    assert dialog.get("direction") == "recipient"
    assert dialog.get("call-id") == "call-1"
    assert (dialog.get("local-tag"), dialog.get("remote-tag")) == ("b1", "a1")
    assert dialog.findtext("d:remote/d:identity", namespaces=NS) == (
        "sip:alice@example.test"
    )
    h.receive(answer(to_bob, 200, contact="<sip:bob@10.0.0.62:5060>"), BOB)
    [confirmed] = notifies(h)
    assert states(confirmed) == ["confirmed"]


def test_a_subscription_made_during_an_answered_call_shows_it_confirmed() -> None:
    """Both lamps of a call in progress: the callee's and the caller's."""
    h = Harness()
    h.register("bob", BOB)
    h.receive(invite(), ALICE)
    [to_bob] = requests(h.sent_to(BOB), "INVITE")
    h.receive(answer(to_bob, 200, contact="<sip:bob@10.0.0.62:5060>"), BOB)
    _, first = subscribed(h)
    assert states(first) == ["confirmed"]
    assert dialog_of(first).get("local-tag") == "b1"
    _, caller = subscribed(h, "alice", call_id="watch-alice", branch="z9hG4bKal")
    assert states(caller) == ["confirmed"]
    assert dialog_of(caller).get("direction") == "initiator"
    ok = next(
        m for m in h.sent_to(ALICE) if isinstance(m, Response) and m.status == 200
    )
    h.receive(bye_from_alice(ok), ALICE)
    ended = {n.headers.get("call-id"): states(n) for n in notifies(h)}
    assert ended == {"sub-1": ["terminated"], "watch-alice": ["terminated"]}


def test_a_group_lamp_subscribed_during_a_members_call_shows_it() -> None:
    office = parse_office(
        {"groups": [{"number": "600", "name": "sales", "members": ["bob", "dave"]}]}
    )
    h = Harness(office=office)
    h.register("bob", BOB)
    h.receive(invite("bob"), ALICE)
    [to_bob] = requests(h.sent_to(BOB), "INVITE")
    h.receive(answer(to_bob, 200, contact="<sip:bob@10.0.0.62:5060>"), BOB)
    _, first = subscribed(h, "600")
    assert states(first) == ["confirmed"]


def test_a_fetch_during_a_call_shows_it() -> None:
    """A poll (RFC 6665 §4.4.3) sees the call as a subscription would."""
    h = Harness()
    h.register("bob", BOB)
    h.receive(invite(), ALICE)
    [to_bob] = requests(h.sent_to(BOB), "INVITE")
    h.receive(answer(to_bob, 180), BOB)
    h.receive(subscribe(expires=0), CAROL)
    [notify] = requests(h.sent_to(CAROL), "NOTIFY")
    assert states(notify) == ["early"]
    h.receive(notify.response(200), CAROL)
    h.receive(answer(to_bob, 200, contact="<sip:bob@10.0.0.62:5060>"), BOB)
    assert notifies(h) == []


def test_the_last_notify_of_an_unsubscribe_shows_the_call() -> None:
    h = Harness()
    h.register("bob", BOB)
    ok, _ = subscribed(h)
    h.receive(invite(), ALICE)
    [to_bob] = requests(h.sent_to(BOB), "INVITE")
    assert [states(n) for n in notifies(h)] == [["trying"]]
    h.receive(answer(to_bob, 200, contact="<sip:bob@10.0.0.62:5060>"), BOB)
    assert [states(n) for n in notifies(h)] == [["confirmed"]]
    h.receive(
        subscribe(to_tag=ok.to_addr.tag, cseq=2, branch="z9hG4bKsub2", expires=0),
        CAROL,
    )
    [last] = notifies(h)
    assert last.headers.get("subscription-state") == "terminated"
    assert states(last) == ["confirmed"]


def test_a_subscription_taken_from_a_shared_store_sees_the_calls_going() -> None:
    """Redis scale-out: made on one process, synced by another mid-call."""
    one, two = Harness(), Harness()
    two.register("bob", BOB)
    shared = notifier_of(two)
    shared.store = one.location
    shared.shared = True
    two.receive(invite(), ALICE)
    [to_bob] = requests(two.sent_to(BOB), "INVITE")
    two.receive(answer(to_bob, 180), BOB)
    subscribed(one)
    run(shared.sync())
    two.receive(answer(to_bob, 200, contact="<sip:bob@10.0.0.62:5060>"), BOB)
    [notify] = requests(two.sent_to(CAROL), "NOTIFY")
    assert states(notify) == ["confirmed"]


def test_a_call_forwarded_to_the_only_watched_user_lights_their_lamp() -> None:
    """Nobody watches Bob or Alice; Dave, whom Bob's busy forward reaches, is."""
    office = parse_office({"forward": {"bob": {"busy": "dave"}}})
    h = Harness(office=office)
    dave = ("192.0.2.40", 5090)
    h.register("bob", BOB)
    h.register("dave", dave)
    subscribed(h, "dave", call_id="watch-dave", branch="z9hG4bKdave")
    h.receive(invite(), ALICE)
    [to_bob] = requests(h.sent_to(BOB), "INVITE")
    h.receive(answer(to_bob, 486), BOB)
    [to_dave] = requests(h.sent_to(dave), "INVITE")
    assert notifies(h) == []
    h.receive(answer(to_dave, 200, to_tag="d1", contact="<sip:dave@10.0.0.40>"), dave)
    [notify] = notifies(h)
    assert states(notify) == ["confirmed"]
    assert dialog_of(notify).findtext("d:remote/d:identity", namespaces=NS) == (
        "sip:alice@example.test"
    )


def test_calls_nobody_watches_cost_the_lamps_nothing(lamps_follow: str) -> None:
    """As the server wires it: off the event stream while nobody is watched.

    Only watched users' calls are kept; an unsubscribe lets them go once its
    last NOTIFY is answered.
    """
    if lamps_follow != "watched calls":
        # The bare proxy (no call tracker to seed from) keeps every call.
        h = Harness()
        h.register("dave", ("192.0.2.40", 5090))
        h.receive(invite("dave", call_id="to-dave"), ALICE)
        assert notifier_of(h) in h.proxy.events.dialogs
        assert notifier_of(h).kept() == 1
        return
    h = Harness()
    notifier = notifier_of(h)
    assert h.calls is not None
    assert notifier not in h.proxy.events.dialogs
    h.register("bob", BOB)
    h.register("dave", ("192.0.2.40", 5090))
    h.receive(invite("dave", call_id="to-dave"), ALICE)
    assert notifier.kept() == 0
    assert h.calls.active() == 1
    ok, _ = subscribed(h)
    assert notifier in h.proxy.events.dialogs
    assert notifier.kept() == 0
    h.receive(invite(branch="z9hG4bKalice2"), ALICE)
    assert notifier.kept() == 1
    assert [states(n) for n in notifies(h)] == [["trying"]]
    h.receive(
        subscribe(to_tag=ok.to_addr.tag, cseq=2, branch="z9hG4bKsub2", expires=0),
        CAROL,
    )
    [last] = requests(h.sent_to(CAROL), "NOTIFY")
    assert states(last) == ["trying"]
    assert notifier.kept() == 1
    h.receive(last.response(200), CAROL)
    assert notifier.kept() == 0
    assert notifier not in h.proxy.events.dialogs
    assert h.calls in h.proxy.events.dialogs


def test_a_member_added_to_a_watched_group_on_reload_lights_it_at_once() -> None:
    """A reload puts Bob, in a call, into a watched group: its next NOTIFY shows it."""
    sales = {"number": "600", "name": "sales", "members": ["dave"]}
    h = Harness(office=parse_office({"groups": [sales]}))
    h.register("bob", BOB)
    ok, first = subscribed(h, "600")
    assert states(first) == ["terminated"]
    h.receive(invite("bob"), ALICE)
    [to_bob] = requests(h.sent_to(BOB), "INVITE")
    h.receive(answer(to_bob, 200, contact="<sip:bob@10.0.0.62:5060>"), BOB)
    assert notifies(h) == []
    plan = h.proxy.office
    assert plan is not None
    plan.office = parse_office({"groups": [{**sales, "members": ["bob", "dave"]}]})
    notifier_of(h).office_changed()
    h.receive(
        subscribe("600", to_tag=ok.to_addr.tag, cseq=2, branch="z9hG4bKsub2"),
        CAROL,
    )
    [refreshed] = notifies(h)
    assert states(refreshed) == ["confirmed"]
