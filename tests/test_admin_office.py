"""The admin API's office routes (issue 9): forwarding and do-not-disturb per user.

The same real twisted.web Site on loopback as tests/test_admin.py, with a fake
server whose ``office`` is a real :class:`OfficePreferences` over a memory
store, so each test checks what the route answers and what it stored.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.web.server import Site

from sipproxy.admin import AdminAPI
from sipproxy.location.memory import MemoryLocationService
from sipproxy.office.model import parse_office
from sipproxy.office.preferences import OfficePreferences
from tests.test_admin import TOKEN, FakeServer, Running, reactor

pytestmark = pytest.mark.filterwarnings("ignore:Using readBody:DeprecationWarning")
VM = "sip:vm-alice@192.0.2.5:5070"
OFFICE = parse_office(
    {
        "extensions": {"101": "alice", "102": "bob", "105": "erin"},
        "groups": [{"number": "200", "name": "sales", "members": ["alice", "bob"]}],
        "forward": {
            "alice": {"busy": VM, "no_answer": VM, "no_answer_seconds": 15},
            # bob -> alice: alice -> bob unconditionally would be a loop
            "bob": {"unconditional": "101"},
        },
    }
).with_users(frozenset({"alice", "bob", "erin"}))
#: what GET answers for alice before anything was set at run time
ALICE_TOML = {
    "user": "alice",
    "busy": VM,
    "no_answer": VM,
    "no_answer_seconds": 15.0,
    "unavailable": "",
    "unconditional": "",
    "dnd": False,
    "set_at_run_time": [],
}


def serve(server: FakeServer) -> Iterator[Running]:
    api = AdminAPI(server, token=TOKEN, metrics=None)
    port = reactor.listenTCP(0, Site(api), interface="127.0.0.1")
    yield Running(server, api, port)
    pytest_twisted.blockon(port.stopListening())


@pytest.fixture
def admin() -> Iterator[Running]:
    server, store = FakeServer(), MemoryLocationService()
    server.location = store
    server.office = OfficePreferences(OFFICE, store)
    yield from serve(server)


@pytest.fixture
def no_office() -> Iterator[Running]:
    yield from serve(FakeServer())


async def stored(admin: Running, user: str) -> dict[str, Any]:
    assert admin.server.office is not None
    return await admin.server.office.store.preferences(user)


ROUTES = [
    ("GET", "/users/alice/forward", None),
    ("PUT", "/users/alice/forward/busy", {"target": "bob"}),
    ("PUT", "/users/alice/dnd", {"on": True}),
    ("DELETE", "/users/alice/forward", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
@pytest_twisted.ensureDeferred
async def test_office_routes_need_the_token(
    admin: Running, method: str, path: str, body: Any
) -> None:
    """No token or a wrong one: 401, and nothing is stored."""
    for token in (None, "wrong-token-0123456789"):
        code, answer = await admin.json(method, path, token, body)
        assert (code, answer) == (401, {"error": "a valid bearer token is needed"})
    assert await stored(admin, "alice") == {}


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
@pytest_twisted.ensureDeferred
async def test_office_routes_answer_with_the_token(
    admin: Running, method: str, path: str, body: Any
) -> None:
    code, answer = await admin.json(method, path, TOKEN, body)
    assert code == 200, answer
    assert answer["user"] == "alice"


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
@pytest_twisted.ensureDeferred
async def test_without_office_sections_the_routes_say_so(
    no_office: Running, method: str, path: str, body: Any
) -> None:
    code, answer = await no_office.json(method, path, TOKEN, body)
    assert code == 409
    assert answer["error"].startswith("no office configured: ")
    assert "[forward.NAME]" in answer["error"]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
@pytest_twisted.ensureDeferred
async def test_a_name_that_is_no_user_is_404(
    admin: Running, method: str, path: str, body: Any
) -> None:
    """Not a user: a stranger, and a group name (its forwarding is TOML only)."""
    for name in ("zed", "sales"):
        code, answer = await admin.json(
            method, path.replace("alice", name), TOKEN, body
        )
        assert (code, answer) == (404, {"error": f"{name!r} is not a user"})
        assert await stored(admin, name) == {}


@pytest_twisted.ensureDeferred
async def test_get_shows_the_toml_forwarding(admin: Running) -> None:
    assert await admin.json("GET", "/users/alice/forward") == (200, ALICE_TOML)
    code, answer = await admin.json("GET", "/users/erin/forward")
    assert code == 200
    assert answer["busy"] == "" and answer["dnd"] is False


@pytest_twisted.ensureDeferred
async def test_set_a_forwarding_is_stored_and_wins_over_the_toml(
    admin: Running,
) -> None:
    code, answer = await admin.json(
        "PUT", "/users/alice/forward/busy", body={"target": "sip:vm@192.0.2.9"}
    )
    assert code == 200
    assert answer == {
        **ALICE_TOML,
        "busy": "sip:vm@192.0.2.9",
        "set_at_run_time": ["busy"],
    }
    assert await stored(admin, "alice") == {"busy": "sip:vm@192.0.2.9"}
    assert await admin.json("GET", "/users/alice/forward") == (200, answer)
    # An extension, a group number and a user name are targets too.
    for target in ("105", "200", "erin"):
        code, answer = await admin.json(
            "PUT", "/users/alice/forward/unconditional", body={"target": target}
        )
        assert (code, answer["unconditional"]) == (200, target)
    # "" clears it, also over a TOML value: the stored "" wins.
    code, answer = await admin.json(
        "PUT", "/users/alice/forward/no_answer", body={"target": ""}
    )
    assert (code, answer["no_answer"]) == (200, "")
    assert answer["set_at_run_time"] == ["busy", "no_answer", "unconditional"]
    assert (await stored(admin, "alice"))["no_answer"] == ""


@pytest_twisted.ensureDeferred
async def test_no_answer_takes_seconds(admin: Running) -> None:
    code, answer = await admin.json(
        "PUT", "/users/erin/forward/no_answer", body={"target": "101", "seconds": 8}
    )
    assert code == 200
    assert (answer["no_answer"], answer["no_answer_seconds"]) == ("101", 8.0)
    assert await stored(admin, "erin") == {"no_answer": "101", "no_answer_seconds": 8.0}


@pytest_twisted.ensureDeferred
async def test_dnd_on_and_off(admin: Running) -> None:
    code, answer = await admin.json("PUT", "/users/alice/dnd", body={"on": True})
    assert code == 200
    assert answer == {**ALICE_TOML, "dnd": True, "set_at_run_time": ["dnd"]}
    assert (await admin.server.office.effective("alice")).dnd is True  # type: ignore[union-attr]
    code, answer = await admin.json("PUT", "/users/alice/dnd", body={"on": False})
    assert (code, answer["dnd"]) == (200, False)
    assert await stored(admin, "alice") == {"dnd": False}


@pytest_twisted.ensureDeferred
async def test_delete_resets_to_the_toml(admin: Running) -> None:
    await admin.json("PUT", "/users/alice/dnd", body={"on": True})
    await admin.json("PUT", "/users/alice/forward/busy", body={"target": "bob"})
    assert await admin.json("DELETE", "/users/alice/forward") == (200, ALICE_TOML)
    assert await stored(admin, "alice") == {}
    assert await admin.json("GET", "/users/alice/forward") == (200, ALICE_TOML)


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        (
            "/users/alice/forward/sideways",
            {"target": "bob"},
            "unknown forwarding 'sideways'",
        ),
        (
            "/users/alice/forward/busy",
            {"target": "zed"},
            "'zed' is no user, extension, group number or sip: URI",
        ),
        (
            "/users/alice/forward/unconditional",
            {"target": "bob"},
            "forwarding loop alice -> bob -> alice",
        ),
        ("/users/alice/forward/busy", {}, 'give the target as {"target": "sip:..."}'),
        ("/users/alice/forward/busy", {"target": None}, "give the target"),
        ("/users/alice/forward/busy", {"target": 7}, "give the target"),
        (
            "/users/alice/forward/busy",
            {"target": "bob", "seconds": 5},
            '"seconds" applies to no_answer only',
        ),
        (
            "/users/alice/forward/no_answer",
            {"target": "bob", "seconds": 0},
            "seconds.no_answer_seconds = 0: expected 0 < seconds <= 600",
        ),
        (
            "/users/alice/forward/no_answer",
            {"target": "bob", "seconds": "5"},
            "expected 0 < seconds <= 600",
        ),
        ("/users/alice/forward/busy", b"{not json", "the request body is not JSON"),
        ("/users/alice/forward/busy", b"", "the request body must be a JSON object"),
        ("/users/alice/forward/busy", ["bob"], "must be a JSON object"),
        ("/users/alice/dnd", {"on": "yes"}, 'give {"on": true} or {"on": false}'),
        ("/users/alice/dnd", {"on": 1}, 'give {"on": true}'),
        ("/users/alice/dnd", {}, 'give {"on": true}'),
    ],
    ids=[
        "unknown-kind",
        "unknown-target",
        "loop",
        "no-target",
        "null-target",
        "number-target",
        "seconds-not-no-answer",
        "zero-seconds",
        "text-seconds",
        "not-json",
        "no-body",
        "not-an-object",
        "dnd-text",
        "dnd-number",
        "dnd-missing",
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_requests_are_400_and_change_nothing(
    admin: Running, path: str, body: Any, message: str
) -> None:
    code, answer = await admin.json("PUT", path, body=body)
    assert code == 400, answer
    assert message in answer["error"], answer
    assert await stored(admin, "alice") == {}


@pytest_twisted.ensureDeferred
async def test_wrong_methods_are_405(admin: Running) -> None:
    code, body, _ = await admin.fetch("POST", "/users/alice/forward")
    assert code == 405
    assert json.loads(body)["allow"] == ["DELETE", "GET"]
    code, body, _ = await admin.fetch("GET", "/users/alice/dnd")
    assert (code, json.loads(body)["allow"]) == (405, ["PUT"])
