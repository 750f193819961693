"""Presence, voicemail lamps and instant messages to users: routed, not served.

Issue 16: sipproxy is no presence server and no message store. A SUBSCRIBE for
``presence`` (RFC 3856) or ``message-summary`` (RFC 3842), a PUBLISH (RFC 3903)
and a MESSAGE (RFC 3428) addressed to one of our users go to that user's
registered phones like any other request (RFC 3261 §16.5), authenticated like an
INVITE (407 for a request from our domain without credentials, §22.3).
SUBSCRIBE creates a dialog (RFC 6665 §4.1), so the proxy record-routes it, and
the NOTIFYs of that dialog come back through the tokens of our Record-Route
(proxy/flows.py) without being challenged.

The phones are raw sockets on 127.0.0.1 (:class:`UdpPhone`, and
:class:`TcpPhone` on one kept connection): each registers with digest
credentials, sends requests (answering a 407 with credentials) and answers what
reaches it, so every header the proxy writes can be checked.
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from typing_extensions import override

from sipproxy.auth.htdigest import write_user
from sipproxy.sip.message import Request, Response
from sipproxy.sip.parser import parse_message
from sipproxy.sip.uri import SipURI
from tests.integration.conftest import (
    RunningServer,
    free_port,
    read_response,
    start_twistd,
    stop,
)
from tests.support import challenge_params, digest_answer

pytestmark = pytest.mark.integration

REALM = "example.test"
PASSWORDS = {"alice": "alice-secret", "bob": "bob-secret", "carol": "carol-secret"}
PIDF = (
    b'<?xml version="1.0" encoding="UTF-8"?>\r\n'
    b'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:bob@example.test">'
    b'<tuple id="t1"><status><basic>open</basic></status></tuple></presence>\r\n'
)
SUMMARY = b"Messages-Waiting: yes\r\nVoice-Message: 2/8 (0/2)\r\n"
#: event package -> (Accept of the SUBSCRIBE, Content-Type and body of the NOTIFY)
PACKAGES = {
    "presence": ("application/pidf+xml", "application/pidf+xml", PIDF),
    "message-summary": (
        "application/simple-message-summary",
        "application/simple-message-summary",
        SUMMARY,
    ),
}
_numbers = itertools.count(1)
#: the fields UdpPhone.request writes itself (canonical names)
_WRITTEN = frozenset(
    {"via", "max-forwards", "route", "from", "to", "call-id", "cseq", "contact",
     "content-length", "proxy-authorization"}
)  # fmt: skip


class UdpPhone:
    """A SIP phone on one UDP socket of 127.0.0.1, driven step by step.

    :param proxy_port: where the proxy listens (registrar and outbound proxy).
    :param user: the user's name in example.test; its password is in PASSWORDS.
    """

    transport = "UDP"

    def __init__(self, proxy_port: int, user: str) -> None:
        self.user = user
        self.aor = f"sip:{user}@{REALM}"
        self.proxy = ("127.0.0.1", proxy_port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(3)
        self.port: int = self.sock.getsockname()[1]
        self.contact = f"<sip:{user}@127.0.0.1:{self.port}>"
        self.tag = f"{user}-tag-{self.port}"
        self._cseq = itertools.count(1)

    def close(self) -> None:
        self.sock.close()

    # -- the wire ------------------------------------------------------------

    def send(self, message: Request | Response) -> None:
        """Send to the proxy, the outbound proxy of requests and last hop of responses.

        A response goes where its top Via names (§18.2.2): the proxy's, here.
        """
        self.sock.sendto(message.to_bytes(), self.proxy)

    def receive(self, timeout: float = 3.0) -> Request | Response:
        """The next message that is no 100 Trying.

        :raises TimeoutError: when nothing arrives within ``timeout`` seconds.
        """
        self.sock.settimeout(timeout)
        while True:
            message = parse_message(self.sock.recv(65536))
            if not (isinstance(message, Response) and message.status == 100):
                return message

    def receive_request(self, timeout: float = 3.0) -> Request:
        message = self.receive(timeout)
        assert isinstance(message, Request), message
        return message

    def receive_response(self, timeout: float = 3.0) -> Response:
        message = self.receive(timeout)
        assert isinstance(message, Response), message
        return message

    def silent(self, timeout: float = 1.0) -> bool:
        """Whether nothing at all arrives within ``timeout`` seconds."""
        self.sock.settimeout(timeout)
        try:
            self.sock.recv(65536)
        except TimeoutError:
            return True
        return False

    # -- as a UAC ------------------------------------------------------------

    def request(
        self,
        method: str,
        uri: str,
        *,
        to: str | None = None,
        call_id: str | None = None,
        to_tag: str | None = None,
        routes: Sequence[str] = (),
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        authorization: str | None = None,
    ) -> Request:
        """A request from this phone, with its own Via, From tag and next CSeq."""
        number = next(_numbers)
        to_value = f"<{to or uri}>" + (f";tag={to_tag}" if to_tag else "")
        fields = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/{self.transport} 127.0.0.1:{self.port}"
            f";branch=z9hG4bK{self.user}{number};rport",
            "Max-Forwards: 70",
            *(f"Route: {route}" for route in routes),
            f"From: <{self.aor}>;tag={self.tag}",
            f"To: {to_value}",
            f"Call-ID: {call_id or f'{self.user}-{number}@127.0.0.1'}",
            f"CSeq: {next(self._cseq)} {method}",
            f"Contact: {self.contact}",
            *(f"{name}: {value}" for name, value in headers),
            *([f"Proxy-Authorization: {authorization}"] if authorization else []),
            f"Content-Length: {len(body)}",
        ]
        message = parse_message(("\r\n".join(fields) + "\r\n\r\n").encode() + body)
        assert isinstance(message, Request)
        return message

    def authorized(self, request: Request, challenge: Response) -> Request:
        """``request`` again (new branch, next CSeq) answering a 407 (§22.3)."""
        offered = challenge_params(challenge.to_bytes(), "Proxy-Authenticate")[0]
        credentials = digest_answer(
            offered,
            user=self.user,
            password=PASSWORDS[self.user],
            method=request.method,
            uri=request.uri,
        )
        return self.request(
            request.method,
            request.uri,
            to=str(request.to_addr.uri),
            call_id=request.call_id,
            headers=[
                (h.name, h.value) for h in request.headers if h.key not in _WRITTEN
            ],
            body=request.body,
            authorization=credentials,
        )

    def send_authenticated(self, request: Request) -> Request:
        """Send ``request``; expect a 407 and send it again with credentials.

        :return: the request sent with credentials.
        """
        self.send(request)
        challenge = self.receive_response()
        assert challenge.status == 407, challenge
        again = self.authorized(request, challenge)
        self.send(again)
        return again

    def register(self) -> None:
        """REGISTER this phone's Contact for its user, answering the 401."""
        call_id = f"reg-{self.user}-{self.port}"
        uri = f"sip:{REALM}"
        expires = [("Expires", "600")]
        self.send(self.request("REGISTER", uri, to=self.aor, call_id=call_id,
                               headers=expires))  # fmt: skip
        challenge = self.receive_response()
        assert challenge.status == 401, challenge
        offered = challenge_params(challenge.to_bytes(), "WWW-Authenticate")[0]
        credentials = digest_answer(
            offered,
            user=self.user,
            password=PASSWORDS[self.user],
            method="REGISTER",
            uri=uri,
        )
        self.send(
            self.request(
                "REGISTER", uri, to=self.aor, call_id=call_id,
                headers=[*expires, ("Authorization", credentials)],
            )
        )  # fmt: skip
        ok = self.receive_response()
        assert ok.status == 200, ok

    # -- as a UAS ------------------------------------------------------------

    def answer(
        self,
        request: Request,
        status: int,
        *,
        headers: Sequence[tuple[str, str]] = (),
    ) -> Response:
        """Answer ``request`` (§8.2.6) and send the answer.

        A 2xx creating a dialog carries our Contact and the Record-Route (§12.1.1).
        """
        extra = list(headers)
        if 200 <= status < 300 and request.to_addr.tag is None:
            extra += [
                ("Record-Route", v) for v in request.headers.get_all("Record-Route")
            ]
            extra.append(("Contact", self.contact))
        tag = self.tag if request.to_addr.tag is None else None
        response = request.response(status, to_tag=tag, headers=extra)
        self.send(response)
        return response


def serve(tmp_path: Path, *extra: str, tcp: bool = False) -> RunningServer:
    """Sipproxy for example.test with a users file (alice, bob, carol).

    UDP on a free port of 127.0.0.1, and TCP on the same port if ``tcp``.
    """
    users = tmp_path / "users.htdigest"
    for user, password in PASSWORDS.items():
        write_user(users, user, REALM, password)
    port = free_port()
    transports = ("udp", "tcp") if tcp else ("udp",)
    listeners = [f"--listen={kind}:{port}:interface=127.0.0.1" for kind in transports]
    return start_twistd(
        [
            "--domain", REALM, "--users", str(users), *listeners, *extra,
        ],
        port,
        tmp_path / "twistd.log",
    )  # fmt: skip


@pytest.fixture
def presence_server(tmp_path: Path) -> Iterator[RunningServer]:
    server = serve(tmp_path)
    yield server
    stop(server.process)
    assert "Traceback" not in server.log_text(), server.log_text()


@pytest.fixture
def phones(presence_server: RunningServer) -> Iterator[dict[str, UdpPhone]]:
    """Alice's and Bob's phones, registered; Carol has none."""
    made = {user: UdpPhone(presence_server.port, user) for user in ("alice", "bob")}
    for phone in made.values():
        phone.register()
    yield made
    for phone in made.values():
        phone.close()


def ours(presence_server: RunningServer, value: str) -> bool:
    """Whether a Record-Route value names this proxy, with a dialog token."""
    uri = SipURI.parse(value.strip("<>"))
    return (
        uri.host == "127.0.0.1"
        and uri.port == presence_server.port
        and bool(uri.user)
        and any(name == "lr" for name, _ in uri.params)
    )


class TcpPhone(UdpPhone):
    """The same phone on one TCP connection to the proxy, kept open.

    Requests to it come on that connection (RFC 5626 §5.3, the flow it
    registered on), NOTIFYs of its subscriptions included.
    """

    transport = "TCP"

    def __init__(self, proxy_port: int, user: str) -> None:
        super().__init__(proxy_port, user)
        self.sock.close()
        self.sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=3)
        self.port = self.sock.getsockname()[1]
        self.contact = f"<sip:{user}@127.0.0.1:{self.port};transport=tcp>"

    @override
    def send(self, message: Request | Response) -> None:
        self.sock.sendall(message.to_bytes())

    @override
    def receive(self, timeout: float = 3.0) -> Request | Response:
        self.sock.settimeout(timeout)
        while True:
            data = read_response(self.sock)  # one message framed by Content-Length
            if not data:
                raise TimeoutError("nothing on the connection")
            message = parse_message(data, stream=True)
            if not (isinstance(message, Response) and message.status == 100):
                return message


@pytest.mark.parametrize("event", sorted(PACKAGES))
def test_subscribe_reaches_the_phone_and_its_notify_comes_back(
    presence_server: RunningServer, phones: dict[str, UdpPhone], event: str
) -> None:
    """SUBSCRIBE alice -> bob goes to bob's phone, record-routed; bob's NOTIFY returns.

    The SUBSCRIBE is authenticated (407, then credentials; RFC 3261 §22.3),
    reaches the Contact bob registered (§16.5) with two Record-Route entries of
    ours (§16.6 step 4; a SUBSCRIBE creates a dialog, RFC 6665 §4.1) and without
    alice's credentials (ours stop here). Bob's 200 goes back to alice. Bob's
    NOTIFY, sent along the route set of the dialog (§12.2.1.1), reaches alice's
    Contact through the token of our Route entry without a challenge, and her 200
    goes back to bob; so does her unsubscribe (Expires: 0, RFC 6665 §4.1.2.3).
    """
    alice, bob = phones["alice"], phones["bob"]
    accept, content_type, body = PACKAGES[event]
    subscribe = alice.request(
        "SUBSCRIBE",
        bob.aor,
        headers=[("Event", event), ("Accept", accept), ("Expires", "600")],
    )
    sent = alice.send_authenticated(subscribe)

    arrived = bob.receive_request()
    assert arrived.method == "SUBSCRIBE"
    assert arrived.uri == f"sip:bob@127.0.0.1:{bob.port}"
    assert arrived.headers.get("Event") == event
    assert arrived.call_id == sent.call_id
    record_routes = arrived.headers.get_all("Record-Route")
    assert len(record_routes) == 2, arrived
    assert all(ours(presence_server, value) for value in record_routes), arrived
    assert "Proxy-Authorization" not in arrived.headers
    bob.answer(arrived, 200, headers=[("Expires", "600")])

    ok = alice.receive_response()
    assert (ok.status, ok.cseq.method) == (200, "SUBSCRIBE")
    assert ok.to_addr.tag == bob.tag
    assert ok.headers.get_all("Record-Route") == record_routes

    # Bob's route set is the Record-Route as received (§12.1.1); his NOTIFY
    # goes to its first entry, the proxy, and names alice's Contact.
    notify = bob.request(
        "NOTIFY",
        f"sip:alice@127.0.0.1:{alice.port}",
        to=alice.aor,
        to_tag=alice.tag,
        call_id=sent.call_id,
        routes=record_routes,
        headers=[
            ("Event", event),
            ("Subscription-State", "active;expires=600"),
            ("Content-Type", content_type),
        ],
        body=body,
    )
    bob.send(notify)
    delivered = alice.receive_request()
    assert delivered.method == "NOTIFY"
    assert delivered.uri == f"sip:alice@127.0.0.1:{alice.port}"
    assert delivered.headers.get("Event") == event
    assert delivered.body == body
    assert delivered.call_id == sent.call_id
    assert "Route" not in delivered.headers  # both our entries were ours (§16.4)
    alice.answer(delivered, 200)
    notified = bob.receive_response()
    assert (notified.status, notified.cseq.method) == (200, "NOTIFY")

    # Alice's route set is the Record-Route reversed (§12.1.2).
    unsubscribe = alice.request(
        "SUBSCRIBE",
        f"sip:bob@127.0.0.1:{bob.port}",
        to=bob.aor,
        to_tag=bob.tag,
        call_id=sent.call_id,
        routes=list(reversed(record_routes)),
        headers=[("Event", event), ("Expires", "0")],
    )
    alice.send(unsubscribe)
    refresh = bob.receive_request()
    assert (refresh.method, refresh.headers.get("Expires")) == ("SUBSCRIBE", "0")
    bob.answer(refresh, 200, headers=[("Expires", "0")])
    assert alice.receive_response().status == 200


@pytest.mark.parametrize(
    ("method", "event"),
    [
        ("SUBSCRIBE", "presence"),
        ("SUBSCRIBE", "message-summary"),
        ("MESSAGE", None),
        ("PUBLISH", "presence"),
        ("NOTIFY", "presence"),
    ],
    ids=["subscribe-presence", "subscribe-message-summary", "message", "publish",
         "notify-outside-a-dialog"],
)  # fmt: skip
def test_without_credentials_they_are_challenged(
    phones: dict[str, UdpPhone], method: str, event: str | None
) -> None:
    """From our domain without credentials: 407 with a challenge, bob sees nothing.

    Like an INVITE (RFC 3261 §22.3): a request from one of our users that is
    not inside a dialog we record-routed proves who sent it; a NOTIFY that
    names no dialog of ours is no exception.
    """
    alice, bob = phones["alice"], phones["bob"]
    headers = [("Event", event)] if event else []
    if method == "NOTIFY":
        headers.append(("Subscription-State", "active"))
    alice.send(alice.request(method, bob.aor, headers=headers))
    answer = alice.receive_response()
    assert answer.status == 407, answer
    assert challenge_params(answer.to_bytes(), "Proxy-Authenticate")
    assert bob.silent()


def test_message_is_delivered_and_its_200_relayed(
    phones: dict[str, UdpPhone],
) -> None:
    """MESSAGE alice -> bob reaches bob's phone with its body; his 200 comes back.

    RFC 3428 §6: a proxy routes MESSAGE like any request outside a dialog; it
    creates none, so it is not record-routed.
    """
    alice, bob = phones["alice"], phones["bob"]
    message = alice.request(
        "MESSAGE",
        bob.aor,
        headers=[("Content-Type", "text/plain")],
        body=b"Lunch at one?",
    )
    alice.send_authenticated(message)
    arrived = bob.receive_request()
    assert arrived.method == "MESSAGE"
    assert arrived.uri == f"sip:bob@127.0.0.1:{bob.port}"
    assert arrived.body == b"Lunch at one?"
    assert arrived.headers.get("Content-Type") == "text/plain"
    assert "Record-Route" not in arrived.headers
    assert str(arrived.from_addr.uri) == alice.aor
    bob.answer(arrived, 200)
    relayed = alice.receive_response()
    assert (relayed.status, relayed.cseq.method) == (200, "MESSAGE")


@pytest.mark.parametrize(
    ("user", "status"), [("carol", 480), ("nobody", 404)], ids=["known", "unknown"]
)
def test_message_to_a_user_without_a_phone(
    phones: dict[str, UdpPhone], user: str, status: int
) -> None:
    """MESSAGE to a user with no registered phone: 480; to no user at all: 404.

    Carol is in the users file but registered nothing: 480 Temporarily
    Unavailable (RFC 3261 §21.4.18), try later. A name that is no user of ours
    gets 404 (§21.4.5) once the sender has authenticated.
    """
    alice = phones["alice"]
    message = alice.request(
        "MESSAGE",
        f"sip:{user}@{REALM}",
        headers=[("Content-Type", "text/plain")],
        body=b"Are you there?",
    )
    alice.send_authenticated(message)
    answer = alice.receive_response()
    assert (answer.status, answer.cseq.method) == (status, "MESSAGE")


def test_publish_goes_to_the_users_phones(phones: dict[str, UdpPhone]) -> None:
    """PUBLISH is routed to the phones of the user it names, not served here.

    sipproxy is no event state compositor (RFC 3903 §6): a PUBLISH to one of our
    users goes to that user's registered phones like any request, and their
    answer (here bob's phone does not take publications: 489 Bad Event,
    RFC 6665 §8.3.2) goes back. A phone that publishes its own state to its own
    AOR reaches its own contacts the same way, and a phone gets it back.
    """
    alice, bob = phones["alice"], phones["bob"]
    publish = alice.request(
        "PUBLISH",
        bob.aor,
        headers=[
            ("Event", "presence"),
            ("Expires", "600"),
            ("Content-Type", "application/pidf+xml"),
        ],
        body=PIDF,
    )
    alice.send_authenticated(publish)
    arrived = bob.receive_request()
    assert arrived.method == "PUBLISH"
    assert arrived.uri == f"sip:bob@127.0.0.1:{bob.port}"
    assert arrived.body == PIDF
    assert "Record-Route" not in arrived.headers
    bob.answer(arrived, 489)
    answer = alice.receive_response()
    assert (answer.status, answer.cseq.method) == (489, "PUBLISH")

    own = bob.request(
        "PUBLISH",
        bob.aor,
        headers=[
            ("Event", "presence"),
            ("Expires", "600"),
            ("Content-Type", "application/pidf+xml"),
        ],
        body=PIDF,
    )
    sent = bob.send_authenticated(own)
    back = bob.receive_request()
    assert (back.method, back.call_id) == ("PUBLISH", sent.call_id)
    assert back.uri == f"sip:bob@127.0.0.1:{bob.port}"
    bob.answer(back, 489)
    answer = bob.receive_response()
    assert (answer.status, answer.cseq.method) == (489, "PUBLISH")


def test_a_forked_subscribe_gets_a_notify_from_each_phone(tmp_path: Path) -> None:
    """Bob has two phones and the proxy forks in parallel: both are notifiers.

    Both phones get the SUBSCRIBE and accept it; alice gets one 200, the first
    (§16.7: a non-INVITE has one final answer), and a NOTIFY from each phone,
    each in a dialog of its own that the proxy record-routed (RFC 6665
    §4.1.2.4: a forked SUBSCRIBE may create several subscriptions).
    """
    server = serve(tmp_path, "--forking", "parallel")
    alice = UdpPhone(server.port, "alice")
    desk, mobile = UdpPhone(server.port, "bob"), UdpPhone(server.port, "bob")
    try:
        for phone in (alice, desk, mobile):
            phone.register()
        subscribe = alice.request(
            "SUBSCRIBE", desk.aor, headers=[("Event", "presence")]
        )
        sent = alice.send_authenticated(subscribe)
        arrived = [phone.receive_request() for phone in (desk, mobile)]
        assert [a.method for a in arrived] == ["SUBSCRIBE", "SUBSCRIBE"]
        desk.answer(arrived[0], 200)
        ok = alice.receive_response()
        assert (ok.status, ok.to_addr.tag) == (200, desk.tag)
        mobile.answer(arrived[1], 200)
        assert alice.silent()  # the second 200 is not forwarded

        for phone, request in zip((desk, mobile), arrived, strict=True):
            phone.send(
                phone.request(
                    "NOTIFY",
                    f"sip:alice@127.0.0.1:{alice.port}",
                    to=alice.aor,
                    to_tag=alice.tag,
                    call_id=sent.call_id,
                    routes=request.headers.get_all("Record-Route"),
                    headers=[
                        ("Event", "presence"),
                        ("Subscription-State", "active;expires=600"),
                        ("Content-Type", "application/pidf+xml"),
                    ],
                    body=PIDF,
                )
            )
            notify = alice.receive_request()
            assert notify.method == "NOTIFY"
            assert notify.from_addr.tag == phone.tag
            assert str(notify.from_addr.uri) == desk.aor
            alice.answer(notify, 200)
            assert phone.receive_response().status == 200
    finally:
        for phone in (alice, desk, mobile):
            phone.close()
        stop(server.process)
    assert "Traceback" not in server.log_text(), server.log_text()


def test_a_voicemail_lamp_subscribe_to_ones_own_aor_reaches_ones_phones(
    phones: dict[str, UdpPhone],
) -> None:
    """SUBSCRIBE message-summary to one's own AOR goes to one's own phones.

    Phones subscribe to their own AOR for the voicemail lamp (RFC 3842 §3).
    sipproxy holds no mailbox and no presence state: like any request to one
    of our users it goes to the phones the user registered (RFC 3261 §16.5),
    here the very phone that sent it, whose answer (489 Bad Event, RFC 6665
    §8.3.2) goes back.
    """
    alice = phones["alice"]
    subscribe = alice.request(
        "SUBSCRIBE",
        alice.aor,
        headers=[("Event", "message-summary"), ("Expires", "3600")],
    )
    sent = alice.send_authenticated(subscribe)
    back = alice.receive_request()
    assert (back.method, back.call_id) == ("SUBSCRIBE", sent.call_id)
    assert back.uri == f"sip:alice@127.0.0.1:{alice.port}"
    assert back.headers.get("Event") == "message-summary"
    alice.answer(back, 489)
    answer = alice.receive_response()
    assert (answer.status, answer.cseq.method) == (489, "SUBSCRIBE")


def test_a_subscriber_on_tcp_gets_its_notify_on_its_connection(tmp_path: Path) -> None:
    """Alice's phone keeps a TCP connection; bob's NOTIFY arrives on it.

    The Record-Route entry facing alice names her connection (proxy/flows.py),
    so bob's NOTIFY, sent over UDP along the dialog's route set, reaches her on
    the connection she subscribed on (RFC 5626 §5.3), not on a new one.
    """
    server = serve(tmp_path, tcp=True)
    alice, bob = TcpPhone(server.port, "alice"), UdpPhone(server.port, "bob")
    try:
        alice.register()
        bob.register()
        subscribe = alice.request("SUBSCRIBE", bob.aor, headers=[("Event", "presence")])
        sent = alice.send_authenticated(subscribe)
        arrived = bob.receive_request()
        record_routes = arrived.headers.get_all("Record-Route")
        assert ";transport=tcp" in record_routes[1], record_routes  # alice's side
        bob.answer(arrived, 200)
        assert alice.receive_response().status == 200
        bob.send(
            bob.request(
                "NOTIFY",
                f"sip:alice@127.0.0.1:{alice.port};transport=tcp",
                to=alice.aor,
                to_tag=alice.tag,
                call_id=sent.call_id,
                routes=record_routes,
                headers=[
                    ("Event", "presence"),
                    ("Subscription-State", "active;expires=600"),
                    ("Content-Type", "application/pidf+xml"),
                ],
                body=PIDF,
            )
        )
        notify = alice.receive_request()
        assert (notify.method, notify.body) == ("NOTIFY", PIDF)
        assert notify.top_via.transport == "TCP"
        alice.answer(notify, 200)
        assert bob.receive_response().status == 200
    finally:
        alice.close()
        bob.close()
        stop(server.process)
    assert "Traceback" not in server.log_text(), server.log_text()
