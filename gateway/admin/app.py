"""The admin ASGI app, served by the supervisor on the admin port (default 127.0.0.1:9901).

``GET /healthz``: 200 while the supervisor is alive. ``GET /readyz``: 200 when every worker slot has a
serving worker, 503 while starting, draining, or while a slot's worker is down; the body lists workers.
``GET /metrics``: the whole host's metrics, Prometheus text format (OpenMetrics when the Accept header asks).
``GET /dashboard``: a live HTML page over ``/metrics`` (gateway/admin/dashboard.py).
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from gateway._fast.protocol import Receive, Scope, Send, new_request_id
from gateway.admin import dashboard
from gateway.errors import error_body

ENDPOINTS = frozenset({"/healthz", "/readyz", "/metrics", "/dashboard"})


class Exposition(Protocol):
    def exposition(self, accept: str) -> tuple[bytes, str]: ...


class Readiness(Protocol):
    @property
    def metrics(self) -> Exposition: ...

    def readiness(self) -> tuple[bool, dict[str, Any]]: ...


class AdminApp:
    """Routes admin requests; every answer is JSON."""

    def __init__(self, supervisor: Readiness) -> None:
        self.supervisor = supervisor

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path not in ENDPOINTS:
            await respond(send, 404, error_body(404, "not_found", "no such admin endpoint", new_request_id()))
        elif method not in ("GET", "HEAD"):
            body = error_body(405, "method_not_allowed", "use GET", new_request_id())
            await respond(send, 405, body, ((b"allow", b"GET, HEAD"),))
        elif path == "/healthz":
            await respond(send, 200, orjson.dumps({"status": "alive"}))
        elif path == "/metrics":
            accept = b""
            for name, value in scope["headers"]:
                if name == b"accept":
                    accept = value
            body, content_type = self.supervisor.metrics.exposition(accept.decode("latin-1"))
            await respond(send, 200, body, content_type=content_type.encode("latin-1"))
        elif path == "/dashboard":
            page, headers = dashboard.page()
            await respond(send, 200, page, headers, content_type=dashboard.CONTENT_TYPE)
        else:
            ready, detail = self.supervisor.readiness()
            await respond(send, 200 if ready else 503, orjson.dumps(detail))


async def respond(send: Send, status: int, body: bytes, extra: tuple[tuple[bytes, bytes], ...] = (),
                  content_type: bytes = b"application/json") -> None:
    headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body)),
               (b"cache-control", b"no-store"), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
