"""Host-wide shared segments and the admin app's endpoint registry."""

from __future__ import annotations

import os
from typing import Any

from gateway.admin.app import AdminApp
from gateway.server.shared import Segments, attach
from tests.unit.helpers import async_test


def test_segments_are_zeroed_shared_and_attached_by_name() -> None:
    segments = Segments({"buckets": 4096, "bans": 64})
    argument = segments.argument()
    # a worker gets duplicates of the supervisor's descriptors (pass_fds); dup stands in for that here
    for name, fd in segments.fds.items():
        argument = argument.replace(f"{name}={fd}", f"{name}={os.dup(fd)}")
    views = attach(argument)
    assert sorted(views) == ["bans", "buckets"]
    assert len(views["buckets"]) == 4096 and views["buckets"][:8] == bytes(8)
    views["buckets"][0:4] = b"\x01\x02\x03\x04"
    assert segments.maps["buckets"][0:4] == b"\x01\x02\x03\x04"  # the same memory
    for view in views.values():
        view.close()
    segments.close()
    assert attach(None) == {} and attach("") == {}


class FakeSupervisor:
    metrics: Any = None

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        return True, {"status": "ready"}


async def call(app: AdminApp, method: str, path: str) -> tuple[int, dict[bytes, bytes], bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": []}
    await app(scope, receive, send)  # type: ignore[arg-type]
    return sent[0]["status"], dict(sent[0]["headers"]), sent[1]["body"]


@async_test
async def test_admin_registry_exact_prefix_and_methods() -> None:
    app = AdminApp(FakeSupervisor())  # type: ignore[arg-type]
    seen: list[str] = []

    def handler(tag: str) -> Any:
        async def handle(scope: Any, receive: Any, send: Any) -> None:
            seen.append(f"{tag} {scope['path']}")
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
        return handle

    app.add("/things/", handler("short"), methods=("GET", "DELETE"), prefix=True)
    app.add("/things/special/", handler("long"), methods=("POST",), prefix=True)
    app.add("/rotate", handler("exact"), methods=("POST",))
    assert (await call(app, "DELETE", "/things/a"))[0] == 204
    assert (await call(app, "POST", "/things/special/b"))[0] == 204
    assert (await call(app, "POST", "/rotate"))[0] == 204
    status, headers, _ = await call(app, "GET", "/rotate")
    assert status == 405 and headers[b"allow"] == b"POST"
    assert (await call(app, "GET", "/nothing"))[0] == 404
    assert (await call(app, "GET", "/readyz"))[0] == 200
    assert seen == ["short /things/a", "long /things/special/b", "exact /rotate"]
