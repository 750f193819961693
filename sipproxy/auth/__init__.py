"""Who sent a request and whether they may (RFC 3261 §22): digest, users, the gate."""
