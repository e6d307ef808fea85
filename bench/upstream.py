"""The built-in upstream of the bench suite: a small uvloop + httptools HTTP/1.1 server.

What it serves: ``GET /bytes/N`` streams N bytes (Content-Length, written with backpressure); a request
with a body (POST, PUT) has its body read and discarded and is answered ``{"received": N}``; anything else
gets the same small JSON body as the nginx upstream (``{"ok":true,"service":"upstream"}``). Keep-alive.
It is the upstream of the 100 MB body scenario, and of every scenario when nginx is not installed.

For the streams scenario (``bench.streams``):

- ``GET /ws`` with ``Upgrade: websocket``: a WebSocket echo server (``bench.websocket`` frames). Every data
  frame comes back unmasked, a ping gets its pong, a close its close. The reply to a frame is remembered per
  connection, so the bench client's identical frames cost one comparison and one write here, which keeps
  the load core free for the client (echoing is the same function of the input either way).
- ``GET /events/R``: a ``text/event-stream`` of R events per second, one chunk per event, until the client
  leaves. Each event is ``data: SEQ NS PAD`` (sequence number, ``time.monotonic_ns()`` when written,
  padding to 100 bytes), so the client can tell lost events and the delivery latency. Each stream starts at
  a random phase of its interval, so a thousand streams do not all write in the same millisecond.
- ``GET /events/end`` ends every event stream still open (the last chunk, then close) and answers
  ``{"ended": N}``. The suite calls it after each SSE run: the gateway app on stock uvicorn never learns
  that its client left (uvicorn drops an app's writes after a disconnect), so it would relay an endless
  stream until killed, and stopping it would wait out uvicorn's shutdown.

How to run: ``python -m bench.upstream --port 9100`` (the suite starts it pinned to the load core).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import time
from typing import cast

import httptools
import uvloop

from bench import websocket

SMALL = b'{"ok":true,"service":"upstream"}'
SMALL_RESPONSE = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                  % (len(SMALL), SMALL))
CHUNK = memoryview(bytes(256 * 1024))
BYTES_PATH = re.compile(rb"^/bytes/(\d+)")
EVENTS_PATH = re.compile(rb"^/events/(\d+)")
EVENTS_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
               b"transfer-encoding: chunked\r\n\r\n")
EVENT_BYTES = 100  # each event's ``data: ...\n\n`` text, padding included
TIMER_RESOLUTION = 0.001  # uvloop's timers and loop.time() step in milliseconds


class UpstreamProtocol(asyncio.Protocol):
    """One client connection; requests are answered in order (no pipelining while a stream runs)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.received = 0
        self.has_body = False
        self.websocket_key = b""
        self.writable = asyncio.Event()
        self.writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self.upgrade(data[upgrade.args[0]:])
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
        self.url, self.received, self.has_body, self.websocket_key = b"", 0, False, b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"sec-websocket-key":
            self.websocket_key = value

    def on_headers_complete(self) -> None:
        self.has_body = self.parser.get_method() in (b"POST", b"PUT", b"PATCH")

    def on_body(self, body: bytes) -> None:
        self.received += len(body)

    def on_message_complete(self) -> None:
        assert self.transport is not None
        if self.parser.should_upgrade():
            return  # answered by upgrade(), once feed_data hands over the bytes after the head
        keep_alive = self.parser.should_keep_alive()
        if self.url == b"/events/end":
            body = b'{"ended":%d}' % EventStream.end_all()
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                 b"content-length: %d\r\n\r\n%s" % (len(body), body))
            return
        events = EVENTS_PATH.match(self.url)
        if events and not self.has_body:
            self.transport.set_protocol(EventStream(self.transport, int(events.group(1))))
            return
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

    def upgrade(self, early: bytes) -> None:
        """A WebSocket handshake on ``/ws`` is accepted and the connection echoes from then on."""
        transport = self.transport
        assert transport is not None
        if self.url != b"/ws" or not self.websocket_key:
            transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            transport.close()
            return
        transport.write(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n"
                        b"sec-websocket-accept: %s\r\n\r\n" % websocket.accept(self.websocket_key))
        echo = EchoSocket(transport)
        transport.set_protocol(echo)
        if early:
            echo.data_received(early)

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


class EchoSocket(asyncio.Protocol):
    """A WebSocket connection after the handshake: data frames echoed, pings answered, close returned."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.buffer = b""
        self.last_frame = b""  # the last frame that came alone in one read, and its reply
        self.last_reply = b""

    def data_received(self, data: bytes) -> None:
        if data == self.last_frame and not self.buffer:
            self.transport.write(self.last_reply)
            return
        buffer = self.buffer + data
        replies = []
        while (frame := websocket.decode(buffer)) is not None:
            fin, opcode, payload, used = frame
            buffer = buffer[used:]
            if opcode == websocket.CLOSE:
                self.transport.write(websocket.encode(websocket.CLOSE, payload[:2]))
                self.transport.close()
                return
            reply = websocket.encode(websocket.PONG if opcode == websocket.PING else opcode, payload, fin=fin)
            if opcode != websocket.PONG:
                replies.append(reply)
        self.buffer = buffer
        if len(replies) == 1 and not buffer:
            self.last_frame, self.last_reply = data, replies[0]
        self.transport.write(b"".join(replies))


class EventStream(asyncio.Protocol):
    """A ``text/event-stream`` response of ``per_second`` events, one chunk each, until the client leaves
    or ``end_all`` ends it."""

    live: set[EventStream] = set()  # noqa: RUF012 - every open stream of this process, for end_all

    def __init__(self, transport: asyncio.Transport, per_second: int) -> None:
        self.live.add(self)
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        self.interval = 1 / max(1, per_second)
        self.sequence = 0
        self.due = self.loop.time() + random.random() * self.interval  # a phase, not a secret
        transport.write(EVENTS_HEAD)
        self.timer = self.loop.call_at(self.due, self.emit)

    def emit(self) -> None:
        """Writes every event now due (several if the loop fell behind), then waits for the next one.

        Due within the timer's resolution counts as due: the loop's timers and clock have millisecond steps,
        so a timer may fire just before its time, and waiting for the rest would spin the loop."""
        now, chunks = self.loop.time() + TIMER_RESOLUTION, []
        while self.due <= now:
            self.sequence += 1
            line = b"data: %d %d " % (self.sequence, time.monotonic_ns())
            event = line + b"x" * (EVENT_BYTES - len(line) - 2) + b"\n\n"
            chunks.append(b"%x\r\n%s\r\n" % (len(event), event))
            self.due += self.interval
        self.transport.write(b"".join(chunks))
        self.timer = self.loop.call_at(self.due, self.emit)

    def data_received(self, data: bytes) -> None:
        """Nothing is expected from the client while its stream runs; its EOF (the default) ends it."""

    def connection_lost(self, exc: Exception | None) -> None:
        self.timer.cancel()
        self.live.discard(self)

    @classmethod
    def end_all(cls) -> int:
        """Ends every open stream (the last chunk, then close); how many there were."""
        ended = list(cls.live)
        for stream in ended:
            stream.timer.cancel()
            stream.transport.write(b"0\r\n\r\n")
            stream.transport.close()
            cls.live.discard(stream)
        return len(ended)


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
