"""A real Prometheus (Debian's ``prometheus``) scrapes a real gateway's admin port every second.

PromQL through Prometheus's HTTP API answers with exactly the requests sent; the alert rules of
deploy/prometheus/alerts.yml (their ``for:`` cut to one second) fire in Prometheus itself: the high
error ratio on a route whose upstream answers 500, and gateway-down on a scrape target that is not there.
"""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.promql import CONTRACT, DEPLOY, SAMPLES, sample_labels
from tests.integration.conftest import Gateway, free_port, request, wait_until
from tests.tools import require_tool

pytestmark = pytest.mark.integration

REQUESTS_OK = 25
REQUESTS_FAILING = 240  # over 5 minutes of rate(): 0.8 req/s, above the alert's 0.5 req/s minimum


@pytest.fixture
def impl() -> str:
    """One implementation: this checks what Prometheus reads; the recorders have tests of their own."""
    return "compiled"


class Prometheus:
    """A running ``prometheus`` with a temporary config and TSDB, queried over its HTTP API."""

    def __init__(self, binary: str, tmp: Path, config: dict[str, Any], rules: dict[str, Any]) -> None:
        self.port = free_port()
        (tmp / "rules.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
        (tmp / "prometheus.yml").write_text(yaml.safe_dump({**config, "rule_files": ["rules.yml"]}))
        self.log_path = tmp / "prometheus.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, cwd=tmp, start_new_session=True,
            )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.proc.returncode}:\n{self.log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def value(self, promql: str) -> float | None:
        """The value of a one-series instant query, None while it has no result."""
        result = self.api("/api/v1/query", query=promql)["result"]
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def firing(self, alertname: str) -> list[dict[str, str]]:
        """Labels of every firing alert of that name."""
        return [alert["labels"] for alert in self.api("/api/v1/alerts")["alerts"]
                if alert["labels"]["alertname"] == alertname and alert["state"] == "firing"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def start_prometheus(tmp_path: Path) -> Iterator[Callable[[list[str]], Prometheus]]:
    """Starts Prometheus scraping the given admin addresses as job "gateway", with the alert rules."""
    binary = require_tool("prometheus", "prometheus")
    started: list[Prometheus] = []

    def start(targets: list[str]) -> Prometheus:
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "gateway", "static_configs": [{"targets": targets}]}],
        }
        prometheus = Prometheus(binary, tmp_path, config, alert_rules_for_tests())
        started.append(prometheus)
        wait_until(prometheus.ready, timeout=30, interval=0.2)
        return prometheus

    yield start
    for prometheus in started:
        prometheus.stop()


def alert_rules_for_tests() -> dict[str, Any]:
    """deploy/prometheus/alerts.yml with every ``for:`` cut to one second."""
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "1s"
    return dict(rules)


def gateway_config(upstream_port: int) -> str:
    return f"""
upstreams:
  api: http://127.0.0.1:{upstream_port}
routes:
  - name: ok
    path: /ok
    upstream: api
    rewrite: /echo/ok
  - name: failing
    path: /status   # the test upstream answers /status?code=500 with a 500
    upstream: api
"""


def send(gw: Gateway, path: str, count: int, status: int) -> None:
    for _ in range(count):
        assert request(gw.port, "GET", path, timeout=10).status == status


def test_prometheus_counts_requests_and_fires_alerts(start_gateway, start_prometheus, upstream_port):
    gw = start_gateway(gateway_config(upstream_port))
    absent = f"127.0.0.1:{free_port()}"  # nothing listens there: up == 0
    prometheus = start_prometheus([f"127.0.0.1:{gw.admin_port}", absent])

    # One failing request first, so the 5xx series is in the TSDB before the burst that rate() must see.
    send(gw, "/status?code=500", 1, 500)
    wait_until(lambda: prometheus.value('sum(gateway_requests_total{route="failing"})') == 1, timeout=20)
    send(gw, "/ok", REQUESTS_OK, 200)
    send(gw, "/status?code=500", REQUESTS_FAILING - 1, 500)

    ok = 'route="ok"'
    wait_until(lambda: prometheus.value(f"sum(gateway_requests_total{{{ok}}})") == REQUESTS_OK, timeout=20)
    assert prometheus.value(f'sum(gateway_requests_total{{{ok}, method="GET", status_class="2xx"}})') == REQUESTS_OK
    assert prometheus.value(f"sum(gateway_request_duration_seconds_count{{{ok}}})") == REQUESTS_OK
    assert prometheus.value(f'sum(gateway_request_duration_seconds_bucket{{{ok}, le="+Inf"}})') == REQUESTS_OK
    # the bucket the latency SLO rules select, spelled as they spell it
    assert prometheus.value(f'sum(gateway_request_duration_seconds_bucket{{{ok}, le="0.5"}})') == REQUESTS_OK
    wait_until(lambda: prometheus.value('sum(gateway_requests_total{route="failing", status_class="5xx"})')
               == REQUESTS_FAILING, timeout=20)
    assert prometheus.value('sum(gateway_upstream_requests_total{upstream="api", status_class="2xx"})') \
        == REQUESTS_OK
    assert prometheus.value('sum(gateway_upstream_requests_total{upstream="api", status_class="5xx"})') \
        == REQUESTS_FAILING

    firing = wait_until(lambda: prometheus.firing("GatewayHighErrorRatio"), timeout=30, interval=0.5)
    assert [(a["route"], a["severity"]) for a in firing] == [("failing", "critical")]
    down = wait_until(lambda: prometheus.firing("GatewayDown"), timeout=30, interval=0.5)
    assert [a["instance"] for a in down] == [absent]
    # the latency SLO's recording rules evaluate over the real series: no request was slower than 0.5 s
    slow_ratio = 'job:gateway_request_duration_slow:ratio_rate5m{job="gateway"}'
    wait_until(lambda: prometheus.value(slow_ratio) is not None, timeout=20)
    assert abs(prometheus.value(slow_ratio) or 0.0) < 1e-9


def test_prometheus_ingests_the_contract(start_gateway, start_prometheus, upstream_port):
    """Every gateway_* series Prometheus stores is in the contract the dashboard and alerts are checked
    against, with the contract's labels, and every metric the contract says is emitted now is there
    (series appear once they count something, hence the requests)."""
    gw = start_gateway(gateway_config(upstream_port))
    prometheus = start_prometheus([f"127.0.0.1:{gw.admin_port}"])
    assert request(gw.port, "POST", "/ok", b"a body").status == 200
    send(gw, "/ok", 1, 200)  # over the pooled upstream connection: reused
    send(gw, "/nowhere", 1, 404)
    wait_until(lambda: prometheus.value('sum(gateway_requests_total{route="(unmatched)"})') == 1, timeout=20)

    names = {n for n in prometheus.api("/api/v1/label/__name__/values") if n.startswith("gateway_")}
    assert names - SAMPLES.keys() == set(), "served but not in the contract (tests/deploy/promql.py)"
    assert set(sample_labels(CONTRACT)) - names == set(), "in the contract but not served"
    for name in names:
        series = prometheus.api("/api/v1/series", **{"match[]": name})
        labels = set().union(*(s.keys() for s in series)) - {"__name__"}
        assert labels <= SAMPLES[name], f"{name} has labels outside the contract: {labels - SAMPLES[name]}"
