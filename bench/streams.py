"""Scenario 5 of ``python -m bench``: WebSocket echo and SSE streams through each proxy.

What it measures, per proxy, in alternating rounds like the other scenarios (``scenarios.round_robin``):

- WebSocket echo: ``WS_CONNECTIONS`` connections upgrade through the proxy to the built-in upstream's echo
  server (``bench.upstream``, ``GET /ws``); each keeps one ``WS_BYTES``-byte message in flight (ping-pong)
  for the run's duration. Messages per second, p50/p99 round trip, the proxy's CPU µs per message and its
  peak RSS.
- SSE: ``SSE_STREAMS`` streams of ``GET /events/SSE_RATE`` (``text/event-stream``, chunked, one 100-byte
  event per chunk) at a fixed rate; events per second delivered (against the rate offered), events lost,
  delivery latency (receipt minus the upstream's write time carried in the event) and the proxy's CPU µs
  per event.

Against what: nginx (WebSocket with ``proxy_set_header Upgrade``/``Connection "upgrade"``, SSE with
``proxy_buffering off``: ``proxies.NGINX_REALTIME``), and for SSE the gateway's app on stock uvicorn.
That peer cannot tunnel: uvicorn takes an upgrade itself and hands the app a ``websocket`` scope, which the
gateway's app does not serve (the handshake gets a 500), so it has no WebSocket figures; FastAPI + httpx
reads whole bodies and would never deliver an endless stream, so it has neither.

How: the load clients (``bench.stream_clients``) run as one process pinned to the load core, beside the
upstream; they print ``start``/``stop`` around the measured window (after the warm-up), and the proxy's CPU
(utime + stime of its process tree) is charged between the two lines. The client's own share of its core
and the upstream's are in each row: near 1.0 together, the load core rather than the proxy is the limit,
and the proxy's figure is a lower bound. How to run: ``python -m bench --scenario streams``
(``--quick``: 1 round of 2 s).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench import procs
from bench.proxies import Proxy, Running, Setup
from bench.scenarios import Context, Row, round_robin, with_proxy

WS_CONNECTIONS = 64
WS_BYTES = 32
SSE_STREAMS = 500
SSE_RATE = 40  # events per second per stream: SSE_STREAMS * SSE_RATE offered in all
FAILURES = (RuntimeError, OSError, ValueError, subprocess.SubprocessError)


@dataclass(frozen=True)
class Upstream:
    """The built-in upstream serving ``/ws`` and ``/events/R``: where it listens, its pid (for its CPU)."""

    port: int
    pid: int


def websocket(ctx: Context, proxies: Sequence[Proxy], upstream: Upstream) -> dict[str, dict[str, Any]]:
    """Ping-pong figures of each proxy."""
    args = ["ws", "--connections", str(WS_CONNECTIONS), "--bytes", str(WS_BYTES)]
    return round_robin(proxies, ctx.rounds, lambda proxy: measure(ctx, proxy, upstream, args, "message"),
                       "websocket")


def sse(ctx: Context, proxies: Sequence[Proxy], upstream: Upstream) -> dict[str, dict[str, Any]]:
    """Event-stream figures of each proxy."""
    args = ["sse", "--streams", str(SSE_STREAMS), "--rate", str(SSE_RATE)]
    return round_robin(proxies, ctx.rounds, lambda proxy: measure(ctx, proxy, upstream, args, "event"), "sse")


def measure(ctx: Context, proxy: Proxy, upstream: Upstream, args: list[str], unit: str) -> Row:
    """One client run through ``proxy``; a proxy or client that fails gives a row with only its error, so
    the other proxies are still measured."""
    setup = Setup(upstream.port, ctx.work, ctx.proxy_core, realtime=True)
    try:
        return with_proxy(proxy, setup, lambda running: drive(ctx, running, upstream, args, unit))
    except FAILURES as exc:
        return {"errors": f"failed: {exc}"}


def drive(ctx: Context, running: Running, upstream: Upstream, args: list[str], unit: str) -> Row:
    """Runs the client against ``running``; its figures plus the proxy's CPU per ``unit`` (message or
    event: the client counts ``messages`` or ``events``) and peak RSS, and the upstream's share of the load
    core, over the client's measured window."""
    argv = ["taskset", "-c", str(ctx.load_core), *procs.python(
        "bench.stream_clients", *args, "--port", str(running.port), "--warmup", str(ctx.warmup),
        "--seconds", str(ctx.seconds))]
    client = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        expect(client, "start")
        proxy_cpu, upstream_cpu = procs.cpu_snapshot(running.tree()), procs.cpu_snapshot([upstream.pid])
        started = time.monotonic()
        expect(client, "stop")
        spent, elapsed = procs.cpu_seconds_since(proxy_cpu), time.monotonic() - started
        upstream_share = procs.cpu_seconds_since(upstream_cpu) / elapsed
        out, err = client.communicate(timeout=60)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
        end_streams(upstream)
    if client.returncode:
        raise RuntimeError(f"the {args[0]} client exited with {client.returncode}: {err.strip()}")
    row: Row = json.loads(out)
    row[f"cpu_us_per_{unit}"] = spent / max(1, row[f"{unit}s"]) * 1e6
    return row | {"upstream_cpu_share": upstream_share, "peak_rss_mib": running.peak_rss_mib()}


def end_streams(upstream: Upstream) -> None:
    """Ends the event streams the upstream still serves: a proxy that missed its client's departure (the
    gateway app on stock uvicorn) would otherwise relay them until stopped, and stop slowly."""
    with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{upstream.port}/events/end",
                                                              timeout=5) as answer:
        answer.read()


def expect(client: subprocess.Popen[str], line: str) -> None:
    """Reads the client's next line, which must be ``line``; else its error output becomes the error."""
    assert client.stdout is not None
    got = client.stdout.readline().strip()
    if got != line:
        _, err = client.communicate(timeout=10)
        raise RuntimeError(f"the stream client said {got!r}, not {line!r}: {err.strip() or 'no error output'}")
