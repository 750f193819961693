"""The RFC 4475 torture REGISTERs, answered as its INDEX.tsv says a registrar must."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from sipproxy.registrar import RegistrarAnswer
from sipproxy.sip.errors import ParseError
from sipproxy.sip.message import Request
from sipproxy.sip.parser import parse_message, validate_request
from tests.registrar.helpers import NAT_FLOW, Phone, contacts, header_values, run

TORTURE = Path(__file__).resolve().parents[1] / "conformance" / "rfc4475"


def load(name: str) -> Request:
    message = parse_message((TORTURE / f"{name}.dat").read_bytes())
    assert isinstance(message, Request)
    return message


def registered(name: str) -> tuple[Phone, RegistrarAnswer]:
    """A registrar for example.com (every Request-URI here names it) after ``name``."""
    phone = Phone()
    answer = run(phone.registrar.register(load(name), NAT_FLOW, now=1000.0))
    return phone, answer


def expected(name: str) -> str:
    with (TORTURE / "INDEX.tsv").open(encoding="utf-8") as index:
        for row in csv.DictReader(index, delimiter="\t"):
            if row["name"] == name:
                return row["expected"]
    raise KeyError(name)


def test_escnull_makes_two_distinct_bindings() -> None:
    """%00 and %00%00 users are two contacts of an AOR with a NUL (§3.1.1.4)."""
    assert "2 distinct bindings" in expected("escnull")
    phone, answer = registered("escnull")
    assert answer.status == 200
    found = phone.bindings("sip:null-\x00-null@example.com")
    assert sorted(contacts(found)) == [
        "sip:%00%00@host5.example.com",
        "sip:%00@host5.example.com",
    ]
    assert len(header_values(answer, "Contact")) == 2


def test_cparam01_unknownparam_is_a_contact_param() -> None:
    """Without <>, ;unknownparam belongs to the Contact, not the URI (§3.3.12)."""
    assert expected("cparam01").startswith("registrar: 200 OK")
    phone, answer = registered("cparam01")
    assert answer.status == 200
    [binding] = phone.bindings("sip:watson@example.com")
    assert binding.contact == "sip:+19725552222@gw1.example.net"
    assert binding.params == (("unknownparam", None),)
    assert header_values(answer, "Contact") == [
        "<sip:+19725552222@gw1.example.net>;unknownparam;expires=3600"
    ]


def test_cparam02_unknownparam_stays_in_the_uri() -> None:
    """Inside <>, ;unknownparam is a URI parameter of the binding (§3.3.13)."""
    assert expected("cparam02").startswith("registrar: 200 OK")
    phone, answer = registered("cparam02")
    assert answer.status == 200
    [binding] = phone.bindings("sip:watson@example.com")
    assert binding.contact == "sip:+19725552222@gw1.example.net;unknownparam"
    assert binding.params == ()
    assert header_values(answer, "Contact") == [
        "<sip:+19725552222@gw1.example.net;unknownparam>;expires=3600"
    ]


def test_regescrt_keeps_the_escaped_route_header_in_the_uri() -> None:
    """The binding URI keeps ?Route=%3Csip:sip.example.com%3E as sent (§3.3.14)."""
    assert expected("regescrt").startswith("registrar: 200 OK")
    phone, answer = registered("regescrt")
    assert answer.status == 200
    assert contacts(phone.bindings("sip:user@example.com")) == [
        "sip:user@example.com?Route=%3Csip:sip.example.com%3E"
    ]


def test_unksm2_to_is_not_a_sip_aor() -> None:
    """To: isbn:... is no AOR a registrar can hold: 400 (§3.3.4)."""
    assert expected("unksm2").startswith("registrar: respond 400")
    phone, answer = registered("unksm2")
    assert answer.status == 400
    assert phone.bindings("isbn:2983792873") == []


def test_scalar02_is_refused_before_the_registrar() -> None:
    """The overlarge CSeq gets 400 from validate_request (§3.1.2.4).

    The core validates every request before the registrar sees it; were it not
    to, the registrar would answer 400 Bad CSeq itself. Its overlarge lifetimes
    alone would only be capped (see test_huge_lifetimes_are_capped_not_refused).
    """
    assert expected("scalar02").startswith("respond 400")
    with pytest.raises(ParseError) as refused:
        validate_request(load("scalar02"))
    assert refused.value.status == 400
    phone, answer = registered("scalar02")
    assert (answer.status, answer.reason) == (400, "Bad CSeq")
    assert phone.bindings("sip:user@example.com") == []


def test_regaut01_unknown_authorization_scheme_is_ignored() -> None:
    """An Authorization of an unknown scheme is ignored and the REGISTER served.

    regaut01 has no Contact, so it is a query: 200 listing nothing (§3.3.7).
    TODO(issue 5): with authentication on, this becomes a 401 challenge.
    """
    assert expected("regaut01").startswith("registrar: ignore the unknown scheme")
    _, answer = registered("regaut01")
    assert answer.status == 200
    assert header_values(answer, "Contact") == []


def test_dblreq_registers_and_ignores_the_trailing_octets() -> None:
    """The REGISTER is processed; the INVITE-like bytes after it are not (§3.1.1.8)."""
    assert expected("dblreq").startswith("process the REGISTER normally")
    request = load("dblreq")
    assert request.body == b""
    phone, answer = registered("dblreq")
    assert answer.status == 200
    assert contacts(phone.bindings("sip:j.user@example.com")) == [
        "sip:j.user@host.example.com"
    ]


@pytest.mark.parametrize(
    "name", ["escnull", "cparam01", "cparam02", "regescrt", "regaut01", "dblreq"]
)
def test_the_accepted_ones_pass_validation(name: str) -> None:
    """The messages a registrar accepts also pass the core's validate_request."""
    validate_request(load(name))
