"""Every RFC 3261 §10.3 rule of the registrar, over the memory store."""

from __future__ import annotations

from email.utils import formatdate
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.logger import Logger, LogLevel

from sipproxy.location import Binding, LocationUnavailableError
from sipproxy.location.memory import MemoryLocationService
from sipproxy.registrar import (
    Registrar,
    RegistrarSettings,
    decide_changes,
    decide_registration,
)
from sipproxy.sip.message import Request
from tests.registrar.helpers import (
    ALICE,
    CALL_ID,
    DOMAIN,
    NAT_FLOW,
    SETTINGS,
    TCP_FLOW,
    Phone,
    contacts,
    header_values,
    register_request,
    run,
)

PHONE = "sip:alice@10.0.0.5:5060"
LAPTOP = "sip:alice@10.0.0.6:5060"


# -- step 1: the Request-URI's domain -----------------------------------------------


def test_foreign_request_uri_domain_is_refused() -> None:
    """A Request-URI outside our domains: 403, nothing stored (§10.3 step 1)."""
    phone = Phone()
    answer = phone.register(f"Contact: <{PHONE}>", uri="sip:elsewhere.example.net")
    assert answer.status == 403
    assert phone.bindings() == []


def test_request_uri_domain_compares_without_case() -> None:
    """Host names are case-insensitive: sip:EXAMPLE.COM is our domain."""
    phone = Phone()
    answer = phone.register(f"Contact: <{PHONE}>", uri="sip:EXAMPLE.COM")
    assert answer.status == 200
    assert contacts(phone.bindings()) == [PHONE]


# -- step 2: Require ------------------------------------------------------------------


def test_unknown_required_extension_gets_420_listing_it() -> None:
    """Require other than path/outbound: 420 with Unsupported (§10.3 step 2).

    Unsupported lists only the unknown tags, and nothing is stored (§8.2.2.3).
    """
    phone = Phone()
    answer = phone.register(
        f"Contact: <{PHONE}>", "Require: path, gruu, foo", "Supported: path"
    )
    assert answer.status == 420
    assert header_values(answer, "Unsupported") == ["gruu, foo"]
    assert phone.bindings() == []


def test_path_and_outbound_may_be_required() -> None:
    """Require: path, outbound is accepted: we support both."""
    answer = Phone().register(f"Contact: <{PHONE}>", "Require: path, outbound")
    assert answer.status == 200


# -- step 5: the address-of-record from To ----------------------------------------


def test_aor_is_canonical_scheme_user_host() -> None:
    """To's URI parameters, port and escapes do not make another AOR (§10.3 step 5)."""
    phone = Phone()
    phone.register(f"Contact: <{PHONE}>", to="<sip:%61lice@EXAMPLE.com:5060;user=ip>")
    phone.register(f"Contact: <{LAPTOP}>", to="Alice <sip:alice@example.com>")
    assert sorted(contacts(phone.bindings(ALICE))) == [PHONE, LAPTOP]
    assert {b.aor for b in phone.bindings(ALICE)} == {ALICE}


def test_to_of_a_foreign_domain_gets_404() -> None:
    """An AOR outside our domains is not valid here: 404, nothing stored (step 5)."""
    phone = Phone()
    answer = phone.register(f"Contact: <{PHONE}>", to="<sip:alice@example.org>")
    assert answer.status == 404
    assert phone.bindings("sip:alice@example.org") == []


@pytest.mark.parametrize("to", ["<tel:+15551234567>", "isbn:2983792873"])
def test_to_must_be_a_sip_uri(to: str) -> None:
    """A To that is not sip/sips names no AOR: 400 (RFC 4475 §3.3.4)."""
    answer = Phone().register(f"Contact: <{PHONE}>", to=to)
    assert answer.status == 400
    assert answer.reason is not None and "To" in answer.reason


def test_third_party_registration_is_allowed_for_now() -> None:
    """From may differ from To until authentication arrives (TODO issue 5)."""
    request = register_request(f"Contact: <{PHONE}>")
    headers = request.headers.replace("From", "<sip:secretary@example.com>;tag=1")
    registrar = Registrar(MemoryLocationService(), SETTINGS)
    third = Request("REGISTER", request.uri, headers)
    assert run(registrar.register(third, NAT_FLOW, now=1000.0)).status == 200


# -- step 6: the wildcard -------------------------------------------------------------


def test_star_removes_all_bindings() -> None:
    """Contact: * with Expires: 0 removes every binding of the AOR (§10.3 step 6)."""
    phone = Phone()
    phone.register(f"Contact: <{PHONE}>, <{LAPTOP}>")
    answer = phone.register("Contact: *", "Expires: 0")
    assert answer.status == 200
    assert header_values(answer, "Contact") == []
    assert phone.bindings() == []


@pytest.mark.parametrize(
    "lines",
    [
        ("Contact: *",),
        ("Contact: *", "Expires: 3600"),
        ("Contact: *", f"Contact: <{LAPTOP}>", "Expires: 0"),
        (f"Contact: *, <{LAPTOP}>", "Expires: 0"),
    ],
    ids=["no-expires", "expires-3600", "two-fields", "two-values"],
)
def test_star_needs_expires_zero_and_no_other_contact(lines: tuple[str, ...]) -> None:
    """'*' without Expires: 0 or beside another Contact: 400 (§10.3 step 6).

    The bindings stay as they were.
    """
    phone = Phone()
    phone.register(f"Contact: <{PHONE}>")
    answer = phone.register(*lines)
    assert answer.status == 400
    assert contacts(phone.bindings()) == [PHONE]


def test_star_obeys_the_call_id_cseq_rule() -> None:
    """'*' obeys the Call-ID/CSeq rule: a stale one is refused (§10.3 steps 6-7).

    The bindings stay as they were.
    """
    phone = Phone()
    phone.register(f"Contact: <{PHONE}>", cseq=5)
    answer = phone.register("Contact: *", "Expires: 0", cseq=5)
    assert answer.status == 400
    assert contacts(phone.bindings()) == [PHONE]


def test_star_from_another_call_id_removes_all() -> None:
    """A different Call-ID may remove bindings whatever its CSeq (§10.3 step 7)."""
    phone = Phone()
    phone.register(f"Contact: <{PHONE}>", cseq=5)
    answer = phone.register("Contact: *", "Expires: 0", cseq=1, call_id="other")
    assert answer.status == 200
    assert phone.bindings() == []


# -- step 7: lifetimes ----------------------------------------------------------------


def test_contact_expires_param_beats_the_expires_header() -> None:
    """The Contact's expires parameter wins over the Expires header (step 7)."""
    phone = Phone()
    phone.register(
        f"Contact: <{PHONE}>;expires=120, <{LAPTOP}>", "Expires: 300", now=1000.0
    )
    expiry = {b.contact: b.expires_at for b in phone.bindings()}
    assert expiry == {PHONE: 1120.0, LAPTOP: 1300.0}


def test_default_lifetime_without_any_expires() -> None:
    """Neither parameter nor header: the configured default (3600 s) applies."""
    phone = Phone(settings=RegistrarSettings(frozenset({DOMAIN}), default_expires=900))
    phone.register(f"Contact: <{PHONE}>", now=1000.0)
    assert [b.expires_at for b in phone.bindings()] == [1900.0]


def test_lifetime_is_capped_at_the_maximum() -> None:
    """A lifetime above max_expires is shortened, and the 200 says so (step 7).

    §10.3 step 7: the registrar "MAY choose an expiration less than the requested".
    """
    phone = Phone()
    answer = phone.register(f"Contact: <{PHONE}>;expires=86400", now=1000.0)
    assert [b.expires_at for b in phone.bindings()] == [1000.0 + 7200]
    assert header_values(answer, "Contact") == [f"<{PHONE}>;expires=7200"]


def test_huge_lifetimes_are_capped_not_refused() -> None:
    """Huge lifetimes (RFC 4475 scalar02) are capped at the maximum, not a 400.

    Expires: 1 followed by 100 zeros, and expires=280297596632815.
    """
    phone = Phone()
    answer = phone.register(
        f"Contact: <{PHONE}>;expires=280297596632815, <{LAPTOP}>",
        "Expires: 1" + "0" * 100,
        now=1000.0,
    )
    assert answer.status == 200
    assert [b.expires_at for b in phone.bindings()] == [8200.0, 8200.0]


@pytest.mark.parametrize(
    "lines",
    [(f"Contact: <{PHONE}>;expires=30",), (f"Contact: <{PHONE}>", "Expires: 59")],
    ids=["param", "header"],
)
def test_too_brief_lifetime_gets_423_with_min_expires(lines: tuple[str, ...]) -> None:
    """Non-zero below min_expires: 423 with Min-Expires (§10.3 step 7, §20.23).

    Nothing is stored.
    """
    phone = Phone()
    answer = phone.register(*lines)
    assert answer.status == 423
    assert header_values(answer, "Min-Expires") == ["60"]
    assert phone.bindings() == []


def test_expires_zero_removes_only_that_binding() -> None:
    """Expires 0 on one contact removes that binding; the other stays (step 7)."""
    phone = Phone()
    phone.register(f"Contact: <{PHONE}>, <{LAPTOP}>")
    answer = phone.register(f"Contact: <{PHONE}>;expires=0")
    assert answer.status == 200
    assert contacts(phone.bindings()) == [LAPTOP]
    assert header_values(answer, "Contact") == [f"<{LAPTOP}>;expires=3600"]


def test_removal_finds_the_binding_by_uri_comparison() -> None:
    """The contact to remove is found with the §19.1.4 URI rules, not by text."""
    phone = Phone()
    phone.register("Contact: <sip:alice@PC33.Example.COM;Transport=UDP>")
    phone.register("Contact: <sip:alice@pc33.example.com;transport=udp>;expires=0")
    assert phone.bindings() == []


def test_expires_zero_for_an_unknown_contact_is_harmless() -> None:
    """Removing a binding that does not exist changes nothing and answers 200."""
    phone = Phone()
    phone.register(f"Contact: <{PHONE}>")
    answer = phone.register(f"Contact: <{LAPTOP}>", "Expires: 0")
    assert answer.status == 200
    assert contacts(phone.bindings()) == [PHONE]


# -- step 7: Call-ID and CSeq ---------------------------------------------------------


@pytest.mark.parametrize("cseq", [3, 2])
def test_out_of_order_cseq_is_refused_and_nothing_changes(cseq: int) -> None:
    """Same Call-ID, CSeq not higher: 400 CSeq Out Of Order (§10.3 step 7).

    The whole update is refused, the request's other contacts too.
    """
    phone = Phone()
    phone.register(f"Contact: <{PHONE}>;expires=600", cseq=3)
    before = phone.bindings()
    answer = phone.register(f"Contact: <{LAPTOP}>, <{PHONE}>;expires=900", cseq=cseq)
    assert (answer.status, answer.reason) == (400, "CSeq Out Of Order")
    assert phone.bindings() == before


def test_higher_cseq_refreshes_the_binding() -> None:
    """Same Call-ID with a higher CSeq updates the binding (§10.3 step 7)."""
    phone = Phone()
    phone.register(f"Contact: <{PHONE}>", cseq=3, now=1000.0)
    answer = phone.register(f"Contact: <{PHONE}>", cseq=4, now=2000.0)
    assert answer.status == 200
    [binding] = phone.bindings(now=2000.0)
    assert (binding.cseq, binding.expires_at, binding.registered_at) == (
        4,
        5600.0,
        2000.0,
    )


def test_new_call_id_replaces_whatever_its_cseq() -> None:
    """A different Call-ID (a rebooted phone) replaces the binding, CSeq aside."""
    phone = Phone()
    phone.register(f"Contact: <{PHONE}>", cseq=50)
    answer = phone.register(f"Contact: <{PHONE}>", cseq=1, call_id="rebooted")
    assert answer.status == 200
    assert [(b.call_id, b.cseq) for b in phone.bindings()] == [("rebooted", 1)]


# -- values that do not parse ---------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "named"),
    [
        (("Contact: <sip:",), "Contact"),
        ((f"Contact: <{PHONE}>", "Expires: soon"), "Expires"),
        ((f"Contact: <{PHONE}>", "Expires: -1"), "Expires"),
        ((f"Contact: <{PHONE}>;expires=abc",), "Contact"),
        ((f"Contact: <{PHONE}>, <sip:bob@[::1>",), "Contact"),
        ((f"Contact: <{PHONE}>;q=2",), "Contact"),
        ((f"Contact: <{PHONE}>;q=abc",), "Contact"),
        ((f"Contact: <{PHONE}>;q=0.12345",), "Contact"),
        ((f"Contact: <{PHONE}>;q=1e-1",), "Contact"),
    ],
    ids=[
        "unclosed",
        "expires-word",
        "expires-negative",
        "expires-param",
        "second-contact",
        "q-above-1",
        "q-word",
        "q-digits",
        "q-exponent",
    ],
)
def test_unparseable_value_gets_400_naming_the_header(
    lines: tuple[str, ...], named: str
) -> None:
    """A Contact, Expires or q that does not parse: 400 naming the header.

    Nothing is stored.
    """
    phone = Phone()
    answer = phone.register(*lines)
    assert answer.status == 400
    assert answer.reason is not None and named in answer.reason
    assert phone.bindings() == []


@pytest.mark.parametrize(("q", "stored"), [("0", 0.0), ("0.5", 0.5), ("1.000", 1.0)])
def test_q_in_range_is_stored(q: str, stored: float) -> None:
    """A q from 0 to 1 (RFC 3261 §25.1 qvalue) is kept with the binding."""
    phone = Phone()
    assert phone.register(f"Contact: <{PHONE}>;q={q}").status == 200
    assert [b.q for b in phone.bindings()] == [stored]


# -- Contact parameters ---------------------------------------------------------------


def test_unknown_contact_params_are_kept_and_returned() -> None:
    """Contact parameters but expires and q are stored and returned in the 200.

    URI parameters stay in the URI.
    """
    phone = Phone()
    answer = phone.register(
        f'Contact: <{PHONE};transport=tcp>;q=0.7;expires=600;video;+sip.x="a b"'
    )
    [binding] = phone.bindings()
    assert binding.contact == f"{PHONE};transport=tcp"
    assert binding.params == (("video", None), ("+sip.x", '"a b"'))
    assert header_values(answer, "Contact") == [
        f'<{PHONE};transport=tcp>;video;+sip.x="a b";q=0.7;expires=600'
    ]


# -- Path (RFC 3327) ------------------------------------------------------------------

PATH = ["<sip:edge1.example.com;lr>", "<sip:edge2.example.com;lr>"]


def test_path_is_stored_and_echoed_when_supported() -> None:
    """With Supported: path, the stored Path is echoed in order (RFC 3327 §5.3)."""
    phone = Phone()
    answer = phone.register(
        f"Contact: <{PHONE}>", f"Path: {PATH[0]}", f"Path: {PATH[1]}", "Supported: path"
    )
    assert [b.path for b in phone.bindings()] == [tuple(PATH)]
    assert header_values(answer, "Path") == PATH


def test_path_is_not_echoed_without_supported_path() -> None:
    """Without Supported: path the Path is still stored but not echoed."""
    phone = Phone()
    answer = phone.register(f"Contact: <{PHONE}>", f"Path: {', '.join(PATH)}")
    assert [b.path for b in phone.bindings()] == [tuple(PATH)]
    assert header_values(answer, "Path") == []


# -- outbound (RFC 5626) --------------------------------------------------------------

INSTANCE = '"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>"'


def outbound_contact(uri: str, reg_id: int = 1) -> str:
    return f"Contact: <{uri};ob>;+sip.instance={INSTANCE};reg-id={reg_id}"


def test_outbound_reregistration_over_a_new_flow_replaces_the_old() -> None:
    """Outbound: a new flow for an instance and reg-id replaces the old one.

    New address, new Call-ID: still one binding, on the new flow, and the 200
    says Require: outbound (RFC 5626 §6).
    """
    phone = Phone()
    first = phone.register(outbound_contact(PHONE), "Supported: outbound, path")
    assert header_values(first, "Require") == ["outbound"]
    answer = phone.register(
        outbound_contact("sip:alice@10.9.9.9:5062;transport=tcp"),
        "Supported: outbound",
        call_id="after-reconnect",
        flow=TCP_FLOW,
        cseq=1,
    )
    assert answer.status == 200
    assert header_values(answer, "Require") == ["outbound"]
    [binding] = phone.bindings()
    assert binding.contact == "sip:alice@10.9.9.9:5062;transport=tcp;ob"
    assert (binding.instance_id, binding.reg_id) == (INSTANCE, 1)
    assert binding.flow == TCP_FLOW


def test_outbound_two_reg_ids_are_two_flows() -> None:
    """One instance with reg-id 1 and 2 keeps two bindings (RFC 5626 §6)."""
    phone = Phone()
    phone.register(outbound_contact(PHONE, 1), "Supported: outbound")
    phone.register(outbound_contact(PHONE, 2), "Supported: outbound", flow=TCP_FLOW)
    assert sorted(b.reg_id or 0 for b in phone.bindings()) == [1, 2]


def test_reg_id_is_ignored_without_outbound_support() -> None:
    """Without Supported: outbound, reg-id is ignored (RFC 5626 §6).

    Bindings are by URI as in RFC 3261, and the 200 does not Require outbound.
    """
    phone = Phone()
    phone.register(outbound_contact(PHONE))
    answer = phone.register(outbound_contact(LAPTOP), call_id="other")
    assert header_values(answer, "Require") == []
    found = phone.bindings()
    assert sorted(contacts(found)) == [f"{PHONE};ob", f"{LAPTOP};ob"]
    assert {b.reg_id for b in found} == {None}


def test_outbound_cseq_rule_still_applies() -> None:
    """A stale REGISTER of an outbound flow is refused like any other (step 7)."""
    phone = Phone()
    phone.register(outbound_contact(PHONE), "Supported: outbound", cseq=9)
    answer = phone.register(outbound_contact(LAPTOP), "Supported: outbound", cseq=8)
    assert answer.status == 400
    assert contacts(phone.bindings()) == [f"{PHONE};ob"]


# -- the maximum number of bindings ---------------------------------------------------


def test_oldest_binding_is_evicted_at_the_maximum() -> None:
    """Beyond max_bindings the oldest bindings by registration time go."""
    phone = Phone(settings=RegistrarSettings(frozenset({DOMAIN}), max_bindings=3))
    for i in range(5):
        phone.register(
            f"Contact: <sip:alice@10.0.0.{i}>", call_id=f"c{i}", now=1000 + i
        )
    assert sorted(contacts(phone.bindings(now=1010))) == [
        "sip:alice@10.0.0.2",
        "sip:alice@10.0.0.3",
        "sip:alice@10.0.0.4",
    ]


def test_rebooted_phone_is_never_locked_out() -> None:
    """A rebooted phone (new Call-ID, new address) is never locked out.

    With the AOR full, its oldest stale binding makes room.
    """
    phone = Phone(settings=RegistrarSettings(frozenset({DOMAIN}), max_bindings=1))
    phone.register(f"Contact: <{PHONE}>", call_id="boot-1", now=1000)
    answer = phone.register(f"Contact: <{LAPTOP}>", call_id="boot-2", now=1100)
    assert answer.status == 200
    assert contacts(phone.bindings(now=1100)) == [LAPTOP]


def test_one_register_with_too_many_contacts_keeps_the_last() -> None:
    """A single REGISTER listing more contacts than the maximum keeps its last ones."""
    phone = Phone(settings=RegistrarSettings(frozenset({DOMAIN}), max_bindings=2))
    listed = ", ".join(f"<sip:alice@10.0.0.{i}>" for i in range(4))
    assert phone.register(f"Contact: {listed}").status == 200
    assert sorted(contacts(phone.bindings())) == [
        "sip:alice@10.0.0.2",
        "sip:alice@10.0.0.3",
    ]


# -- what a binding records -----------------------------------------------------------


def test_binding_records_everything_about_the_registration() -> None:
    """A binding records everything about its registration.

    Contact, q, expiry, registration time, Call-ID, CSeq, User-Agent, Path,
    instance and reg-id, Contact parameters and the flow.
    """
    phone = Phone()
    phone.register(
        f"Contact: <{PHONE}>;q=0.5;expires=600;+sip.instance={INSTANCE};reg-id=2",
        "Supported: outbound",
        "User-Agent: Phone/1.0",
        "Path: <sip:edge.example.com;lr;ob>",
        cseq=7,
        now=1000.0,
    )
    assert phone.bindings() == [
        Binding(
            aor=ALICE,
            contact=PHONE,
            expires_at=1600.0,
            registered_at=1000.0,
            call_id=CALL_ID,
            cseq=7,
            flow=NAT_FLOW,
            q=0.5,
            params=(("+sip.instance", INSTANCE), ("reg-id", "2")),
            user_agent="Phone/1.0",
            path=("<sip:edge.example.com;lr;ob>",),
            instance_id=INSTANCE,
            reg_id=2,
        )
    ]


def test_nat_contact_is_reached_through_its_flow() -> None:
    """A NAT'd phone is reached through its flow, not its private Contact.

    The binding keeps the public address and port the REGISTER came from.
    """
    phone = Phone()
    phone.register("Contact: <sip:alice@10.0.0.5:5060>", flow=NAT_FLOW)
    [binding] = phone.bindings()
    assert binding.contact == "sip:alice@10.0.0.5:5060"
    assert (binding.flow.remote_host, binding.flow.remote_port) == (
        "203.0.113.9",
        61000,
    )


# -- step 8: the 200 ------------------------------------------------------------------


def test_200_lists_every_binding_with_remaining_time_and_a_date() -> None:
    """The 200 lists every binding with its remaining time, and a Date (step 8).

    q appears when it is not 1.
    """
    phone = Phone()
    phone.register(f"Contact: <{PHONE}>;q=0.8", now=1000.0, call_id="phone")
    answer = phone.register(f"Contact: <{LAPTOP}>;expires=600", now=1100.0)
    assert answer.status == 200
    assert header_values(answer, "Contact") == [
        f"<{LAPTOP}>;expires=600",
        f"<{PHONE}>;q=0.8;expires=3500",
    ]
    assert header_values(answer, "Date") == [formatdate(1100.0, usegmt=True)]
    assert contacts(list(answer.bindings)) == [LAPTOP, PHONE]


def test_register_without_contact_only_lists() -> None:
    """No Contact: a query that lists the bindings and changes nothing (step 8).

    Not even a CSeq that would be out of order is held against it.
    """
    phone = Phone()
    phone.register(f"Contact: <{PHONE}>", cseq=5, now=1000.0)
    before = phone.bindings()
    answer = phone.register(cseq=1, now=1200.0)
    assert answer.status == 200
    assert header_values(answer, "Contact") == [f"<{PHONE}>;expires=3400"]
    assert phone.bindings() == before


def test_query_of_an_empty_aor_lists_nothing() -> None:
    """An AOR without bindings answers 200 with no Contact and a Date."""
    answer = Phone().register()
    assert answer.status == 200
    assert [name for name, _ in answer.headers] == ["Date"]


# -- storage failure ------------------------------------------------------------------


class BrokenStore(MemoryLocationService):
    """A store whose writes (or reads) fail."""

    def __init__(self, error: Exception, *, on_read: bool = False) -> None:
        super().__init__()
        self.error = error
        self.on_read = on_read

    async def bindings(self, aor: str, *, now: float) -> list[Binding]:
        if self.on_read:
            raise self.error
        return await super().bindings(aor, now=now)

    async def update(self, aor: str, **changes: Any) -> list[Binding]:
        raise self.error


@pytest.mark.parametrize(
    ("error", "on_read"),
    [
        (LocationUnavailableError("redis down"), False),
        (LocationUnavailableError("redis down"), True),
        (RuntimeError("disk full"), False),
    ],
    ids=["unavailable-update", "unavailable-read", "other-error"],
)
def test_store_failure_gets_500_with_retry_after_logged_once(
    error: Exception, on_read: bool
) -> None:
    """Any store failure: 500 with Retry-After: 5, and one error logged."""
    events: list[dict[str, Any]] = []
    phone = Phone(BrokenStore(error, on_read=on_read))
    phone.registrar.log = Logger(observer=events.append)  # type: ignore[arg-type]
    answer = phone.register(f"Contact: <{PHONE}>")
    assert answer.status == 500
    assert header_values(answer, "Retry-After") == ["5"]
    assert [e["log_level"] for e in events] == [LogLevel.critical]


# -- one AOR at a time ----------------------------------------------------------------


class GatedStore(MemoryLocationService):
    """A store whose reads wait until the test lets them through."""

    def __init__(self) -> None:
        super().__init__()
        self.gates: list[Deferred[None]] = []

    async def bindings(self, aor: str, *, now: float) -> list[Binding]:
        gate: Deferred[None] = Deferred()
        self.gates.append(gate)
        await gate
        return await super().bindings(aor, now=now)


def test_concurrent_registers_of_one_aor_are_serialised() -> None:
    """Concurrent REGISTERs of one AOR run one after the other.

    The second reads what the first wrote, so the maximum holds.
    """
    store = GatedStore()
    phone = Phone(store, RegistrarSettings(frozenset({DOMAIN}), max_bindings=1))
    answers: list[Any] = []
    for i, contact in enumerate((PHONE, LAPTOP)):
        request = register_request(f"Contact: <{contact}>", call_id=f"c{i}")
        Deferred.fromCoroutine(
            phone.registrar.register(request, NAT_FLOW, now=1000.0 + i)
        ).addCallback(answers.append)
    assert len(store.gates) == 1  # the second waits for the first
    store.gates[0].callback(None)
    store.gates[1].callback(None)
    assert [a.status for a in answers] == [200, 200]
    stored = run(MemoryLocationService.bindings(store, ALICE, now=1001.0))
    assert contacts(stored) == [LAPTOP]


# -- the decisions alone --------------------------------------------------------------


def test_decisions_are_values_in_values_out() -> None:
    """decide_registration and decide_changes need no store: keys out, bindings out.

    A re-registration of a known contact from a new Call-ID removes the old key
    and saves a binding on the new flow.
    """
    request = register_request(f"Contact: <{PHONE}>;expires=600", call_id="new")
    registration = decide_registration(request, SETTINGS)
    assert (registration.aor, registration.call_id, registration.cseq) == (
        ALICE,
        "new",
        1,
    )
    old = Binding(ALICE, PHONE, 5000.0, 900.0, "old", 7, NAT_FLOW)
    save, remove = decide_changes(
        registration, [old], TCP_FLOW, now=1000.0, max_bindings=10
    )
    assert remove == [PHONE]
    assert [(b.contact, b.expires_at, b.flow) for b in save] == [
        (PHONE, 1600.0, TCP_FLOW)
    ]


def test_empty_require_value_is_not_an_extension() -> None:
    """An empty Require value names no extension, so it is no reason for a 420."""
    assert Phone().register(f"Contact: <{PHONE}>", "Require: ").status == 200
