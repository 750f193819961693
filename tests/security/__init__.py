"""Attacks on the trust boundary, performed over real sockets (issue 13)."""
