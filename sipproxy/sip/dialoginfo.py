"""Bodies of the dialog event package: ``application/dialog-info+xml`` (RFC 4235).

Values in, bytes out; no I/O. The notifier (proxy/notifier.py) keeps the
dialogs of each monitored user and asks :func:`dialog_info` for the body of
each NOTIFY. We only ever send full state (RFC 4235 §4.1: ``state="full"``),
so a subscriber that missed a NOTIFY is right again with the next one.

Interop rules this module carries:

- A body always holds at least one ``<dialog>``: with no call, one idle dialog
  in ``<state>terminated</state>`` (:func:`idle_dialog`). RFC 4235 §4.1 allows
  an empty ``<dialog-info>``, but Yealink and Bria keep the lamp in its last
  state (or show nothing) until a dialog element arrives.
- ``single=True`` puts only the most telling dialog in the body
  (:func:`most_telling`): some desk-phone firmware mishandles, or crashes
  on, several dialogs in one body.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

__all__ = [
    "CONTENT_TYPE",
    "NAMESPACE",
    "STATES",
    "Dialog",
    "dialog_info",
    "idle_dialog",
    "most_telling",
]

#: The body type of the dialog package's NOTIFYs (RFC 4235 §4.1).
CONTENT_TYPE = "application/dialog-info+xml"
NAMESPACE = "urn:ietf:params:xml:ns:dialog-info"
#: The states of RFC 4235 §3.7.1, from least to most telling for a lamp.
STATES = ("terminated", "trying", "proceeding", "early", "confirmed")


@dataclass(frozen=True, slots=True)
class Dialog:
    """One dialog (or call attempt) of the monitored user, as the body shows it.

    ``local`` is the monitored user's side, ``remote`` the other party
    (RFC 4235 §4.1.6): for a call to the monitored user, ``direction`` is
    ``"recipient"`` and the caller is ``remote_identity``.
    """

    #: unique within the monitored resource (RFC 4235 §4.1.1: "id" MUST)
    id: str
    #: one of :data:`STATES`
    state: str
    call_id: str | None = None
    local_tag: str | None = None
    remote_tag: str | None = None
    #: "initiator" or "recipient"; None: unknown
    direction: str | None = None
    #: terminated: why (RFC 4235 §4.1.2: cancelled, rejected, replaced,
    #: local-bye, remote-bye, error, timeout)
    event: str | None = None
    #: terminated by a response: its status (the ``code`` attribute)
    code: int | None = None
    #: seconds since the dialog was created (RFC 4235 §4.1.3)
    duration: int | None = None
    local_identity: str | None = None
    local_display: str | None = None
    remote_identity: str | None = None
    remote_display: str | None = None


def idle_dialog(entity: str) -> Dialog:
    """The dialog element an idle user's body carries (see the module's notes).

    Its id is the same in every body for ``entity``, so a phone that tracks
    dialogs by id sees one dialog that stays terminated.
    """
    digest = hashlib.sha1(entity.encode("utf-8", "surrogateescape")).hexdigest()
    return Dialog(id=f"idle-{digest[:12]}", state="terminated")


def most_telling(dialogs: Sequence[Dialog]) -> Dialog | None:
    """The dialog a one-dialog body shows: the most advanced state, newest last.

    Confirmed beats early beats trying beats terminated: a lamp shows busy
    while any call is up, even if another just rang off.
    """
    best: Dialog | None = None
    for dialog in dialogs:
        if best is None or _rank(dialog) >= _rank(best):
            best = dialog
    return best


def _rank(dialog: Dialog) -> int:
    return STATES.index(dialog.state) if dialog.state in STATES else 0


def dialog_info(
    entity: str, version: int, dialogs: Sequence[Dialog], *, single: bool = False
) -> bytes:
    """A full-state ``dialog-info`` document (RFC 4235 §4.1) as UTF-8 bytes.

    :param entity: the monitored resource's URI (RFC 4235 §4.1: "entity").
    :param version: 0 in the first NOTIFY of a subscription, then one more in
        each (RFC 4235 §4.1: "incremented by exactly one").
    :param dialogs: the user's dialogs; none: one idle dialog is shown.
    :param single: show only :func:`most_telling` of them.
    """
    shown: list[Dialog] = list(dialogs)
    if single and shown:
        best = most_telling(shown)
        shown = [best] if best is not None else []
    if not shown:
        shown = [idle_dialog(entity)]
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<dialog-info xmlns="{NAMESPACE}" version="{int(version)}" '
        f'state="full" entity={quoteattr(entity)}>',
    ]
    for dialog in shown:
        lines.extend(_dialog_lines(dialog))
    lines.append("</dialog-info>")
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")


def _dialog_lines(dialog: Dialog) -> list[str]:
    attributes = [f"id={quoteattr(dialog.id)}"]
    for name, value in (
        ("call-id", dialog.call_id),
        ("local-tag", dialog.local_tag),
        ("remote-tag", dialog.remote_tag),
        ("direction", dialog.direction),
    ):
        if value is not None:
            attributes.append(f"{name}={quoteattr(value)}")
    state_attributes = ""
    if dialog.event is not None:
        state_attributes += f" event={quoteattr(dialog.event)}"
    if dialog.code is not None:
        state_attributes += f' code="{int(dialog.code)}"'
    lines = [
        f"  <dialog {' '.join(attributes)}>",
        f"    <state{state_attributes}>{escape(dialog.state)}</state>",
    ]
    if dialog.duration is not None:
        lines.append(f"    <duration>{max(0, int(dialog.duration))}</duration>")
    # The schema's order: state, duration, replaces, referred-by, route-set,
    # local, remote (RFC 4235 §4.2).
    lines.extend(_participant("local", dialog.local_identity, dialog.local_display))
    lines.extend(_participant("remote", dialog.remote_identity, dialog.remote_display))
    lines.append("  </dialog>")
    return lines


def _participant(tag: str, identity: str | None, display: str | None) -> list[str]:
    if identity is None:
        return []
    name = f" display={quoteattr(display)}" if display else ""
    return [
        f"    <{tag}>",
        f"      <identity{name}>{escape(identity)}</identity>",
        f"    </{tag}>",
    ]
