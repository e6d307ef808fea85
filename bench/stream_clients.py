"""Load clients of the streams scenario: WebSocket ping-pong and SSE listeners, one uvloop process each.

What they measure:

- ``ws``: C connections (``--connections``) upgrade to WebSocket on ``/ws`` (the echo upstream of
  ``bench.upstream`` behind the proxy), then each keeps exactly one message of ``--bytes`` bytes in
  flight: send, wait for the echo, send again (closed loop, like wrk's connections). Messages per
  second and the round trip of each message (p50/p99/max).
- ``sse``: S streams (``--streams``) of ``GET /events/R`` (``--rate`` events per second each, from the
  upstream); events per second delivered, events lost (gaps in the sequence numbers), and delivery
  latency: receipt (``time.monotonic_ns()`` when the read returned) minus the upstream's write time carried
  in the event. CLOCK_MONOTONIC is one clock for every process of the machine, so the two compare.

Both print ``start`` when the measured window opens (after the connections are up and ``--warmup``
seconds of traffic), ``stop`` when it closes, then one JSON line: the suite charges the proxy's CPU
between the two lines to the messages or events of the window. ``client_cpu_share`` is the share of a
core this process used in the window: near 1.0 the client, not the proxy, is the limit.

Why so lean: the client shares the load core with the upstream, and the proxy must be the bottleneck. A
message is one pre-built masked frame written again (fixed mask and payload: the proxies tunnel bytes
and never look), and its echo is recognised by comparing the read with the expected frame, so the common
path costs one comparison, one clock read and one write. Reads that split or join frames take the slow
path (buffering), which is still exact.

How to run (the suite pins it to the load core): ``python -m bench.stream_clients ws --port 8080
--connections 64 --seconds 5`` or ``python -m bench.stream_clients sse --port 8080 --streams 200 --rate 50``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any, cast

import httptools
import uvloop

from bench import websocket

MASK = b"\x37\xfa\x21\x3d"
CONNECT_TIMEOUT = 10.0


class Window:
    """The measured window shared by every connection of a client: counts and latencies (seconds)."""

    def __init__(self) -> None:
        self.running = True  # connections keep sending while set
        self.measuring = False
        self.latencies: list[float] = []
        self.lost = 0  # SSE: events missing from the sequence, within the window
        self.connections_lost = 0
        self.failures: list[str] = []

    def fail(self, why: str) -> None:
        if len(self.failures) < 5:
            self.failures.append(why)


class EchoClient(asyncio.Protocol):
    """One WebSocket connection in ping-pong: the handshake, then one message in flight at a time."""

    def __init__(self, window: Window, size: int) -> None:
        self.window = window
        self.key = base64.b64encode(os.urandom(16))
        payload = bytes(i % 251 for i in range(size))
        self.frame = websocket.encode(websocket.BINARY, payload, MASK)
        self.expected = websocket.encode(websocket.BINARY, payload)
        self.transport: asyncio.Transport | None = None
        self.open: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.upgraded = False
        self.buffer = b""
        self.sent_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(b"GET /ws HTTP/1.1\r\nhost: bench\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
                             b"sec-websocket-key: %s\r\nsec-websocket-version: 13\r\n\r\n" % self.key)

    def data_received(self, data: bytes) -> None:
        if data == self.expected and self.upgraded and not self.buffer:  # the common case: one whole echo
            self.echoed(time.perf_counter())
            return
        self.buffer += data
        if not self.upgraded:
            self.handshake()
            if not self.upgraded:
                return
        size = len(self.expected)
        while len(self.buffer) >= size:
            if self.buffer[:size] != self.expected:
                self.window.fail(f"unexpected bytes instead of the echo: {self.buffer[:16]!r}")
                self.buffer = b""
                self.close()
                return
            self.buffer = self.buffer[size:]
            self.echoed(time.perf_counter())

    def echoed(self, now: float) -> None:
        window = self.window
        if window.measuring:
            window.latencies.append(now - self.sent_at)
        if window.running:
            self.send(now)

    def send(self, now: float) -> None:
        assert self.transport is not None
        self.sent_at = now
        self.transport.write(self.frame)

    def handshake(self) -> None:
        head, found, rest = self.buffer.partition(b"\r\n\r\n")
        if not found:
            return
        status = head.split(b"\r\n", 1)[0]
        if not status.startswith(b"HTTP/1.1 101") or websocket.accept(self.key) not in head:
            if not self.open.done():
                self.open.set_exception(RuntimeError(f"the WebSocket handshake failed: {status.decode()!r}"))
            self.close()
            return
        self.upgraded, self.buffer = True, rest
        if not self.open.done():
            self.open.set_result(None)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            if self.upgraded:
                self.transport.write(websocket.encode(websocket.CLOSE, b"\x03\xe8", MASK))
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.window.running:
            self.window.connections_lost += 1
        if not self.open.done():
            self.open.set_exception(ConnectionError(f"closed during the WebSocket handshake: {exc}"))


class EventClient(asyncio.Protocol):
    """One SSE stream: reads the chunked ``text/event-stream`` and records each event's delivery latency."""

    def __init__(self, window: Window, rate: int) -> None:
        self.window = window
        self.rate = rate
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.open: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.rest = b""
        self.sequence = 0
        self.now = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(b"GET /events/%d HTTP/1.1\r\nhost: bench\r\naccept: text/event-stream\r\n\r\n"
                             % self.rate)

    def data_received(self, data: bytes) -> None:
        self.now = time.monotonic_ns()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.failed(f"unreadable response: {exc}")

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status != 200:
            self.failed(f"status {status} instead of the event stream")
        elif not self.open.done():
            self.open.set_result(None)

    def on_body(self, body: bytes) -> None:
        events = (self.rest + body).split(b"\n\n")
        self.rest = events.pop()
        window, now = self.window, self.now
        for event in events:
            _, sequence, written, _ = event.split(b" ", 3)
            number = int(sequence)
            if window.measuring:
                window.latencies.append((now - int(written)) / 1e9)
                window.lost += number - self.sequence - 1
            self.sequence = number

    def on_message_complete(self) -> None:
        self.failed("the event stream ended")

    def failed(self, why: str) -> None:
        self.window.fail(why)
        if not self.open.done():
            self.open.set_exception(RuntimeError(why))
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.window.running:
            self.window.connections_lost += 1
        if not self.open.done():
            self.open.set_exception(ConnectionError(f"closed before the event stream started: {exc}"))


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


async def connect_all(port: int, count: int, factory: Callable[[], EchoClient | EventClient]
                      ) -> list[EchoClient | EventClient]:
    """``count`` connections, each open (upgraded, or its stream started) within the connect timeout."""
    loop = asyncio.get_running_loop()

    async def one() -> EchoClient | EventClient:
        _, conn = await loop.create_connection(factory, "127.0.0.1", port)
        await conn.open
        return conn

    return list(await asyncio.wait_for(asyncio.gather(*(one() for _ in range(count))), CONNECT_TIMEOUT))


async def measure(window: Window, warmup: float, seconds: float, begin: Callable[[], None] | None = None
                  ) -> dict[str, Any]:
    """Warm-up, then the window between the ``start`` and ``stop`` lines; its length and the client's CPU."""
    if begin is not None:
        begin()
    await asyncio.sleep(warmup)
    window.measuring = True
    announce("start")
    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.sleep(seconds)
    window.measuring = False
    elapsed = time.perf_counter() - started
    announce("stop")
    window.running = False
    return {"seconds": elapsed, "client_cpu_share": (time.process_time() - cpu) / elapsed}


def announce(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def latency_summary(window: Window) -> dict[str, Any]:
    latencies = sorted(window.latencies)
    return {"p50_ms": percentile(latencies, 0.50) * 1000, "p99_ms": percentile(latencies, 0.99) * 1000,
            "max_ms": (latencies[-1] if latencies else float("nan")) * 1000}


def errors(window: Window) -> str:
    found = list(window.failures)
    if window.connections_lost:
        found.append(f"{window.connections_lost} connections lost")
    return "; ".join(found)


async def ping_pong(port: int, connections: int, size: int, warmup: float, seconds: float) -> dict[str, Any]:
    window = Window()
    conns = cast(list[EchoClient], await connect_all(port, connections, lambda: EchoClient(window, size)))

    def begin() -> None:
        for conn in conns:
            conn.send(time.perf_counter())

    timing = await measure(window, warmup, seconds, begin)
    await asyncio.sleep(0.05)  # the last echoes in flight land (and are not counted)
    for conn in conns:
        conn.close()
    count = len(window.latencies)
    return {"connections": connections, "message_bytes": size, "messages": count,
            "messages_per_s": count / timing["seconds"], **latency_summary(window), **timing,
            "errors": errors(window)}


async def listen(port: int, streams: int, rate: int, warmup: float, seconds: float) -> dict[str, Any]:
    window = Window()
    conns = await connect_all(port, streams, lambda: EventClient(window, rate))
    timing = await measure(window, warmup, seconds)
    for conn in conns:
        assert conn.transport is not None
        conn.transport.close()
    count = len(window.latencies)
    found = errors(window)
    if window.lost:
        found = "; ".join(filter(None, [found, f"{window.lost} events lost"]))
    return {"streams": streams, "rate_per_stream": rate, "offered_per_s": streams * rate, "events": count,
            "events_per_s": count / timing["seconds"], "events_lost": window.lost, **latency_summary(window),
            **timing, "errors": found}


def run(work: Coroutine[Any, Any, dict[str, Any]]) -> int:
    """Prints the JSON line; a failure goes to stderr with exit status 1."""
    try:
        result = uvloop.run(work)
    except (OSError, RuntimeError, TimeoutError) as exc:
        print(f"stream client: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=("ws", "sse"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--connections", type=int, default=64, help="ws: concurrent connections")
    parser.add_argument("--bytes", type=int, default=32, help="ws: bytes per message")
    parser.add_argument("--streams", type=int, default=100, help="sse: concurrent streams")
    parser.add_argument("--rate", type=int, default=100, help="sse: events per second per stream")
    args = parser.parse_args(argv)
    if args.kind == "ws":
        return run(ping_pong(args.port, args.connections, args.bytes, args.warmup, args.seconds))
    return run(listen(args.port, args.streams, args.rate, args.warmup, args.seconds))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
