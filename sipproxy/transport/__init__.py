"""The Twisted edge for SIP: sockets in, parsed messages to the core, bytes out."""
