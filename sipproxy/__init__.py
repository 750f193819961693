"""sipproxy: a SIP proxy, registrar and call router on Twisted (RFC 3261)."""

from sipproxy import native

__version__ = "0.1.0.dev0"

# Before anything imports sipproxy.sip: its compiled modules run only while fresh.
native.choose()
