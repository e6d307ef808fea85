"""The built-in upstream of the bench suite: a small uvloop + httptools HTTP/1.1 server.

What it serves: ``GET /bytes/N`` streams N bytes (Content-Length, written with backpressure); a request
with a body (POST, PUT) has its body read and discarded and is answered ``{"received": N}``; anything else
gets the same small JSON body as the nginx upstream (``{"ok":true,"service":"upstream"}``). Keep-alive.
It is the upstream of the 100 MB body scenario, and of every scenario when nginx is not installed.

How to run: ``python -m bench.upstream --port 9100`` (the suite starts it pinned to the load core).
"""

from __future__ import annotations

import argparse
import asyncio
import re
from typing import cast

import httptools
import uvloop

SMALL = b'{"ok":true,"service":"upstream"}'
SMALL_RESPONSE = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                  % (len(SMALL), SMALL))
CHUNK = memoryview(bytes(256 * 1024))
BYTES_PATH = re.compile(rb"^/bytes/(\d+)")


class UpstreamProtocol(asyncio.Protocol):
    """One client connection; requests are answered in order (no pipelining while a stream runs)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.received = 0
        self.has_body = False
        self.writable = asyncio.Event()
        self.writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.writable.set()

    def on_message_begin(self) -> None:
        self.url, self.received, self.has_body = b"", 0, False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_headers_complete(self) -> None:
        self.has_body = self.parser.get_method() in (b"POST", b"PUT", b"PATCH")

    def on_body(self, body: bytes) -> None:
        self.received += len(body)

    def on_message_complete(self) -> None:
        assert self.transport is not None
        keep_alive = self.parser.should_keep_alive()
        match = BYTES_PATH.match(self.url)
        if match and not self.has_body:
            self.transport.pause_reading()
            asyncio.get_running_loop().create_task(self.stream(int(match.group(1)), keep_alive))
            return
        if self.has_body:
            body = b'{"received":%d}' % self.received
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                 b"content-length: %d\r\n\r\n%s" % (len(body), body))
        else:
            self.transport.write(SMALL_RESPONSE)
        if not keep_alive:
            self.transport.close()

    async def stream(self, size: int, keep_alive: bool) -> None:
        transport = self.transport
        assert transport is not None
        transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
                        b"content-length: %d\r\n\r\n" % size)
        while size > 0 and not transport.is_closing():
            piece = CHUNK[:min(size, len(CHUNK))]
            transport.write(piece)
            size -= len(piece)
            await self.writable.wait()
        if keep_alive and not transport.is_closing():
            transport.resume_reading()
        else:
            transport.close()


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(UpstreamProtocol, host, port, backlog=4096, reuse_address=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
