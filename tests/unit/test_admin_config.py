"""gateway.admin.config_api and config_state: the admin API's overlay, state file, endpoints and token,
through the admin app (no sockets) over a fake supervisor that composes and validates like the real one."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.admin import config_api
from gateway.admin.app import AdminApp
from gateway.admin.config_api import AdminConfigLayer, read_token, register
from gateway.admin.config_state import (
    Overlay,
    StateFile,
    check_route,
    etag,
    read_state,
    route_names,
    stored_changes,
)
from gateway.config import ConfigError, Node
from gateway.loader import GatewayConfig, from_document
from gateway.server.supervisor import ReconfigureError
from gateway.settings import SETTINGS_BY_NAME, ServerSettings, resolve
from tests.unit.helpers import async_test

BASE = {
    "source": "gateway.yaml",
    "server": {},
    "upstreams": {"api": "http://127.0.0.1:9001", "spare": "http://127.0.0.1:9002"},
    "routes": [
        {"name": "a", "prefix": "/a", "upstream": "api"},
        {"prefix": "/plain", "upstream": "api"},
        {"name": "c", "path": "/c", "upstream": "spare"},
    ],
}


class FakeSupervisor:
    """Composes base + layers with the loader (like Supervisor.compose); records each reconfigure."""

    metrics: Any = None

    def __init__(self, document: dict[str, Any] = BASE) -> None:
        self.base: GatewayConfig = from_document(document)
        self.layers: list[Any] = []
        self.running = self.base
        self.reasons: list[str] = []
        self.fail: Exception | None = None
        self.gate: asyncio.Event | None = None  # when set, a roll waits for it

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        return True, {"status": "ready"}

    def compose(self, base: GatewayConfig) -> GatewayConfig:
        document = dict(base.document)
        for layer in self.layers:
            document = layer.apply(document)
        return from_document(document)

    async def reconfigure(self, reason: str) -> bool:
        self.reasons.append(reason)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        config = self.compose(self.base)
        changed = config.document != self.running.document
        self.running = config
        return changed


def setup(tmp_path: Path | None, document: dict[str, Any] = BASE,
          token: str | None = None) -> tuple[AdminApp, FakeSupervisor, AdminConfigLayer]:
    supervisor = FakeSupervisor(document)
    server = ServerSettings(admin_state_file=str(tmp_path / "state.json") if tmp_path else None, admin_token=token)
    config = from_document({**document, "server": {"admin_state_file": server.admin_state_file,
                                                   "admin_token": token}})
    layer = config_api.layer(supervisor, config)
    supervisor.layers.append(layer)
    app = AdminApp(supervisor)
    register(app, config)
    return app, supervisor, layer


async def call(app: AdminApp, method: str, path: str, body: Any = None,
               headers: dict[str, str] | None = None) -> tuple[int, dict[bytes, bytes], Any]:
    sent: list[dict[str, Any]] = []
    data = body if isinstance(body, bytes) else (b"" if body is None else orjson.dumps(body))

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": data, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    pairs = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    scope = {"type": "http", "method": method, "path": path, "query_string": b"", "headers": pairs}
    await app(scope, receive, send)  # type: ignore[arg-type]
    return sent[0]["status"], dict(sent[0]["headers"]), orjson.loads(sent[1]["body"])


# --- the overlay ------------------------------------------------------------------------------------------


def test_overlay_replaces_in_place_appends_new_and_hides_deleted() -> None:
    overlay = (Overlay()
               .put_route({"name": "c", "path": "/c", "upstream": "api"})
               .put_route({"name": "new", "prefix": "/new", "upstream": "extra"})
               .delete_route("a", in_base=True)
               .put_upstream("extra", "http://127.0.0.1:9003")
               .delete_upstream("spare", in_base=True))
    document = overlay.apply(BASE)
    assert [r.get("name") for r in document["routes"]] == [None, "c", "new"]
    assert document["routes"][1]["upstream"] == "api"
    assert document["upstreams"] == {"api": "http://127.0.0.1:9001", "extra": "http://127.0.0.1:9003"}
    assert document["routes"] is not BASE["routes"]  # the base document is not modified
    assert len(BASE["routes"]) == 3
    from_document(document)  # a valid configuration


def test_overlay_put_after_delete_and_delete_of_own_entries() -> None:
    overlay = Overlay().delete_route("a", in_base=True).put_route({"name": "a", "prefix": "/z", "upstream": "api"})
    assert overlay.deleted_routes == frozenset()
    assert overlay.apply(BASE)["routes"][0]["prefix"] == "/z"
    overlay = overlay.put_route({"name": "a", "prefix": "/y", "upstream": "api"})  # replaced, not added
    assert len(overlay.routes) == 1
    own = overlay.delete_route("a", in_base=False)
    assert own.empty
    upstreams = Overlay().put_upstream("x", "http://h:1").delete_upstream("x", in_base=False)
    assert upstreams.empty
    assert Overlay().delete_upstream("x", in_base=True).put_upstream("x", "http://h:1").deleted_upstreams == set()


def test_empty_overlay_is_the_document_and_route_names_follow_the_loader() -> None:
    assert Overlay().apply(BASE) == BASE
    entries = [{"prefix": "/x", "upstream": "u"}, {"prefix": "/x", "upstream": "u", "methods": ["GET"]},
               {"name": 7, "path": "/y", "upstream": "u"}]
    assert route_names(entries) == ["prefix:/x", "prefix:/x#1", "7"]


def test_etag_depends_on_content_only() -> None:
    assert etag({"a": 1, "b": 2}) == etag({"b": 2, "a": 1})
    assert etag({"a": 1}) != etag({"a": 2})


def test_check_route_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^body: name: expected 'r' \(the name in the URL\)"):
        check_route("r", {"name": "s", "prefix": "/"}, "body")
    with pytest.raises(ConfigError, match="expected a route name of letters"):
        check_route("a/b", {"prefix": "/"}, "body")
    with pytest.raises(ConfigError, match=r"^body: expected a mapping"):
        check_route("r", ["x"], "body")
    assert list(check_route("r", {"prefix": "/", "upstream": "u", "name": "r"}, "body")) == ["name", "prefix",
                                                                                               "upstream"]


# --- the state file ---------------------------------------------------------------------------------------


def test_state_file_round_trip_and_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "state.json")
    assert read_state(path) == Overlay()
    overlay = (Overlay().put_route({"name": "r", "prefix": "/r", "upstream": "api"})
               .put_upstream("u", {"targets": ["http://127.0.0.1:1"]}).delete_route("a", in_base=True)
               .delete_upstream("spare", in_base=True))
    state = StateFile(path)
    state.commit(state.prepare(overlay))
    assert read_state(path) == overlay
    assert os.stat(path).st_mode & 0o077 == 0  # not readable by others
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary file left
    temporary = state.prepare(Overlay())
    state.discard(temporary)
    state.discard(temporary)  # twice: no error
    assert read_state(path) == overlay


@pytest.mark.parametrize(("content", "message"), [
    (b"{not json", "expected the admin API's JSON state, not valid JSON"),
    (b"[]", "expected a mapping"),
    (b'{"version": 2}', "version: expected state version 1"),
    (b'{"routes": [{"prefix": "/x"}]}', "routes\\[0\\].name: expected the route's name"),
    (b'{"routes": [{"name": "r", "prefix": "/x", "upstream": "u"}, {"name": "r", "prefix": "/y", "upstream": "u"}]}',
     "routes\\[1\\].name: expected a name listed once"),
    (b'{"routes": [{"name": "r", "prefix": "x", "upstream": "u"}]}', "routes\\[0\\].prefix: expected a path"),
    (b'{"upstreams": {"u": {"targets": []}}}', "upstreams.u.targets: expected at least one target"),
    (b'{"upstreams": {"bad name": "http://h:1"}}', "upstreams.bad name: expected an upstream name"),
    (b'{"deleted": {"routes": [[]]}}', "deleted.routes\\[0\\]: expected a non-empty string"),
    (b'{"deleted": {"other": []}}', "deleted.other: unknown key"),
])
def test_a_corrupt_state_file_names_the_file_and_key(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as caught:
        read_state(str(path))
    assert caught.value.source == str(path)


def test_a_failed_write_leaves_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError, match="No space left"):
        StateFile(str(tmp_path / "state.json")).prepare(Overlay())
    assert list(tmp_path.iterdir()) == []


def test_an_unreadable_state_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the admin state file"):
        read_state(str(tmp_path))  # a directory


# --- the endpoints ----------------------------------------------------------------------------------------


@async_test
async def test_listing_and_get_with_etag(tmp_path: Path) -> None:
    app, _, _ = setup(tmp_path)
    status, _, body = await call(app, "GET", "/config/routes")
    assert status == 200
    admin = {"put": [], "deleted": [], "state_file": str(tmp_path / "state.json")}
    assert body == {"routes": BASE["routes"], "admin": admin}
    status, _, body = await call(app, "GET", "/config/upstreams")
    assert (status, body["upstreams"]) == (200, BASE["upstreams"])
    status, headers, body = await call(app, "GET", "/config/routes/prefix:/plain")  # a default name
    assert (status, body) == (200, {"prefix": "/plain", "upstream": "api"})
    assert headers[b"etag"] == etag(body).encode()
    status, headers, body = await call(app, "GET", "/config/upstreams/api")
    assert (status, body, headers[b"etag"]) == (200, "http://127.0.0.1:9001", etag("http://127.0.0.1:9001").encode())
    assert (await call(app, "GET", "/config/routes/nope"))[0] == 404
    assert (await call(app, "GET", "/config/other"))[0] == 404
    status, headers, body = await call(app, "PUT", "/config/routes", [])
    assert (status, headers[b"allow"]) == (405, b"GET, HEAD")


@async_test
async def test_put_route_rolls_out_stores_and_answers_the_entry(tmp_path: Path) -> None:
    app, supervisor, layer = setup(tmp_path)
    status, headers, body = await call(app, "PUT", "/config/routes/b", {"prefix": "/b", "upstream": "spare"})
    assert (status, body) == (200, {"name": "b", "prefix": "/b", "upstream": "spare"})
    assert headers[b"etag"] == etag(body).encode()
    assert supervisor.reasons == ["admin API: PUT /config/routes/b"]
    assert [r.name for r in supervisor.running.routes] == ["a", "prefix:/plain", "c", "b"]
    assert read_state(str(tmp_path / "state.json")) == layer.overlay
    status, _, body = await call(app, "PUT", "/config/routes/a", {"prefix": "/a2", "upstream": "api"})
    assert status == 200
    assert [r.pattern for r in supervisor.running.routes] == ["/a2", "/plain", "/c", "/b"]  # in place
    status, _, body = await call(app, "GET", "/config/routes")
    assert body["admin"]["put"] == ["b", "a"]
    status, _, _ = await call(app, "PUT", "/config/upstreams/extra", {"targets": ["http://127.0.0.1:9003"]})
    assert status == 200
    assert "extra" in supervisor.running.upstreams


@async_test
async def test_put_errors_are_400_naming_the_key_and_change_nothing(tmp_path: Path) -> None:
    app, supervisor, layer = setup(tmp_path)
    cases = [
        (b"{", None, "the body is not JSON"),
        ({"prefix": "/b"}, "upstream", "request body: upstream: expected an upstream name or URL"),
        ({"prefix": "/b", "upstream": "api", "extra": 1}, "extra", "request body: extra: unknown key"),
        ({"prefix": "/b", "upstream": "nope"}, "upstream", "request body: upstream: expected the name of an upstream"),
        ({"prefix": "/a", "upstream": "api"}, "prefix", "request body: prefix: expected a valid route: duplicate"),
        ({"name": "other", "prefix": "/b", "upstream": "api"}, "name", "request body: name: expected 'b'"),
    ]
    for body, key, message in cases:
        status, _, answer = await call(app, "PUT", "/config/routes/b", body)
        assert status == 400, answer
        assert answer["message"].startswith(message), answer
        assert answer.get("key") == key
        assert set(answer) >= {"error", "message", "status", "request_id"}
    status, _, answer = await call(app, "PUT", "/config/upstreams/api", {"targets": []})
    assert (status, answer["key"]) == (400, "targets")
    assert (await call(app, "PUT", "/config/upstreams/bad%20name", "http://h:1"))[0] == 400
    assert len(supervisor.reasons) == 2  # the cross-checks are the supervisor's composition's
    assert supervisor.running is supervisor.base
    assert layer.overlay.empty
    assert not (tmp_path / "state.json").exists()


@async_test
async def test_a_mistake_elsewhere_keeps_its_own_source_and_key(tmp_path: Path) -> None:
    app, supervisor, _ = setup(tmp_path)
    supervisor.fail = ConfigError("gateway.yaml", "routes[0].upstream", "expected something")
    status, _, answer = await call(app, "PUT", "/config/routes/b", {"prefix": "/b", "upstream": "api"})
    assert (status, answer["key"]) == (400, "routes[0].upstream")
    assert answer["message"] == "gateway.yaml: routes[0].upstream: expected something"
    supervisor.fail = ConfigError("gateway.yaml", "upstreams.extra.targets[0]", "expected a URL")
    status, _, answer = await call(app, "PUT", "/config/upstreams/extra", "http://127.0.0.1:9")
    assert (status, answer["key"], answer["message"]) == (400, "targets[0]", "request body: targets[0]: expected a URL")


@async_test
async def test_preconditions(tmp_path: Path) -> None:
    app, supervisor, _ = setup(tmp_path)
    _, headers, _ = await call(app, "GET", "/config/routes/a")
    tag = headers[b"etag"].decode()
    status, headers, answer = await call(app, "PUT", "/config/routes/a", {"prefix": "/a", "upstream": "spare"},
                                         {"If-Match": '"stale"'})
    assert (status, answer["error"], headers[b"etag"].decode()) == (412, "precondition_failed", tag)
    status, _, _ = await call(app, "PUT", "/config/routes/a", {"prefix": "/a", "upstream": "spare"},
                              {"If-Match": f'"x", {tag}'})
    assert status == 200
    status, _, answer = await call(app, "PUT", "/config/routes/a", {"prefix": "/a", "upstream": "api"},
                                   {"If-None-Match": "*"})
    assert status == 412
    status, _, answer = await call(app, "PUT", "/config/routes/new", {"prefix": "/n", "upstream": "api"},
                                   {"If-Match": "*"})
    assert (status, answer["message"]) == (412, "if-match failed for route 'new': it does not exist")
    status, _, _ = await call(app, "PUT", "/config/routes/new", {"prefix": "/n", "upstream": "api"},
                              {"If-None-Match": "*"})
    assert status == 200
    status, _, _ = await call(app, "DELETE", "/config/routes/new", headers={"If-Match": tag})
    assert status == 412
    assert len(supervisor.reasons) == 2


@async_test
async def test_changes_queue_and_a_client_that_leaves_does_not_cut_a_roll(tmp_path: Path) -> None:
    app, supervisor, layer = setup(tmp_path)
    supervisor.gate = asyncio.Event()
    create = {"prefix": "/n", "upstream": "api"}
    first = asyncio.create_task(call(app, "PUT", "/config/routes/n", create, {"If-None-Match": "*"}))
    second = asyncio.create_task(call(app, "PUT", "/config/routes/n", create, {"If-None-Match": "*"}))
    await asyncio.sleep(0.01)
    assert len(supervisor.reasons) == 1  # the second waits for the first
    first.cancel()  # the client left mid-roll
    await asyncio.sleep(0)
    supervisor.gate.set()
    assert (await second)[0] == 412  # it sees the first change: created meanwhile
    assert [r["name"] for r in layer.overlay.routes] == ["n"]
    assert read_state(str(tmp_path / "state.json")) == layer.overlay  # the roll finished and was stored
    with pytest.raises(asyncio.CancelledError):
        await first


@async_test
async def test_delete(tmp_path: Path) -> None:
    app, supervisor, layer = setup(tmp_path)
    status, _, answer = await call(app, "DELETE", "/config/upstreams/api")
    assert (status, answer["error"]) == (409, "upstream_in_use")
    assert answer["message"] == "upstream 'api' is used by routes a, prefix:/plain: change or delete them first"
    assert (await call(app, "DELETE", "/config/routes/nope"))[0] == 404
    assert (await call(app, "DELETE", "/config/upstreams/nope"))[0] == 404
    assert (await call(app, "DELETE", "/config/routes/c"))[:3:2] == (200, {"deleted": "c"})
    assert (await call(app, "DELETE", "/config/upstreams/spare"))[0] == 200
    assert set(supervisor.running.upstreams) == {"api"}
    assert layer.overlay.deleted_routes == {"c"} and layer.overlay.deleted_upstreams == {"spare"}
    assert (await call(app, "DELETE", "/config/routes/prefix:/plain"))[0] == 200
    status, _, answer = await call(app, "DELETE", "/config/routes/a")  # the last route
    assert (status, answer["error"]) == (409, "conflict")
    assert "expected at least one route" in answer["message"]
    assert [r.name for r in supervisor.running.routes] == ["a"]
    # an entry the admin API added leaves no trace when deleted
    await call(app, "PUT", "/config/upstreams/tmp", "http://127.0.0.1:9")
    await call(app, "DELETE", "/config/upstreams/tmp")
    assert "tmp" not in layer.overlay.upstreams and "tmp" not in layer.overlay.deleted_upstreams


@async_test
async def test_changes_survive_a_new_base_and_a_restart(tmp_path: Path) -> None:
    app, supervisor, _ = setup(tmp_path)
    await call(app, "PUT", "/config/routes/b", {"prefix": "/b", "upstream": "api"})
    await call(app, "DELETE", "/config/routes/c")
    supervisor.base = from_document({**BASE, "routes": [*BASE["routes"], {"name": "f", "path": "/f",
                                                                          "upstream": "api"}]})  # SIGHUP
    assert [r.name for r in supervisor.compose(supervisor.base).routes] == ["a", "prefix:/plain", "f", "b"]
    restarted = FakeSupervisor()
    layer = AdminConfigLayer(restarted, str(tmp_path / "state.json"))
    restarted.layers.append(layer)
    await layer.start()
    assert [r.name for r in restarted.compose(restarted.base).routes] == ["a", "prefix:/plain", "b"]


@async_test
async def test_without_a_state_file_the_api_is_read_only() -> None:
    app, supervisor, _ = setup(None)
    status, headers, answer = await call(app, "PUT", "/config/routes/b", {"prefix": "/b", "upstream": "api"})
    assert (status, answer["error"], headers[b"allow"]) == (405, "read_only", b"GET, HEAD")
    assert "admin_state_file" in answer["message"]
    assert (await call(app, "DELETE", "/config/routes/a"))[0] == 405
    assert (await call(app, "GET", "/config/routes/a"))[0] == 200
    assert supervisor.reasons == []


@async_test
async def test_a_failed_roll_is_503_and_changes_nothing(tmp_path: Path) -> None:
    app, supervisor, layer = setup(tmp_path)
    supervisor.fail = ReconfigureError("admin API: PUT /config/routes/b: the new workers did not start")
    status, _, answer = await call(app, "PUT", "/config/routes/b", {"prefix": "/b", "upstream": "api"})
    assert (status, answer["error"]) == (503, "reconfigure_failed")
    assert answer["message"].endswith("the previous configuration still serves, nothing was changed")
    assert layer.overlay.empty
    assert list(tmp_path.iterdir()) == []  # no state file, no temporary file
    supervisor.fail = ConfigError("gateway.yaml", "routes[3].prefix", "a discovery layer refused it")
    status, _, answer = await call(app, "PUT", "/config/routes/b", {"prefix": "/b", "upstream": "api"})
    assert (status, answer["key"]) == (400, "prefix")  # told as the body's key: it is this entry
    assert layer.overlay.empty


@async_test
async def test_state_file_failures_are_500_and_roll_back(tmp_path: Path) -> None:
    app, supervisor, layer = setup(tmp_path)
    assert layer.state is not None
    layer.state.directory = str(tmp_path / "gone")  # the temporary file cannot be made
    status, _, answer = await call(app, "PUT", "/config/routes/b", {"prefix": "/b", "upstream": "api"})
    assert (status, answer["error"]) == (500, "state_file_error")
    assert supervisor.reasons == [] and layer.overlay.empty
    layer.state.directory = str(tmp_path)
    layer.state.path = str(tmp_path / "missing-dir" / "state.json")  # the rename fails after the roll
    status, _, answer = await call(app, "PUT", "/config/routes/b", {"prefix": "/b", "upstream": "api"})
    assert status == 500
    assert supervisor.reasons == ["admin API: PUT /config/routes/b", "admin API: undo PUT /config/routes/b"]
    assert [r.name for r in supervisor.running.routes] == ["a", "prefix:/plain", "c"]  # rolled back
    assert layer.overlay.empty
    assert list(tmp_path.iterdir()) == []


@async_test
async def test_a_body_in_pieces_and_a_client_that_left(tmp_path: Path) -> None:
    layer = AdminConfigLayer(FakeSupervisor(), str(tmp_path / "state.json"))
    messages = [{"type": "http.request", "body": b'"http://127.0.0.1:', "more_body": True},
                {"type": "http.request", "body": b'9"', "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    assert await config_api.read_body(receive) == b'"http://127.0.0.1:9"'
    messages.append({"type": "http.disconnect"})
    assert await config_api.read_body(receive) == b""
    assert layer.overlay.empty


@async_test
async def test_a_body_over_the_limit_is_413(tmp_path: Path) -> None:
    app, _, _ = setup(tmp_path)
    status, _, answer = await call(app, "PUT", "/config/upstreams/big", b" " * (config_api.MAX_BODY + 1))
    assert (status, answer["error"]) == (413, "payload_too_large")


@async_test
async def test_register_adds_the_endpoints_once(tmp_path: Path) -> None:
    app, supervisor, _ = setup(tmp_path)
    register(app, supervisor.base)
    assert len([p for p in app.prefixes if p[0] == "/config/"]) == 1
    bare = AdminApp(FakeSupervisor())  # no layers: no endpoints
    register(bare, supervisor.base)
    assert bare.find("/config/routes") is None


@async_test
async def test_start_logs_what_the_state_file_holds(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    await AdminConfigLayer(FakeSupervisor(), None).start()
    await AdminConfigLayer(FakeSupervisor(), str(tmp_path / "state.json")).start()
    assert caplog.records == []
    StateFile(str(tmp_path / "state.json")).commit(StateFile(str(tmp_path / "state.json")).prepare(
        Overlay().delete_route("c", in_base=True)))
    layer = AdminConfigLayer(FakeSupervisor(), str(tmp_path / "state.json"))
    caplog.set_level("INFO", "gateway.admin")
    await layer.start()
    assert "0 routes, 0 upstreams, 1 deleted" in caplog.text
    layer.close()


@async_test
async def test_stored_changes_that_no_longer_fit_the_file_stop_the_start(tmp_path: Path) -> None:
    path = str(tmp_path / "state.json")
    StateFile(path).commit(StateFile(path).prepare(Overlay().put_route({"name": "x", "prefix": "/x",
                                                                        "upstream": "gone"})))
    with pytest.raises(ConfigError, match=r"routes\[3\]\.upstream: expected the name of an upstream .* \(with "
                       f"the admin API's changes in {path}\\)"):
        await AdminConfigLayer(FakeSupervisor(), path).start()


def test_stored_changes_for_gateway_check(tmp_path: Path) -> None:
    config = from_document(BASE)
    assert stored_changes(config) is config
    path = str(tmp_path / "state.json")
    StateFile(path).commit(StateFile(path).prepare(Overlay().delete_route("a", in_base=True)))
    composed = stored_changes(from_document({**BASE, "server": {"admin_state_file": path}}))
    assert [r.name for r in composed.routes] == ["prefix:/plain", "c"]


# --- the token --------------------------------------------------------------------------------------------


@async_test
async def test_a_token_guards_every_mutating_admin_request(tmp_path: Path) -> None:
    app, _, _ = setup(tmp_path, token="s3cret")
    body = {"prefix": "/b", "upstream": "api"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
        status, sent, answer = await call(app, "PUT", "/config/routes/b", body, headers)
        assert (status, answer["error"]) == (401, "unauthorized")
        assert sent[b"www-authenticate"] == b'Bearer realm="gateway-admin"'
    assert (await call(app, "GET", "/config/routes"))[0] == 200  # reads stay open
    good = {"Content-Type": "application/json", "Authorization": "bearer s3cret"}  # the scheme in any case
    assert (await call(app, "PUT", "/config/routes/b", body, good))[0] == 200
    assert (await call(app, "DELETE", "/config/routes/b", headers={"Authorization": "Bearer s3cret"}))[0] == 200


def test_read_token(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert read_token(ServerSettings()) is None
    assert read_token(ServerSettings(admin_token="t")) == b"t"
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    assert read_token(ServerSettings(admin_token_file=str(token_file))) == b"from-file"
    token_file.unlink()
    unguessable = read_token(ServerSettings(admin_token_file=str(token_file)))  # fail closed
    assert unguessable is not None and len(unguessable) == 32
    assert "cannot read admin_token_file" in caplog.text
    assert "from-file" not in caplog.text


def test_settings(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("t0k3n")
    settings = resolve(None, {"GATEWAY_ADMIN_STATE_FILE": str(tmp_path / "s.json"),
                              "GATEWAY_ADMIN_TOKEN_FILE": str(token_file)}, {})
    assert (settings.admin_state_file, settings.admin_token_file) == (str(tmp_path / "s.json"), str(token_file))
    assert "t0k3n" not in repr(resolve(None, {"GATEWAY_ADMIN_TOKEN": "t0k3n"}, {}))
    with pytest.raises(ConfigError, match="expected either GATEWAY_ADMIN_TOKEN"):
        resolve(None, {"GATEWAY_ADMIN_TOKEN": "x", "GATEWAY_ADMIN_TOKEN_FILE": str(token_file)}, {})
    state_file = SETTINGS_BY_NAME["admin_state_file"].read
    for bad in (str(tmp_path), str(tmp_path / "no" / "s.json")):
        with pytest.raises(ConfigError, match="expected a file path in an existing, writable directory"):
            state_file(Node(bad, "f", "server.admin_state_file"))
    secret_file = SETTINGS_BY_NAME["admin_token_file"].read
    with pytest.raises(ConfigError, match="cannot read"):
        secret_file(Node(str(tmp_path / "nope"), "f", "server.admin_token_file"))
    (tmp_path / "empty").write_text(" \n")
    with pytest.raises(ConfigError, match="the file is empty"):
        secret_file(Node(str(tmp_path / "empty"), "f", "server.admin_token_file"))
    assert state_file(Node(None, "f")) is None and secret_file(Node(None, "f")) is None
