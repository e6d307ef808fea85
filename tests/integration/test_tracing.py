"""Tracing end to end: a real ``gateway run`` with a ``tracing:`` section, the test upstream, and a real
OTLP/HTTP receiver (a small HTTP server in the test that decodes the protobuf payload with the
opentelemetry-proto package, as an OpenTelemetry Collector would)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tests.integration.conftest import Gateway, run_cli, wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TOKEN = "otlp-test-token-5f2c"


def attributes(pairs: Any) -> dict[str, Any]:
    """OTLP key-values as a plain dict."""
    out = {}
    for pair in pairs:
        assert isinstance(pair, KeyValue)
        out[pair.key] = getattr(pair.value, pair.value.WhichOneof("value"))
    return out


class Received:
    """One span as the collector got it, with its resource's attributes."""

    def __init__(self, span: Span, resource: dict[str, Any], scope: str) -> None:
        self.span = span
        self.resource = resource
        self.scope = scope
        self.trace_id = span.trace_id.hex()
        self.span_id = span.span_id.hex()
        self.parent_id = span.parent_span_id.hex()
        self.attributes = attributes(span.attributes)


class OtlpReceiver:
    """POST /v1/traces on 127.0.0.1: decodes each ExportTraceServiceRequest and keeps its spans."""

    def __init__(self) -> None:
        self.spans: list[Received] = []
        self.posts: list[dict[str, str]] = []  # the headers of each export request
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver.add(dict(self.headers), request)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add(self, headers: dict[str, str], request: ExportTraceServiceRequest) -> None:
        with self.lock:
            self.posts.append({k.lower(): v for k, v in headers.items()})
            for resource_spans in request.resource_spans:
                resource = attributes(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append(Received(span, resource, scope_spans.scope.name))

    def trace(self, trace_id: str) -> list[Received]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def wait_for(self, trace_id: str, timeout: float = 15.0) -> Received:
        spans = wait_until(lambda: self.trace(trace_id), timeout)
        assert len(spans) == 1, f"one span per request, got {len(spans)}"
        return spans[0]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    server = OtlpReceiver()
    yield server
    server.close()


def config(upstream_port: int, receiver_port: int, ratio: float) -> str:
    return f"""\
upstreams:
  echo: http://127.0.0.1:{upstream_port}
routes:
  - name: echo
    prefix: /echo
    upstream: echo
  - name: status
    prefix: /status
    upstream: echo
tracing:
  endpoint: http://127.0.0.1:{receiver_port}
  service_name: ${{SERVICE:-edge-test}}
  sample_ratio: {ratio}
  headers:
    authorization: Bearer ${{OTLP_TOKEN}}
  timeout: 5s
"""


def upstream_trace_headers(gw: Gateway, path: str, headers: dict[str, str]) -> tuple[list[str], str | None, str]:
    """Sends a request; returns the traceparent the upstream saw (split), its tracestate and the request id."""
    resp = gw.get(path, headers=headers)
    assert resp.status == 200, resp.body
    seen = resp.json()["headers"]
    traceparents = [v for k, v in seen if k == "traceparent"]
    tracestates = [v for k, v in seen if k == "tracestate"]
    assert len(traceparents) == 1 and len(tracestates) <= 1
    return traceparents[0].split("-"), (tracestates[0] if tracestates else None), resp.headers["x-request-id"]


def test_spans_continue_or_start_traces_and_reach_the_collector(
    start_gateway: Callable[..., Gateway], upstream_port: int, receiver: OtlpReceiver
) -> None:
    env = {"OTLP_TOKEN": TOKEN, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    gw = start_gateway(config(upstream_port, receiver.port, 1.0), env=env)

    # A caller's sampled trace is continued: same trace id, the gateway's span as the upstream's parent.
    before = time.time_ns()
    (version, trace_id, parent_id, flags), tracestate, request_id = upstream_trace_headers(
        gw, "/echo/items?secret=1", {"traceparent": f"00-{TRACE}-{PARENT}-01", "tracestate": "vendor=abc,other=1",
                                     "x-request-id": "trace-it-1"})
    after = time.time_ns()
    assert (version, trace_id, flags) == ("00", TRACE, "01") and parent_id != PARENT
    assert tracestate == "vendor=abc,other=1"
    span = receiver.wait_for(TRACE)
    assert (span.span_id, span.parent_id) == (parent_id, PARENT)
    assert (span.span.name, span.span.kind) == ("GET echo", Span.SPAN_KIND_SERVER)
    assert span.span.trace_state == "vendor=abc,other=1"
    assert span.span.status.code == Status.STATUS_CODE_UNSET
    assert before <= span.span.start_time_unix_nano <= span.span.end_time_unix_nano <= after
    assert span.attributes == {
        "http.request.method": "GET", "url.scheme": "http", "url.path": "/echo/items", "server.address": "127.0.0.1",
        "gateway.request_id": request_id, "client.address": "127.0.0.1", "http.response.status_code": 200,
        "gateway.upstream.target": f"http://127.0.0.1:{upstream_port}", "http.route": "echo",
    }
    assert request_id == "trace-it-1"
    assert span.resource["service.name"] == "edge-test" and span.scope == "gateway"
    assert receiver.posts[0]["authorization"] == f"Bearer {TOKEN}"
    assert receiver.posts[0]["content-type"] == "application/x-protobuf"

    # No traceparent, or an invalid one: a fresh trace, rooted at the gateway; a stale tracestate is dropped.
    for incoming in ({}, {"traceparent": f"00-{'0' * 32}-{PARENT}-01", "tracestate": "vendor=abc"},
                     {"traceparent": f"00-{TRACE.upper()}-{PARENT}-01"}, {"traceparent": "garbage"}):
        (version, trace_id, parent_id, flags), tracestate, _ = upstream_trace_headers(gw, "/echo/fresh", incoming)
        assert (version, flags, tracestate) == ("00", "01", None)
        assert trace_id not in (TRACE, "0" * 32) and re.fullmatch("[0-9a-f]{32}", trace_id)
        span = receiver.wait_for(trace_id)
        assert (span.span_id, span.parent_id) == (parent_id, "")

    # Errors: a 503 from the upstream is an error span; an unmatched path has no route.
    resp = gw.get("/status?code=503", headers={"traceparent": f"00-{'1' * 32}-{PARENT}-01"})
    assert resp.status == 503
    span = receiver.wait_for("1" * 32)
    assert span.span.status.code == Status.STATUS_CODE_ERROR
    assert (span.attributes["http.response.status_code"], span.attributes["http.route"]) == (503, "status")
    assert gw.get("/nowhere", headers={"traceparent": f"00-{'2' * 32}-{PARENT}-01"}).status == 404
    span = receiver.wait_for("2" * 32)
    assert span.span.name == "GET" and "http.route" not in span.attributes
    assert span.attributes["http.response.status_code"] == 404

    gw.stop()
    logs = gw.stdout_path.read_text() + gw.stderr
    assert TOKEN not in logs                                   # the collector's credential is never logged


def test_ratio_zero_propagates_without_spans_and_a_draining_worker_exports_its_last_spans(
    start_gateway: Callable[..., Gateway], upstream_port: int, receiver: OtlpReceiver
) -> None:
    # Default batching (a 5 s delay): spans that arrive by the time the gateway has stopped were flushed
    # by the draining worker.
    env = {"OTLP_TOKEN": TOKEN, "SERVICE": "ratio-zero", "OTEL_BSP_SCHEDULE_DELAY": "5000"}
    gw = start_gateway(config(upstream_port, receiver.port, 0), env=env)
    (version, fresh_trace, parent_id, flags), _, _ = upstream_trace_headers(gw, "/echo/a", {})
    assert (version, flags) == ("00", "00") and int(fresh_trace, 16) and int(parent_id, 16)  # still propagated
    (_, trace_id, sampled_parent, flags), _, _ = upstream_trace_headers(
        gw, "/echo/b", {"traceparent": f"00-{TRACE}-{PARENT}-01"})
    assert (trace_id, flags) == (TRACE, "01")                # the caller sampled it: recorded whatever the ratio
    (_, trace_id, _, flags), _, _ = upstream_trace_headers(gw, "/echo/c", {"traceparent": f"00-{'3' * 32}-{PARENT}-00"})
    assert (trace_id, flags) == ("3" * 32, "00")
    assert receiver.trace(TRACE) == []                       # still batched in the worker
    assert gw.stop() == 0
    span = receiver.wait_for(TRACE, timeout=1.0)
    assert span.span_id == sampled_parent and span.resource["service.name"] == "ratio-zero"
    assert receiver.trace(fresh_trace) == [] and receiver.trace("3" * 32) == []
    assert len(receiver.spans) == 1


def test_example_config_checks() -> None:
    result = run_cli("check", "--config", str(ROOT / "examples" / "observability.yaml"),
                     env={"OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert result.returncode == 0, result.stderr
    assert "tracing: OTLP/HTTP http://127.0.0.1:4318/v1/traces" in result.stdout

