"""Fixed-rate latency client (wrk2-style): p50/p99 latency of a proxy offered a constant request rate.

What it measures: requests are due at a constant rate R (``--rate``) over C keep-alive connections
(``--connections``, one request in flight per connection, no pipelining). Every millisecond a timer sends
the requests that have fallen due on idle connections; a due request that finds no idle connection waits
in a queue and is sent as soon as a response frees one. Latency runs from the moment the request was due
and queued (not from when it was finally written), so a server that falls behind is charged for the
waiting it causes: the coordinated-omission correction wrk2 makes, to within the 1 ms timer.
Why not wrk: wrk has no rate control, and fewer connections would only lower the load by the server's own
latency. Against what: the suite offers the same rate (half of nginx's peak in the same run) to the gateway
and to nginx and compares their p99.

How to run: ``python -m bench.fixed_rate --port 8080 --rate 30000 --seconds 10`` prints one JSON line
(achieved rate, p50/p99/max in ms, the longest queue, and the share of a core the client itself
used: near 1.0 the client, not the server, is the limit). Needs a spare core: the suite
pins it to the load core.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from collections import deque
from typing import Any, cast

import httptools
import uvloop

REQUEST = b"GET / HTTP/1.1\r\nhost: bench\r\n\r\n"
TICK = 0.001


class Connection(asyncio.Protocol):
    """One keep-alive connection; tells the client when its response is complete."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.due = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        self.client.completed(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.lost += 1

    def send(self, due: float) -> None:
        assert self.transport is not None
        self.due = due
        self.transport.write(REQUEST)


class Client:
    """Schedules requests at ``rate`` per second and records each latency in seconds."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.idle: deque[Connection] = deque()
        self.queue: deque[float] = deque()
        self.latencies: list[float] = []
        self.sent = 0
        self.lost = 0
        self.started = 0.0
        self.max_queue = 0
        self.expected = -1
        self.drained = asyncio.Event()

    def expect(self, count: int) -> None:
        """No more requests after ``count``: ``drained`` is set once all their responses are in."""
        self.expected = count
        if len(self.latencies) >= count:
            self.drained.set()

    def tick(self) -> None:
        now = time.perf_counter()
        due = int((now - self.started) * self.rate) - self.sent
        self.sent += due
        for _ in range(due):
            if self.idle:
                self.idle.popleft().send(now)
            else:
                self.queue.append(now)
        self.max_queue = max(self.max_queue, len(self.queue))

    def completed(self, conn: Connection) -> None:
        self.latencies.append(time.perf_counter() - conn.due)
        if len(self.latencies) == self.expected:
            self.drained.set()
        if self.queue:
            conn.send(self.queue.popleft())
        else:
            self.idle.append(conn)


async def measure(port: int, rate: float, seconds: float, connections: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    client = Client(rate)
    for _ in range(connections):
        _, conn = await loop.create_connection(lambda: Connection(client), "127.0.0.1", port)
        client.idle.append(conn)
    client.started = time.perf_counter()
    cpu_before = time.process_time()
    end = client.started + seconds
    while time.perf_counter() < end:
        client.tick()
        await asyncio.sleep(TICK)
    busy = (time.process_time() - cpu_before) / seconds
    sent_in_time = client.sent
    client.expect(sent_in_time)
    with contextlib.suppress(TimeoutError):  # requests in flight finish, or are given up after 5 s
        await asyncio.wait_for(client.drained.wait(), 5.0)
    return summary(client, seconds, sent_in_time) | {"client_cpu_share": busy}


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


def summary(client: Client, seconds: float, sent: int) -> dict[str, Any]:
    latencies = sorted(client.latencies)
    return {
        "rate": client.rate, "seconds": seconds, "sent": sent, "completed": len(latencies),
        "achieved_rate": len(latencies) / seconds,
        "p50_ms": percentile(latencies, 0.50) * 1000, "p99_ms": percentile(latencies, 0.99) * 1000,
        "max_ms": (latencies[-1] if latencies else float("nan")) * 1000,
        "max_queue": client.max_queue, "connections_lost": client.lost,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    print(json.dumps(uvloop.run(measure(args.port, args.rate, args.seconds, args.connections))))


if __name__ == "__main__":
    main()
