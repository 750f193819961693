"""The users file: Apache htdigest lines, read into a :class:`UserDB`.

Each line is ``user:realm:HA1`` where HA1 is the hex MD5 of
``user:realm:password``, exactly as ``htdigest`` from apache2-utils writes it
(RFC 2617 §3.2.2.2, RFC 7616 §3.4.2). sipproxy reads an optional fourth field,
the hex SHA-256 of the same string, so that it can offer ``algorithm=SHA-256``
(RFC 8760 §2.2, RFC 7616 §3.4.2); ``sipproxy-passwd`` writes both. Blank lines
and lines starting with ``#`` are skipped; lines of other realms are ignored.

A malformed line makes the whole file unacceptable (:class:`UsersFileError`
names the file and the line), so that a server reloading the file keeps the
users it had rather than serving half a file. The plaintext password is never
stored: :func:`write_user` writes only the HA1 values.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from sipproxy.auth.ha1 import compute_ha1

__all__ = [
    "UserDB",
    "UsersFileError",
    "load_users",
    "read_realms",
    "write_user",
]

_MD5_HEX = re.compile(r"[0-9a-fA-F]{32}")
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
# htdigest refuses ':' in user and realm; a line break would make a second line.
_FORBIDDEN = re.compile(r"[:\r\n\x00]")


class UsersFileError(ValueError):
    """The users file cannot be read or has a line that is not ``user:realm:ha1``.

    ``path`` and ``line`` (1-based; 0 when the file as a whole is at fault) say
    where; the message names both, and never a password or HA1.
    """

    def __init__(self, path: str | os.PathLike[str], line: int, reason: str) -> None:
        where = f"{os.fspath(path)}:{line}" if line else os.fspath(path)
        super().__init__(f"{where}: {reason}")
        self.path = os.fspath(path)
        self.line = line
        self.reason = reason


@dataclass(frozen=True, slots=True)
class UserDB:
    """The users of one realm and their HA1 values, by algorithm.

    ``entries`` maps a user name to ``{"MD5": hex, "SHA-256": hex}`` (SHA-256
    only where the file has it); algorithm keys are upper case as RFC 7616 §3.3
    spells them, hex is lower case.
    """

    realm: str
    entries: Mapping[str, Mapping[str, str]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    # Every challenge asks for the common algorithms: computed once, because
    # walking 100,000 users per challenge made a REGISTER cost milliseconds.
    _common: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        common = {"MD5", "SHA-256"}
        for by_algorithm in self.entries.values():
            common &= by_algorithm.keys()
            if common == {"MD5"}:
                break
        object.__setattr__(self, "_common", frozenset(common))

    def ha1(self, user: str, algorithm: str) -> str | None:
        """The hex HA1 of ``user`` for ``algorithm`` ("MD5", "SHA-256"), or None.

        None when the user is unknown or the file has no HA1 of that algorithm for
        them. The algorithm name is case-insensitive (RFC 7616 §3.3).
        """
        by_algorithm = self.entries.get(user)
        if by_algorithm is None:
            return None
        return by_algorithm.get(algorithm.upper())

    def __contains__(self, user: object) -> bool:
        return user in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    @property
    def algorithms(self) -> frozenset[str]:
        """The algorithms every user has an HA1 for ("MD5" always).

        A server offers only these, since offering SHA-256 to a user whose line
        lacks it would lock that user out, and offering it per user would tell a
        scanner which users exist.
        """
        return self._common


@dataclass(frozen=True, slots=True)
class _Line:
    user: str
    realm: str
    md5: str
    sha256: str | None


def _parse_line(path: str | os.PathLike[str], number: int, text: str) -> _Line | None:
    stripped = text.strip()
    if not stripped or stripped.startswith("#"):
        return None
    fields = stripped.split(":")
    if len(fields) not in (3, 4):
        raise UsersFileError(
            path, number, f"expected user:realm:md5[:sha256], got {len(fields)} fields"
        )
    user, realm, md5 = fields[0], fields[1], fields[2]
    if not user:
        raise UsersFileError(path, number, "empty user name")
    if not _MD5_HEX.fullmatch(md5):
        raise UsersFileError(path, number, "third field is not 32 hex digits (MD5)")
    sha256: str | None = None
    if len(fields) == 4:
        sha256 = fields[3]
        if not _SHA256_HEX.fullmatch(sha256):
            raise UsersFileError(
                path, number, "fourth field is not 64 hex digits (SHA-256)"
            )
        sha256 = sha256.lower()
    return _Line(user, realm, md5.lower(), sha256)


def _read_lines(path: str | os.PathLike[str]) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except UnicodeDecodeError as error:
        raise UsersFileError(path, 0, f"not UTF-8 ({error.reason})") from None
    except OSError as error:
        raise UsersFileError(path, 0, error.strerror or str(error)) from None


def load_users(path: str | os.PathLike[str], realm: str) -> UserDB:
    """Read the users of ``realm`` from the htdigest file at ``path``.

    Every line is checked, those of other realms too; a user listed twice in
    ``realm`` is an error, since which line wins would be a guess.

    :raises UsersFileError: when the file cannot be read or a line is malformed.
    """
    entries: dict[str, Mapping[str, str]] = {}
    for number, text in enumerate(_read_lines(path), start=1):
        line = _parse_line(path, number, text)
        if line is None or line.realm != realm:
            continue
        if line.user in entries:
            raise UsersFileError(path, number, f"user {line.user!r} listed twice")
        by_algorithm = {"MD5": line.md5}
        if line.sha256 is not None:
            by_algorithm["SHA-256"] = line.sha256
        entries[line.user] = MappingProxyType(by_algorithm)
    return UserDB(realm, MappingProxyType(entries))


def read_realms(path: str | os.PathLike[str]) -> frozenset[str]:
    """The realms named in the htdigest file at ``path`` (empty if it does not exist).

    :raises UsersFileError: when the file cannot be read or a line is malformed.
    """
    if not os.path.exists(path):
        return frozenset()
    lines = (_parse_line(path, n, t) for n, t in enumerate(_read_lines(path), 1))
    return frozenset(line.realm for line in lines if line is not None)


def format_line(user: str, realm: str, password: str) -> str:
    """The users-file line for ``user`` in ``realm``: MD5 HA1, then SHA-256 HA1.

    :raises ValueError: when ``user`` or ``realm`` is empty or holds ``:`` or a
        line break, which would make the line unreadable.
    """
    if not user or _FORBIDDEN.search(user):
        raise ValueError("the user name must be non-empty, without ':' or line breaks")
    if _FORBIDDEN.search(realm):
        raise ValueError("the realm must not contain ':' or line breaks")
    md5 = compute_ha1(user, realm, password, "MD5")
    sha256 = compute_ha1(user, realm, password, "SHA-256")
    return f"{user}:{realm}:{md5}:{sha256}"


def write_user(
    path: str | os.PathLike[str], user: str, realm: str, password: str
) -> bool:
    """Add ``user`` to ``realm`` in the file at ``path``, or change their password.

    The user's line (every line of that user and realm) is replaced in place, or
    the new line appended; comments and other lines are kept as they are. The
    file is replaced atomically (a temporary file in the same directory, then
    :func:`os.replace`), so a server reading it sees the old or the new file,
    never half of one. A new file is created with mode 0600; an existing file
    keeps its mode and, where permitted, its owner. Only HA1 values are written.

    :returns: True when the user was added, False when their line was replaced.
    :raises UsersFileError: when the existing file cannot be read or is malformed.
    :raises ValueError: for a user name or realm that cannot go in the file.
    """
    new_line = format_line(user, realm, password)
    existing = os.path.exists(path)
    lines = _read_lines(path) if existing else []
    kept: list[str] = []
    replaced = False
    for number, text in enumerate(lines, start=1):
        line = _parse_line(path, number, text)
        if line is not None and line.user == user and line.realm == realm:
            if not replaced:
                kept.append(new_line)
                replaced = True
            continue
        kept.append(text)
    if not replaced:
        kept.append(new_line)
    _replace_file(path, "".join(f"{text}\n" for text in kept), existing)
    return not replaced


def _replace_file(path: str | os.PathLike[str], content: str, existing: bool) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    # mkstemp creates the file with mode 0600.
    fd, tmp = tempfile.mkstemp(prefix=".htdigest-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        if existing:
            st = os.stat(path)
            os.chmod(tmp, st.st_mode & 0o7777)
            # Keep the owner when root edits the server's file; others cannot.
            with contextlib.suppress(OSError):
                os.chown(tmp, st.st_uid, st.st_gid)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
