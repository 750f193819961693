"""The admin API's token file: made at first start, private, shared with sipproxy-ctl.

With ``--admin tcp:...`` and neither ``admin-token`` nor ``admin-token-file``, the
server keeps its bearer token in ``admin-token`` in its state directory: systemd's
``$STATE_DIRECTORY`` (``/var/lib/sipproxy`` with the shipped unit), else ``var/``
under the directory it runs in. The first start writes a random token there; later
starts read the same one, so ``sipproxy-ctl`` on the same host finds it and keeps
working across restarts.

Like ssh with a private key, a token file that another user could read or write
is refused: whoever can read it can list, remove and forward every user's calls.
The file is made complete and ``0600`` in one step (a private temporary file linked
into place), so a second process starting at the same moment reads the same token
or, if it loses the race, the winner's.

Standard library only: ``sipproxy-ctl`` imports it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "FILE_NAME",
    "MIN_LENGTH",
    "SYSTEMD_STATE_DIRECTORY",
    "TokenFileError",
    "candidates",
    "default_path",
    "load_or_create",
    "read_private",
]

#: the token file's name inside the state directory
FILE_NAME = "admin-token"
#: ``StateDirectory=sipproxy`` of etc/sipproxy.service, as root's shell sees it
SYSTEMD_STATE_DIRECTORY = "/var/lib/sipproxy"
#: shortest token accepted: 16 characters is 96 bits as base64
MIN_LENGTH = 16


class TokenFileError(Exception):
    """A token file that cannot be used; the message names the file, never the token."""


def default_path(environ: Mapping[str, str]) -> Path:
    """Where the server keeps a token nobody configured.

    systemd sets ``STATE_DIRECTORY`` (several directories are separated by ``:``;
    the first is ours); without it, ``var/`` under the working directory.
    """
    state = environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(state or "var") / FILE_NAME


def candidates(environ: Mapping[str, str]) -> list[Path]:
    """Where ``sipproxy-ctl`` looks for the token, in order, when none is given.

    The server's own default, then the shipped unit's state directory (root's
    shell has no ``STATE_DIRECTORY``).
    """
    found = [default_path(environ), Path(SYSTEMD_STATE_DIRECTORY) / FILE_NAME]
    return list(dict.fromkeys(found))


def load_or_create(path: Path) -> tuple[str, bool]:
    """The token kept in ``path``, writing a new random one there first if none is.

    :returns: the token, and whether this call made the file.
    :raises TokenFileError: the file is unreadable, not private, or holds no token;
        or it cannot be made.
    """
    try:
        return read_private(path), False
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(32)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # mkstemp opens with O_EXCL and mode 0600 whatever the umask; link()
        # never replaces a file, so the token appears whole and only once.
        handle, temporary = tempfile.mkstemp(prefix=".admin-token-", dir=path.parent)
        try:
            with os.fdopen(handle, "w", encoding="ascii") as file:
                file.write(token + "\n")
                file.flush()
                os.fsync(file.fileno())
            os.link(temporary, path)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
    except FileExistsError:
        # Another process made it between our read and our link: use theirs.
        return read_private(path), False
    except OSError as error:
        raise TokenFileError(
            f"admin token file {str(path)!r}: cannot create it: "
            f"{error.strerror or error}"
        ) from None
    return token, True


def read_private(path: Path) -> str:
    """The token in ``path``, a regular file of this user that nobody else can use.

    :raises FileNotFoundError: there is no such file.
    :raises TokenFileError: anything else that makes it unusable.
    """
    where = f"admin token file {str(path)!r}"
    try:
        handle = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as error:
        raise TokenFileError(f"{where}: {error.strerror or error}") from None
    with os.fdopen(handle, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise TokenFileError(f"{where}: not a regular file")
        if info.st_uid != os.geteuid():
            raise TokenFileError(
                f"{where}: owned by uid {info.st_uid}, not by this user "
                f"(uid {os.geteuid()}); delete it to have a new one made"
            )
        if info.st_mode & 0o077:
            raise TokenFileError(
                f"{where}: group or others may use it (mode "
                f"{stat.S_IMODE(info.st_mode):04o}); chmod 600 it, or delete it "
                "to have a new one made"
            )
        data = file.read(4096)
    try:
        token = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise TokenFileError(f"{where}: not UTF-8 text") from None
    if len(token) < MIN_LENGTH or any(c.isspace() for c in token):
        raise TokenFileError(
            f"{where}: holds no token of {MIN_LENGTH}+ characters without "
            "spaces; delete it to have a new one made"
        )
    return token
