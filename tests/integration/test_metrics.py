"""GET /metrics on the admin port: host-wide sums across workers, kept across restarts and reloads."""

from __future__ import annotations

import http.client
import os
import signal
import threading
import time

from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import request, wait_until

CONFIG = """
upstreams:
  api: http://127.0.0.1:{port}
  dead: http://127.0.0.1:9
routes:
  - {{name: api, prefix: /api, upstream: api, strip_prefix: true}}
  - {{name: down, prefix: /down, upstream: dead}}
"""


def scrape(gw, accept: str = "") -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", gw.admin_port, timeout=5)
    conn.request("GET", "/metrics", headers={"accept": accept} if accept else {})
    resp = conn.getresponse()
    body = resp.read().decode()
    conn.close()
    assert resp.status == 200
    found = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}"] = sample.value
    return found


OK = "gateway_requests_total{method=GET,route=api,status_class=2xx}"


def settled(gw, key: str, expected: float) -> dict[str, float]:
    """A scrape once ``key`` reached ``expected``: a worker counts a request just after answering it."""
    return wait_until(lambda: (found := scrape(gw)).get(key) == expected and found, timeout=5)


def test_requests_are_counted_per_route_across_workers(start_gateway, upstream_port):
    gw = start_gateway(CONFIG.format(port=upstream_port), workers=2)
    for _ in range(30):
        assert gw.get("/api/echo").status == 200
    assert request(gw.port, "POST", "/api/upload", b"x" * 1000).status == 200
    assert gw.get("/nowhere").status == 404
    assert gw.get("/api/status?code=503").status == 503
    assert gw.get("/down/x").status == 502
    found = settled(gw, "gateway_requests_total{method=GET,route=down,status_class=5xx}", 1)
    assert found[OK] == 30
    assert found["gateway_requests_total{method=POST,route=api,status_class=2xx}"] == 1
    assert found["gateway_requests_total{method=GET,route=(unmatched),status_class=4xx}"] == 1
    assert found["gateway_requests_total{method=GET,route=api,status_class=5xx}"] == 1
    assert found["gateway_requests_total{method=GET,route=down,status_class=5xx}"] == 1
    assert found["gateway_request_duration_seconds_count{route=api}"] == 32
    assert found["gateway_added_latency_seconds_count{route=api}"] == 32
    assert found["gateway_request_body_bytes_total{route=api}"] == 1000
    assert found["gateway_response_body_bytes_total{route=api}"] > 30 * 100
    target = f"http://127.0.0.1:{upstream_port}"
    assert found[f"gateway_upstream_requests_total{{status_class=2xx,target={target},upstream=api}}"] == 31
    assert found[f"gateway_upstream_requests_total{{status_class=5xx,target={target},upstream=api}}"] == 1
    assert found["gateway_upstream_requests_total{status_class=error,target=http://127.0.0.1:9,upstream=dead}"] == 1
    assert found[f"gateway_upstream_duration_seconds_count{{target={target},upstream=api}}"] == 32
    assert found["gateway_workers{}"] == 2 and found["gateway_workers_ready{}"] == 2
    # the gauges are sampled once a second by each worker
    wait_until(lambda: scrape(gw).get(f"gateway_upstream_connections_opened_total{{target={target},upstream=api}}"))
    om = request(gw.admin_port, "GET", "/metrics", headers={"accept": "application/openmetrics-text"})
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert om.body.endswith(b"# EOF\n")


def test_in_flight_and_open_connections(start_gateway, upstream_port):
    gw = start_gateway(CONFIG.format(port=upstream_port))
    slow = threading.Thread(target=gw.get, args=("/api/slow?delay=2",))
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
    conn.connect()
    slow.start()
    try:
        wait_until(lambda: scrape(gw)["gateway_requests_in_flight{}"] == 1)
        wait_until(lambda: scrape(gw)["gateway_connections_open{}"] == 2, timeout=5)
    finally:
        slow.join()
        conn.close()
    settled(gw, "gateway_requests_in_flight{}", 0)


def test_counts_survive_a_killed_worker_and_a_reload(start_gateway, upstream_port, tmp_path):
    gw = start_gateway(CONFIG.format(port=upstream_port))
    for _ in range(10):
        gw.get("/api/echo")
    pid = gw.workers()[0]["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: gw.ready() and gw.workers()[0]["pid"] != pid)
    found = settled(gw, OK, 10)
    assert found[OK] == 10  # the dead worker's counts are the host's
    assert found["gateway_worker_restarts_total{}"] == 1
    for _ in range(5):
        gw.get("/api/echo")
    config_path = next(tmp_path.glob("gateway-*.yaml"))
    config_path.write_text(CONFIG.format(port=upstream_port) + "  - {name: extra, path: /extra, upstream: api}\n")
    gw.signal(signal.SIGHUP)
    wait_until(lambda: "reloaded" in gw.stderr, 20)
    wait_until(lambda: "stopped" in gw.stderr, 20)
    time.sleep(0.2)
    assert gw.get("/extra").status == 200
    found = settled(gw, "gateway_requests_total{method=GET,route=extra,status_class=2xx}", 1)
    assert found[OK] == 15  # counted by workers of two generations, one of them gone
    assert found["gateway_requests_total{method=GET,route=extra,status_class=2xx}"] == 1
    assert found["gateway_config_reloads_total{result=success}"] == 1
    assert found["gateway_config_generation{}"] == 1
    config_path.write_text("routes: [")
    gw.signal(signal.SIGHUP)
    wait_until(lambda: "reload refused" in gw.stderr, 20)
    assert scrape(gw)["gateway_config_reloads_total{result=failure}"] == 1
