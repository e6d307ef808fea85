"""Helpers shared by the token issuer's tests (unit and integration); no tests here.

- Redis: ``REDIS_URL`` (default redis://127.0.0.1:6379/0); each test uses its own key prefix and removes
  its keys afterwards. Without a Redis the tests that need one are skipped, or fail under CI (.ci/run
  starts one), as tests/tools.py does for programs;
- ``issuer_document``: a config document with the issuer, a consumer and routes;
- ``call``: one request through a ``Gateway`` app without sockets.
"""

from __future__ import annotations

import base64
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
import redis

from tests.tools import REQUIRED

SECRET = "demo-secret"
BASIC = b"Basic " + base64.b64encode(f"demo:{SECRET}".encode())
FORM = (b"content-type", b"application/x-www-form-urlencoded")


def redis_url() -> str:
    return os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"


def redis_answers(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def require_redis() -> str:
    url = redis_url()
    if not redis_answers(url):
        message = f"no Redis at {url} (set REDIS_URL, or apt-get install redis-server; .ci/run starts one)"
        if REQUIRED:
            pytest.fail(message)
        pytest.skip(message)
    return url


def drop_keys(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def redis_prefix() -> Iterator[tuple[str, str]]:
    """A Redis URL and a key prefix of this test's own; its keys are removed afterwards."""
    url = require_redis()
    prefix = f"test:auth:{uuid.uuid4().hex[:12]}:"
    yield url, prefix
    drop_keys(url, prefix)


def issuer_document(tmp: Path, routes: list[dict[str, Any]] | None = None, **auth: Any) -> dict[str, Any]:
    """A config document: the issuer (iss https://gw.test/, audience api), consumer demo, and routes."""
    section: dict[str, Any] = {
        "state_dir": str(tmp / "state"),
        "issuer": {"issuer": "https://gw.test/", "audience": "api"},
        "consumers": {"demo": {"secret": SECRET, "scope": "read write", "claims": {"role": "admin"}},
                      "keyed": {"api_key": "k" * 32, "subject": "svc"}},
    }
    section.update(auth)
    return {
        "source": str(tmp / "gateway.yaml"), "server": {"access_log": False},
        "auth": section,
        "upstreams": {"api": "http://127.0.0.1:9"},
        "routes": routes or [{"prefix": "/", "upstream": "api", "auth": {"forward": {"sub": "X-User-Id"}}}],
    }


class Answer:
    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def json(self) -> Any:
        return orjson.loads(self.body)


async def call(app: Any, method: str, path: str, headers: list[tuple[bytes, bytes]] | None = None,
               body: bytes = b"", *, chunks: list[bytes] | None = None) -> Answer:
    """One request through the app (``chunks``: the body in several messages)."""
    sent: list[dict[str, Any]] = []
    parts = chunks if chunks is not None else [body]
    messages = [{"type": "http.request", "body": part, "more_body": i < len(parts) - 1} for i, part in enumerate(parts)]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    raw, _, query = path.partition("?")
    scope = {"type": "http", "method": method, "raw_path": raw.encode(), "path": raw, "query_string": query.encode(),
             "headers": [(b"host", b"api.test"), *(headers or [])], "client": ("127.0.0.1", 5), "scheme": "http"}
    await app.http(scope, receive, send)
    return Answer(sent[0]["status"], sent[0]["headers"], b"".join(m.get("body", b"") for m in sent[1:]))


async def token(app: Any, form: bytes = b"grant_type=client_credentials", authorization: bytes = BASIC,
                extra: list[tuple[bytes, bytes]] | None = None) -> Answer:
    headers = [FORM, *(extra or [])]
    if authorization:
        headers.append((b"authorization", authorization))
    return await call(app, "POST", "/auth/token", headers, form)
