"""Discovery from a watched file, end to end: a running gateway follows the file's targets under load
without a failed request, keeps the last good list when the file turns bad, and answers 503 until a
discovery-only upstream has targets."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import request, wait_until
from tests.integration.test_server import Load

pytestmark = pytest.mark.parametrize("impl", ["python"])  # discovery runs in the supervisor: one is enough

CONFIG = """
upstreams:
  api:
    file: {{path: {path}, interval: 100ms}}
    balancer: round_robin
routes:
  - {{name: api, prefix: /, upstream: api}}
"""


def write(path: Path, targets: Any) -> None:
    """Replaces the file the way an editor or a config tool does: a new file renamed over the old one."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(targets if isinstance(targets, str) else json.dumps(targets))
    temporary.replace(path)


def served_by(gw: Any, count: int = 12) -> set[int]:
    """The upstream ports that answered ``count`` requests (the echo names its own address)."""
    ports = set()
    for _ in range(count):
        response = gw.get("/echo")
        assert response.status == 200, response.body
        ports.add(response.json()["server"][1])
    return ports


def rolled(gw: Any, change: Any) -> None:
    """Makes a change and waits until the workers for it serve (the supervisor logs each roll)."""
    before = gw.stderr.count("(discovery: ")
    change()
    wait_until(lambda: gw.stderr.count("(discovery: ") > before, 20)


def source(gw: Any, upstream: str = "api") -> dict[str, Any]:
    view: dict[str, Any] = gw.admin("/upstreams").json()["upstreams"][upstream]["discovery"][0]
    return view


def test_file_targets_follow_the_file_under_load(start_gateway, upstream_port, second_upstream_port, tmp_path):
    targets = tmp_path / "targets.yaml"
    one, two = f"http://127.0.0.1:{upstream_port}", f"http://127.0.0.1:{second_upstream_port}"
    write(targets, [one])
    gw = start_gateway(CONFIG.format(path=targets), workers=2)
    assert served_by(gw) == {upstream_port}
    with Load(gw.port, "/echo") as load:
        rolled(gw, lambda: write(targets, [one, {"url": two, "weight": 2}]))  # a target added
        wait_until(lambda: served_by(gw) == {upstream_port, second_upstream_port}, 20)
        rolled(gw, lambda: write(targets, [two]))  # and one removed
        wait_until(lambda: served_by(gw) == {second_upstream_port}, 20)
        write(targets, "targets: [not a list")  # a broken file: the last good list stays
        wait_until(lambda: source(gw)["state"] == "failing", 20)
        assert served_by(gw) == {second_upstream_port}
        write(targets, [])  # an empty list never empties the upstream
        wait_until(lambda: "at least one target" in (source(gw)["last_error"] or ""), 20)
    assert load.failures == []
    assert load.ok > 50
    view = source(gw)
    assert view["source"] == "file" and view["watching"] == str(targets)
    assert view["targets"] == [two] and view["refreshes"]["failure"] >= 2
    assert view["last_success"] is not None and view["next_refresh"] is not None
    assert gw.stderr.count("keeping the last good list of 1 targets") == 1  # once per state change
    metrics = gw.admin("/metrics").body.decode()
    assert 'gateway_discovery_up{source="file",upstream="api"} 0.0' in metrics
    assert 'gateway_discovery_targets{source="file",upstream="api"} 1.0' in metrics
    rolled(gw, lambda: write(targets, [one]))
    wait_until(lambda: served_by(gw) == {upstream_port}, 20)
    assert source(gw)["state"] == "ok"
    assert "(recovered)" in gw.stderr


def test_discovery_only_upstream_answers_503_until_its_source_has_targets(start_gateway, upstream_port,
                                                                          tmp_path):
    targets = tmp_path / "later.yaml"
    gw = start_gateway(CONFIG.format(path=targets))
    response = gw.get("/echo")
    assert response.status == 503 and response.json()["error"] == "no_healthy_upstream"
    view = source(gw)
    assert view["state"] == "failing" and "cannot read" in view["last_error"] and view["targets"] == []
    write(targets, {"targets": [f"http://127.0.0.1:{upstream_port}"]})
    wait_until(lambda: gw.get("/echo").status == 200, 20)
    assert request(gw.admin_port, "GET", "/upstreams").json()["upstreams"]["api"]["targets"][0]["url"] == (
        f"http://127.0.0.1:{upstream_port}")


def test_a_reload_adds_and_removes_a_source_under_load(start_gateway, upstream_port, second_upstream_port,
                                                        tmp_path):
    targets = tmp_path / "targets.yaml"
    one, two = f"http://127.0.0.1:{upstream_port}", f"http://127.0.0.1:{second_upstream_port}"
    write(targets, [two])
    static = f"""
upstreams:
  api: {{targets: ["{one}"]}}
routes:
  - {{name: api, prefix: /, upstream: api}}
"""
    gw = start_gateway(static, workers=2)
    config = tmp_path / "gateway-0.yaml"
    with Load(gw.port, "/echo") as load:
        config.write_text(CONFIG.format(path=targets))  # the upstream now takes its targets from the file
        gw.signal(signal.SIGHUP)
        wait_until(lambda: served_by(gw) == {second_upstream_port}, 20)
        rolled(gw, lambda: write(targets, [one, two]))  # the source the reload started is watched
        wait_until(lambda: served_by(gw) == {upstream_port, second_upstream_port}, 20)
        config.write_text(static)  # and a reload without it stops it
        gw.signal(signal.SIGHUP)
        wait_until(lambda: "discovery" not in gw.admin("/upstreams").json()["upstreams"]["api"], 20)
        wait_until(lambda: served_by(gw) == {upstream_port}, 20)
    assert load.failures == []
    assert load.ok > 50


def test_an_upstream_put_through_the_admin_api_takes_its_targets_from_its_source(start_gateway, upstream_port,
                                                                                   second_upstream_port, tmp_path):
    targets = tmp_path / "admin-targets.json"
    write(targets, [f"http://127.0.0.1:{second_upstream_port}"])
    static = f"""
routes:
  - {{name: api, prefix: /, upstream: "http://127.0.0.1:{upstream_port}"}}
"""
    gw = start_gateway(static, env={"GATEWAY_ADMIN_STATE_FILE": str(tmp_path / "admin-state.json")})
    put = request(gw.admin_port, "PUT", "/config/upstreams/found", json.dumps({"file": str(targets)}))
    assert put.status == 200, put.body
    put = request(gw.admin_port, "PUT", "/config/routes/found",
                  json.dumps({"prefix": "/found", "upstream": "found"}))
    assert put.status == 200, put.body
    response = gw.get("/found/echo")  # the admin layer's upstream, its targets from the discovery layer
    assert response.status == 200 and response.json()["server"][1] == second_upstream_port
    assert source(gw, "found")["targets"] == [f"http://127.0.0.1:{second_upstream_port}"]
