"""Distributed tracing: W3C Trace Context in and out, one span per request, exported over OTLP/HTTP.

The request's path when tracing is on (``Gateway.http``):

    identify -> tracer.begin(ex) -> route -> the route's stages -> proxy -> ... -> span.end(ex)

``begin`` reads ``traceparent``/``tracestate`` (W3C Trace Context, https://www.w3.org/TR/trace-context/),
validated strictly: anything malformed starts a fresh trace, never an error to the client. It decides
sampling (parent-based: the caller's sampled flag wins; a trace the gateway starts is sampled with
``sample_ratio``, by the trace id as OpenTelemetry's ``TraceIdRatioBased`` does, so every service with
the same ratio agrees), gives the request a span id and rewrites the request's ``traceparent`` to carry
it, so the proxy stage forwards the gateway's span as the upstream's parent (``tracestate`` unchanged).
An unsampled request costs only that; a sampled one also gets a span at its end.

Why spans are handed to the SDK finished, and not made through its ``Tracer``: the SDK's
``start_span``/``end`` cost about 30 us per recorded span on this machine (context look-ups, a sampler
call, attribute validation under locks), more than the gateway's whole in-process path per request.
The gateway has already made every decision the Tracer would (ids, sampling, attributes of known
types), so it builds the ``ReadableSpan`` the Tracer would have built (start and end from the request's
own clock) and gives it to the ``BatchSpanProcessor``: about 5-8 us. Batching and the OTLP/HTTP
protobuf export are the SDK's, on its own thread, off the event loop.

The SDK is an optional extra (``pip install gateway[tracing]``): nothing here imports it until a
configuration has a ``tracing:`` section, and with tracing off the request path holds two ``None``
checks and nothing more.
"""

from __future__ import annotations

import importlib
import random
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from gateway.config import ConfigError, Node

if TYPE_CHECKING:
    from gateway._fast.protocol import Scope
    from gateway.exchange import Exchange

TRACING_KEYS = frozenset({"endpoint", "service_name", "sample_ratio", "headers", "timeout"})
INSTALL_HINT = "pip install gateway[tracing]"
SDK_MODULES = (  # what start_tracer imports; checked when the config is loaded
    "opentelemetry.sdk.resources",
    "opentelemetry.sdk.trace",
    "opentelemetry.sdk.trace.export",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
)
TRACES_PATH = "/v1/traces"
# A trace the gateway starts is sampled at this ratio unless configured. At 1.0 every request would pay
# for a span: about 8 us on the event loop, and about 55 us more for the SDK to encode it to protobuf on
# the export thread, which holds the GIL (measured: the in-process path cost 4x). Traces a caller has
# sampled are always recorded (parent-based), whatever the ratio.
DEFAULT_SAMPLE_RATIO = 0.01
DEFAULT_TIMEOUT = 10.0  # seconds; OpenTelemetry's default OTLP export timeout

# traceparent (version 00): version "-" trace-id "-" parent-id "-" trace-flags, lower-case hex
_TRACEPARENT_LENGTH = 55
_DASH = ord("-")
_HEX_AND_DASH = b"0123456789abcdef-"
_ODD_HEX = b"13579bdf"
_ZERO_TRACE_ID = b"0" * 32
_ZERO_PARENT_ID = b"0" * 16
# tracestate list member: key "=" value (W3C Trace Context, section 3.3.1)
_TRACESTATE_MEMBER = re.compile(
    rb"(?:[a-z][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13})"
    rb"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
)
TRACESTATE_MAX_MEMBERS = 32
TRACESTATE_MAX_BYTES = 512
_TRACESTATE_LARGE_MEMBER = 128  # removed first when the list must be shortened (section 3.3.1.5)
_OWS = b" \t"
_LOW_64 = (1 << 64) - 1
_random_bits = random.getrandbits  # ids as OpenTelemetry's RandomIdGenerator makes them
_HTTP_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_VALUE = re.compile(r"[^\x00-\x08\x0a-\x1f\x7f]*")
Headers = list[tuple[bytes, bytes]]
Parent = tuple[bytes, bytes, bool]  # trace-id hex, parent-id hex, sampled
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})


@dataclass(frozen=True, slots=True)
class TracingSpec:
    """The ``tracing:`` section: where spans go and how many traces the gateway starts are sampled."""

    endpoint: str = field(repr=False)  # OTLP/HTTP base URL (may hold user:password@); see traces_url
    service_name: str = "gateway"
    sample_ratio: float = DEFAULT_SAMPLE_RATIO
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)  # credentials: never shown
    timeout: float = DEFAULT_TIMEOUT

    @property
    def traces_url(self) -> str:
        """Where the exporter posts: the base URL plus /v1/traces (unless it already ends so)."""
        base = self.endpoint.rstrip("/")
        return base if base.endswith(TRACES_PATH) else base + TRACES_PATH

    def describe(self) -> str:
        """One line for ``gateway check``: no credentials (neither headers nor any user:password@)."""
        parts = urlsplit(self.traces_url)
        where = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
        headers = f", {len(self.headers)} export header(s)" if self.headers else ""
        return (f"OTLP/HTTP {where}, service {self.service_name}, sample_ratio {self.sample_ratio:g} "
                f"(parent-based){headers}")


def parse_tracing(node: Node) -> TracingSpec | None:
    """Reads the ``tracing:`` section (absent: tracing off); checks the SDK is installed."""
    if node.missing:
        return None
    node.mapping(TRACING_KEYS)
    spec = TracingSpec(
        endpoint=_endpoint(node.child("endpoint")),
        service_name=node.child("service_name").string("gateway"),
        sample_ratio=_ratio(node.child("sample_ratio")),
        headers=_export_headers(node.child("headers")),
        timeout=node.child("timeout").duration(DEFAULT_TIMEOUT),
    )
    require_sdk(node)
    return spec


def _endpoint(node: Node) -> str:
    text: str = node.required("an OTLP/HTTP base URL such as http://127.0.0.1:4318").string()
    try:
        parts = urlsplit(text.strip())
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        node.fail("an http:// or https:// URL such as http://127.0.0.1:4318")
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        node.fail("an http:// or https:// URL such as http://127.0.0.1:4318, without query or fragment")
    return text.strip()


def _ratio(node: Node) -> float:
    """A sampling ratio from 0 to 1; a string too, since ``${VAR:-0.1}`` interpolates to one."""
    value = node.value
    if value is None:
        return DEFAULT_SAMPLE_RATIO
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            node.fail("a sampling ratio from 0 to 1, such as 0.01")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        node.fail("a sampling ratio from 0 to 1, such as 0.01")
    return float(value)


def _export_headers(node: Node) -> dict[str, str]:
    """Headers for the collector (credentials): error messages name the key, never show a value."""
    if node.missing:
        return {}
    if not isinstance(node.value, Mapping):
        raise ConfigError(node.source, node.path, "expected a mapping of header names to values "
                          "(the value given is not shown: it may hold a credential)")
    headers = {}
    for name, given in node.value.items():
        where = f"{node.path}.{name}"
        if not isinstance(name, str) or not _HTTP_TOKEN.fullmatch(name):
            raise ConfigError(node.source, where, "expected an HTTP header name")
        numeric = isinstance(given, (int, float)) and not isinstance(given, bool)
        value = str(given) if numeric else given
        if not isinstance(value, str) or not _HEADER_VALUE.fullmatch(value):
            raise ConfigError(node.source, where, "expected a header value: a string without control "
                              "characters (the value given is not shown: it may hold a credential)")
        headers[name] = value
    return headers


def require_sdk(node: Node) -> None:
    """Fails the configuration (exit 2) when the optional OpenTelemetry packages are missing."""
    for module in SDK_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:
            raise ConfigError(node.source, node.path, f"tracing needs the OpenTelemetry SDK and its OTLP/HTTP "
                              f"exporter, which are not installed ({module}): {INSTALL_HINT}") from None


# -- W3C Trace Context --------------------------------------------------------------------------------


def parse_traceparent(value: bytes) -> Parent | None:
    """(trace-id hex, parent-id hex, sampled) of a valid ``traceparent``, else None.

    Version 00 is exactly 55 characters. A higher version (not ff) is parsed by the spec's rule for
    versions the parser does not know: its first 55 characters as version 00, followed by the end of
    the value or a dash. All-zero trace or parent ids are invalid. Optional whitespace is trimmed.
    (Checked with bytes methods: about 30% faster than the equivalent regex.)"""
    value = value.strip(_OWS)
    size = len(value)
    if size < _TRACEPARENT_LENGTH:
        return None
    head = value[:_TRACEPARENT_LENGTH] if size > _TRACEPARENT_LENGTH else value
    version = head[:2]
    if version == b"00":
        if size != _TRACEPARENT_LENGTH:
            return None
    elif version == b"ff" or (size > _TRACEPARENT_LENGTH and value[55] != _DASH):
        return None
    # version-trace_id-parent_id-flags: dashes exactly at 2, 35 and 52, lower-case hex everywhere else
    if head[2] != _DASH or head[35] != _DASH or head[52] != _DASH or head.count(b"-") != 3 \
            or head.translate(None, _HEX_AND_DASH):
        return None
    trace_id = head[3:35]
    parent_id = head[36:52]
    if trace_id == _ZERO_TRACE_ID or parent_id == _ZERO_PARENT_ID:
        return None
    return trace_id, parent_id, head[54] in _ODD_HEX  # the flags' low bit: sampled


def parse_tracestate(values: list[bytes]) -> bytes | None:
    """The ``tracestate`` to pass on (its headers combined), or None when absent or invalid.

    Invalid (the whole header is dropped): a malformed member, a repeated key, more than 32 members.
    Empty members and whitespace around members are allowed and left out. Longer than 512 bytes: members
    over 128 bytes are removed first, then members from the end, until it fits (section 3.3.1.5)."""
    members = []
    keys = set()
    for value in values:
        for member in value.split(b","):
            member = member.strip(_OWS)  # noqa: PLW2901 - the trimmed member replaces the raw one
            if not member:
                continue
            if _TRACESTATE_MEMBER.fullmatch(member) is None:
                return None
            key = member.partition(b"=")[0]
            if key in keys:
                return None
            keys.add(key)
            members.append(member)
    if not members or len(members) > TRACESTATE_MAX_MEMBERS:
        return None
    joined = b",".join(members)
    if len(joined) <= TRACESTATE_MAX_BYTES:
        return joined
    kept = _shorten(members, len(joined))
    return b",".join(kept) if kept else None


def _shorten(members: list[bytes], size: int) -> list[bytes]:
    """Members that fit TRACESTATE_MAX_BYTES once joined: large ones go first, then from the end."""
    for index in reversed(range(len(members))):
        if size <= TRACESTATE_MAX_BYTES:
            return members
        if len(members[index]) > _TRACESTATE_LARGE_MEMBER:
            size -= len(members[index]) + 1
            del members[index]
    while size > TRACESTATE_MAX_BYTES:
        size -= len(members.pop()) + 1
    return members


def extract(headers: Headers) -> tuple[Parent | None, bytes | None, Headers]:
    """The incoming parent (None: start a fresh trace), the tracestate to pass on with it, and the other
    headers (one pass over them).

    More than one ``traceparent`` is invalid; ``tracestate`` is read only with a valid parent, since it
    belongs to that trace."""
    kept = []
    traceparents = []
    tracestates = []
    for header in headers:
        name = header[0]
        if name == b"traceparent":
            traceparents.append(header[1])
        elif name == b"tracestate":
            tracestates.append(header[1])
        else:
            kept.append(header)
    parent = parse_traceparent(traceparents[0]) if len(traceparents) == 1 else None
    if parent is None or not tracestates:
        return parent, None, kept
    return parent, parse_tracestate(tracestates), kept


def sampling_bound(ratio: float) -> int:
    """The bound under which a trace id's low 64 bits are sampled (OpenTelemetry's TraceIdRatioBased)."""
    return round(ratio * (1 << 64))


def traceparent(trace_id: bytes, span_id: int, sampled: bool) -> bytes:
    """The version-00 ``traceparent`` value for the upstream: the gateway's span is its parent."""
    return b"00-%s-%016x-%s" % (trace_id, span_id, b"01" if sampled else b"00")


# -- spans ---------------------------------------------------------------------------------------------


class RequestSpan:
    """A sampled request's span between ``Tracer.begin`` and ``end`` (unsampled requests get none)."""

    __slots__ = ("parent_id", "span_id", "trace_id", "tracer", "tracestate")

    def __init__(self, tracer: Tracer, trace_id: int, span_id: int, parent_id: int, tracestate: bytes | None) -> None:
        self.tracer = tracer
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id  # 0: the gateway started this trace
        self.tracestate = tracestate

    def end(self, ex: Exchange) -> None:
        """Records the span with the request's final route, status and upstream target."""
        self.tracer.record(self, ex, time.time_ns(), time.perf_counter())


class Tracer:
    """One per worker: continues or starts each request's trace and hands sampled spans to ``processor``.

    ``processor`` is an OpenTelemetry span processor (``start_tracer`` gives a BatchSpanProcessor with
    the OTLP/HTTP exporter; tests pass another)."""

    def __init__(self, spec: TracingSpec, processor: Any) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

        from gateway import __version__

        self.spec = spec
        self.processor = processor
        self.bound = sampling_bound(spec.sample_ratio)
        self.resource = Resource.create({"service.name": spec.service_name, "service.version": __version__})
        self.scope = InstrumentationScope("gateway", __version__)
        self.readable_span = ReadableSpan
        self.span_context = SpanContext
        self.trace_state = TraceState
        self.server = SpanKind.SERVER
        self.sampled = TraceFlags(TraceFlags.SAMPLED)
        self.error = Status(StatusCode.ERROR)
        self.unset = Status(StatusCode.UNSET)

    def begin(self, ex: Exchange) -> RequestSpan | None:
        """Continues the caller's trace or starts one; sets the upstream's ``traceparent``.

        Returns the request's span when it is sampled, else None (nothing more to do for it)."""
        headers: Headers = ex.scope["headers"]
        for name, _ in headers:
            if name == b"traceparent" or name == b"tracestate":  # noqa: PLR1714 - bytes compare, no set
                return self.continue_trace(ex.scope, headers)
        return self.start_trace(headers)

    def start_trace(self, headers: Headers) -> RequestSpan | None:
        """A new trace rooted at the gateway, sampled at ``sample_ratio`` by its trace id."""
        trace_id = _random_bits(128) or 1
        span_id = _random_bits(64) or 1
        if (trace_id & _LOW_64) < self.bound:
            headers.append((b"traceparent", b"00-%032x-%016x-01" % (trace_id, span_id)))
            return RequestSpan(self, trace_id, span_id, 0, None)
        headers.append((b"traceparent", b"00-%032x-%016x-00" % (trace_id, span_id)))
        return None

    def continue_trace(self, scope: Scope, headers: Headers) -> RequestSpan | None:
        """The request carries trace headers: they are replaced by the gateway's (a fresh trace when the
        caller's ``traceparent`` is invalid); the caller's sampled flag decides."""
        parent, tracestate, headers = extract(headers)
        scope["headers"] = headers
        if parent is None:
            return self.start_trace(headers)
        trace_hex, parent_hex, sampled = parent
        span_id = _random_bits(64) or 1
        headers.append((b"traceparent", traceparent(trace_hex, span_id, sampled)))
        if tracestate is not None:
            headers.append((b"tracestate", tracestate))
        if not sampled:
            return None
        return RequestSpan(self, int(trace_hex, 16), span_id, int(parent_hex, 16), tracestate)

    def record(self, span: RequestSpan, ex: Exchange, now_ns: int, now: float) -> None:
        """Builds the finished span (start and end from the request's own monotonic clock) and queues it."""
        end_ns = now_ns
        start_ns = end_ns - int((now - ex.started_at) * 1e9)
        scope = ex.scope
        method: str = scope["method"]
        route = ex.route
        status = ex.status
        attributes: dict[str, Any] = {
            "http.request.method": method if method in KNOWN_METHODS else "_OTHER",
            "url.scheme": scope["scheme"],
            "url.path": scope["path"],  # never the query string: it may carry credentials
            "server.address": ex.host,
            "gateway.request_id": ex.request_id,
        }
        if method not in KNOWN_METHODS:
            attributes["http.request.method_original"] = method
        client = scope.get("client")
        if client:
            attributes["client.address"] = client[0]
        if status:
            attributes["http.response.status_code"] = status
        if ex.target is not None:
            attributes["gateway.upstream.target"] = ex.target.url
        verb = method if method in KNOWN_METHODS else "HTTP"
        if route is not None:
            attributes["http.route"] = route.name
            name = f"{verb} {route.name}"
        else:
            name = verb
        if status >= 500 or not status:  # no status: the gateway failed before it could answer
            attributes["error.type"] = str(status) if status else "_OTHER"
        trace_state = None
        if span.tracestate is not None:
            members = span.tracestate.decode("ascii").split(",")  # validated by parse_tracestate
            trace_state = self.trace_state([member.partition("=")[::2] for member in members])
        context = self.span_context(span.trace_id, span.span_id, False, self.sampled, trace_state)
        parent = self.span_context(span.trace_id, span.parent_id, True, self.sampled) if span.parent_id else None
        self.processor.on_end(self.readable_span(
            name, context, parent, self.resource, attributes, kind=self.server,
            status=self.error if status >= 500 or not status else self.unset,
            start_time=start_ns, end_time=end_ns, instrumentation_scope=self.scope,
        ))

    def close(self) -> None:
        """Exports the spans still queued (a draining worker's last ones), waiting at most ``timeout``:
        a collector that does not answer must not keep the worker from exiting."""
        stopper = threading.Thread(target=self.processor.shutdown, name="gateway-tracing-close", daemon=True)
        stopper.start()
        stopper.join(self.spec.timeout)


def start_tracer(spec: TracingSpec) -> Tracer:
    """The worker's tracer: spans batched by the SDK's BatchSpanProcessor (its own thread) and posted
    to ``spec.traces_url`` as OTLP/HTTP protobuf. ``OTEL_BSP_*`` environment variables tune the batching."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporter = OTLPSpanExporter(endpoint=spec.traces_url, headers=dict(spec.headers), timeout=spec.timeout)
    return Tracer(spec, BatchSpanProcessor(exporter))
