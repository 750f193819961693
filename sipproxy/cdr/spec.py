"""From a ``--cdr`` string to an unopened call record store.

Apart from the package's ``__init__`` because it imports every store, and every
store imports the package: kept together they would be a cycle.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sipproxy.cdr import CallRecordStore
from sipproxy.location.spec import redacted_spec, redacted_text

__all__ = ["cdr_from_spec", "default_cdr_spec"]

_FORMS = "none, jsonl:PATH, sqlite:PATH, redis://HOST:PORT/DB or auto"


def cdr_from_spec(spec: str, reactor: Any, *, location: str) -> CallRecordStore:
    """Make an unopened store from a configuration string.

    - ``none``: keep no records;
    - ``jsonl:PATH``: JSON lines, calls in progress in ``PATH.live.json``;
    - ``sqlite:PATH``: an SQLite file of its own;
    - ``redis://HOST[:PORT][/DB][?prefix=PREFIX]``, HOST possibly ``[::1]``, PORT
      6379 and DB 0 by default, PREFIX ``sipproxy:``; ``redis://:PASSWORD@...``
      authenticates;
    - ``""`` or ``auto``: :func:`default_cdr_spec` of ``location``.

    :param reactor: what the store schedules threads and connections on.
    :param location: the ``--location`` spec, for ``auto``.
    :raises ValueError: the spec (or, for ``auto``, the location spec) is
        malformed; the message quotes it without its password.
    """
    if spec.strip().lower() in ("", "auto"):
        spec = default_cdr_spec(location)
    scheme, colon, rest = spec.partition(":")
    scheme = scheme.lower()
    if scheme == "none" and not rest:
        from sipproxy.cdr.null import NullCallRecordStore

        return NullCallRecordStore()
    if not colon or scheme not in ("jsonl", "sqlite", "redis"):
        raise _bad_spec(spec, f"expected {_FORMS}")
    if scheme in ("jsonl", "sqlite"):
        if not rest or rest.startswith("//"):
            raise _bad_spec(spec, f"expected {scheme}:PATH, e.g. {scheme}:/var/log/cdr")
        if scheme == "jsonl":
            from sipproxy.cdr.jsonl import JSONLinesCallRecordStore

            return JSONLinesCallRecordStore(rest, reactor=reactor)
        from sipproxy.cdr.sqlite import SQLiteCallRecordStore

        return SQLiteCallRecordStore(rest, reactor=reactor)
    return _redis_from_spec(spec, reactor)


def default_cdr_spec(location: str) -> str:
    """The CDR spec that goes with a location spec, for ``--cdr auto``.

    ``sqlite:DIR/NAME.EXT`` gives ``sqlite:DIR/NAME-cdr.sqlite``, a file of its
    own beside the bindings; ``redis://...`` gives the same server, database and
    prefix; ``memory:`` gives ``none`` (a process that forgets its registrations
    at exit keeps no call records either).

    :raises ValueError: ``location`` is none of those.
    """
    scheme, colon, rest = location.partition(":")
    scheme = scheme.lower()
    if colon and scheme == "memory" and not rest:
        return "none"
    if colon and scheme == "sqlite" and rest and not rest.startswith("//"):
        path = PurePath(rest)
        return f"sqlite:{path.with_name(f'{path.stem}-cdr.sqlite')}"
    if colon and scheme == "redis" and rest.startswith("//"):
        return location
    raise ValueError(
        f"no CDR default for location spec {redacted_spec(location)!r};"
        " give --cdr none, jsonl:PATH, sqlite:PATH or redis://..."
    )


def _bad_spec(spec: str, why: str) -> ValueError:
    return ValueError(
        f"bad CDR spec {redacted_spec(spec)!r}: {redacted_text(why, spec)}"
    )


def _redis_from_spec(spec: str, reactor: Any) -> CallRecordStore:
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
    from sipproxy.cdr.redis import RedisCallRecordStore

    return RedisCallRecordStore(
        host=host,
        port=port,
        db=int(db_text),
        password=parts.password,
        prefix=options.get("prefix", ["sipproxy:"])[-1],
        reactor=reactor,
    )
