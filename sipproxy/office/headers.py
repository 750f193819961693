"""The headers of a forwarded office call: Diversion and History-Info.

Built from the :class:`~sipproxy.office.plan.Hop` list of a call plan: Diversion
(RFC 5806) and History-Info (RFC 7044, with the RFC 4458 ``cause`` URI
parameter). No I/O; the proxy core adds the values to the forwarded INVITE.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import quote

from sipproxy.office.plan import Hop

__all__ = ["diversion_headers", "diversion_reason", "history_info_headers"]


def diversion_headers(hops: Sequence[Hop]) -> list[str]:
    """Diversion values, the most recent first (RFC 5806 §4)."""
    return [
        f"<{hop.uri}>;reason={hop.outcome.value};counter=1" for hop in reversed(hops)
    ]


def diversion_reason(diversion: str | None) -> str | None:
    """The ``reason`` of the newest entry of a Diversion value, or None.

    :param diversion: the first Diversion field (the newest entry comes first).
    """
    if not diversion:
        return None
    # Past the URI's closing ">", so a comma or ";" inside the URI cannot cut.
    newest = diversion.partition(">")[2].partition(",")[0]
    for param in newest.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "reason":
            return value.strip().strip('"') or None
    return None


def history_info_headers(hops: Sequence[Hop], target_uri: str) -> list[str]:
    """History-Info entries (RFC 7044) for the chain ending at ``target_uri``.

    Each retargeted-from entry carries the Reason as an escaped header of its
    URI (RFC 7044 §4.2.1); each new target the RFC 4458 ``cause`` parameter and
    ``mp`` naming the entry it was mapped from (§9.1).
    """
    values = []
    index = "1"
    parent = ""
    for number, hop in enumerate(hops):
        reason = quote(f"SIP;cause={hop.outcome.cause}", safe="")
        uri = hop.uri if number == 0 else _with_cause(hop.uri, hops[number - 1])
        tail = f";mp={parent}" if parent else ""
        values.append(f"<{uri}?Reason={reason}>;index={index}{tail}")
        parent, index = index, f"{index}.1"
    if hops:
        uri = _with_cause(target_uri, hops[-1])
        values.append(f"<{uri}>;index={index};mp={parent}")
    return values


def _with_cause(uri: str, hop: Hop) -> str:
    return f"{uri};cause={hop.outcome.cause}"
