"""Busy lamps from outside (issue 16): SUBSCRIBE/NOTIFY for Event: dialog.

A real ``twistd sipproxy`` on loopback with a users file and an office
extension; raw-socket phones (tests/integration/rawphone.py): Alice calls, Bob
answers, Carol's phone has a BLF key for Bob and checks what each NOTIFY says
(RFC 6665 subscriptions, RFC 4235 bodies).
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipproxy.auth.htdigest import write_user
from sipproxy.sip.dialoginfo import NAMESPACE
from sipproxy.sip.message import Request
from tests.integration.conftest import RunningServer, free_port, start_twistd, stop
from tests.integration.rawphone import REALM, RawPhone
from tests.location.conftest import redis_server  # noqa: F401 - a shared fixture
from tests.support import challenge_params, digest_answer

pytestmark = pytest.mark.integration

NS = {"d": NAMESPACE}
CTL = str(Path(sys.executable).with_name("sipproxy-ctl"))
ADMIN_TOKEN = "blf-admin-token-0123456789abcdef"
PASSWORDS = {"alice": "wonderland", "bob": "builder", "carol": "singer"}
TOML = """\
domain = ["example.test"]

[extensions]
"101" = "alice"
"102" = "bob"
"103" = "carol"
"""


class Setup:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.port = free_port()
        self.users = tmp_path / "users.htdigest"
        for user, password in PASSWORDS.items():
            write_user(self.users, user, REALM, password)
        self.config = tmp_path / "office.toml"
        self.config.write_text(TOML)
        self.servers: list[RunningServer] = []
        self.phones: list[RawPhone] = []

    def start(self, *extra: str, port: int | None = None) -> RunningServer:
        port = port or self.port
        server = start_twistd(
            [
                "--config", str(self.config), "--users", str(self.users),
                "--listen", f"udp:{port}:interface=127.0.0.1",
                "--listen", f"tcp:{port}:interface=127.0.0.1", *extra,
            ],
            port,
            self.tmp_path / f"twistd-{len(self.servers)}.log",
        )  # fmt: skip
        self.servers.append(server)
        return server

    def phone(
        self, user: str, transport: str = "udp", *, port: int | None = None
    ) -> RawPhone:
        phone = RawPhone(user, PASSWORDS[user], port or self.port, transport=transport)
        self.phones.append(phone)
        return phone

    def close(self) -> None:
        for phone in self.phones:
            phone.close()
        for server in self.servers:
            stop(server.process)
            assert "Traceback" not in server.log_text(), server.log_text()


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    made = Setup(tmp_path)
    yield made
    made.close()


def subscribe(
    carol: RawPhone, target: str = "bob", *, call_id: str = "blf-1", expires: int = 600
) -> tuple[str, int]:
    """Carol's BLF key subscribes; returns the dialog's To tag and the CSeq used."""
    uri = f"sip:{target}@{REALM}"
    answer, cseq = carol.transact(
        "SUBSCRIBE", uri, to=uri, call_id=call_id,
        extra=[("Event", "dialog"), ("Expires", str(expires)),
               ("Accept", "application/dialog-info+xml")],
    )  # fmt: skip
    assert answer.status == 200, answer
    assert answer.headers.get("expires") == str(expires)
    assert answer.to_addr.tag is not None
    return answer.to_addr.tag, cseq


def dialogs(notify: Request) -> list[ET.Element]:
    assert notify.headers.get("content-type") == "application/dialog-info+xml"
    return ET.fromstring(notify.body).findall("d:dialog", NS)


def state(notify: Request) -> str:
    found = [d.findtext("d:state", namespaces=NS) or "" for d in dialogs(notify)]
    assert len(found) == 1, found
    return found[0]


def version(notify: Request) -> int:
    return int(ET.fromstring(notify.body).get("version") or -1)


def call(
    alice: RawPhone, bob: RawPhone, carol: RawPhone, target: str, call_id: str
) -> list[Request]:
    """Alice calls ``target`` (Bob's phone), Bob answers, Alice hangs up.

    Returns Carol's NOTIFYs: trying, early, confirmed, terminated.
    """
    seen: list[Request] = []
    alice.invite(target, call_id)
    invite = bob.request_of("INVITE")
    seen.append(carol.notify())
    bob.reply(invite, 180, to_tag="bt")
    seen.append(carol.notify())
    bob.reply(invite, 200, to_tag="bt")
    seen.append(carol.notify())
    ok = alice.response_to(call_id, "INVITE")
    assert ok.status == 200, ok
    routes = list(reversed(ok.headers.get_all("record-route")))
    [contact] = ok.contacts
    uri = str(contact.uri)
    to = f"sip:{target}@{REALM}"
    alice.send(alice.build("ACK", uri, to=to, call_id=call_id, cseq=2,
                           to_tag="bt", routes=routes))  # fmt: skip
    alice.send(alice.build("BYE", uri, to=to, call_id=call_id, cseq=3,
                           to_tag="bt", routes=routes))  # fmt: skip
    bye = bob.request_of("BYE")
    bob.reply(bye, 200)
    seen.append(carol.notify())
    return seen


def check_call(notifies: list[Request], before: int) -> None:
    """Trying, early (Alice named), confirmed, terminated; versions + 1."""
    assert [state(n) for n in notifies] == [
        "trying",
        "early",
        "confirmed",
        "terminated",
    ]
    [early] = dialogs(notifies[1])
    assert early.get("direction") == "recipient"
    assert early.findtext("d:remote/d:identity", namespaces=NS) == f"sip:alice@{REALM}"
    assert [version(n) for n in notifies] == list(range(before + 1, before + 5))


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_a_lamp_follows_a_call_then_refresh_and_unsubscribe(
    setup: Setup, transport: str
) -> None:
    """The whole life of a BLF key for Bob, over UDP and over TCP."""
    setup.start()
    alice, bob = setup.phone("alice"), setup.phone("bob")
    carol = setup.phone("carol", transport)
    bob.register()
    to_tag, cseq = subscribe(carol)
    first = carol.notify()
    assert first.headers.get("event") == "dialog"
    assert (first.headers.get("subscription-state") or "").startswith("active;expires=")
    root = ET.fromstring(first.body)
    assert (root.get("state"), root.get("entity")) == ("full", f"sip:bob@{REALM}")
    assert (version(first), state(first)) == (0, "terminated")
    check_call(call(alice, bob, carol, "bob", f"call-{transport}"), 0)
    # Refresh in the subscription's dialog: 200 and a NOTIFY at once.
    uri = f"sip:bob@{REALM}"
    refreshed, cseq = carol.transact(
        "SUBSCRIBE", uri, to=uri, call_id="blf-1", cseq=cseq + 1, to_tag=to_tag,
        extra=[("Event", "dialog"), ("Expires", "900")],
    )  # fmt: skip
    assert (refreshed.status, refreshed.headers.get("expires")) == (200, "900")
    again = carol.notify()
    assert again.headers.get("subscription-state") == "active;expires=900"
    assert version(again) == 5
    # Unsubscribe: a last NOTIFY says terminated.
    ended, _ = carol.transact(
        "SUBSCRIBE", uri, to=uri, call_id="blf-1", cseq=cseq + 1, to_tag=to_tag,
        extra=[("Event", "dialog"), ("Expires", "0")],
    )  # fmt: skip
    assert ended.status == 200
    last = carol.notify()
    assert last.headers.get("subscription-state") == "terminated"
    assert version(last) == 6


def test_an_extension_number_is_a_lamp_for_its_user(setup: Setup) -> None:
    """SUBSCRIBE sip:102@example.test watches Bob; a call to 102 lights it."""
    setup.start()
    alice, bob, carol = setup.phone("alice"), setup.phone("bob"), setup.phone("carol")
    bob.register()
    subscribe(carol, "102")
    first = carol.notify()
    assert ET.fromstring(first.body).get("entity") == f"sip:102@{REALM}"
    check_call(call(alice, bob, carol, "102", "call-ext"), 0)


def test_an_unauthenticated_subscribe_is_challenged(setup: Setup) -> None:
    """407 like any request from our domains, and no NOTIFY before credentials."""
    setup.start()
    carol = setup.phone("carol")
    uri = f"sip:bob@{REALM}"
    answer, _ = carol.transact(
        "SUBSCRIBE", uri, to=uri, call_id="noauth", authenticate=False,
        extra=[("Event", "dialog")],
    )  # fmt: skip
    assert answer.status == 407
    assert answer.headers.get("proxy-authenticate")
    assert carol.nothing(lambda m: isinstance(m, Request) and m.method == "NOTIFY", 0.5)


def test_an_outsider_subscribing_to_a_foreign_user_is_refused(setup: Setup) -> None:
    """No relay: a SUBSCRIBE from elsewhere for elsewhere gets 403, nothing sent."""
    setup.start()
    mallory = setup.phone("carol")
    uri = "sip:victim@foreign.example"
    mallory.send(
        mallory.build("SUBSCRIBE", uri, to=uri, call_id="relay", cseq=1,
                      from_uri="sip:mallory@evil.example",
                      extra=[("Event", "dialog")])
    )  # fmt: skip
    assert mallory.response_to("relay", "SUBSCRIBE").status == 403
    # And an outsider watching one of our users is no user of ours: 403 too.
    ours = f"sip:bob@{REALM}"
    mallory.send(
        mallory.build("SUBSCRIBE", ours, to=ours, call_id="spy", cseq=1,
                      from_uri="sip:mallory@evil.example",
                      extra=[("Event", "dialog")])
    )  # fmt: skip
    assert mallory.response_to("spy", "SUBSCRIBE").status == 403


def test_unknown_packages_get_489_and_presence_still_reaches_the_phone(
    setup: Setup,
) -> None:
    setup.start()
    bob, carol = setup.phone("bob"), setup.phone("carol")
    bob.register()
    uri = f"sip:bob@{REALM}"
    refused, _ = carol.transact(
        "SUBSCRIBE", uri, to=uri, call_id="bad-event", extra=[("Event", "foo")]
    )
    assert refused.status == 489
    assert refused.headers.get("allow-events") == "dialog"
    carol.send(
        carol.build("SUBSCRIBE", uri, to=uri, call_id="presence", cseq=1,
                    extra=[("Event", "presence")])
    )  # fmt: skip
    challenge = carol.response_to("presence", "SUBSCRIBE")
    assert challenge.status == 407
    offered = challenge_params(challenge.to_bytes(), "Proxy-Authenticate")[0]
    credentials = digest_answer(
        offered, user="carol", password="singer", method="SUBSCRIBE", uri=uri
    )
    carol.send(
        carol.build("SUBSCRIBE", uri, to=uri, call_id="presence", cseq=2,
                    extra=[("Event", "presence"),
                           ("Proxy-Authorization", credentials)])
    )  # fmt: skip
    routed = bob.request_of("SUBSCRIBE")
    assert routed.headers.get("event") == "presence"
    bob.reply(routed, 200, to_tag="bp")
    assert carol.response_to("presence", "SUBSCRIBE").status == 200


def test_a_restart_with_sqlite_keeps_serving_the_subscription(setup: Setup) -> None:
    """The subscription is in the file: after a restart a new call is notified."""
    location = f"sqlite:{setup.tmp_path / 'location.db'}"
    server = setup.start("--location", location)
    alice, bob, carol = setup.phone("alice"), setup.phone("bob"), setup.phone("carol")
    bob.register()
    subscribe(carol)
    assert version(carol.notify()) == 0
    stop(server.process)
    setup.start("--location", location)
    check_call(call(alice, bob, carol, "bob", "call-after-restart"), 0)


def admin_get(port: int, path: str) -> str:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    request.add_header("Authorization", f"Bearer {ADMIN_TOKEN}")
    with urllib.request.urlopen(request, timeout=10) as response:
        text: str = response.read().decode()
        return text


def test_a_vanished_tcp_subscriber_is_dropped_at_once(setup: Setup) -> None:
    """A closed connection: the NOTIFY cannot go (transport error), so it ends.

    The operator sees it: sipproxy-ctl subscriptions, then the metrics.
    """
    admin = free_port()
    server = setup.start(
        "--admin", f"tcp:{admin}:interface=127.0.0.1", "--admin-token", ADMIN_TOKEN
    )
    alice, bob = setup.phone("alice"), setup.phone("bob")
    carol = setup.phone("carol", "tcp")
    bob.register()
    subscribe(carol)
    carol.notify()
    listed = subprocess.run(
        [CTL, "--url", f"http://127.0.0.1:{admin}", "--token", ADMIN_TOKEN,
         "subscriptions"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout.splitlines()  # fmt: skip
    assert listed[0].split()[:3] == ["SUBSCRIBER", "ENTITY", "STATE"]
    assert listed[1].split()[:3] == ["carol", f"sip:bob@{REALM}", "idle"]
    carol.close()
    alice.invite("bob", "call-vanished")
    bob.request_of("INVITE")
    server.wait_for_log("ended: NOTIFY got 503", 10)
    assert json.loads(admin_get(admin, "/subscriptions")) == {
        "count": 0,
        "subscriptions": [],
    }
    metrics = admin_get(admin, "/metrics")
    assert "sipproxy_subscriptions 0.0" in metrics
    assert 'sipproxy_notify_total{result="ok"} 1.0' in metrics
    assert 'sipproxy_notify_total{result="error"} 1.0' in metrics


def test_a_vanished_udp_subscriber_is_dropped_after_the_transaction_fails(
    setup: Setup,
) -> None:
    """Over UDP nothing answers: Timer F (32 s) ends the NOTIFY, then the lamp."""
    server = setup.start()
    alice, bob, carol = setup.phone("alice"), setup.phone("bob"), setup.phone("carol")
    bob.register()
    subscribe(carol)
    carol.notify()
    carol.close()
    alice.invite("bob", "call-vanished")
    bob.request_of("INVITE")
    server.wait_for_log("ended: NOTIFY got", 45)


def test_processes_on_redis_serve_each_others_subscriptions(
    setup: Setup,
    redis_server: int,  # noqa: F811 - the shared fixture
) -> None:
    """Made at one process, refreshed at another, which notifies its calls."""
    location = f"redis://127.0.0.1:{redis_server}/0?prefix=blf-{setup.port}:"
    other = free_port()
    setup.start("--location", location)
    setup.start("--location", location, port=other)
    carol = setup.phone("carol")
    alice, bob = setup.phone("alice", port=other), setup.phone("bob", port=other)
    bob.register()
    to_tag, cseq = subscribe(carol)
    assert version(carol.notify()) == 0
    # The refresh reaches the other process, which has never seen it.
    carol.server = ("127.0.0.1", other)
    uri = f"sip:bob@{REALM}"
    refreshed, _ = carol.transact(
        "SUBSCRIBE", uri, to=uri, call_id="blf-1", cseq=cseq + 1, to_tag=to_tag,
        extra=[("Event", "dialog"), ("Expires", "600")],
    )  # fmt: skip
    assert refreshed.status == 200
    assert version(carol.notify()) == 1
    check_call(call(alice, bob, carol, "bob", "call-redis"), 1)
