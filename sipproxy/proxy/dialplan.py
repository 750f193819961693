"""Dial-plan rules: where a number or a foreign address goes (the operator's routing).

Pure: a rule list and a Request-URI in, the new Request-URI (or None) out.
"""

from __future__ import annotations

from collections.abc import Sequence

from sipproxy.config import DialRule
from sipproxy.sip.uri import AbsoluteURI, SipURI


def route_by_dialplan(
    uri: SipURI | AbsoluteURI, text: str, rules: Sequence[DialRule]
) -> str | None:
    """The Request-URI the first matching rule gives, or None if none matches.

    A rule's regex is searched (as ``re.search``: anchor it with ``^...$`` to
    match the whole user part) in the user part, or in the whole URI text for
    ``match-uri`` rules; ``to`` is expanded with the match's groups.
    """
    for rule in rules:
        if rule.whole_uri:
            subject: str | None = text
        else:
            subject = uri.user if isinstance(uri, SipURI) else None
        if subject is None:
            continue
        match = rule.pattern.search(subject)
        if match is not None:
            return match.expand(rule.to)
    return None


def loose_route(uri: str) -> str:
    """A Route value for an outbound proxy, loose routing (RFC 3261 §16.12)."""
    return f"<{uri}>" if ";lr" in uri else f"<{uri};lr>"
