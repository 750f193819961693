"""From a ``--location`` string to an unopened store, and that string made fit for logs.

Apart from the package's ``__init__`` because it imports every store, and every
store imports the package's values: kept together they would be a cycle.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

from sipproxy.location import LocationStore

__all__ = ["location_from_spec", "redacted_spec", "redacted_text"]


def location_from_spec(spec: str, reactor: Any) -> LocationStore:
    """Make an unopened store from a configuration string.

    - ``memory:``
    - ``sqlite:PATH``, the path relative to the working directory or absolute;
    - ``redis://HOST[:PORT][/DB][?prefix=PREFIX]``, HOST possibly ``[::1]``,
      PORT 6379 and DB 0 by default, PREFIX ``sipproxy:``; ``redis://:PASSWORD@...``
      authenticates.

    :param reactor: what the store schedules threads and connections on.
    :raises ValueError: the spec is malformed; the message quotes it.
    """
    scheme, colon, rest = spec.partition(":")
    scheme = scheme.lower()
    if not colon or scheme not in ("memory", "sqlite", "redis"):
        raise _bad_spec(spec, f"expected {_FORMS}")
    if scheme == "memory":
        if rest:
            raise _bad_spec(spec, "memory: takes nothing after the colon")
        from sipproxy.location.memory import MemoryLocationService

        return MemoryLocationService()
    if scheme == "sqlite":
        if not rest or rest.startswith("//"):
            raise _bad_spec(spec, "expected sqlite:PATH, e.g. sqlite:/var/lib/loc.db")
        from sipproxy.location.sqlite import SQLiteLocationService

        return SQLiteLocationService(rest, reactor=reactor)
    return _redis_from_spec(spec, reactor)


_FORMS = "memory:, sqlite:PATH or redis://HOST:PORT/DB"


def _bad_spec(spec: str, why: str) -> ValueError:
    return ValueError(
        f"bad location spec {redacted_spec(spec)!r}: {redacted_text(why, spec)}"
    )


def redacted_spec(spec: str) -> str:
    """A location spec without its password, fit for a log (redis://:SECRET@host).

    >>> redacted_spec("redis://:s3cret@127.0.0.1:6379/0")
    'redis://***@127.0.0.1:6379/0'
    """
    scheme, sep, rest = spec.partition("://")
    if sep and "@" in rest:
        return f"{scheme}://***@{rest.rpartition('@')[2]}"
    return spec


def redacted_text(text: str, spec: str) -> str:
    """``text`` (say, a driver's error) without ``spec``'s password in any form.

    A driver may quote the URL it was given, or the password alone: both go.
    """
    text = text.replace(spec, redacted_spec(spec))
    _, sep, rest = spec.partition("://")
    userinfo = rest.rpartition("@")[0] if sep else ""
    secret = userinfo.partition(":")[2] or userinfo
    return text.replace(secret, "***") if secret else text


def _redis_from_spec(spec: str, reactor: Any) -> LocationStore:
    if not spec.lower().startswith("redis://"):
        raise _bad_spec(spec, "expected redis://HOST:PORT/DB")
    try:
        parts = urlsplit(spec)
        host = parts.hostname
        port = parts.port or 6379
    except ValueError as error:  # a bad port, an unclosed [
        raise _bad_spec(spec, str(error)) from None
    if not host:
        raise _bad_spec(spec, "no host")
    db_text = parts.path[1:] or "0"
    if not (db_text.isascii() and db_text.isdigit()):
        raise _bad_spec(spec, "the database must be a number, as in redis://HOST/0")
    options = parse_qs(parts.query, keep_blank_values=True)
    if parts.fragment or set(options) - {"prefix"}:
        raise _bad_spec(spec, "the only option is ?prefix=PREFIX")
    from sipproxy.location.redis import RedisLocationService

    return RedisLocationService(
        host=host,
        port=port,
        db=int(db_text),
        password=parts.password,
        prefix=options.get("prefix", ["sipproxy:"])[-1],
        reactor=reactor,
    )
