"""Socket helpers shared by the tests that use real sockets (integration, stores)."""

from __future__ import annotations

import re
import socket
from types import MappingProxyType

from sipproxy.auth.digest import compute_response
from sipproxy.auth.ha1 import compute_ha1
from sipproxy.auth.htdigest import UserDB
from sipproxy.sip.message import Request, Response


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


#: A minimal audio-less session description, for phones that answer calls.
SDP = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"


def uas_answer(request: Request, status: int, contact: str, to_tag: str) -> Response:
    """A phone's answer to ``request``: Vias and Record-Route copied (§12.1.1).

    A 200 to an INVITE carries :data:`SDP`.
    """
    extra = [("Contact", contact)]
    extra += [("Record-Route", v) for v in request.headers.get_all("record-route")]
    with_sdp = request.method == "INVITE" and status == 200
    if with_sdp:
        extra.append(("Content-Type", "application/sdp"))
    response = request.response(status, to_tag=to_tag, headers=extra)
    if with_sdp:
        response = Response(
            response.status,
            response.reason,
            response.headers.replace("Content-Length", str(len(SDP))),
            SDP,
        )
    return response


def in_dialog(
    method: str, via: str, user: str, ok: Response, call_id: str, cseq: int
) -> bytes:
    """ACK or BYE of the caller ``user`` inside the dialog ``ok`` set up.

    The Route set is the 2xx's Record-Route reversed, the target its Contact
    (§12.1.2); ``via`` is the caller's Via line.
    """
    routes = list(reversed(ok.headers.get_all("record-route")))
    target = ok.headers.get("contact") or ""
    target = target.strip().removeprefix("<").split(">")[0]
    lines = [f"{method} {target} SIP/2.0", via.rstrip("\r\n")]
    lines += [f"Route: {route}" for route in routes]
    lines += [
        "Max-Forwards: 70",
        f"From: <sip:{user}@example.test>;tag=caller",
        f"To: {ok.headers.get('to')}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()
