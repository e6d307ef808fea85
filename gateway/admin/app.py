"""The admin ASGI app, served by the supervisor on the admin port (default 127.0.0.1:9901).

``GET /healthz``: 200 while the supervisor is alive. ``GET /readyz``: 200 when every worker slot has a
serving worker, 503 while starting, draining, or while a slot's worker is down; the body lists workers.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from gateway._fast.protocol import Receive, Scope, Send, new_request_id
from gateway.errors import error_body


class Readiness(Protocol):
    def readiness(self) -> tuple[bool, dict[str, Any]]: ...


class AdminApp:
    """Routes admin requests; every answer is JSON."""

    def __init__(self, supervisor: Readiness) -> None:
        self.supervisor = supervisor

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path not in ("/healthz", "/readyz"):
            await respond(send, 404, error_body(404, "not_found", "no such admin endpoint", new_request_id()))
        elif method not in ("GET", "HEAD"):
            body = error_body(405, "method_not_allowed", "use GET", new_request_id())
            await respond(send, 405, body, ((b"allow", b"GET, HEAD"),))
        elif path == "/healthz":
            await respond(send, 200, orjson.dumps({"status": "alive"}))
        else:
            ready, detail = self.supervisor.readiness()
            await respond(send, 200 if ready else 503, orjson.dumps(detail))


async def respond(send: Send, status: int, body: bytes, extra: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
               (b"cache-control", b"no-store"), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
