"""``sipproxy-passwd FILE USER``: add a user to the users file, or change a password.

The file is in Apache htdigest format (see :mod:`sipproxy.auth.htdigest`); each line
this command writes carries the MD5 HA1, as ``htdigest`` writes it, and the
SHA-256 HA1 as a fourth field so that the server can offer SHA-256 (RFC 8760).
The password comes from a prompt (asked twice) or, with ``--password-stdin``,
from the first line of standard input. It is never stored, printed or logged.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Sequence

from sipproxy.auth.htdigest import UsersFileError, read_realms, write_user

__all__ = ["main"]


class _UsageError(Exception):
    """A problem the user can fix by calling the command differently."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sipproxy-passwd",
        description="Add a user to a sipproxy users file (htdigest format), "
        "or change their password.",
    )
    parser.add_argument("file", metavar="FILE", help="the users file; created if new")
    parser.add_argument("user", metavar="USER", help="the user name (SIP user part)")
    parser.add_argument(
        "--realm",
        help="the realm (sipproxy's first --domain); may be left out when FILE "
        "already names exactly one realm",
    )
    parser.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input",
    )
    return parser


def _realm(path: str, given: str | None) -> str:
    if given is not None:
        return given
    realms = read_realms(path)
    if len(realms) == 1:
        return next(iter(realms))
    if not realms:
        raise _UsageError(f"{path} names no realm yet: give --realm")
    raise _UsageError(f"{path} names several realms: give --realm")


def _password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Password again: ") != password:
            raise _UsageError("the passwords differ")
    if not password:
        raise _UsageError("empty password")
    return password


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; the exit status is 0, 1 (failed) or 2 (usage)."""
    args = _parser().parse_args(argv)
    try:
        realm = _realm(args.file, args.realm)
        password = _password(args.password_stdin)
        added = write_user(args.file, args.user, realm, password)
    except _UsageError as error:
        print(f"sipproxy-passwd: {error}", file=sys.stderr)
        return 2
    except (UsersFileError, ValueError, OSError) as error:
        print(f"sipproxy-passwd: {error}", file=sys.stderr)
        return 1
    except (EOFError, KeyboardInterrupt):
        print("sipproxy-passwd: no password given", file=sys.stderr)
        return 1
    action = "added" if added else "changed the password of"
    print(f"{action} user {args.user!r} in realm {realm!r} in {args.file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
