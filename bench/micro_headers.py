"""Micro-benchmark of the proxy's header rules (gateway/_fast/headers), compiled against pure Python.

What it measures: nanoseconds per call of ``request_info`` (host and request id of a request),
``request_head`` (the upstream request head from a browser-like set of 10 headers) and
``response_headers`` (filtering a typical upstream response's headers).

    python -m bench.micro_headers
"""

from __future__ import annotations

import timeit
from typing import Any

from gateway._fast import implementations

REQUEST_HEADERS = [
    (b"host", b"api.example.com"), (b"user-agent", b"Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0"),
    (b"accept", b"application/json"), (b"accept-language", b"en-GB,en;q=0.5"),
    (b"accept-encoding", b"gzip, deflate, br"), (b"authorization", b"Bearer eyJhbGciOiJSUzI1NiJ9.e30.sig"),
    (b"connection", b"keep-alive"), (b"cookie", b"session=abc123; theme=dark"),
    (b"x-forwarded-for", b"203.0.113.7"), (b"content-length", b"42"),
]
RESPONSE_HEADERS = [
    (b"server", b"nginx"), (b"date", b"Thu, 26 Nov 2026 07:00:00 GMT"), (b"content-type", b"application/json"),
    (b"content-length", b"11"), (b"connection", b"keep-alive"), (b"cache-control", b"no-store"),
]


def per_call_ns(fn: Any, number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e9


def run(quick: bool = False) -> dict[str, Any]:
    number = 20_000 if quick else 200_000
    results: dict[str, Any] = {}
    for kind, mod in implementations("headers").items():
        results[kind] = {
            "request_info_ns": round(per_call_ns(lambda m=mod: m.request_info(REQUEST_HEADERS), number), 1),
            "request_head_ns": round(per_call_ns(lambda m=mod: m.request_head(
                b"GET", b"/svc/items/42?x=1", REQUEST_HEADERS, b"127.0.0.1", b"http", b"0123abcd", b"up:9000",
                False), number), 1),
            "response_headers_ns": round(per_call_ns(lambda m=mod: m.response_headers(RESPONSE_HEADERS), number), 1),
        }
    return results


if __name__ == "__main__":
    for kind, figures in run().items():
        print(kind, "  ".join(f"{name} {value:8.1f}" for name, value in figures.items()))
