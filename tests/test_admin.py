"""The admin HTTP API: every route, with and without the bearer token.

A real twisted.web Site on a loopback port (port 0), a memory store and a ban list;
the server is a fake with fixed answers, so each test checks the API alone.
"""

from __future__ import annotations

import json
from io import BytesIO
from typing import Any

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor as _reactor
from twisted.internet.interfaces import IListeningPort
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers
from twisted.web.server import Site

from sipproxy.admin import AdminAPI, AdminError, Call, Reply
from sipproxy.guard import BanList
from sipproxy.location import LocationService
from sipproxy.location.memory import MemoryLocationService
from sipproxy.metrics import Metrics, Snapshot
from sipproxy.office.preferences import OfficePreferences
from tests.location.examples import ALICE, BOB, binding

pytestmark = pytest.mark.filterwarnings("ignore:Using readBody:DeprecationWarning")
TOKEN = "s3cret-token-0123456789"
NOW = 1000.0
reactor: Any = _reactor


class FakeServer:
    """What AdminAPI asks of the server, with answers a test can set."""

    def __init__(self) -> None:
        self.location: LocationService = MemoryLocationService()
        self.bans = BanList(max_failures=1, ban_time=600)
        self.unhealthy: str | None = None
        self.office: OfficePreferences | None = None
        self.reloads = 0
        self.reload_answer: dict[str, Any] = {
            "reloaded": True,
            "changed": ["max-bindings"],
            "needs_restart": [],
        }

    def seconds(self) -> float:
        return NOW

    def health(self) -> str | None:
        return self.unhealthy

    def info(self) -> dict[str, Any]:
        return {"version": "9.9", "listeners": ["udp 127.0.0.1:5060"]}

    def stats(self) -> dict[str, Any]:
        return {"transactions": {"server_invite": 2}, "proxy_contexts": 1}

    def reload(self) -> dict[str, Any]:
        self.reloads += 1
        return self.reload_answer


class Running:
    def __init__(self, server: FakeServer, api: AdminAPI, port: IListeningPort):
        self.server = server
        self.api = api
        self.port = port
        self.agent = Agent(reactor)

    async def fetch(
        self, method: str, path: str, token: str | None = TOKEN, body: bytes = b""
    ) -> tuple[int, bytes, Any]:
        headers = Headers()
        if token is not None:
            headers.addRawHeader(b"Authorization", f"Bearer {token}".encode())
        url = f"http://127.0.0.1:{self.port.getHost().port}{path}"  # type: ignore[attr-defined]
        producer = FileBodyProducer(BytesIO(body)) if body else None
        response = await self.agent.request(
            method.encode(), url.encode(), headers, producer
        )
        body = await readBody(response)
        return response.code, body, response.headers

    async def json(
        self, method: str, path: str, token: str | None = TOKEN, body: Any = None
    ) -> tuple[int, Any]:
        """``body``: a value sent as JSON, or bytes sent as they are."""
        data = body if isinstance(body, bytes) else b""
        if body is not None and not isinstance(body, bytes):
            data = json.dumps(body).encode()
        code, answer, _ = await self.fetch(method, path, token, data)
        return code, json.loads(answer)


@pytest.fixture
def admin() -> Any:
    server = FakeServer()
    metrics = Metrics(lambda: Snapshot(transactions={"server_invite": 2}, bans=1))
    api = AdminAPI(server, token=TOKEN, metrics=metrics)
    port = reactor.listenTCP(0, Site(api), interface="127.0.0.1")
    yield Running(server, api, port)
    pytest_twisted.blockon(port.stopListening())


async def register_two(server: FakeServer) -> None:
    await server.location.update(
        ALICE,
        save=[binding("sip:alice@192.0.2.1:5060"), binding("sip:alice@192.0.2.2")],
        now=NOW,
    )
    await server.location.update(
        BOB, save=[binding("sip:bob@192.0.2.3", aor=BOB)], now=NOW
    )


PROTECTED = [
    ("GET", "/info"),
    ("GET", "/stats"),
    ("GET", "/metrics"),
    ("GET", "/registrations"),
    ("DELETE", f"/registrations?aor={ALICE}"),
    ("GET", "/bans"),
    ("DELETE", "/bans/192.0.2.9"),
    ("POST", "/reload"),
]


#: besides PROTECTED: the office routes, and paths and methods no route has
REFUSED_WITHOUT_TOKEN = [
    *PROTECTED,
    ("GET", "/users/alice/forward"),
    ("PUT", "/users/alice/forward/unconditional"),
    ("PUT", "/users/alice/dnd"),
    ("DELETE", "/users/alice/forward"),
    ("GET", "/nothing"),
    ("PUT", "/bans"),
    ("POST", "/health"),
]


@pytest.mark.parametrize(("method", "path"), REFUSED_WITHOUT_TOKEN)
@pytest_twisted.ensureDeferred
async def test_every_route_but_health_needs_the_token(
    admin: Running, method: str, path: str
) -> None:
    """No token, a wrong one or another scheme: 401 with a Bearer challenge.

    Nothing else is said: not whether the path or the method exists (issue 13).
    """
    for token in (None, "wrong-token-0123456789", TOKEN + "x", TOKEN[:-1]):
        code, body, headers = await admin.fetch(method, path, token)
        assert code == 401, (token, body)
        assert headers.getRawHeaders(b"www-authenticate") == [
            b'Bearer realm="sipproxy"'
        ]
        assert json.loads(body) == {"error": "a valid bearer token is needed"}
    assert admin.server.reloads == 0
    assert await admin.server.location.aors(now=NOW) == []


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest_twisted.ensureDeferred
async def test_every_route_answers_with_the_token(
    admin: Running, method: str, path: str
) -> None:
    """With the token no route answers 401, 403 or 500."""
    await register_two(admin.server)
    admin.server.bans.failed("192.0.2.9", NOW)
    code, body, _ = await admin.fetch(method, path)
    assert code == 200, body


@pytest_twisted.ensureDeferred
async def test_basic_scheme_is_not_a_bearer_token(admin: Running) -> None:
    headers = Headers({b"Authorization": [f"Basic {TOKEN}".encode()]})
    url = f"http://127.0.0.1:{admin.port.getHost().port}/info"  # type: ignore[attr-defined]
    response = await admin.agent.request(b"GET", url.encode(), headers)
    assert response.code == 401


@pytest_twisted.ensureDeferred
async def test_health_needs_no_token_and_says_when_not_serving(
    admin: Running,
) -> None:
    """/health is for load balancers: 200 when serving, 503 with the reason if not."""
    assert await admin.json("GET", "/health", None) == (200, {"status": "ok"})
    admin.server.unhealthy = "location store not open"
    assert await admin.json("GET", "/health", None) == (
        503,
        {"status": "unavailable", "reason": "location store not open"},
    )


@pytest_twisted.ensureDeferred
async def test_registrations_list_and_filter_by_aor(admin: Running) -> None:
    await register_two(admin.server)
    code, answer = await admin.json("GET", "/registrations")
    assert code == 200
    assert [r["aor"] for r in answer["registrations"]] == [ALICE, BOB]
    alice = answer["registrations"][0]["bindings"]
    assert sorted(b["contact"] for b in alice) == [
        "sip:alice@192.0.2.1:5060",
        "sip:alice@192.0.2.2",
    ]
    assert alice[0]["expires_in"] == 2700
    assert alice[0]["source"] == "198.51.100.7:40123"
    assert alice[0]["transport"] == "udp"
    # Without the scheme, and the host in another case, names the same AOR.
    code, answer = await admin.json("GET", "/registrations?aor=bob@EXAMPLE.com")
    assert code == 200
    assert [r["aor"] for r in answer["registrations"]] == [BOB]
    code, answer = await admin.json("GET", "/registrations?aor=carol@example.com")
    assert (code, answer) == (
        404,
        {"error": "no registration for sip:carol@example.com"},
    )


@pytest_twisted.ensureDeferred
async def test_remove_one_binding_then_the_whole_aor(admin: Running) -> None:
    await register_two(admin.server)
    location = admin.server.location
    code, answer = await admin.json(
        "DELETE", "/registrations?aor=sip:alice@example.com&contact=sip:alice@192.0.2.2"
    )
    assert (code, answer) == (200, {"aor": ALICE, "removed": 1})
    assert [b.contact for b in await location.bindings(ALICE, now=NOW)] == [
        "sip:alice@192.0.2.1:5060"
    ]
    code, answer = await admin.json(
        "DELETE", "/registrations?aor=sip:alice@example.com&contact=sip:nobody@x"
    )
    assert code == 404
    assert answer == {"error": "sip:alice@example.com has no binding sip:nobody@x"}
    code, answer = await admin.json("DELETE", f"/registrations?aor={ALICE}")
    assert (code, answer) == (200, {"aor": ALICE, "removed": 1})
    assert await location.aors(now=NOW) == [BOB]
    code, answer = await admin.json("DELETE", f"/registrations?aor={ALICE}")
    assert code == 404
    code, answer = await admin.json("DELETE", "/registrations")
    assert code == 400
    assert "aor" in answer["error"]
    code, answer = await admin.json("DELETE", "/registrations?aor=sip:")
    assert code == 400


@pytest_twisted.ensureDeferred
async def test_bans_are_listed_and_lifted(admin: Running) -> None:
    bans = admin.server.bans
    assert bans.failed("192.0.2.9", NOW - 100)
    assert bans.failed("2001:db8::7", NOW - 50)
    code, answer = await admin.json("GET", "/bans")
    assert code == 200
    assert answer == {
        "bans": [
            {"address": "192.0.2.9", "remaining": 500},
            {"address": "2001:db8::7", "remaining": 550},
        ]
    }
    assert await admin.json("DELETE", "/bans/2001:db8::7") == (
        200,
        {"address": "2001:db8::7", "lifted": True},
    )
    assert not bans.is_banned("2001:db8::7", NOW)
    assert bans.is_banned("192.0.2.9", NOW)
    assert await admin.json("DELETE", "/bans/2001%3Adb8%3A%3A7") == (
        404,
        {"error": "2001:db8::7 is not banned"},
    )


@pytest_twisted.ensureDeferred
async def test_stats_count_registrations_and_ask_the_server(admin: Running) -> None:
    await register_two(admin.server)
    admin.server.bans.failed("192.0.2.9", NOW)
    code, answer = await admin.json("GET", "/stats")
    assert code == 200
    assert answer == {
        "transactions": {"server_invite": 2},
        "proxy_contexts": 1,
        "registrations": 2,
        "bindings": 3,
        "bans": 1,
    }


@pytest_twisted.ensureDeferred
async def test_info_is_the_servers(admin: Running) -> None:
    assert await admin.json("GET", "/info") == (
        200,
        {"version": "9.9", "listeners": ["udp 127.0.0.1:5060"]},
    )


@pytest_twisted.ensureDeferred
async def test_reload_answers_what_changed_or_409(admin: Running) -> None:
    """POST /reload does what SIGHUP does; a refused config is a 409 with why."""
    code, answer = await admin.json("POST", "/reload")
    assert (code, answer["changed"]) == (200, ["max-bindings"])
    admin.server.reload_answer = {"reloaded": False, "error": "rate-limit = -1: ..."}
    code, answer = await admin.json("POST", "/reload")
    assert (code, answer["error"]) == (409, "rate-limit = -1: ...")
    assert admin.server.reloads == 2


@pytest_twisted.ensureDeferred
async def test_metrics_are_prometheus_text_with_registrations(admin: Running) -> None:
    await register_two(admin.server)
    code, body, headers = await admin.fetch("GET", "/metrics")
    assert code == 200
    assert headers.getRawHeaders(b"content-type") == [
        b"text/plain; version=0.0.4; charset=utf-8"
    ]
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    assert samples[("sipproxy_registrations", ())] == 2
    assert samples[("sipproxy_bindings", ())] == 3
    assert samples[("sipproxy_transactions", (("kind", "server_invite"),))] == 2
    assert samples[("sipproxy_banned_addresses", ())] == 1


@pytest_twisted.ensureDeferred
async def test_unknown_path_404_and_wrong_method_405(admin: Running) -> None:
    assert await admin.json("GET", "/nothing") == (
        404,
        {"error": "no such resource: /nothing"},
    )
    code, body, headers = await admin.fetch("PUT", "/bans")
    assert code == 405
    assert json.loads(body)["allow"] == ["GET"]
    assert headers.getRawHeaders(b"allow") == [b"GET"]


@pytest_twisted.ensureDeferred
async def test_a_new_route_is_one_call(admin: Running) -> None:
    """How later features (call forwarding, do-not-disturb) add their routes."""
    seen: list[Call] = []

    async def forward(call: Call) -> Reply:
        seen.append(call)
        if call.params["name"] == "nobody":
            raise AdminError(404, "no such user")
        return Reply({"user": call.params["name"], "to": call.query.get("to")})

    admin.api.add_route("PUT", "/users/{name}/forward", forward)
    assert await admin.json("PUT", "/users/alice/forward?to=sip:bob@x") == (
        200,
        {"user": "alice", "to": "sip:bob@x"},
    )
    assert await admin.json("PUT", "/users/nobody/forward") == (
        404,
        {"error": "no such user"},
    )
    code, _ = await admin.json("PUT", "/users/alice/forward", None)
    assert code == 401
    assert len(seen) == 2


@pytest_twisted.ensureDeferred
async def test_a_failing_handler_is_a_500_without_details(admin: Running) -> None:
    async def broken(call: Call) -> Reply:
        raise RuntimeError("secret internals")

    admin.api.add_route("GET", "/broken", broken)
    code, body, _ = await admin.fetch("GET", "/broken")
    assert code == 500
    assert b"secret internals" not in body


@pytest_twisted.ensureDeferred
async def test_without_a_token_everything_is_open() -> None:
    """No token: the service does that only on a Unix socket, whose mode decides."""
    server = FakeServer()
    api = AdminAPI(server, token=None, metrics=None)
    port = reactor.listenTCP(0, Site(api), interface="127.0.0.1")
    try:
        running = Running(server, api, port)
        assert (await running.json("GET", "/bans", None))[0] == 200
        assert (await running.json("GET", "/metrics", None))[0] == 404
    finally:
        await port.stopListening()
