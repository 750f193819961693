"""The proxy core (RFC 3261 §16): validation, routing decisions, forwarding."""
