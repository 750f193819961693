"""The SIP wire format (RFC 3261 §7, §20, §25): bytes in, values out, no I/O."""
