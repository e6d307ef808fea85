"""etcd discovery: the targets of an upstream are the keys under a prefix (default
``/gateway/upstreams/<name>/targets/``), one key per target, the value a URL or ``{"url", "weight"}``.

Read through etcd's v3 JSON gateway (``POST /v3/kv/range``, then a streaming ``POST /v3/watch``; keys and
values are base64) with a small HTTP/1.1 client on asyncio streams and httptools, so no gRPC stack is
needed. The watch starts at the revision after the range's, so no change between the two is lost; after
a disconnect (etcd restarted, the connection dropped, the watch compacted or cancelled) the loop ranges
again and resumes watching from the new revision, trying the endpoints in turn with a back-off from
0.25 s up to 5 s; TCP keepalive ends a watch whose peer vanished without closing. While etcd cannot be
read the last good targets stay (logged once, counted). A key whose value is not a target is left out
and named in the source's error; no target at all under the prefix counts as a failed refresh (the last
good list stays).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httptools

from gateway.config import ConfigError, Node
from gateway.upstreams.discovery.config import EtcdSpec, Found, parse_entry
from gateway.upstreams.discovery.watcher import Watcher, backoff, logger

RECONNECT_FIRST = 0.25
RECONNECT_CAP = 5.0


class EtcdError(Exception):
    """etcd could not be read (connection, HTTP status, an error in the answer)."""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def prefix_end(prefix: bytes) -> bytes:
    """The first key after every key that starts with ``prefix`` (etcd's range_end for a prefix)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return b"\x00"  # every key
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


class _Response:
    """httptools callbacks: the status, and the body as it arrives."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.body = bytearray()
        self.headers_done = False
        self.complete = False

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


async def stream(endpoint: str, path: str, payload: dict[str, Any], seconds: float) -> AsyncIterator[bytes]:
    """POSTs ``payload`` as JSON; yields the response body as it arrives (connect and head within
    ``seconds``; the body may then take as long as it takes: a watch)."""
    parts = urlsplit(endpoint)
    host, port = parts.hostname or "127.0.0.1", parts.port or 2379
    body = json.dumps(payload).encode()
    request = (f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode("latin-1") + body
    response = _Response()
    async with asyncio.timeout(seconds):
        reader, writer = await asyncio.open_connection(host, port)
    keepalive(writer.get_extra_info("socket"))
    try:
        writer.write(request)
        async with asyncio.timeout(seconds):
            while not response.headers_done:
                await _feed(reader, response)
        if response.status != 200:
            async with asyncio.timeout(seconds):
                while not response.complete:
                    await _feed(reader, response)
            raise EtcdError(f"{endpoint}{path} answered HTTP {response.status}: {bytes(response.body)[:200]!r}")
        while True:
            if response.body:
                chunk, response.body = bytes(response.body), bytearray()
                yield chunk
            if response.complete:
                return
            await _feed(reader, response)
    finally:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), 1.0)


def keepalive(sock: socket.socket | None) -> None:
    """TCP keepalive probes, so a watch on a peer that vanished (no FIN, no RST) ends within about 30 s."""
    if sock is None:  # pragma: no cover - asyncio streams over TCP always have one
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", 15), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


async def _feed(reader: asyncio.StreamReader, response: _Response) -> None:
    data = await reader.read(65536)
    if not data:
        raise EtcdError("the connection closed")
    try:
        response.parser.feed_data(data)
    except httptools.HttpParserError as exc:
        raise EtcdError(f"a malformed HTTP response: {exc}") from None


async def call(endpoint: str, path: str, payload: dict[str, Any], seconds: float) -> dict[str, Any]:
    """A unary JSON gateway call: the decoded answer (raises EtcdError, OSError, TimeoutError)."""
    data = bytearray()
    async with asyncio.timeout(seconds):
        async for chunk in stream(endpoint, path, payload, seconds):
            data += chunk
    return _decode(bytes(data), endpoint)


def _decode(data: bytes, endpoint: str) -> dict[str, Any]:
    try:
        answer = json.loads(data)
    except ValueError:
        raise EtcdError(f"{endpoint} sent something that is not JSON: {data[:200]!r}") from None
    if not isinstance(answer, dict):
        raise EtcdError(f"{endpoint} sent {data[:200]!r}")
    return answer


def messages(buffer: bytearray) -> list[dict[str, Any]]:
    """The complete JSON objects at the start of ``buffer`` (removed from it); a partial one stays."""
    decoder = json.JSONDecoder()
    text = buffer.decode("utf-8", errors="replace")
    found, position = [], 0
    while True:
        while position < len(text) and text[position] in " \r\n\t":
            position += 1
        try:
            value, end = decoder.raw_decode(text, position)
        except ValueError:
            break
        found.append(value)
        position = end
    del buffer[:len(text[:position].encode("utf-8"))]
    return found


class EtcdWatcher(Watcher):
    spec: EtcdSpec

    kvs: dict[str, bytes]
    revision = 0
    skipped: str | None = None  # the keys left out last time (logged once per change)

    async def run(self) -> None:
        self.kvs = {}
        prefix = self.spec.prefix.encode()
        self.key_range = {"key": b64(prefix), "range_end": b64(prefix_end(prefix))}
        failures = 0
        while True:
            endpoint = self.spec.endpoints[failures % len(self.spec.endpoints)]
            try:
                await self.sync(endpoint)
                failures = 0
                await self.watch(endpoint)
                raise EtcdError("the watch ended")
            except (OSError, TimeoutError, EtcdError) as exc:
                failures += 1
                self.bad(f"{endpoint}: {exc or type(exc).__name__}")
            await asyncio.sleep(self.wait_after(backoff(failures, RECONNECT_FIRST, RECONNECT_CAP)))

    async def sync(self, endpoint: str) -> None:
        """Reads every key under the prefix and the store's revision."""
        answer = await call(endpoint, "/v3/kv/range", self.key_range, self.spec.timeout)
        if "header" not in answer:
            raise EtcdError(f"an unexpected answer to range: {json.dumps(answer)[:200]}")
        self.revision = int(answer["header"].get("revision", 0))
        self.kvs = {kv["key"]: base64.b64decode(kv.get("value", "")) for kv in answer.get("kvs", ())}
        self.report()

    async def watch(self, endpoint: str) -> None:
        """Follows changes from the revision after the last range until the stream ends."""
        create = {"create_request": {**self.key_range, "start_revision": str(self.revision + 1)}}
        buffer = bytearray()
        async for chunk in stream(endpoint, "/v3/watch", create, self.spec.timeout):
            buffer += chunk
            for message in messages(buffer):
                self.on_message(message)

    def on_message(self, message: dict[str, Any]) -> None:
        result = message.get("result")
        if not isinstance(result, dict):
            raise EtcdError(f"the watch failed: {json.dumps(message)[:200]}")
        if result.get("canceled") or int(result.get("compact_revision", 0) or 0):
            raise EtcdError(f"the watch was cancelled ({result.get('cancel_reason') or 'compacted'})")
        events = result.get("events") or ()
        for event in events:
            kv = event.get("kv", {})
            if event.get("type") == "DELETE":
                self.kvs.pop(kv.get("key", ""), None)
            else:
                self.kvs[kv.get("key", "")] = base64.b64decode(kv.get("value", ""))
        header = result.get("header") or {}
        self.revision = max(self.revision, int(header.get("revision", 0) or 0))
        if events:
            self.report()

    def report(self) -> None:
        """Turns the keys into targets: good when at least one is a target."""
        found: list[Found] = []
        errors: list[str] = []
        for key in sorted(self.kvs):
            name = base64.b64decode(key).decode("utf-8", errors="replace")
            try:
                found.append(parse_entry(Node(_value(self.kvs[key]), f"etcd {name}")))
            except ConfigError as exc:
                errors.append(str(exc))
        if not found:
            self.bad(f"no targets under {self.spec.prefix}" + (f" ({'; '.join(errors)})" if errors else ""))
            return
        self.good(tuple(found))
        if errors:  # the good keys are used; the bad ones are named here (and logged when they change)
            self.error = "; ".join(errors)
            if self.error != self.skipped:
                logger.warning("discovery: %s: keys left out: %s", self.label, self.error)
        self.skipped = self.error


def _value(raw: bytes) -> Any:
    """A key's value: JSON (a mapping or a string), else the text itself (a bare URL)."""
    text = raw.decode("utf-8", errors="replace").strip()
    if text.startswith(("{", '"')):
        with contextlib.suppress(ValueError):
            return json.loads(text)
    return text
