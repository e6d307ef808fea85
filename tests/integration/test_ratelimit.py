"""Rate limiting in a real ``gateway run``: a host with two workers admits the limit once (compiled: one
shared table), X-Forwarded-For cannot change a client's key, the 429's headers and body, counts that survive
a worker's crash and a reload, the metrics, and the example config."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.integration.conftest import ROOT, request, wait_until

pytestmark = pytest.mark.integration


def config(upstream_port: int, limits: str, extra: str = "") -> str:
    return f"""
server: {{access_log: true}}
upstreams: {{app: "http://127.0.0.1:{upstream_port}"}}
ratelimit:
  default: [per-ip]
{extra}
  policies:
    per-ip: {{key: ip, limits: [{limits}]}}
routes:
  - {{name: all, prefix: /, upstream: app}}
"""


def statuses(port: int, count: int, headers: dict[str, str] | None = None) -> list[int]:
    """``count`` requests, each on a fresh connection (so the kernel spreads them over the workers)."""
    return [request(port, "GET", f"/echo/{i}", headers=headers).status for i in range(count)]


def test_a_host_with_two_workers_admits_the_limit_once(start_gateway, upstream_port, impl):
    gw = start_gateway(config(upstream_port, "{rate: 1/h, burst: 30}"), workers=2)
    got = statuses(gw.port, 90)
    time.sleep(0.3)
    assert {entry["worker"] for entry in gw.access_log()} == {0, 1}  # both workers decided
    if impl == "compiled":
        assert got.count(200) == 30 and got.count(429) == 60
        assert got[:30] == [200] * 30  # nothing refused before the limit was reached
    else:  # the twin keeps a table per worker: each admits the limit
        assert 30 < got.count(200) <= 60
        assert "rate limits are counted per worker, not per host" in gw.stderr
    metrics = gw.admin("/metrics").body.decode()
    assert f'gateway_ratelimit_decisions_total{{decision="rejected",route="all"}} {got.count(429)}.0' in metrics
    assert "gateway_ratelimit_evictions_total 0.0" in metrics


def test_a_spoofed_forwarded_for_does_not_change_the_key(start_gateway, upstream_port):
    gw = start_gateway(config(upstream_port, "{rate: 1/h, burst: 3}"))
    got = [request(gw.port, "GET", "/", headers={"X-Forwarded-For": f"203.0.113.{i}"}).status for i in range(8)]
    assert got == [200] * 3 + [429] * 5


def test_trusted_hops_key_by_the_forwarded_client(start_gateway, upstream_port):
    gw = start_gateway(config(upstream_port, "{rate: 1/h, burst: 1}", "  trusted_hops: 1"))
    assert request(gw.port, "GET", "/", headers={"X-Forwarded-For": "spoof, 198.51.100.1"}).status == 200
    assert request(gw.port, "GET", "/", headers={"X-Forwarded-For": "other, 198.51.100.1"}).status == 429
    assert request(gw.port, "GET", "/", headers={"X-Forwarded-For": "198.51.100.2"}).status == 200


def test_the_429_and_the_headers(start_gateway, upstream_port):
    gw = start_gateway(config(upstream_port, "{rate: 2/m, burst: 2}"))
    first = gw.get("/echo/a")
    assert first.status == 200 and first.json()["path"] == "/echo/a"
    assert (first.headers["X-RateLimit-Limit"], first.headers["X-RateLimit-Remaining"]) == ("2", "1")
    assert first.headers["X-RateLimit-Reset"] == "30"
    assert gw.get("/echo/b").headers["X-RateLimit-Remaining"] == "0"
    refused = gw.get("/echo/c")
    assert refused.status == 429
    assert refused.headers["Retry-After"] == "30" and refused.headers["X-RateLimit-Remaining"] == "0"
    assert refused.headers["Content-Type"] == "application/json"
    body = refused.json()
    assert body["error"] == "rate_limited" and body["status"] == 429
    assert body["request_id"] == refused.headers["X-Request-Id"]
    assert "Traceback" not in gw.stderr and "WARNING" not in gw.stderr  # a refusal is no failure


def test_counts_survive_a_worker_crash_and_a_reload(start_gateway, upstream_port, impl, tmp_path):
    if impl == "python":
        pytest.skip("the twin's tables are per worker process: they go with the process")
    gw = start_gateway(config(upstream_port, "{rate: 1/h, burst: 5}"), workers=1)
    assert statuses(gw.port, 5) == [200] * 5
    [worker] = gw.workers()
    os.kill(worker["pid"], signal.SIGKILL)
    wait_until(lambda: "exited unexpectedly" in gw.stderr, 20)
    gw.wait_ready()
    wait_until(lambda: [w["pid"] for w in gw.workers()] != [worker["pid"]], 20)
    assert statuses(gw.port, 2) == [429, 429]  # the new worker maps the same table
    path = next(tmp_path.glob("gateway-*.yaml"))
    path.write_text(path.read_text().replace("name: all", "name: renamed"))  # the same limit, a new route name
    gw.signal(signal.SIGHUP)
    wait_until(lambda: "reloaded" in gw.stderr, 20)
    assert statuses(gw.port, 2) == [429, 429]


def test_the_example_config(start_gateway, upstream_port, impl):
    env = {"UPSTREAM": f"http://127.0.0.1:{upstream_port}"}
    gw = start_gateway(args=["--config", str(ROOT / "examples" / "ratelimit.yaml")], env=env, workers=2)
    began = time.monotonic()
    got = statuses(gw.port, 150)
    elapsed = time.monotonic() - began
    refill = int(10 * elapsed) + 1  # 10 a second come back while the requests run
    admitted = got.count(200)
    if impl == "compiled":
        assert 100 <= admitted <= 100 + refill, (admitted, elapsed)
    else:
        assert 100 <= admitted <= 2 * (100 + refill), (admitted, elapsed)
    assert got.count(429) == 150 - admitted
    response = gw.get("/")
    assert response.headers["X-RateLimit-Limit"] == "100"
