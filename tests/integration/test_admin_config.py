"""The admin API for routes and upstreams on a real gateway: PUT/DELETE, validation, persistence across a
reload and a restart, the admin token, and changes under steady load with no failed request."""

from __future__ import annotations

import json
import signal
import time
from typing import Any

import pytest

from tests.integration.conftest import Gateway, Response, free_port, request, run_cli, wait_until
from tests.integration.test_server import Load

pytestmark = pytest.mark.integration

TOKEN = "integration-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CONFIG = """
upstreams:
  api: http://127.0.0.1:{port}
routes:
  - {{name: a, prefix: /a, upstream: api, rewrite: /echo/a}}
"""


def admin(gw: Gateway, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Response:
    data = None if body is None else json.dumps(body)
    return request(gw.admin_port, method, path, data, headers={**AUTH, **(headers or {})}, timeout=60)


def served_by(gw: Gateway, path: str) -> int:
    """The port of the upstream that answered ``path`` (the echo endpoint tells its own address)."""
    response = gw.get(path)
    assert response.status == 200, response.body
    return int(response.json()["server"][1])


def test_put_delete_reload_restart(start_gateway, upstream_port, second_upstream_port, tmp_path):
    state = tmp_path / "admin-state.json"
    env = {"GATEWAY_ADMIN_STATE_FILE": str(state), "GATEWAY_ADMIN_TOKEN": TOKEN}
    config = CONFIG.format(port=upstream_port)
    gw = start_gateway(config, env=env, workers=2)

    # invalid: 400 naming the key, nothing changed; no token: 401
    answer = admin(gw, "PUT", "/config/routes/b", {"prefix": "/b", "upstream": "nowhere"})
    assert (answer.status, answer.json()["key"]) == (400, "upstream")
    unauthenticated = request(gw.admin_port, "PUT", "/config/upstreams/x", json.dumps("http://127.0.0.1:1"))
    assert unauthenticated.status == 401
    assert not state.exists()

    # an upstream, then a route using it: served as soon as the PUT answers
    second = {"targets": [f"http://127.0.0.1:{second_upstream_port}"]}
    assert admin(gw, "PUT", "/config/upstreams/second", second).status == 200
    answer = admin(gw, "PUT", "/config/routes/b", {"prefix": "/b", "upstream": "second", "rewrite": "/echo/b"})
    assert answer.status == 200
    assert answer.json() == {"name": "b", "prefix": "/b", "upstream": "second", "rewrite": "/echo/b"}
    assert served_by(gw, "/b/x") == second_upstream_port
    assert admin(gw, "DELETE", "/config/upstreams/second").status == 409  # route b uses it
    assert admin(gw, "DELETE", "/config/routes/a").status == 200
    assert gw.get("/a/x").status == 404
    etag = admin(gw, "GET", "/config/routes/b").headers["etag"]

    # SIGHUP reads the file again and keeps the admin API's changes over it
    gw.signal(signal.SIGHUP)
    wait_until(lambda: "(reload)" in gw.stderr, 30)
    gw.wait_ready(30)
    assert served_by(gw, "/b/x") == second_upstream_port
    assert gw.get("/a/x").status == 404

    # a restart reads them from the state file
    assert gw.stop() == 0
    gw = start_gateway(config, env=env, workers=2)
    assert served_by(gw, "/b/x") == second_upstream_port
    assert gw.get("/a/x").status == 404
    listing = admin(gw, "GET", "/config/routes").json()
    assert listing["admin"] == {"put": ["b"], "deleted": ["a"], "state_file": str(state)}
    assert admin(gw, "GET", "/config/routes/b").headers["etag"] == etag  # the same entry, the same tag

    # back to the file's configuration
    answer = admin(gw, "PUT", "/config/routes/a", {"prefix": "/a", "upstream": "api", "rewrite": "/echo/a"})
    assert answer.status == 200
    assert admin(gw, "DELETE", "/config/routes/b", headers={"If-Match": etag}).status == 200
    assert admin(gw, "DELETE", "/config/upstreams/second").status == 200
    assert gw.get("/b/x").status == 404
    assert served_by(gw, "/a/x") == upstream_port
    assert "admin API: DELETE /config/upstreams/second" in gw.stderr


def test_a_corrupt_state_file_stops_the_start_with_exit_2(upstream_port, tmp_path):
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG.format(port=upstream_port))
    state = tmp_path / "state.json"
    state.write_text('{"routes": [{"name": "x", "prefix": "/x"}]}')
    result = run_cli("run", "--config", str(config), "--port", str(free_port()), "--admin-port", str(free_port()),
                     "--workers", "1", env={"GATEWAY_ADMIN_STATE_FILE": str(state)})
    assert result.returncode == 2
    assert f"{state}: routes[0].upstream: expected an upstream name or URL" in result.stderr
    assert "Traceback" not in result.stderr
    check = run_cli("check", "--config", str(config), env={"GATEWAY_ADMIN_STATE_FILE": str(state)})
    assert check.returncode == 2 and "Traceback" not in check.stderr


def test_check_shows_the_stored_changes(upstream_port, tmp_path):
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG.format(port=upstream_port))
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"routes": [{"name": "x", "prefix": "/x", "upstream": "api"}]}))
    check = run_cli("check", "--config", str(config), env={"GATEWAY_ADMIN_STATE_FILE": str(state)})
    assert check.returncode == 0, check.stderr
    assert "  x: prefix /x methods=* hosts=* -> api" in check.stdout
    state.write_text(json.dumps({"deleted": {"upstreams": ["api"]}}))  # route a still names it
    check = run_cli("check", "--config", str(config), env={"GATEWAY_ADMIN_STATE_FILE": str(state)})
    assert check.returncode == 2
    assert f"(with the admin API's changes in {state})" in check.stderr


def test_changes_under_steady_load_fail_no_request(start_gateway, upstream_port, second_upstream_port, tmp_path):
    env = {"GATEWAY_ADMIN_STATE_FILE": str(tmp_path / "state.json"), "GATEWAY_ADMIN_TOKEN": TOKEN}
    gw = start_gateway(CONFIG.format(port=upstream_port), env=env, workers=2)
    first, second = f"http://127.0.0.1:{upstream_port}", f"http://127.0.0.1:{second_upstream_port}"
    shapes: list[Any] = [{"targets": [second]}, {"targets": [first, second], "balancer": "round_robin"}, first]
    statuses: list[int] = []
    with Load(gw.port, "/a/x") as load:
        deadline = time.monotonic() + 10.0
        change = 0
        while change < 6 or time.monotonic() < deadline:  # at least 12 changes and 10 s of traffic
            # the upstream the load goes through changes its targets; another route comes and goes
            statuses.append(admin(gw, "PUT", "/config/upstreams/api", shapes[change % 3]).status)
            if change % 2 == 0:
                route = {"prefix": "/b", "upstream": "api", "rewrite": "/echo/b"}
                statuses.append(admin(gw, "PUT", "/config/routes/b", route).status)
            else:
                statuses.append(admin(gw, "DELETE", "/config/routes/b").status)
            change += 1
        time.sleep(0.5)
    assert statuses == [200] * len(statuses)
    assert load.failures == []
    assert load.ok > 100
    assert gw.admin("/readyz").status == 200
    generation = gw.admin("/readyz").json()["generation"]
    assert generation >= len(statuses) - 1  # each change rolled new workers (one PUT may equal what runs)


def test_the_read_only_default(start_gateway, upstream_port):
    gw = start_gateway(CONFIG.format(port=upstream_port))
    answer = request(gw.admin_port, "PUT", "/config/routes/b", json.dumps({"prefix": "/b", "upstream": "api"}))
    assert (answer.status, answer.json()["error"]) == (405, "read_only")
    assert request(gw.admin_port, "GET", "/config/upstreams").json()["upstreams"] == {
        "api": f"http://127.0.0.1:{upstream_port}"}

