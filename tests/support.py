"""Socket helpers shared by the tests that use real sockets (integration, stores)."""

from __future__ import annotations

import re
import socket
from types import MappingProxyType

from sipproxy.auth.digest import compute_response
from sipproxy.auth.ha1 import compute_ha1
from sipproxy.auth.htdigest import UserDB


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (loopback only)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port on 127.0.0.1")


def final_response(sock: socket.socket) -> bytes:
    """The next answer on ``sock`` that is not a 100 Trying."""
    while True:
        data = sock.recv(65536)
        if not data.startswith(b"SIP/2.0 100 "):
            return data


def challenge_params(response: bytes, name: str) -> list[dict[str, str]]:
    """The parameters of each ``name`` challenge (WWW- or Proxy-Authenticate)."""
    found = []
    for line in response.decode().split("\r\n"):
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            found.append(dict(re.findall(r'(\w+)="?([^",]*)"?', value)))
    return found


def digest_answer(
    challenge: dict[str, str],
    *,
    user: str,
    password: str,
    method: str,
    uri: str,
    realm: str = "example.test",
    cnonce: str = "abcdef",
) -> str:
    """Credentials answering ``challenge`` as a phone would (qop=auth, nc 1)."""
    algorithm = challenge.get("algorithm", "MD5")
    ha1 = compute_ha1(user, realm, password, algorithm)
    response = compute_response(
        ha1, algorithm=algorithm, method=method, uri=uri, nonce=challenge["nonce"],
        qop="auth", nc="00000001", cnonce=cnonce,
    )  # fmt: skip
    opaque = f', opaque="{challenge["opaque"]}"' if "opaque" in challenge else ""
    return (
        f'Digest username="{user}", realm="{realm}", nonce="{challenge["nonce"]}", '
        f'uri="{uri}", response="{response}", algorithm={algorithm}, qop=auth, '
        f'nc=00000001, cnonce="{cnonce}"{opaque}'
    )


def user_db(realm: str, **passwords: str) -> UserDB:
    """A users file's contents in memory: each user's HA1 in MD5 and SHA-256."""
    return UserDB(
        realm,
        MappingProxyType(
            {
                user: MappingProxyType(
                    {a: compute_ha1(user, realm, pw, a) for a in ("MD5", "SHA-256")}
                )
                for user, pw in passwords.items()
            }
        ),
    )
