"""dialog-info+xml bodies (RFC 4235 §4): what a busy lamp reads."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from sipproxy.sip.dialoginfo import (
    NAMESPACE,
    Dialog,
    dialog_info,
    idle_dialog,
    most_telling,
)

NS = {"d": NAMESPACE}
BOB = "sip:bob@example.test"


def parse(body: bytes) -> ET.Element:
    return ET.fromstring(body)


def test_idle_body_still_has_one_terminated_dialog() -> None:
    """Yealink and Bria need a <dialog> element even when the user is idle."""
    root = parse(dialog_info(BOB, 0, []))
    assert root.tag == f"{{{NAMESPACE}}}dialog-info"
    assert root.get("version") == "0"
    assert root.get("state") == "full"
    assert root.get("entity") == BOB
    [dialog] = root.findall("d:dialog", NS)
    assert dialog.get("id") == idle_dialog(BOB).id
    assert dialog.findtext("d:state", namespaces=NS) == "terminated"


def test_the_idle_dialog_id_is_stable_per_entity() -> None:
    assert idle_dialog(BOB) == idle_dialog(BOB)
    assert idle_dialog(BOB).id != idle_dialog("sip:carol@example.test").id


def test_a_ringing_call_names_the_caller_as_remote() -> None:
    """RFC 4235 §4.1.6: for a call to the user, the caller is <remote>."""
    ringing = Dialog(
        id="d1",
        state="early",
        call_id="c1",
        local_tag="b1",
        remote_tag="a1",
        direction="recipient",
        remote_identity="sip:alice@example.test",
        remote_display="Alice",
        local_identity=BOB,
    )
    root = parse(dialog_info(BOB, 3, [ringing]))
    assert root.get("version") == "3"
    [dialog] = root.findall("d:dialog", NS)
    assert dialog.attrib == {
        "id": "d1",
        "call-id": "c1",
        "local-tag": "b1",
        "remote-tag": "a1",
        "direction": "recipient",
    }
    assert dialog.findtext("d:state", namespaces=NS) == "early"
    remote = dialog.find("d:remote/d:identity", NS)
    assert remote is not None
    assert remote.text == "sip:alice@example.test"
    assert remote.get("display") == "Alice"
    assert dialog.findtext("d:local/d:identity", namespaces=NS) == BOB
    # The schema's order: state before local before remote (RFC 4235 §4.2).
    assert [child.tag.split("}")[1] for child in dialog] == [
        "state",
        "local",
        "remote",
    ]


def test_a_terminated_dialog_says_why() -> None:
    ended = Dialog(id="d1", state="terminated", event="rejected", code=486)
    state = parse(dialog_info(BOB, 1, [ended])).find("d:dialog/d:state", NS)
    assert state is not None
    assert state.attrib == {"event": "rejected", "code": "486"}


def test_markup_in_values_is_escaped() -> None:
    """A caller's display name is the caller's claim: it cannot break the XML."""
    evil = Dialog(
        id='x"><a',
        state="early",
        remote_identity="sip:<b>@x",
        remote_display='"</identity>&',
    )
    root = parse(dialog_info('sip:"bob"@x', 0, [evil]))
    [dialog] = root.findall("d:dialog", NS)
    assert dialog.get("id") == 'x"><a'
    remote = dialog.find("d:remote/d:identity", NS)
    assert remote is not None
    assert remote.text == "sip:<b>@x"
    assert remote.get("display") == '"</identity>&'


def test_several_dialogs_or_one_when_single() -> None:
    """single=True shows only the most telling dialog (phones that crash on more)."""
    done = Dialog(id="old", state="terminated")
    up = Dialog(id="up", state="confirmed")
    ringing = Dialog(id="new", state="early")
    both = parse(dialog_info(BOB, 0, [done, up, ringing]))
    assert [d.get("id") for d in both.findall("d:dialog", NS)] == ["old", "up", "new"]
    one = parse(dialog_info(BOB, 0, [done, up, ringing], single=True))
    assert [d.get("id") for d in one.findall("d:dialog", NS)] == ["up"]


def test_most_telling_prefers_the_call_that_is_up() -> None:
    assert most_telling([]) is None
    early = Dialog(id="a", state="early")
    trying = Dialog(id="b", state="trying")
    assert most_telling([early, trying]) == early
    confirmed = Dialog(id="c", state="confirmed")
    assert most_telling([confirmed, early]) == confirmed
