"""What the transports hand parsed messages to."""

from __future__ import annotations

from typing import Protocol

from sipproxy.sip.addressing import Channel, Peer


class MessageReceiver(Protocol):
    """The layer above the transports: it gets every parsed message."""

    def message_received(self, message: object, peer: Peer, channel: Channel) -> None:
        """A parsed Request or Response arrived from ``peer`` on ``channel``."""

    def message_invalid(self, error: Exception, peer: Peer, channel: Channel) -> None:
        """Bytes from ``peer`` did not parse (``error`` is a ParseError)."""
