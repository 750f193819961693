"""sipproxy: a SIP proxy, registrar and call router on Twisted (RFC 3261)."""

__version__ = "0.1.0.dev0"
