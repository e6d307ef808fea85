"""The admin ASGI app, served by the supervisor on the admin port (default 127.0.0.1:9901).

``GET /healthz``: 200 while the supervisor is alive. ``GET /readyz``: 200 when every worker slot has a
serving worker, 503 while starting, draining, or while a slot's worker is down; the body lists workers.
``GET /metrics``: the whole host's metrics, Prometheus text format (OpenMetrics when the Accept header asks).
``GET /dashboard``: a live HTML page over ``/metrics`` (gateway/admin/dashboard.py).
With an admin token set (``admin_token`` / ``admin_token_file``, read by gateway/admin/config_api.py), every
request other than GET and HEAD must carry it as ``Authorization: Bearer TOKEN``, whichever feature serves it.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson

from gateway._fast.protocol import Receive, Scope, Send, new_request_id
from gateway.admin import dashboard
from gateway.errors import error_body


class Exposition(Protocol):
    def exposition(self, accept: str) -> tuple[bytes, str]: ...


class Readiness(Protocol):
    @property
    def metrics(self) -> Exposition: ...

    def readiness(self) -> tuple[bool, dict[str, Any]]: ...


AdminHandler = Callable[[Scope, Receive, Send], Awaitable[None]]
READ_METHODS = ("GET", "HEAD")


class AdminApp:
    """Routes admin requests by exact path (or by prefix, for endpoints registered with ``prefix``).

    The built-in endpoints are health, readiness, metrics and the dashboard; features add their own with
    ``add`` when the supervisor starts (``register(admin, config)`` in their ``admin`` module, listed in
    ``gateway.admin.features``). Answers are JSON unless an endpoint says otherwise; errors use the
    gateway's JSON error body.
    """

    def __init__(self, supervisor: Readiness) -> None:
        self.supervisor = supervisor
        self.exact: dict[str, tuple[tuple[str, ...], AdminHandler]] = {}
        self.prefixes: list[tuple[str, tuple[str, ...], AdminHandler]] = []
        self.token: bytes | None = None  # admin bearer token for mutating requests (gateway.admin.config_api)
        self.add("/healthz", self.healthz)
        self.add("/readyz", self.readyz)
        self.add("/metrics", self.metrics)
        self.add("/dashboard", self.dashboard)

    def add(self, path: str, handler: AdminHandler, methods: tuple[str, ...] = READ_METHODS,
            prefix: bool = False) -> None:
        """Serves ``path`` (every path under it when ``prefix``) with ``handler`` for ``methods``."""
        if prefix:
            self.prefixes.append((path, methods, handler))
            self.prefixes.sort(key=lambda entry: -len(entry[0]))  # the longest prefix wins
        else:
            self.exact[path] = (methods, handler)

    def find(self, path: str) -> tuple[tuple[str, ...], AdminHandler] | None:
        found = self.exact.get(path)
        if found is not None:
            return found
        for start, methods, handler in self.prefixes:
            if path.startswith(start):
                return methods, handler
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        found = self.find(scope["path"])
        if found is None:
            await respond(send, 404, error_body(404, "not_found", "no such admin endpoint", new_request_id()))
            return
        methods, handler = found
        if scope["method"] not in methods:
            allow = ", ".join(methods)
            body = error_body(405, "method_not_allowed", f"use {allow}", new_request_id())
            await respond(send, 405, body, ((b"allow", allow.encode("ascii")),))
            return
        if scope["method"] not in READ_METHODS and not self.authorized(scope):
            body = error_body(401, "unauthorized", "send the admin token: Authorization: Bearer TOKEN",
                              new_request_id())
            await respond(send, 401, body, ((b"www-authenticate", b'Bearer realm="gateway-admin"'),))
            return
        await handler(scope, receive, send)

    def authorized(self, scope: Scope) -> bool:
        """True without a token; else the request must carry it as a bearer token (constant-time check)."""
        if self.token is None:
            return True
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, credentials = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), self.token)
        return False

    async def healthz(self, scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, 200, orjson.dumps({"status": "alive"}))

    async def readyz(self, scope: Scope, receive: Receive, send: Send) -> None:
        ready, detail = self.supervisor.readiness()
        await respond(send, 200 if ready else 503, orjson.dumps(detail))

    async def metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        accept = b""
        for name, value in scope["headers"]:
            if name == b"accept":
                accept = value
        body, content_type = self.supervisor.metrics.exposition(accept.decode("latin-1"))
        await respond(send, 200, body, content_type=content_type.encode("latin-1"))

    async def dashboard(self, scope: Scope, receive: Receive, send: Send) -> None:
        page, headers = dashboard.page()
        await respond(send, 200, page, headers, content_type=dashboard.CONTENT_TYPE)


async def respond(send: Send, status: int, body: bytes, extra: tuple[tuple[bytes, bytes], ...] = (),
                  content_type: bytes = b"application/json") -> None:
    headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body)),
               (b"cache-control", b"no-store"), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """An admin request's whole body, or None once it passes ``limit`` bytes (the caller answers 413)."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        body += message.get("body", b"")
        if len(body) > limit:
            return None
        if not message.get("more_body", False):
            break
    return bytes(body)
