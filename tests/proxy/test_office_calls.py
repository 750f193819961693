"""Office PBX calls through the proxy core on fakes (issue 9), time driven by tests.

Bob's phone is at BOB, Carol's at CAROL; Alice calls from ALICE. Voicemail is a
SIP URI on VM. Every timer is driven with ``clock.advance``.
"""

from __future__ import annotations

from urllib.parse import unquote

from sipproxy.office.model import Office, parse_office
from sipproxy.sip.message import Request, Response
from tests.proxy.harness import ALICE, BOB, BOB2, Harness, answer, invite, run

CAROL = BOB2
VM = ("192.0.2.99", 5070)
VM_URI = f"sip:vm@{VM[0]}:{VM[1]}"
USERS = frozenset({"alice", "bob", "carol"})


def office(**sections: object) -> Office:
    return parse_office(
        {
            "extensions": {"101": "alice", "102": "bob", "103": "carol"},
            "groups": [
                {"number": "200", "name": "sales", "members": ["bob", "carol"],
                 "ring_seconds": 2},
                {"number": "300", "name": "support", "members": ["bob", "carol"],
                 "strategy": "sequential", "ring_seconds": 2},
            ],
            **sections,
        }
    ).with_users(USERS)  # fmt: skip


def harness(**sections: object) -> Harness:
    return Harness(office=office(**sections), known_users=frozenset())


def requests(h: Harness, where: tuple[str, int], method: str) -> list[Request]:
    return [
        m for m in h.sent_to(where) if isinstance(m, Request) and m.method == method
    ]


def statuses(h: Harness, where: tuple[str, int] = ALICE) -> list[int]:
    return [m.status for m in h.sent_to(where) if isinstance(m, Response)]


def one_invite(h: Harness, where: tuple[str, int]) -> Request:
    found = requests(h, where, "INVITE")
    assert len(found) == 1, found
    return found[0]


def test_extension_rings_the_users_phone() -> None:
    """sip:102@ reaches Bob's binding exactly as sip:bob@ would."""
    h = harness()
    h.register("bob", BOB)
    h.receive(invite("102"), ALICE)
    to_bob = one_invite(h, BOB)
    assert to_bob.uri == "sip:bob@10.0.0.62:5060"
    assert "diversion" not in to_bob.headers
    h.receive(answer(to_bob, 200), BOB)
    assert statuses(h) == [100, 200]


def test_unknown_number_is_404() -> None:
    """A number that is no extension, group or user is not found."""
    h = harness()
    h.receive(invite("999"), ALICE)
    assert statuses(h) == [100, 404]


def test_parallel_group_rings_all_first_answer_wins() -> None:
    """Both members ring at once; the first 200 wins and the other is CANCELled."""
    h = harness()
    h.register("bob", BOB)
    h.register("carol", CAROL)
    h.receive(invite("200"), ALICE)
    to_bob, to_carol = one_invite(h, BOB), one_invite(h, CAROL)
    h.receive(answer(to_bob, 180), BOB)
    h.receive(answer(to_carol, 180, to_tag="c1"), CAROL)
    h.receive(answer(to_carol, 200, to_tag="c1"), CAROL)
    assert len(requests(h, BOB, "CANCEL")) == 1
    assert statuses(h) == [100, 180, 180, 200]


def test_parallel_group_rings_each_members_newest_binding_only() -> None:
    """A member with two phones: only the newest rings in a group call."""
    h = harness()
    h.register("bob", ("192.0.2.30", 5060), at=0)
    h.register("bob", BOB, at=1)
    h.register("carol", CAROL)
    h.receive(invite("200"), ALICE)
    assert len(requests(h, BOB, "INVITE")) == 1
    assert requests(h, ("192.0.2.30", 5060), "INVITE") == []


def test_parallel_group_no_answer_gives_480_after_ring_seconds() -> None:
    """Nobody answers within ring_seconds: both CANCELled, the caller gets 480."""
    h = harness()
    h.register("bob", BOB)
    h.register("carol", CAROL)
    h.receive(invite("200"), ALICE)
    to_bob, to_carol = one_invite(h, BOB), one_invite(h, CAROL)
    h.receive(answer(to_bob, 180), BOB)
    h.receive(answer(to_carol, 180, to_tag="c1"), CAROL)
    h.clock.advance(1.9)
    assert requests(h, BOB, "CANCEL") == []
    h.clock.advance(0.2)
    assert len(requests(h, BOB, "CANCEL")) == 1
    assert len(requests(h, CAROL, "CANCEL")) == 1
    h.receive(answer(to_bob, 487), BOB)
    h.receive(answer(to_carol, 487, to_tag="c1"), CAROL)
    assert statuses(h)[-1] == 480


def test_group_no_answer_follows_the_groups_own_forwarding() -> None:
    """[forward.sales] no_answer: the unanswered group call goes to voicemail."""
    h = harness(forward={"sales": {"no_answer": VM_URI}})
    h.register("bob", BOB)
    h.receive(invite("200"), ALICE)
    to_bob = one_invite(h, BOB)
    h.receive(answer(to_bob, 180), BOB)
    h.clock.advance(2.1)
    assert len(requests(h, BOB, "CANCEL")) == 1
    h.receive(answer(to_bob, 487), BOB)
    to_vm = one_invite(h, VM)
    assert to_vm.uri == VM_URI
    assert to_vm.headers.get_all("diversion") == [
        "<sip:200@example.test>;reason=no-answer;counter=1"
    ]


def test_sequential_group_rings_one_member_at_a_time() -> None:
    """Bob rings for ring_seconds, is CANCELled, then Carol rings and answers."""
    h = harness()
    h.register("bob", BOB)
    h.register("carol", CAROL)
    h.receive(invite("300"), ALICE)
    to_bob = one_invite(h, BOB)
    assert requests(h, CAROL, "INVITE") == []
    h.receive(answer(to_bob, 180), BOB)
    h.clock.advance(2.1)
    assert len(requests(h, BOB, "CANCEL")) == 1
    h.receive(answer(to_bob, 487), BOB)
    to_carol = one_invite(h, CAROL)
    h.receive(answer(to_carol, 200, to_tag="c1"), CAROL)
    assert statuses(h)[-1] == 200


def test_sequential_group_moves_on_when_a_member_is_busy() -> None:
    """A busy member does not end the hunt: the next member rings at once."""
    h = harness()
    h.register("bob", BOB)
    h.register("carol", CAROL)
    h.receive(invite("300"), ALICE)
    h.receive(answer(one_invite(h, BOB), 486), BOB)
    assert len(requests(h, CAROL, "INVITE")) == 1
    assert 486 not in statuses(h)


def test_busy_goes_to_voicemail_with_diversion_and_history_info() -> None:
    """486 from the phone: the INVITE goes to the busy target, naming Bob."""
    h = harness(forward={"bob": {"busy": VM_URI}})
    h.register("bob", BOB)
    h.receive(invite("bob"), ALICE)
    h.receive(answer(one_invite(h, BOB), 486), BOB)
    to_vm = one_invite(h, VM)
    assert to_vm.uri == VM_URI
    assert to_vm.headers.get_all("diversion") == [
        "<sip:bob@example.test>;reason=user-busy;counter=1"
    ]
    history = to_vm.headers.get_all("history-info")
    assert len(history) == 2
    assert history[0].startswith("<sip:bob@example.test?Reason=")
    assert "SIP;cause=486" in unquote(history[0])
    assert history[0].endswith(";index=1")
    assert history[1] == f"<{VM_URI};cause=486>;index=1.1;mp=1"
    h.receive(answer(to_vm, 200, to_tag="vm"), VM)
    assert statuses(h)[-1] == 200
    assert 486 not in statuses(h)


def test_no_answer_goes_to_voicemail_after_no_answer_seconds() -> None:
    """The phone rings no_answer_seconds, is CANCELled, the call goes on."""
    h = harness(forward={"bob": {"no_answer": VM_URI, "no_answer_seconds": 3}})
    h.register("bob", BOB)
    h.receive(invite("102"), ALICE)
    to_bob = one_invite(h, BOB)
    h.receive(answer(to_bob, 180), BOB)
    h.clock.advance(2.9)
    assert requests(h, BOB, "CANCEL") == []
    h.clock.advance(0.2)
    assert len(requests(h, BOB, "CANCEL")) == 1
    h.receive(answer(to_bob, 487), BOB)
    to_vm = one_invite(h, VM)
    assert "reason=no-answer" in to_vm.headers.get_all("diversion")[0]
    assert "cause=408" in to_vm.headers.get_all("history-info")[-1]


def test_unavailable_without_binding_goes_to_voicemail() -> None:
    """Nobody registered for Bob: straight to the unavailable target."""
    h = harness(forward={"bob": {"unavailable": VM_URI}})
    h.receive(invite("bob"), ALICE)
    to_vm = one_invite(h, VM)
    assert "reason=unavailable" in to_vm.headers.get_all("diversion")[0]


def test_unavailable_on_480_from_the_phone() -> None:
    """A 480 from the only phone counts as unavailable."""
    h = harness(forward={"bob": {"unavailable": VM_URI}})
    h.register("bob", BOB)
    h.receive(invite("bob"), ALICE)
    h.receive(answer(one_invite(h, BOB), 480), BOB)
    assert len(requests(h, VM, "INVITE")) == 1


def test_unconditional_forwarding_to_an_extension() -> None:
    """Alice forwards everything to 103: Carol's phone rings, Alice's does not."""
    h = harness(forward={"alice": {"unconditional": "103"}})
    h.register("alice", BOB)
    h.register("carol", CAROL)
    h.receive(invite("101"), ALICE)
    assert requests(h, BOB, "INVITE") == []
    to_carol = one_invite(h, CAROL)
    assert to_carol.headers.get_all("diversion") == [
        "<sip:alice@example.test>;reason=unconditional;counter=1"
    ]


def test_chained_forwarding_lists_every_diversion_newest_first() -> None:
    """Alice -> Bob (unconditional), Bob busy -> voicemail: two Diversions."""
    h = harness(forward={"alice": {"unconditional": "bob"}, "bob": {"busy": VM_URI}})
    h.register("bob", BOB)
    h.receive(invite("alice"), ALICE)
    h.receive(answer(one_invite(h, BOB), 486), BOB)
    to_vm = one_invite(h, VM)
    assert to_vm.headers.get_all("diversion") == [
        "<sip:bob@example.test>;reason=user-busy;counter=1",
        "<sip:alice@example.test>;reason=unconditional;counter=1",
    ]
    indices = [v.rsplit(";index=", 1)[1] for v in to_vm.headers.get_all("history-info")]
    assert indices == ["1", "1.1;mp=1", "1.1.1;mp=1.1"]


def test_dnd_goes_to_the_busy_target() -> None:
    """Do-not-disturb: the phone never rings; the call goes to the busy target."""
    h = harness(forward={"bob": {"dnd": True, "busy": VM_URI}})
    h.register("bob", BOB)
    h.receive(invite("bob"), ALICE)
    assert requests(h, BOB, "INVITE") == []
    to_vm = one_invite(h, VM)
    assert "reason=do-not-disturb" in to_vm.headers.get_all("diversion")[0]


def test_dnd_without_busy_target_is_486() -> None:
    h = harness(forward={"bob": {"dnd": True}})
    h.register("bob", BOB)
    h.receive(invite("bob"), ALICE)
    assert requests(h, BOB, "INVITE") == []
    assert statuses(h) == [100, 486]


def test_dnd_set_at_run_time_wins_over_the_toml() -> None:
    """A stored setting (the admin API's) overrides the TOML default, per key."""
    h = harness(forward={"bob": {"busy": VM_URI}})
    h.register("bob", BOB)
    prefs = h.proxy.office
    assert prefs is not None
    effective = run(prefs.set_dnd("bob", True))
    assert effective.dnd and effective.busy == VM_URI
    h.receive(invite("bob"), ALICE)
    assert requests(h, BOB, "INVITE") == []
    assert len(requests(h, VM, "INVITE")) == 1
    run(prefs.set_dnd("bob", False))
    h.receive(invite("bob", call_id="call-2", branch="z9hG4bKalice2"), ALICE)
    assert len(requests(h, BOB, "INVITE")) == 1


def test_forwarding_loop_set_at_run_time_stops_at_482() -> None:
    """Stored unconditional forwarding bob -> carol -> bob ends in 482."""
    h = harness()
    store = h.location
    run(store.set_preferences("bob", {"unconditional": "carol"}))
    run(store.set_preferences("carol", {"unconditional": "bob"}))
    h.receive(invite("bob"), ALICE)
    assert statuses(h) == [100, 482]


def test_caller_cancel_while_forwarding_gets_487() -> None:
    """A CANCEL during a group call ends it: no forwarding afterwards."""
    h = harness(forward={"sales": {"no_answer": VM_URI}})
    h.register("bob", BOB)
    h.receive(invite("200"), ALICE)
    to_bob = one_invite(h, BOB)
    h.receive(answer(to_bob, 180), BOB)
    cancel = (
        invite("200")
        .replace(b"INVITE sip", b"CANCEL sip")
        .replace(b"1 INVITE", b"1 CANCEL")
    )
    h.receive(cancel, ALICE)
    assert len(requests(h, BOB, "CANCEL")) == 1
    h.receive(answer(to_bob, 487), BOB)
    h.clock.advance(5)
    assert requests(h, VM, "INVITE") == []
    assert statuses(h)[-1] == 487


def test_busy_on_the_newest_of_two_phones_goes_to_voicemail() -> None:
    """Sequential forking: a 486 from the newest phone is busy for the user."""
    h = harness(forward={"bob": {"busy": VM_URI}})
    h.register("bob", CAROL, at=0)
    h.register("bob", BOB, at=1)
    h.receive(invite("bob"), ALICE)
    h.receive(answer(one_invite(h, BOB), 486), BOB)
    assert requests(h, CAROL, "INVITE") == []
    assert len(requests(h, VM, "INVITE")) == 1


def test_sequential_group_with_nobody_registered_is_480() -> None:
    """No member has a phone: the group call ends with 480, not 404."""
    h = harness()
    h.receive(invite("300"), ALICE)
    assert statuses(h) == [100, 480]


def test_unavailable_on_503_from_the_phone_and_408_timeout() -> None:
    """503 from the phone, or no answer at all (Timer B), is unavailable."""
    h = harness(forward={"bob": {"unavailable": VM_URI}})
    h.register("bob", BOB)
    h.receive(invite("bob"), ALICE)
    h.receive(answer(one_invite(h, BOB), 503), BOB)
    assert [r.call_id for r in requests(h, VM, "INVITE")] == ["call-1"]
    h.receive(invite("bob", call_id="call-2", branch="z9hG4bKalice2"), ALICE)
    assert len(requests(h, BOB, "INVITE")) == 1
    for _ in range(40):  # Timer B: 64 * T1 = 32 s of retransmissions, no answer
        h.clock.advance(1)
    assert "call-2" in {r.call_id for r in requests(h, VM, "INVITE")}


def test_declined_call_is_passed_up_not_forwarded() -> None:
    """603 Decline is the callee's answer: no forwarding (RFC 5806 reasons only)."""
    h = harness(forward={"bob": {"busy": VM_URI, "unavailable": VM_URI}})
    h.register("bob", BOB)
    h.receive(invite("bob"), ALICE)
    h.receive(answer(one_invite(h, BOB), 603), BOB)
    assert requests(h, VM, "INVITE") == []
    assert statuses(h)[-1] == 603


def test_group_member_on_dnd_is_skipped() -> None:
    """Carol set do-not-disturb: group 200 rings only Bob."""
    h = harness()
    h.register("bob", BOB)
    h.register("carol", CAROL)
    prefs = h.proxy.office
    assert prefs is not None
    run(prefs.set_dnd("carol", True))
    h.receive(invite("200"), ALICE)
    assert len(requests(h, BOB, "INVITE")) == 1
    assert requests(h, CAROL, "INVITE") == []


def test_received_diversion_and_history_info_are_kept() -> None:
    """Our Diversion goes above a received one (RFC 5806 §4).

    A received History-Info is left as it is: its indices are the sender's.
    """
    h = harness(forward={"bob": {"unconditional": VM_URI}})
    extra = (
        "Diversion: <sip:x@elsewhere.test>;reason=unconditional;counter=1\r\n"
        "History-Info: <sip:x@elsewhere.test>;index=1\r\n"
    )
    h.receive(invite("bob", extra=extra), ALICE)
    to_vm = one_invite(h, VM)
    assert to_vm.headers.get_all("diversion") == [
        "<sip:bob@example.test>;reason=unconditional;counter=1",
        "<sip:x@elsewhere.test>;reason=unconditional;counter=1",
    ]
    assert to_vm.headers.get_all("history-info") == ["<sip:x@elsewhere.test>;index=1"]


def test_other_requests_to_an_extension_reach_the_user() -> None:
    """A MESSAGE to 102 is delivered to Bob's phone like one to bob."""
    h = harness()
    h.register("bob", BOB)
    message = (
        invite("102")
        .replace(b"INVITE sip", b"MESSAGE sip")
        .replace(b"1 INVITE", b"1 MESSAGE")
    )
    h.receive(message, ALICE)
    [to_bob] = requests(h, BOB, "MESSAGE")
    assert to_bob.uri == "sip:bob@10.0.0.62:5060"


def test_caller_with_an_extension_is_asserted_with_it() -> None:
    """The callee sees "101": P-Asserted-Identity (RFC 3325), From untouched."""
    h = harness()
    h.register("bob", BOB)
    spoofed = 'P-Asserted-Identity: "CEO" <sip:ceo@example.test>\r\n'
    h.receive(invite("102", extra=spoofed), ALICE)
    to_bob = one_invite(h, BOB)
    assert to_bob.headers.get_all("p-asserted-identity") == [
        '"101" <sip:alice@example.test>'
    ]
    assert to_bob.headers.get("from") == '"Alice" <sip:alice@example.test>;tag=a1'


def test_caller_without_an_extension_gets_no_asserted_identity() -> None:
    """Only callers with an extension are asserted; other headers pass as sent."""
    h = Harness(
        office=parse_office({"extensions": {"102": "bob"}}).with_users(USERS),
        known_users=frozenset(),
    )
    h.register("bob", BOB)
    h.receive(invite("102"), ALICE)
    assert "p-asserted-identity" not in one_invite(h, BOB).headers
