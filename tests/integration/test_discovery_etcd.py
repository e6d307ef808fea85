"""etcd discovery against a real etcd (Debian's etcd-server) on free loopback ports with a temporary data
directory: targets put and deleted under the prefix reach a gateway under load without a failed request;
etcd stopping keeps the last good targets; etcd back again is watched again from a fresh revision."""

from __future__ import annotations

import base64
import json
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import free_port, wait_until
from tests.integration.test_server import Load
from tests.tools import require_tool

pytestmark = pytest.mark.parametrize("impl", ["python"])  # discovery runs in the supervisor: one is enough

PREFIX = "/gateway/upstreams/api/targets/"


class Etcd:
    """A one-member etcd cluster; ``start``/``stop`` keep the data directory, so data survives."""

    def __init__(self, program: str, tmp: Path) -> None:
        self.program = program
        self.data = tmp / "etcd-data"
        self.client, self.peer = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.client}"
        self.log = tmp / "etcd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        peer = f"http://127.0.0.1:{self.peer}"
        argv = [self.program, "--name", "test", "--data-dir", str(self.data), "--listen-client-urls", self.url,
                "--advertise-client-urls", self.url, "--listen-peer-urls", peer,
                "--initial-advertise-peer-urls", peer, "--initial-cluster", f"test={peer}"]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log)
        wait_until(self.serving, 30, 0.1)

    def serving(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"etcd exited: {self.log.read_text()[-2000:]}")
        try:
            self.call("/v3/kv/range", {"key": _b64("health")})
        except OSError:
            return False
        return True

    def call(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        req = urllib.request.Request(self.url + path, json.dumps(payload).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=5) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer

    def put(self, key: str, value: Any) -> None:
        text = value if isinstance(value, str) else json.dumps(value)
        self.call("/v3/kv/put", {"key": _b64(key), "value": _b64(text)})

    def delete(self, key: str) -> None:
        self.call("/v3/kv/deleterange", {"key": _b64(key)})

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[Etcd]:
    server = Etcd(require_tool("etcd", "etcd-server"), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def served_by(gw: Any, count: int = 12) -> set[int]:
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


def source(gw: Any) -> dict[str, Any]:
    view: dict[str, Any] = gw.admin("/upstreams").json()["upstreams"]["api"]["discovery"][0]
    return view


def test_etcd_targets_are_watched_under_load(start_gateway, etcd, upstream_port, second_upstream_port):
    one, two = f"http://127.0.0.1:{upstream_port}", f"http://127.0.0.1:{second_upstream_port}"
    etcd.put(PREFIX + "one", one)
    etcd.put(PREFIX + "junk", "not a url")  # left out, named in the source's error
    config = f"""
upstreams:
  api:
    etcd: {{endpoints: ["{etcd.url}"]}}
    balancer: round_robin
routes:
  - {{name: api, prefix: /, upstream: api}}
"""
    gw = start_gateway(config, workers=2)
    assert served_by(gw) == {upstream_port}
    view = source(gw)
    assert view["state"] == "ok" and view["watching"] == f"{PREFIX} @ {etcd.url}"
    assert "junk" in view["last_error"]
    with Load(gw.port, "/echo") as load:
        rolled(gw, lambda: etcd.put(PREFIX + "two", {"url": two, "weight": 3}))  # added, seen by the watch
        wait_until(lambda: served_by(gw) == {upstream_port, second_upstream_port}, 20)
        rolled(gw, lambda: etcd.delete(PREFIX + "one"))
        wait_until(lambda: served_by(gw) == {second_upstream_port}, 20)
        etcd.stop()  # etcd down: the last good targets stay
        wait_until(lambda: source(gw)["state"] == "failing", 20)
        assert served_by(gw) == {second_upstream_port}
        etcd.start()  # back: read again and watched from the new revision
        wait_until(lambda: source(gw)["state"] == "ok", 30)
        rolled(gw, lambda: etcd.put(PREFIX + "one", one))
        wait_until(lambda: served_by(gw) == {upstream_port, second_upstream_port}, 20)
    assert load.failures == []
    assert load.ok > 50
    targets = {t["url"]: t["weight"] for t in gw.admin("/upstreams").json()["upstreams"]["api"]["targets"]}
    assert targets == {one: 1, two: 3}
    assert "keeping the last good list of 1 targets" in gw.stderr and "(recovered)" in gw.stderr
    metrics = gw.admin("/metrics").body.decode()
    assert 'gateway_discovery_up{source="etcd",upstream="api"} 1.0' in metrics
    assert 'gateway_discovery_targets{source="etcd",upstream="api"} 2.0' in metrics
