"""A raw-socket SIP phone for the integration tests: UDP or TCP, digest answers.

Just enough of a user agent to drive the proxy from outside: requests built as
text, answered challenges (RFC 3261 §22.2, a new transaction each time),
responses to requests it receives, and a mailbox so that messages arriving out
of the order a test waits for are kept, not lost. Every wait is bounded.
"""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Callable, Sequence

from sipproxy.sip.message import Request, Response
from sipproxy.sip.parser import parse_message
from tests.support import challenge_params, digest_answer

REALM = "example.test"
Message = Request | Response
_numbers = itertools.count(1)


class RawPhone:
    """One phone of ``user`` on 127.0.0.1, talking to the proxy on ``port``."""

    def __init__(
        self, user: str, password: str, port: int, *, transport: str = "udp"
    ) -> None:
        self.user = user
        self.password = password
        self.server = ("127.0.0.1", port)
        self.transport = transport
        kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
        self.sock = socket.socket(socket.AF_INET, kind)
        self.sock.bind(("127.0.0.1", 0))
        if transport != "udp":
            self.sock.settimeout(5)
            self.sock.connect(self.server)
        self.port: int = self.sock.getsockname()[1]
        self.mailbox: list[Message] = []
        self._stream = b""

    def close(self) -> None:
        self.sock.close()

    @property
    def contact(self) -> str:
        param = "" if self.transport == "udp" else f";transport={self.transport}"
        return f"<sip:{self.user}@127.0.0.1:{self.port}{param}>"

    # -- the wire -----------------------------------------------------------------

    def send(self, data: bytes | Message) -> None:
        raw = data if isinstance(data, bytes) else data.to_bytes()
        if self.transport == "udp":
            self.sock.sendto(raw, self.server)
        else:
            self.sock.sendall(raw)

    def _read(self, deadline: float) -> Message | None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        self.sock.settimeout(remaining)
        if self.transport == "udp":
            try:
                return parse_message(self.sock.recv(65536))
            except TimeoutError:
                return None
        while True:
            framed = self._framed()
            if framed is not None:
                return parse_message(framed, stream=True)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return None
            if not chunk:
                return None
            self._stream += chunk

    def _framed(self) -> bytes | None:
        self._stream = self._stream.lstrip(b"\r\n")
        head, sep, rest = self._stream.partition(b"\r\n\r\n")
        if not sep:
            return None
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() in (b"content-length", b"l"):
                length = int(value.strip())
        if len(rest) < length:
            return None
        message = head + sep + rest[:length]
        self._stream = rest[length:]
        return message

    def wait(self, wanted: Callable[[Message], bool], timeout: float = 5.0) -> Message:
        """The first message (kept or new) that ``wanted`` accepts; others kept."""
        for index, kept in enumerate(self.mailbox):
            if wanted(kept):
                return self.mailbox.pop(index)
        deadline = time.monotonic() + timeout
        while True:
            message = self._read(deadline)
            if message is None:
                raise AssertionError(
                    f"{self.user}: nothing wanted within {timeout} s; kept: "
                    f"{[_summary(m) for m in self.mailbox]}"
                )
            if wanted(message):
                return message
            self.mailbox.append(message)

    def nothing(self, wanted: Callable[[Message], bool], timeout: float) -> bool:
        """True if no wanted message comes within ``timeout``."""
        try:
            self.wait(wanted, timeout)
        except AssertionError:
            return True
        return False

    def request_of(self, method: str, timeout: float = 5.0) -> Request:
        found = self.wait(
            lambda m: isinstance(m, Request) and m.method == method, timeout
        )
        assert isinstance(found, Request)
        return found

    def response_to(
        self, call_id: str, method: str, timeout: float = 5.0, *, final: bool = True
    ) -> Response:
        def wanted(m: Message) -> bool:
            return (
                isinstance(m, Response)
                and m.headers.get("call-id") == call_id
                and m.cseq.method == method
                and (m.status >= 200 or not final)
            )

        found = self.wait(wanted, timeout)
        assert isinstance(found, Response)
        return found

    def reply(
        self,
        request: Request,
        status: int,
        *,
        to_tag: str | None = None,
        extra: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Answer ``request`` as a UAS (Record-Route copied in 1xx/2xx, §12.1.1)."""
        headers = list(extra)
        if 100 < status < 300:
            headers += [
                ("Record-Route", v) for v in request.headers.get_all("record-route")
            ]
            headers.append(("Contact", self.contact))
        self.send(request.response(status, to_tag=to_tag, headers=headers))

    def notify(self, timeout: float = 5.0, *, status: int = 200) -> Request:
        """The next NOTIFY, answered ``status``."""
        found = self.request_of("NOTIFY", timeout)
        self.reply(found, status)
        return found

    # -- requests -------------------------------------------------------------------

    def build(
        self,
        method: str,
        uri: str,
        *,
        to: str,
        call_id: str,
        cseq: int,
        from_tag: str = "",
        to_tag: str | None = None,
        routes: Sequence[str] = (),
        extra: Sequence[tuple[str, str]] = (),
        from_uri: str | None = None,
    ) -> bytes:
        number = next(_numbers)
        sender = from_uri or f"sip:{self.user}@{REALM}"
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/{self.transport.upper()} 127.0.0.1:{self.port}"
            f";branch=z9hG4bKraw{number}x{self.port};rport",
            "Max-Forwards: 70",
            f"From: <{sender}>;tag={from_tag or self.user}",
            f"To: <{to}>" + (f";tag={to_tag}" if to_tag else ""),
            f"Call-ID: {call_id}",
            f"CSeq: {cseq} {method}",
            *(f"Route: {route}" for route in routes),
        ]
        if method != "ACK":
            lines.append(f"Contact: {self.contact}")
        lines += [f"{name}: {value}" for name, value in extra]
        return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()

    def transact(
        self,
        method: str,
        uri: str,
        *,
        to: str,
        call_id: str,
        cseq: int = 1,
        to_tag: str | None = None,
        extra: Sequence[tuple[str, str]] = (),
        routes: Sequence[str] = (),
        authenticate: bool = True,
        timeout: float = 5.0,
    ) -> tuple[Response, int]:
        """Send; answer one 401/407 with our password; the final answer and CSeq."""
        self.send(
            self.build(method, uri, to=to, call_id=call_id, cseq=cseq,
                       to_tag=to_tag, extra=extra, routes=routes)
        )  # fmt: skip
        if method == "INVITE":
            return self.response_to(call_id, method, timeout, final=False), cseq
        answer = self.response_to(call_id, method, timeout)
        if answer.status not in (401, 407) or not authenticate:
            return answer, cseq
        name = "WWW-Authenticate" if answer.status == 401 else "Proxy-Authenticate"
        offered = challenge_params(answer.to_bytes(), name)[0]
        credentials = digest_answer(
            offered, user=self.user, password=self.password, method=method, uri=uri
        )
        header = "Authorization" if answer.status == 401 else "Proxy-Authorization"
        cseq += 1
        self.send(
            self.build(method, uri, to=to, call_id=call_id, cseq=cseq, to_tag=to_tag,
                       extra=[*extra, (header, credentials)], routes=routes)
        )  # fmt: skip
        return self.response_to(call_id, method, timeout), cseq

    def register(self) -> None:
        aor = f"sip:{self.user}@{REALM}"
        answer, _ = self.transact(
            "REGISTER", f"sip:{REALM}", to=aor, call_id=f"reg-{self.user}-{self.port}",
            extra=[("Expires", "3600")],
        )  # fmt: skip
        assert answer.status == 200, answer

    def invite(self, target: str, call_id: str) -> int:
        """INVITE ``target``@example.test, answering the 407; the CSeq used."""
        uri = f"sip:{target}@{REALM}"
        self.send(self.build("INVITE", uri, to=uri, call_id=call_id, cseq=1))
        challenge = self.response_to(call_id, "INVITE")
        assert challenge.status == 407, challenge
        self.send(self.build("ACK", uri, to=uri, call_id=call_id, cseq=1,
                             to_tag=challenge.to_addr.tag))  # fmt: skip
        offered = challenge_params(challenge.to_bytes(), "Proxy-Authenticate")[0]
        credentials = digest_answer(
            offered, user=self.user, password=self.password, method="INVITE", uri=uri
        )
        self.send(
            self.build("INVITE", uri, to=uri, call_id=call_id, cseq=2,
                       extra=[("Proxy-Authorization", credentials)])
        )  # fmt: skip
        return 2


def _summary(message: Message) -> str:
    if isinstance(message, Request):
        return f"{message.method} {message.uri}"
    return f"{message.status} {message.reason} ({message.cseq.method})"
