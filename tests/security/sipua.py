"""A tiny SIP user agent over a real UDP socket, for playing phone or attacker.

It writes requests by hand (an attacker writes whatever it likes), answers
digest challenges like a phone, and collects what the server sends it.
"""

from __future__ import annotations

import itertools
import re
import socket
import time

from tests.integration.conftest import status_of
from tests.support import digest_answer

REALM = "example.test"
_numbers = itertools.count(1)


def header_values(message: bytes, name: str) -> list[str]:
    """Every value of header ``name`` in a raw message (one per line)."""
    head = message.partition(b"\r\n\r\n")[0].decode("utf-8", "replace")
    found = []
    for line in head.split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            found.append(value.strip())
    return found


def start_line(message: bytes) -> str:
    return message.split(b"\r\n", 1)[0].decode("utf-8", "replace")


class UA:
    """One UDP socket on a loopback address; sends to the server on ``port``."""

    def __init__(self, port: int, *, host: str = "127.0.0.1") -> None:
        self.server = ("127.0.0.1", port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.host, self.port = self.sock.getsockname()
        self.sent_by = f"{self.host}:{self.port}"

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.server)

    def receive(self, timeout: float = 2.0) -> bytes | None:
        """The next datagram, or None after ``timeout`` seconds."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(65536)
        except TimeoutError:
            return None

    def drain(self, seconds: float) -> list[bytes]:
        """Everything that arrives within ``seconds`` (bounded)."""
        until = time.monotonic() + seconds
        got: list[bytes] = []
        while (left := until - time.monotonic()) > 0:
            data = self.receive(left)
            if data is not None:
                got.append(data)
        return got

    def final(self, timeout: float = 3.0) -> bytes | None:
        """The first final response (provisional ones skipped), or None."""
        until = time.monotonic() + timeout
        while (left := until - time.monotonic()) > 0:
            data = self.receive(left)
            if data is None:
                return None
            status = status_of(data)
            if status is not None and status >= 200:
                return data
        return None

    def final_to(self, request: bytes, timeout: float = 3.0) -> bytes | None:
        """The first final response to ``request`` (its Call-ID and CSeq), or None.

        Whatever else arrives meanwhile is dropped: a proxy retransmits a final
        answer to an earlier INVITE until it is ACKed, and one such must not be
        taken for this request's answer.
        """
        call_id, cseq = (
            header_values(request, "Call-ID"),
            header_values(request, "CSeq"),
        )
        until = time.monotonic() + timeout
        while (left := until - time.monotonic()) > 0:
            data = self.receive(left)
            if data is None:
                return None
            status = status_of(data)
            if (
                status is not None
                and status >= 200
                and header_values(data, "Call-ID") == call_id
                and header_values(data, "CSeq") == cseq
            ):
                return data
        return None

    def cancel(self, invite: bytes) -> bytes:
        """The CANCEL of an INVITE this UA sent (RFC 3261 §9.1)."""
        return _same_transaction(invite, "CANCEL", header_values(invite, "To")[0])

    def ack(self, invite: bytes, response: bytes) -> bytes:
        """The ACK of a non-2xx final ``response`` to ``invite`` (§17.1.1.3)."""
        return _same_transaction(invite, "ACK", header_values(response, "To")[0])

    def request(
        self,
        method: str,
        uri: str,
        *,
        from_user: str,
        to: str,
        call_id: str | None = None,
        cseq: int = 1,
        to_tag: str | None = None,
        from_tag: str = "attacker",
        extra: str = "",
        body: str = "",
        max_forwards: int = 70,
        contact: bool = True,
    ) -> bytes:
        number = next(_numbers)
        call_id = call_id or f"{method.lower()}-{number}@{self.host}"
        tag = f";tag={to_tag}" if to_tag else ""
        user = from_user.partition("@")[0]
        contact_line = f"Contact: <sip:{user}@{self.sent_by}>\r\n" if contact else ""
        return (
            f"{method} {uri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {self.sent_by};branch=z9hG4bKsec{number};rport\r\n"
            f"Max-Forwards: {max_forwards}\r\n"
            f"From: <sip:{from_user}>;tag={from_tag}\r\n"
            f"To: <{to}>{tag}\r\n"
            f"Call-ID: {call_id}\r\n"
            f"CSeq: {cseq} {method}\r\n"
            f"{contact_line}"
            f"{extra}"
            f"Content-Length: {len(body.encode())}\r\n\r\n{body}"
        ).encode()

    def authenticated(
        self,
        make: dict[str, object],
        *,
        user: str,
        password: str,
    ) -> bytes | None:
        """Send ``UA.request(**make)``; answer a 401/407 once; the final answer."""
        make = {"call_id": f"auth-{next(_numbers)}@{self.host}", **make}
        first = self.request(**make)  # type: ignore[arg-type]
        self.send(first)
        answer = self.final()
        status = status_of(answer)
        if answer is None or status not in (401, 407):
            return answer
        name = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
        challenge = dict(
            re.findall(r'(\w+)="?([^",]*)"?', header_values(answer, name)[0])
        )
        method = str(make["method"])
        uri = str(make["uri"])
        credentials = digest(
            challenge, user=user, password=password, method=method, uri=uri
        )
        field = "Authorization" if status == 401 else "Proxy-Authorization"
        retry = dict(make)
        retry["cseq"] = int(str(make.get("cseq", 1))) + 1
        retry["extra"] = f"{make.get('extra', '')}{field}: {credentials}\r\n"
        self.send(self.request(**retry))  # type: ignore[arg-type]
        return self.final()

    def register(self, user: str, password: str, *, extra: str = "") -> bytes | None:
        """Register ``user`` with this socket as its Contact, with digest."""
        return self.authenticated(
            {
                "method": "REGISTER",
                "uri": f"sip:{REALM}",
                "from_user": f"{user}@{REALM}",
                "to": f"sip:{user}@{REALM}",
                "call_id": f"reg-{user}-{self.port}",
                "extra": f"Expires: 600\r\n{extra}",
            },
            user=user,
            password=password,
        )

    def answer(self, request: bytes, status: int, *, to_tag: str = "callee") -> bytes:
        """A response to ``request`` as a UAS writes it (Vias, Record-Route copied)."""
        lines = [f"SIP/2.0 {status} Answer"]
        for name in ("Via", "Record-Route", "From", "Call-ID", "CSeq"):
            lines += [f"{name}: {v}" for v in header_values(request, name)]
        to = header_values(request, "To")[0]
        lines.append(f"To: {to}" if ";tag=" in to else f"To: {to};tag={to_tag}")
        lines.append(f"Contact: <sip:callee@{self.sent_by}>")
        lines.append("Content-Length: 0")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode()
        return data


def _same_transaction(invite: bytes, method: str, to: str) -> bytes:
    """A CANCEL or ACK matching ``invite``: its Request-URI, Via, Call-ID, CSeq number.

    §9.1 and §17.1.1.3 want the same Route too; ``to`` is the INVITE's To
    (CANCEL) or the response's, with its tag (ACK).
    """
    uri = start_line(invite).split(" ")[1]
    lines = [f"{method} {uri} SIP/2.0"]
    lines += [f"Via: {header_values(invite, 'Via')[0]}"]
    for name in ("Route", "Max-Forwards", "From", "Call-ID"):
        lines += [f"{name}: {value}" for value in header_values(invite, name)]
    number = header_values(invite, "CSeq")[0].split()[0]
    lines += [f"To: {to}", f"CSeq: {number} {method}", "Content-Length: 0"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def digest(
    challenge: dict[str, str], *, user: str, password: str, method: str, uri: str
) -> str:
    """Credentials for ``challenge``; each with a cnonce of its own."""
    return digest_answer(
        challenge, user=user, password=password, method=method, uri=uri,
        realm=REALM, cnonce=f"c{next(_numbers)}",
    )  # fmt: skip
