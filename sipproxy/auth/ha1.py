"""HA1 and the hashes of HTTP Digest (RFC 7616 §3.4.2, RFC 8760).

The arithmetic both the verifier (:mod:`sipproxy.auth.digest`) and the users
file (:mod:`sipproxy.auth.htdigest`) need, so that neither imports the other
for it. Text is hashed as UTF-8; bytes that did not decode (surrogate escapes)
hash as they came.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

__all__ = ["ALGORITHMS", "compute_ha1", "encode_utf8", "hash_hex"]

#: Hash functions by the algorithm names of RFC 7616 §3.3 and RFC 8760.
ALGORITHMS: Mapping[str, str] = {"MD5": "md5", "SHA-256": "sha256"}


def encode_utf8(text: str) -> bytes:
    """``text`` as UTF-8, surrogate escapes back to the bytes they stand for."""
    return text.encode("utf-8", "surrogateescape")


def hash_hex(algorithm: str, text: str) -> str:
    """H(text) in hex for ``algorithm`` ("MD5", "SHA-256", case-insensitive).

    :raises ValueError: for an algorithm not in :data:`ALGORITHMS`.
    """
    try:
        name = ALGORITHMS[algorithm.upper()]
    except KeyError:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}") from None
    return hashlib.new(name, encode_utf8(text)).hexdigest()


def compute_ha1(user: str, realm: str, password: str, algorithm: str) -> str:
    """HA1 = H(username ":" realm ":" passwd), hex (RFC 7616 §3.4.2).

    :raises ValueError: for an algorithm not in :data:`ALGORITHMS`.
    """
    return hash_hex(algorithm, f"{user}:{realm}:{password}")
