"""Metrics: the compiled and pure-Python recorders, the schema's layout, and the host's sums."""

from __future__ import annotations

import os
from collections.abc import Iterator
from types import ModuleType

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway._fast import implementations
from gateway.loader import from_document
from gateway.observability.metrics import (
    UNMATCHED,
    Dimension,
    HostMetrics,
    Region,
    Schema,
    WorkerMetrics,
)

IMPLS = implementations("metrics")


@pytest.fixture(params=sorted(IMPLS))
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return IMPLS[request.param]


def config(routes: int = 2) -> object:
    return from_document({
        "source": "test.yaml",
        "server": {},
        "upstreams": {"api": {"targets": ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]}},
        "routes": [{"name": f"r{i}", "prefix": f"/r{i}", "upstream": "api"} for i in range(routes)]
        + [{"name": "inline", "path": "/inline", "upstream": "http://127.0.0.1:9003"}],
    })


@pytest.fixture
def schema() -> Schema:
    return Schema.for_config(config())  # type: ignore[arg-type]


def recorder(impl: ModuleType, schema: Schema) -> tuple[object, memoryview]:
    cells = memoryview(bytearray(8 * schema.size)).cast("q")
    return impl.Recorder(cells, schema.offsets), cells


def series(schema: Schema, cells: memoryview, name: str) -> dict[tuple[str, ...], list[int]]:
    from gateway.observability.metrics import read_family

    return dict(read_family(schema.families[name], cells))


def test_schema_numbers_routes_then_unmatched_and_targets_with_inline_upstreams(schema: Schema) -> None:
    requests = schema.families["gateway_requests"]
    assert requests.dims[0].values == (("r0",), ("r1",), ("inline",), (UNMATCHED,))
    targets = schema.families["gateway_upstream_requests"].dims[0]
    assert targets.names == ("upstream", "target")
    assert targets.values == (("api", "http://127.0.0.1:9001"), ("api", "http://127.0.0.1:9002"),
                              ("http://127.0.0.1:9003", "http://127.0.0.1:9003"))
    offsets = [f.offset for f in schema.families.values()]
    assert offsets == sorted(offsets) and schema.size == sum(f.size for f in schema.families.values())


def test_family_cell_and_labels_are_inverse() -> None:
    schema = Schema()
    schema.add("pad", "gauge", "")
    family = schema.add("x", "counter", "", Dimension.of("a", "pq"), Dimension.of("b", "uvw"))
    seen = {}
    for a in range(2):
        for b in range(3):
            cell = family.cell(a, b)
            seen[cell] = family.labels(cell - family.offset)
    assert seen == {1: ("p", "u"), 2: ("p", "v"), 3: ("p", "w"), 4: ("q", "u"), 5: ("q", "v"), 6: ("q", "w")}


def test_request_counts_by_route_method_and_status_class(impl: ModuleType, schema: Schema) -> None:
    rec, cells = recorder(impl, schema)
    for method, status in [("GET", 200), ("GET", 204), ("POST", 503), ("BREW", 418), ("GET", 0), ("GET", 700)]:
        rec.begin()  # type: ignore[attr-defined]
        rec.request(1, method, status, 0.01, 0.004, 10, 20)  # type: ignore[attr-defined]
    assert series(schema, cells, "gateway_requests") == {
        ("r1", "GET", "2xx"): [2], ("r1", "POST", "5xx"): [1], ("r1", "other", "4xx"): [1],
        ("r1", "GET", "5xx"): [2],  # no status or an impossible one: the gateway failed
    }
    assert series(schema, cells, "gateway_request_body_bytes") == {("r1",): [60]}
    assert series(schema, cells, "gateway_response_body_bytes") == {("r1",): [120]}
    assert series(schema, cells, "gateway_requests_in_flight") == {(): [0]}


def test_histogram_buckets_are_upper_inclusive_and_sum_in_nanoseconds(impl: ModuleType, schema: Schema) -> None:
    rec, cells = recorder(impl, schema)
    family = schema.families["gateway_request_duration_seconds"]
    for value in (0.0001, 0.00010001, 10.0, 11.0):
        rec.observe(family.cell(0), value)  # type: ignore[attr-defined]
    rec.observe(family.cell(0), -1.0)  # type: ignore[attr-defined]  # clock step: counted as 0
    values = series(schema, cells, "gateway_request_duration_seconds")[("r0",)]
    buckets, total = values[:-1], values[-1]
    assert buckets[0] == 2 and buckets[1] == 1 and buckets[15] == 1 and buckets[16] == 1
    assert sum(buckets) == 5
    assert total == 100_000 + 100_010 + 10_000_000_000 + 11_000_000_000


def test_added_latency_is_duration_minus_upstream_time(impl: ModuleType, schema: Schema) -> None:
    rec, cells = recorder(impl, schema)
    rec.request(0, "GET", 200, 0.0104, 0.0100, 0, 0)  # type: ignore[attr-defined]
    added = series(schema, cells, "gateway_added_latency_seconds")[("r0",)]
    assert added[2] == 1  # 0.0004 s: the (0.00025, 0.0005] bucket
    assert abs(added[-1] - 400_000) < 10


def test_upstream_exchanges_count_errors_apart(impl: ModuleType, schema: Schema) -> None:
    rec, cells = recorder(impl, schema)
    rec.upstream(1, 200, 0.002)  # type: ignore[attr-defined]
    rec.upstream(1, 0, 5.0)  # type: ignore[attr-defined]
    rec.upstream(2, 502, 0.001)  # type: ignore[attr-defined]
    assert series(schema, cells, "gateway_upstream_requests") == {
        ("api", "http://127.0.0.1:9002", "2xx"): [1], ("api", "http://127.0.0.1:9002", "error"): [1],
        ("http://127.0.0.1:9003", "http://127.0.0.1:9003", "5xx"): [1],
    }
    duration = series(schema, cells, "gateway_upstream_duration_seconds")
    assert sum(duration[("api", "http://127.0.0.1:9002")][:-1]) == 2


def test_recorder_refuses_cells_outside_its_region(impl: ModuleType, schema: Schema) -> None:
    rec, _ = recorder(impl, schema)
    with pytest.raises(IndexError):
        rec.add(schema.size, 1)  # type: ignore[attr-defined]


@pytest.fixture
def host() -> Iterator[HostMetrics]:
    metrics = HostMetrics("1.2.3")
    yield metrics
    metrics.close()


def scrape(host: HostMetrics, accept: str = "") -> dict[str, float]:
    body, content_type = host.exposition(accept)
    assert content_type.startswith("text/plain")
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}"] = sample.value
    return found


def test_host_sums_live_workers_and_keeps_counts_of_exited_ones(host: HostMetrics, schema: Schema) -> None:
    regions = [host.region_for(schema) for _ in range(2)]
    workers = [WorkerMetrics(schema, os.dup(region.fd)) for region in regions]
    for pid, region in enumerate(regions, start=100):
        host.attach(pid, schema, region)
    for worker, count in zip(workers, (3, 4), strict=True):
        for _ in range(count):
            worker.recorder.request(0, "GET", 200, 0.001, 0.0005, 1, 2)
        worker.recorder.set(worker.connections_cell, 5)
    assert scrape(host)['gateway_requests_total{method=GET,route=r0,status_class=2xx}'] == 7
    assert scrape(host)["gateway_connections_open{}"] == 10
    host.detach(100)  # a worker exited: its counts stay, its gauges go
    host.detach(100)  # twice is harmless
    after = scrape(host)
    assert after['gateway_requests_total{method=GET,route=r0,status_class=2xx}'] == 7
    assert after['gateway_request_duration_seconds_count{route=r0}'] == 7
    assert after["gateway_connections_open{}"] == 5
    assert after["gateway_build_info{version=1.2.3}"] == 1
    for worker in workers:
        worker.region.close()


def test_host_reports_supervisor_counters_and_openmetrics(host: HostMetrics) -> None:
    host.worker_restarts = 2
    host.reloads["success"] += 1
    host.facts = lambda: {"workers": 4, "ready": 3, "generation": 1}
    found = scrape(host)
    assert found["gateway_worker_restarts_total{}"] == 2
    assert found["gateway_config_reloads_total{result=success}"] == 1
    assert found["gateway_workers{}"] == 4 and found["gateway_workers_ready{}"] == 3
    body, content_type = host.exposition("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


def test_region_checks_the_size_a_worker_expects(schema: Schema) -> None:
    region = Region(schema.size)
    with pytest.raises(ValueError, match="schema needs"):
        Region(schema.size + 1, os.dup(region.fd))
    region.close()
    region.close()  # idempotent on the descriptor


def test_the_gateways_own_endpoints_have_route_labels(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    from gateway.app import Gateway
    from gateway.loader import load

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))  # the issuer's host-local state goes there
    example = Path(__file__).resolve().parents[2] / "examples" / "jwt.yaml"
    config = load({}, {"config": str(example)})
    names = [v[0] for v in Schema.for_config(config).families["gateway_requests"].dims[0].values]
    assert names[-1] == UNMATCHED
    assert {"auth:token", "auth:jwks"} <= set(names)
    app = Gateway(config)
    try:
        assert names[app.unmatched] == UNMATCHED
        route, _, _ = app.table.match("localhost", "POST", "/auth/token")
        assert names[route.metric] == "auth:token"
    finally:
        app.close()
