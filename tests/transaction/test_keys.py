"""Transaction matching (RFC 3261 §17.1.3, §17.2.3, §9.2)."""

from __future__ import annotations

import pytest

from sipproxy.sip.errors import ParseError
from sipproxy.transaction.keys import (
    BranchKey,
    ClientKey,
    LegacyKey,
    ack_keys,
    cancelled_invite_key,
    client_key,
    server_key,
)

from .support import request


def test_rfc3261_key_is_branch_sent_by_and_method() -> None:
    """§17.2.3: branch, sent-by of the top Via, and method."""
    key = server_key(request("INVITE", sent_by="PC.Example.com:5070"))
    assert key == BranchKey("z9hG4bK-a1", "pc.example.com", 5070, "INVITE")


def test_ack_matches_the_invite_key() -> None:
    """§17.2.3: ACK matches the transaction created by INVITE."""
    invite = request("INVITE")
    ack = request("ACK", to_tag="srv")
    assert server_key(ack) == server_key(invite)
    assert ack_keys(ack) == (server_key(invite),)


def test_cancel_is_its_own_transaction() -> None:
    """A CANCEL shares the INVITE's branch but not its method (§9.2)."""
    assert server_key(request("CANCEL")) != server_key(request("INVITE"))


def test_cancel_finds_the_invite_key() -> None:
    """§9.2: match as if the CANCEL's method were the cancelled one."""
    assert cancelled_invite_key(request("CANCEL")) == server_key(request("INVITE"))


def test_same_branch_from_another_sender_is_another_transaction() -> None:
    """The sent-by is part of the match: branches are unique per sender only."""
    here = server_key(request(sent_by="192.0.2.10:5060"))
    there = server_key(request(sent_by="192.0.2.11:5060"))
    assert here != there


def test_branch_without_cookie_falls_back_to_rfc2543() -> None:
    """§17.2.3: without "z9hG4bK" the request is matched field by field."""
    key = server_key(request(branch="1234"))
    assert isinstance(key, LegacyKey)
    assert key.call_id == "call-1@192.0.2.10"
    assert key.cseq == 1
    assert key.from_tag == "alice1"
    assert key.method == "INVITE"


@pytest.mark.parametrize(
    "change",
    [
        {"uri": "sip:carol@example.com"},
        {"from_tag": "other"},
        {"call_id": "other@192.0.2.10"},
        {"cseq": 2},
        {"sent_by": "192.0.2.10:5070"},
        {"to_tag": "x"},
    ],
)
def test_rfc2543_fields_each_matter(change: dict[str, object]) -> None:
    """Request-URI, tags, Call-ID, CSeq and top Via must all match (§17.2.3)."""
    base = server_key(request(branch=None))
    assert server_key(request(branch=None, **change)) != base  # type: ignore[arg-type]


def test_rfc2543_equal_values_written_differently_match() -> None:
    """Host case and received/rport stamps do not make another transaction."""
    base = server_key(request(branch=None, uri="sip:bob@example.com"))
    other = server_key(request(branch=None, uri="sip:bob@EXAMPLE.com"))
    assert base == other
    stamped = request(branch=None, sent_by="192.0.2.10:5060;received=192.0.2.10")
    assert server_key(stamped) == base


def test_rfc2543_ack_keys_try_response_tag_then_none() -> None:
    """The ACK carries the response's To tag; the INVITE had none or that one."""
    ack = request("ACK", branch=None, to_tag="srv")
    keys = ack_keys(ack)
    assert len(keys) == 2
    assert keys[1] == server_key(request("INVITE", branch=None))
    assert keys[0] == server_key(request("INVITE", branch=None, to_tag="srv"))


def test_client_key_is_branch_and_cseq_method() -> None:
    """§17.1.3: branch of the top Via and the CSeq method."""
    invite = request("INVITE")
    assert client_key(invite) == ClientKey("z9hG4bK-a1", "INVITE")
    assert client_key(invite.response(180)) == client_key(invite)
    cancel = request("CANCEL")
    assert client_key(cancel.response(200)) == ClientKey("z9hG4bK-a1", "CANCEL")


def test_client_key_needs_a_branch() -> None:
    """We always put a branch in our Via; without one nothing can match."""
    with pytest.raises(ParseError):
        client_key(request(branch=None))
