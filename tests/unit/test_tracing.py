"""Tracing (gateway/observability/tracing.py): W3C Trace Context parsing, sampling, header rewriting, the
spans handed to the OpenTelemetry SDK, and the ``tracing:`` config section."""

from __future__ import annotations

import socket
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
from opentelemetry.trace import SpanKind, StatusCode

from gateway.cli import EXIT_CONFIG, main
from gateway.config import ConfigError
from gateway.exchange import Exchange
from gateway.loader import GatewayConfig, from_document, load
from gateway.observability import tracing
from gateway.observability.tracing import (
    DEFAULT_SAMPLE_RATIO,
    INSTALL_HINT,
    SDK_MODULES,
    Tracer,
    TracingSpec,
    extract,
    parse_traceparent,
    parse_tracestate,
    sampling_bound,
    start_tracer,
)

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"
VALID = f"00-{TRACE}-{PARENT}-01"


# -- traceparent ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    (VALID, (TRACE, PARENT, True)),
    (f"00-{TRACE}-{PARENT}-00", (TRACE, PARENT, False)),
    (f"00-{TRACE}-{PARENT}-09", (TRACE, PARENT, True)),       # unknown flags: only the sampled bit counts
    (f"00-{TRACE}-{PARENT}-fe", (TRACE, PARENT, False)),
    (f" \t{VALID}\t ", (TRACE, PARENT, True)),                 # optional whitespace around the value
    (f"01-{TRACE}-{PARENT}-01", (TRACE, PARENT, True)),       # a future version, same length
    (f"cc-{TRACE}-{PARENT}-01-what-the-future-will-be-like", (TRACE, PARENT, True)),
    (f"fe-{TRACE}-{PARENT}-00-", (TRACE, PARENT, False)),
], ids=["sampled", "unsampled", "other-flags-sampled", "other-flags-unsampled", "ows", "future-version",
        "future-version-longer", "future-version-trailing-dash"])
def test_valid_traceparent(value: str, expected: tuple[str, str, bool]) -> None:
    trace_id, parent_id, sampled = expected
    assert parse_traceparent(value.encode()) == (trace_id.encode(), parent_id.encode(), sampled)


@pytest.mark.parametrize("value", [
    "",
    "garbage",
    VALID[:-1],                                               # 54 characters
    f"00-{TRACE}-{PARENT}-01-what-the-future-will-be-like",   # version 00 has exactly 55
    f"00-{TRACE}-{PARENT}-01x",
    f"00-{TRACE}-{PARENT}-01 x",
    f"ff-{TRACE}-{PARENT}-01",                                # version ff is invalid
    f"cc-{TRACE}-{PARENT}-01.what-the-future-will-be-like",   # a longer future version needs a dash
    f"0A-{TRACE}-{PARENT}-01",                                # upper case anywhere is invalid
    f"00-{TRACE.upper()}-{PARENT}-01",
    f"00-{TRACE}-{PARENT.upper()}-01",
    f"00-{TRACE}-{PARENT}-0A",
    f"0g-{TRACE}-{PARENT}-01",
    f"00-{TRACE[:-1]}g-{PARENT}-01",
    f"00-{TRACE}-{PARENT[:-1]}g-01",
    f"00-{TRACE}-{PARENT}-0g",
    f"00-{'0' * 32}-{PARENT}-01",                             # all-zero trace id
    f"00-{TRACE}-{'0' * 16}-01",                              # all-zero parent id
    f"00_{TRACE}_{PARENT}_01",
    f"00-{TRACE[:-1]}-{PARENT}0-01",                          # a dash in the wrong place
    f"00-{TRACE[:10]}-{TRACE[11:]}-{PARENT}-01",              # a dash inside the trace id
    f"00-{TRACE}-{PARENT}-01".replace("-", " ", 1),
    f"00-{TRACE}-{PARENT}-1",
    f"00-{TRACE}-{PARENT}--1",
    f"cc-{TRACE}-{PARENT}",
    f"\x0000-{TRACE}-{PARENT}-01",
], ids=lambda v: repr(v)[:40])
def test_invalid_traceparent(value: str) -> None:
    assert parse_traceparent(value.encode("latin-1")) is None


# -- tracestate ----------------------------------------------------------------------------------------

KEY_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_-*/"
VALUE_CHARS = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in ",=").strip()


@pytest.mark.parametrize(("values", "expected"), [
    (["foo=1"], "foo=1"),
    (["foo=1", "bar=2"], "foo=1,bar=2"),                      # several headers combine
    (["foo=1 ,\tbar=2\t"], "foo=1,bar=2"),                     # whitespace around members
    (["foo=1,,bar=2"], "foo=1,bar=2"),                        # empty members are allowed
    (["foo=1", ""], "foo=1"),
    (["foo=a b"], "foo=a b"),                                 # a space inside a value
    (["tenant@system=1", "0t@s=2"], "tenant@system=1,0t@s=2"),
    ([f"{KEY_CHARS}={VALUE_CHARS}"], f"{KEY_CHARS}={VALUE_CHARS}"),   # every allowed character
    ([f"{KEY_CHARS}@z0_-*/=x"], f"{KEY_CHARS}@z0_-*/=x"),
    (["a" * 256 + "=1"], "a" * 256 + "=1"),                   # longest simple key
    (["t" * 241 + "@" + "s" * 14 + "=1"], "t" * 241 + "@" + "s" * 14 + "=1"),
    (["foo=" + "v" * 256], "foo=" + "v" * 256),                # longest value
    ([",".join(f"k{i}=v" for i in range(32))], ",".join(f"k{i}=v" for i in range(32))),
], ids=lambda v: repr(v)[:30])
def test_valid_tracestate(values: list[str], expected: str) -> None:
    assert parse_tracestate([v.encode() for v in values]) == expected.encode()


@pytest.mark.parametrize("values", [
    [""],
    [" , ,"],
    ["foo=1,foo=2"],                                          # duplicated keys
    ["foo=1", "foo=1"],
    ["FOO=1"],
    ["foo.bar=1"],
    ["foo =1"],
    ["0foo=1"],                                               # a simple key starts with a letter
    ["foo@=1,bar=2"],
    ["@foo=1,bar=2"],
    ["foo@@bar=1,bar=2"],
    ["foo@bar@baz=1,bar=2"],
    ["foo@0bar=1"],                                           # a system id starts with a letter
    ["a" * 257 + "=1"],
    ["t" * 242 + "@s=1"],
    ["t@" + "s" * 15 + "=1"],
    ["foo=bar=baz"],
    ["foo=,bar=3"],                                           # empty value
    ["foo=1\x7f"],
    ["foo=" + "v" * 257],
    ["foo"],
    [",".join(f"k{i}=v" for i in range(33))],                 # more than 32 members
    ["a" * 256 + "=" + "v" * 256],                            # one member of 513 bytes: nothing fits
], ids=lambda v: repr(v)[:30])
def test_invalid_tracestate(values: list[str]) -> None:
    assert parse_tracestate([v.encode("latin-1") for v in values]) is None


def test_long_tracestate_loses_large_members_first_then_the_last_ones() -> None:
    small = [f"s{i}=" + "x" * 40 for i in range(8)]           # 43 bytes each
    large = ["big=" + "y" * 200, "huge=" + "z" * 200]
    state = parse_tracestate([",".join([small[0], large[0], *small[1:4], large[1], *small[4:]]).encode()])
    assert state == ",".join(small).encode()                  # 8 x 43 + 7 = 351: the large ones were enough
    many = [f"k{i:02}=" + "v" * 27 for i in range(20)]        # 31 bytes each: 16 fit in 512 (16 x 32 - 1)
    state = parse_tracestate([",".join(many).encode()])
    assert state == ",".join(many[:16]).encode()
    assert state is not None and len(state) <= tracing.TRACESTATE_MAX_BYTES


# -- extraction and sampling ---------------------------------------------------------------------------

@pytest.mark.parametrize(("headers", "expected"), [
    ([], (None, None)),
    ([(b"traceparent", VALID.encode()), (b"tracestate", b"a=1")], ((TRACE.encode(), PARENT.encode(), True), b"a=1")),
    ([(b"tracestate", b"a=1"), (b"traceparent", VALID.encode()), (b"tracestate", b"b=2")],
     ((TRACE.encode(), PARENT.encode(), True), b"a=1,b=2")),
    ([(b"traceparent", VALID.encode())], ((TRACE.encode(), PARENT.encode(), True), None)),
    ([(b"traceparent", VALID.encode()), (b"tracestate", b"A=1")], ((TRACE.encode(), PARENT.encode(), True), None)),
    ([(b"traceparent", b"00-bad"), (b"tracestate", b"a=1")], (None, None)),       # tracestate goes with it
    ([(b"traceparent", VALID.encode()), (b"traceparent", VALID.encode())], (None, None)),  # duplicated
    ([(b"tracestate", b"a=1")], (None, None)),
], ids=["none", "both", "tracestate-split", "no-tracestate", "bad-tracestate", "bad-traceparent",
        "two-traceparents", "tracestate-alone"])
def test_extract(headers: list[tuple[bytes, bytes]], expected: Any) -> None:
    others = [(b"host", b"h"), (b"accept", b"*/*")]
    assert extract([others[0], *headers, others[1]]) == (*expected, others)


def test_sampling_bound() -> None:
    assert sampling_bound(0.0) == 0
    assert sampling_bound(1.0) == 1 << 64                     # every 64-bit value is below it
    assert sampling_bound(0.5) == 1 << 63


# -- the tracer on a request ---------------------------------------------------------------------------

class RouteStub:
    """What the tracer reads of a route: its name."""

    def __init__(self, name: str) -> None:
        self.name = name


class TargetStub:
    def __init__(self, url: str) -> None:
        self.url = url


def make_tracer(ratio: float = 1.0) -> tuple[Tracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    spec = TracingSpec("http://127.0.0.1:4318", service_name="edge", sample_ratio=ratio)
    return Tracer(spec, SimpleSpanProcessor(exporter)), exporter


def exchange(headers: list[tuple[bytes, bytes]], method: str = "GET", age: float = 0.0) -> Exchange:
    scope = {"type": "http", "method": method, "scheme": "http", "path": "/api/items/7", "query_string": b"k=secret",
             "headers": headers, "client": ("10.1.2.3", 5555)}
    ex = Exchange(scope, None, None, time.perf_counter() - age)  # type: ignore[arg-type]
    ex.request_id = "req-1"
    ex.host = "api.example.com"
    return ex


def outgoing(ex: Exchange) -> tuple[str, str, str, str]:
    """The traceparent the upstream will get, split: version, trace id, parent id, flags."""
    values = [v for n, v in ex.scope["headers"] if n == b"traceparent"]
    assert len(values) == 1
    version, trace_id, parent_id, flags = values[0].decode().split("-")
    return version, trace_id, parent_id, flags


def finish(ex: Exchange, span: Any, status: int, route: str | None = "items",
           target: str | None = "http://127.0.0.1:9001") -> None:
    ex.status = status
    ex.route = RouteStub(route) if route is not None else None
    ex.target = TargetStub(target) if target is not None else None
    span.end(ex)


def only_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    spans = exporter.get_finished_spans()
    assert len(spans) == 1
    return spans[0]


def test_sampled_parent_is_continued_and_recorded() -> None:
    tracer, exporter = make_tracer(ratio=0.0)                 # the caller's decision wins
    headers = [(b"host", b"api.example.com"), (b"traceparent", VALID.encode()), (b"tracestate", b"v=1,w=2"),
               (b"accept", b"*/*")]
    ex = exchange(headers, age=0.25)
    span = tracer.begin(ex)
    assert span is not None
    version, trace_id, span_id, flags = outgoing(ex)
    assert (version, trace_id, flags) == ("00", TRACE, "01")
    assert span_id != PARENT and int(span_id, 16) == span.span_id
    assert ex.scope["headers"][:2] == [(b"host", b"api.example.com"), (b"accept", b"*/*")]
    assert (b"tracestate", b"v=1,w=2") in ex.scope["headers"]
    finish(ex, span, 200)
    recorded = only_span(exporter)
    context = recorded.context
    assert context is not None and recorded.parent is not None
    assert (context.trace_id, context.span_id) == (int(TRACE, 16), int(span_id, 16))
    assert context.trace_flags.sampled and not context.is_remote
    assert context.trace_state.to_header() == "v=1,w=2"
    assert (recorded.parent.span_id, recorded.parent.is_remote) == (int(PARENT, 16), True)
    assert (recorded.name, recorded.kind) == ("GET items", SpanKind.SERVER)
    assert recorded.status.status_code == StatusCode.UNSET
    assert dict(recorded.attributes or {}) == {
        "http.request.method": "GET", "url.scheme": "http", "url.path": "/api/items/7",
        "server.address": "api.example.com", "gateway.request_id": "req-1", "client.address": "10.1.2.3",
        "http.response.status_code": 200, "gateway.upstream.target": "http://127.0.0.1:9001",
        "http.route": "items",
    }
    assert recorded.resource.attributes["service.name"] == "edge"
    assert recorded.instrumentation_scope is not None and recorded.instrumentation_scope.name == "gateway"
    assert recorded.start_time is not None and recorded.end_time is not None
    duration = (recorded.end_time - recorded.start_time) / 1e9
    assert 0.25 <= duration < 1.0                            # from the request's start, not from begin()
    assert abs(recorded.end_time - time.time_ns()) < 1e9


def test_unsampled_parent_is_continued_with_a_new_span_id_and_not_recorded() -> None:
    tracer, exporter = make_tracer(ratio=1.0)
    ex = exchange([(b"traceparent", f"00-{TRACE}-{PARENT}-00".encode())])
    assert tracer.begin(ex) is None
    version, trace_id, span_id, flags = outgoing(ex)
    assert (version, trace_id, flags) == ("00", TRACE, "00")
    assert span_id not in (PARENT, "0" * 16)
    assert exporter.get_finished_spans() == ()


def test_future_version_is_sent_on_as_version_00() -> None:
    tracer, _ = make_tracer()
    ex = exchange([(b"traceparent", f"cc-{TRACE}-{PARENT}-01-future".encode()), (b"tracestate", b"a=1")])
    assert tracer.begin(ex) is not None
    assert outgoing(ex)[:2] == ("00", TRACE)
    assert ex.scope["headers"][-1] == (b"tracestate", b"a=1")


@pytest.mark.parametrize("incoming", [
    [],
    [(b"traceparent", f"00-{'0' * 32}-{PARENT}-01".encode()), (b"tracestate", b"a=1")],
    [(b"traceparent", VALID.upper().encode())],
    [(b"traceparent", VALID.encode()), (b"traceparent", VALID.encode())],
    [(b"tracestate", b"a=1")],
], ids=["none", "zero-trace-id", "upper-case", "duplicated", "tracestate-alone"])
def test_missing_or_invalid_traceparent_starts_a_fresh_root(incoming: list[tuple[bytes, bytes]]) -> None:
    tracer, exporter = make_tracer(ratio=1.0)
    ex = exchange([(b"host", b"h"), *incoming])
    span = tracer.begin(ex)
    assert span is not None
    version, trace_id, _, flags = outgoing(ex)
    assert version == "00" and flags == "01" and trace_id not in (TRACE, "0" * 32)
    assert [n for n, _ in ex.scope["headers"]] == [b"host", b"traceparent"]   # the old tracestate is gone
    finish(ex, span, 200)
    recorded = only_span(exporter)
    assert recorded.parent is None
    assert recorded.context is not None and f"{recorded.context.trace_id:032x}" == trace_id


def test_ratio_zero_propagates_but_records_nothing() -> None:
    tracer, exporter = make_tracer(ratio=0.0)
    for _ in range(50):
        ex = exchange([])
        assert tracer.begin(ex) is None
        version, trace_id, span_id, flags = outgoing(ex)
        assert (version, flags) == ("00", "00") and int(trace_id, 16) and int(span_id, 16)
    assert exporter.get_finished_spans() == ()


def test_new_trace_sampling_agrees_with_opentelemetry_trace_id_ratio() -> None:
    tracer, _ = make_tracer(ratio=0.3)
    sdk = TraceIdRatioBased(0.3)
    decisions = []
    for _ in range(400):
        ex = exchange([])
        span = tracer.begin(ex)
        _, trace_id, _, flags = outgoing(ex)
        expected = sdk.should_sample(None, int(trace_id, 16), "x").decision.is_sampled()
        assert (flags == "01") == expected == (span is not None)
        decisions.append(expected)
    assert 40 < sum(decisions) < 200                          # about 120 of 400


def test_error_unmatched_and_unknown_method_spans() -> None:
    tracer, exporter = make_tracer()
    ex = exchange([])
    finish(ex, tracer.begin(ex), 503)
    ex = exchange([])
    finish(ex, tracer.begin(ex), 404, route=None, target=None)
    ex = exchange([], method="PURGE")
    ex.scope["client"] = None                                 # a unix socket has no client address
    finish(ex, tracer.begin(ex), 200)
    ex = exchange([])
    finish(ex, tracer.begin(ex), 0)                           # failed before any answer
    failed, unmatched, purge, unanswered = exporter.get_finished_spans()
    assert (failed.status.status_code, failed.attributes["error.type"]) == (StatusCode.ERROR, "503")  # type: ignore[index]
    assert unmatched.name == "GET" and unmatched.status.status_code == StatusCode.UNSET
    assert unmatched.attributes is not None and "http.route" not in unmatched.attributes
    assert "gateway.upstream.target" not in unmatched.attributes
    assert purge.name == "HTTP items" and purge.attributes is not None
    assert (purge.attributes["http.request.method"], purge.attributes["http.request.method_original"]) == (
        "_OTHER", "PURGE")
    assert "client.address" not in purge.attributes
    assert unanswered.status.status_code == StatusCode.ERROR and unanswered.attributes is not None
    assert "http.response.status_code" not in unanswered.attributes


def test_close_shuts_the_processor_down() -> None:
    tracer, exporter = make_tracer()
    ex = exchange([])
    finish(ex, tracer.begin(ex), 200)
    tracer.close()
    assert len(exporter.get_finished_spans()) == 1
    ex = exchange([])
    finish(ex, tracer.begin(ex), 200)                         # after shutdown: dropped, no error
    assert len(exporter.get_finished_spans()) == 1


def test_close_waits_at_most_the_timeout_for_a_silent_collector() -> None:
    with socket.socket() as silent:                           # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        spec = TracingSpec(f"http://127.0.0.1:{silent.getsockname()[1]}", sample_ratio=1.0, timeout=0.5)
        tracer = start_tracer(spec)
        assert isinstance(tracer.processor, BatchSpanProcessor)
        ex = exchange([])
        finish(ex, tracer.begin(ex), 200)
        started = time.monotonic()
        tracer.close()
        assert time.monotonic() - started < 3.0


# -- configuration -------------------------------------------------------------------------------------

BASE = """\
upstreams:
  api: http://127.0.0.1:9001
routes:
  - name: api
    prefix: /
    upstream: api
"""


def load_text(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> GatewayConfig:
    path = tmp_path / "gateway.yaml"
    path.write_text(BASE + textwrap.dedent(text), encoding="utf-8")
    return load(environ or {}, {"config": str(path)})


def failure(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    return info.value


def test_no_tracing_section_means_tracing_off(tmp_path: Path) -> None:
    assert load_text(tmp_path, "").tracing is None
    assert load_text(tmp_path, "tracing:\n").tracing is None
    assert "\ntracing:" not in load_text(tmp_path, "").summary()


def test_tracing_section(tmp_path: Path) -> None:
    config = load_text(tmp_path, """\
        tracing:
          endpoint: ${OTLP_ENDPOINT:-http://127.0.0.1:4318}
          service_name: edge
          sample_ratio: ${RATIO:-0.25}
          headers:
            authorization: Bearer ${TOKEN}
            x-tenant: 42
          timeout: 2s
        """, {"TOKEN": "s3cret-token", "OTLP_ENDPOINT": "https://user:pw@collector:4318/"})
    spec = config.tracing
    assert spec == TracingSpec("https://user:pw@collector:4318/", "edge", 0.25,
                               {"authorization": "Bearer s3cret-token", "x-tenant": "42"}, 2.0)
    assert spec.traces_url == "https://user:pw@collector:4318/v1/traces"
    summary = config.summary()
    assert "tracing: OTLP/HTTP https://collector:4318/v1/traces, service edge, sample_ratio 0.25" in summary
    for secret in ("s3cret", "Bearer", "pw@"):
        assert secret not in summary and secret not in repr(config)
    assert from_document(config.document).tracing == spec     # as a worker rebuilds it


def test_tracing_defaults(tmp_path: Path) -> None:
    spec = load_text(tmp_path, "tracing:\n  endpoint: http://127.0.0.1:4318/v1/traces\n").tracing
    assert spec == TracingSpec("http://127.0.0.1:4318/v1/traces", "gateway", DEFAULT_SAMPLE_RATIO, {}, 10.0)
    assert spec.traces_url == "http://127.0.0.1:4318/v1/traces"  # already a traces URL: used as is
    assert load_text(tmp_path, "tracing: {endpoint: 'http://h:1', sample_ratio: 1}\n").tracing.sample_ratio == 1.0  # type: ignore[union-attr]


@pytest.mark.parametrize(("section", "path", "message"), [
    ("tracing: [1]", "tracing", "expected a mapping"),
    ("tracing: {endpoint: 'http://h:1', bogus: 1}", "tracing.bogus", "unknown key; expected one of: endpoint"),
    ("tracing: {service_name: x}", "tracing.endpoint", "expected an OTLP/HTTP base URL"),
    ("tracing: {endpoint: 'ftp://h:1'}", "tracing.endpoint", "expected an http:// or https:// URL"),
    ("tracing: {endpoint: 'http://'}", "tracing.endpoint", "expected an http:// or https:// URL"),
    ("tracing: {endpoint: 'http://h:99999'}", "tracing.endpoint", "expected an http:// or https:// URL"),
    ("tracing: {endpoint: 'http://h:1/?q=1'}", "tracing.endpoint", "without query or fragment"),
    ("tracing: {endpoint: 'http://h:1', sample_ratio: 1.5}", "tracing.sample_ratio", "from 0 to 1"),
    ("tracing: {endpoint: 'http://h:1', sample_ratio: -0.1}", "tracing.sample_ratio", "from 0 to 1"),
    ("tracing: {endpoint: 'http://h:1', sample_ratio: 'half'}", "tracing.sample_ratio", "from 0 to 1"),
    ("tracing: {endpoint: 'http://h:1', sample_ratio: 'nan'}", "tracing.sample_ratio", "from 0 to 1"),
    ("tracing: {endpoint: 'http://h:1', sample_ratio: true}", "tracing.sample_ratio", "from 0 to 1"),
    ("tracing: {endpoint: 'http://h:1', service_name: ''}", "tracing.service_name", "non-empty string"),
    ("tracing: {endpoint: 'http://h:1', timeout: soon}", "tracing.timeout", "expected a duration"),
    ("tracing: {endpoint: 'http://h:1', headers: 'authorization=Bearer s3cret'}", "tracing.headers",
     "expected a mapping of header names"),
    ("tracing: {endpoint: 'http://h:1', headers: {'bad name': x}}", "tracing.headers.bad name", "header name"),
    ("tracing: {endpoint: 'http://h:1', headers: {authorization: \"s3cret\\nx\"}}", "tracing.headers.authorization",
     "expected a header value"),
    ("tracing: {endpoint: 'http://h:1', headers: {authorization: [s3cret]}}", "tracing.headers.authorization",
     "expected a header value"),
])
def test_tracing_errors(tmp_path: Path, section: str, path: str, message: str) -> None:
    error = failure(tmp_path, section + "\n")
    assert error.path == path
    assert message in error.message
    assert "s3cret" not in str(error)                         # a credential is never shown back


@pytest.fixture
def without_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if the optional extra were not installed: importing the SDK fails."""
    for module in SDK_MODULES:
        monkeypatch.setitem(sys.modules, module, None)


@pytest.mark.usefixtures("without_sdk")
def test_missing_sdk_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    error = failure(tmp_path, "tracing: {endpoint: 'http://h:1'}\n")
    assert (error.path, INSTALL_HINT) == ("tracing", "pip install gateway[tracing]")
    assert error.message.endswith(INSTALL_HINT)
    for command in ("check", "run"):
        assert main([command, "--config", str(tmp_path / "gateway.yaml")], environ={}) == EXIT_CONFIG
        err = capsys.readouterr().err
        assert err.startswith("gateway: invalid configuration: ") and "pip install gateway[tracing]" in err
    assert load_text(tmp_path, "").tracing is None            # without a tracing section the SDK is not needed
