"""The server's secrets: what keys its dialog tokens, and the admin API's token.

Both can be kept in the state directory (:mod:`sipproxy.tokenfile`): made at the
first start, read again at every later one, so that what they protect outlives a
restart.
"""

from __future__ import annotations

import os
from pathlib import Path

from twisted.logger import Logger

from sipproxy.config import Config, ConfigError, UnixSocketSpec
from sipproxy.tokenfile import TokenFileError, default_path, load_or_create


def read_secret(path: str | None) -> bytes | None:
    """The bytes of ``secret-file`` (None if not given); ConfigError if unusable."""
    if path is None:
        return None
    try:
        secret = Path(path).read_bytes()
    except OSError as error:
        raise ConfigError(f"secret-file {path!r}: {error.strerror}") from None
    if len(secret) < 16:
        raise ConfigError(f"secret-file {path!r}: needs at least 16 bytes")
    return secret


def kept_secret(log: Logger) -> bytes | None:
    """The key of dialog and flow tokens when no secret-file names one.

    Kept in the state directory like the admin token, so that the calls going
    on when the server restarts can still be hung up: their Record-Route
    tokens are the only proof that they are ours. None (a random key, this run
    only) when the directory is not writable; ``log`` says so.
    """
    path = default_path(os.environ).with_name("dialog-secret")
    try:
        secret, _ = load_or_create(path)
    except TokenFileError as error:
        log.warn(
            "dialog tokens are keyed for this run only, so calls in progress "
            "cannot be ended through the proxy after a restart: {why}",
            why=str(error).replace("admin token file", "secret file"),
        )
        return None
    return secret.encode()


def admin_token(config: Config, log: Logger) -> str | None:
    """The admin API's token; on tcp without one configured, the kept one.

    A Unix socket needs none: its file mode decides who may connect.

    :raises SystemExit: when the kept token cannot be read or made; nothing
        should listen then.
    """
    admin = config.admin
    if admin is None or config.admin_token is not None:
        return config.admin_token
    if isinstance(admin, UnixSocketSpec):
        return None
    path = default_path(os.environ)
    try:
        token, made = load_or_create(path)
    except TokenFileError as error:
        raise SystemExit(f"sipproxy: error: {error}") from None
    if made:
        log.info(
            "admin API token written to {path} (mode 0600); sipproxy-ctl on "
            "this host reads it",
            path=str(path),
        )
    return token
