"""Micro-benchmark of the tracing hooks (gateway/observability/tracing.py), CPU microseconds per request.

What it measures: ``Tracer.begin`` for a request that starts a new trace and is not sampled, and for one
that continues a caller's unsampled trace (the ``traceparent`` rewrite); ``begin`` + ``end`` of a
sampled span handed to a processor that discards it, and handed to the SDK's BatchSpanProcessor
(queueing only); and the OTLP protobuf encoding per span that the SDK's export thread pays. Needs the
``tracing`` extra. With tracing off none of this runs (two ``None`` checks per request).

    python -m bench.micro_tracing
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from gateway.exchange import Exchange

BASE = [(b"host", b"api.example.com"), (b"user-agent", b"bench"), (b"accept", b"*/*")]
UNSAMPLED_PARENT = (b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
SAMPLED_PARENT = (b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")


class _Route:
    name = "items"


class _Target:
    url = "http://127.0.0.1:9001"


class Discard:
    def on_end(self, span: Any) -> None:
        pass

    def shutdown(self) -> None:
        pass


def per_request_us(tracer: Any, headers: list[tuple[bytes, bytes]], n: int, end: bool = False) -> float:
    best = 1e9
    for _ in range(5):
        exchanges = []
        for _ in range(n):
            scope = {"method": "GET", "scheme": "http", "path": "/svc/items/42", "headers": list(headers),
                     "client": ("127.0.0.1", 5000)}
            ex = Exchange(scope, None, None, time.perf_counter())  # type: ignore[arg-type]
            ex.request_id, ex.host, ex.status = "0123456789abcdef0123456789abcdef", "api.example.com", 200
            ex.route, ex.target = _Route, _Target
            exchanges.append(ex)
        started = time.process_time()
        for ex in exchanges:
            span = tracer.begin(ex)
            if end and span is not None:
                span.end(ex)
        best = min(best, (time.process_time() - started) / n * 1e6)
    return round(best, 2)


def run(quick: bool = False) -> dict[str, Any]:
    try:
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    except ImportError:
        return {"skipped": "needs the tracing extra: pip install 'gateway[tracing]'"}
    from gateway.observability.tracing import Tracer, TracingSpec

    n = 5_000 if quick else 50_000
    unsampled = Tracer(TracingSpec("http://127.0.0.1:1", sample_ratio=0.0), Discard())
    sampled = Tracer(TracingSpec("http://127.0.0.1:1", sample_ratio=1.0), Discard())
    results: dict[str, Any] = {
        "unsampled_new_trace_us": per_request_us(unsampled, BASE, n),
        "unsampled_continued_trace_us": per_request_us(unsampled, [*BASE, UNSAMPLED_PARENT], n),
        "sampled_span_us": per_request_us(sampled, BASE, n, end=True),
        "sampled_continued_span_us": per_request_us(
            sampled, [*BASE, SAMPLED_PARENT, (b"tracestate", b"vendor=abc")], n, end=True),
    }

    class Collect(SpanExporter):
        def __init__(self) -> None:
            self.spans: list[Any] = []

        def export(self, spans: Any) -> SpanExportResult:
            self.spans.extend(spans)
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            pass

    collected = Collect()
    processor = BatchSpanProcessor(collected, max_queue_size=1_000_000, schedule_delay_millis=60_000,
                                   max_export_batch_size=1_000_000)
    queued = Tracer(TracingSpec("http://127.0.0.1:1", sample_ratio=1.0), processor)
    results["sampled_span_into_batch_processor_us"] = per_request_us(queued, BASE, n // 5, end=True)
    processor.force_flush()
    spans = collected.spans[:512]
    best = 1e9
    for _ in range(5):
        started = time.process_time()
        for _ in range(5):
            encode_spans(spans).SerializePartialToString()
        best = min(best, (time.process_time() - started) / (5 * len(spans)) * 1e6)
    results["otlp_encoding_per_span_us_export_thread"] = round(best, 2)
    processor.shutdown()
    return results


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
