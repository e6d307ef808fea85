"""Micro-benchmark of recording one proxied request's metrics, against prometheus-client.

What one proxied request records: the in-flight gauge up and down, the request counter by route, method
and status class, two latency histograms (whole request, gateway-added), two byte counters, and the
upstream exchange (counter by target and status class, latency histogram). Measured as nanoseconds per
request for:

- ``compiled`` / ``python``: the gateway's recorder (gateway/_fast/metrics) writing shared-memory cells;
- ``prometheus_client_multiprocess``: the same metrics through prometheus-client's multiprocess mode
  (PROMETHEUS_MULTIPROC_DIR: per-process mmap files, what a multi-worker Python server uses), in a child
  process, with ``.labels(...)`` looked up per request as usual code does;
- ``prometheus_client``: the same in its default single-process mode (a lock per update), for reference.

    python -m bench.micro_metrics
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import timeit
from typing import Any

from gateway._fast import implementations
from gateway.loader import from_document
from gateway.observability.metrics import Schema, WorkerMetrics

DOCUMENT = {
    "source": "bench", "server": {},
    "upstreams": {"api": "http://127.0.0.1:9000"},
    "routes": [{"name": f"r{i}", "prefix": f"/r{i}", "upstream": "api"} for i in range(1000)],
}


def per_call_ns(fn: Any, number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e9


def gateway_ns(number: int) -> dict[str, float]:
    schema = Schema.for_config(from_document(DOCUMENT))
    results = {}
    for kind, module in implementations("metrics").items():
        cells = WorkerMetrics(schema).cells
        rec = module.Recorder(cells, schema.offsets)

        def one(rec: Any = rec) -> None:
            rec.begin()
            rec.upstream(0, 200, 0.0021)
            rec.request(417, "GET", 200, 0.0023, 0.0021, 0, 1234)

        results[kind] = round(per_call_ns(one, number), 1)
    return results


def prometheus_client_ns(number: int) -> float:
    """Runs in a child whose environment chose the mode before prometheus_client was imported."""
    from prometheus_client import Counter, Gauge, Histogram

    buckets = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
    multiprocess = "PROMETHEUS_MULTIPROC_DIR" in os.environ
    in_flight = Gauge("in_flight", "", multiprocess_mode="livesum") if multiprocess else Gauge("in_flight", "")
    requests = Counter("requests", "", ["route", "method", "status_class"])
    duration = Histogram("duration", "", ["route"], buckets=buckets)
    added = Histogram("added", "", ["route"], buckets=buckets)
    bytes_in = Counter("bytes_in", "", ["route"])
    bytes_out = Counter("bytes_out", "", ["route"])
    upstream = Counter("upstream", "", ["upstream", "target", "status_class"])
    upstream_duration = Histogram("upstream_duration", "", ["upstream", "target"], buckets=buckets)

    def one() -> None:
        in_flight.inc()
        upstream.labels("api", "http://127.0.0.1:9000", "2xx").inc()
        upstream_duration.labels("api", "http://127.0.0.1:9000").observe(0.0021)
        in_flight.dec()
        requests.labels("r417", "GET", "2xx").inc()
        duration.labels("r417").observe(0.0023)
        added.labels("r417").observe(0.0002)
        bytes_in.labels("r417").inc(0)
        bytes_out.labels("r417").inc(1234)

    return round(per_call_ns(one, number), 1)


def run(quick: bool = False) -> dict[str, Any]:
    number = 20_000 if quick else 200_000
    results: dict[str, Any] = {"per_request_ns": gateway_ns(number)}
    for mode in ("prometheus_client", "prometheus_client_multiprocess"):
        with tempfile.TemporaryDirectory() as directory:
            env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
            if mode.endswith("multiprocess"):
                env["PROMETHEUS_MULTIPROC_DIR"] = directory
            out = subprocess.run([sys.executable, "-m", "bench.micro_metrics", "--child", str(number // 4)],
                                 env=env, capture_output=True, text=True, check=True)
            results["per_request_ns"][mode] = json.loads(out.stdout)
    compiled = results["per_request_ns"].get("compiled")
    if compiled:
        results["multiprocess_over_compiled"] = round(
            results["per_request_ns"]["prometheus_client_multiprocess"] / compiled, 1)
    return results


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        print(json.dumps(prometheus_client_ns(int(sys.argv[2]))))
    else:
        print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
