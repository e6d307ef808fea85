"""CPU cost of one proxied request inside the gateway, without sockets.

What it measures: microseconds of CPU per request for the whole in-process path (the HTTP protocol
parsing a request, the ASGI app routing it, the proxy stage writing it to a pooled upstream connection,
parsing the upstream's response and writing it back to the client), with fake transports in place of
sockets, on a uvloop event loop. System calls and the kernel are left out, so the figure is stable on a
busy machine and isolates what the gateway's own code costs; compare it with the per-request CPU that
``python -m bench`` measures end to end. Runs the compiled build and the pure-Python twins (in child
processes, since the choice is made at import). The requests take the proxy's fast lane
(gateway.proxy.lane: no task per request) once the pool is warm; ``--no-lane`` runs them all as tasks
through the ASGI app, as requests the lane does not take (bodies, other routes) run.

    python -m bench.micro_pipeline [--requests 50000] [--connections 64] [--no-lane] [--profile]

``--profile`` prints the top functions by own time (cProfile) for the current build.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

REQUEST = (b"GET /svc/items/42?x=1 HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: bench\r\n"
           b"Accept: */*\r\n\r\n")
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Thu, 26 Nov 2026 07:00:00 GMT\r\n"
            b"Content-Type: application/json\r\nContent-Length: 11\r\nConnection: keep-alive\r\n\r\n"
            b'{"ok":true}')
CONFIG = {
    "source": "bench", "server": {"access_log": False},
    "upstreams": {"api": "http://127.0.0.1:9"},
    "routes": [{"name": f"r{i}", "path": f"/svc{i}/items/{{id}}", "upstream": "api"} for i in range(50)]
    + [{"name": "items", "path": "/svc/items/{id}", "upstream": "api"}, {"prefix": "/", "upstream": "api"}],
}


class ClientTransport:
    """Stands in for a client socket: counts complete responses (one write each, as the protocol does)."""

    def __init__(self) -> None:
        self.responses = 0
        self.paused = False

    def write(self, data: bytes) -> None:
        self.responses += 1

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def close(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False


class UpstreamTransport:
    """Stands in for an upstream socket: answers each request head with RESPONSE on the next loop turn."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.protocol: Any = None

    def write(self, data: bytes) -> None:
        self.loop.call_soon(self.protocol.data_received, RESPONSE)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def make_gateway(loop: asyncio.AbstractEventLoop, lane: bool = True) -> Any:
    from uvicorn.server import ServerState

    from gateway._fast.protocol import HttpProtocol, Limits
    from gateway.app import Gateway
    from gateway.loader import from_document
    from gateway.proxy.upstream import UpstreamConnection
    from gateway.server.worker import tune_gc

    config = from_document(CONFIG)
    app = Gateway(config)
    if not lane:
        app.fast_lane = None
    tune_gc(config.server.gc_threshold)  # as a worker does
    pool = app.upstreams["api"].pools[0]

    async def connect() -> Any:
        conn = UpstreamConnection(loop, 60.0)
        transport = UpstreamTransport(loop)
        transport.protocol = conn
        conn.connection_made(transport)
        return conn

    pool.connect = connect
    state = ServerState()
    limits = Limits()
    return lambda: HttpProtocol(app, limits, state, loop)


async def drive(requests: int, connections: int, lane: bool = True) -> float:
    """CPU seconds for ``requests`` requests over ``connections`` keep-alive connections."""
    loop = asyncio.get_running_loop()
    factory = make_gateway(loop, lane)
    clients = []
    for _ in range(connections):
        protocol, transport = factory(), ClientTransport()
        protocol.connection_made(transport)
        clients.append((protocol, transport))
    rounds = max(1, requests // connections)
    await run_rounds(clients, 20)  # warm-up: pool filled, caches hot
    start = time.process_time()
    await run_rounds(clients, rounds)
    return (time.process_time() - start) / (rounds * connections)


async def run_rounds(clients: list[tuple[Any, ClientTransport]], rounds: int) -> None:
    for _ in range(rounds):
        targets = [transport.responses + 1 for _, transport in clients]
        for protocol, _ in clients:
            protocol.data_received(REQUEST)
        while any(t.responses < target for (_, t), target in zip(clients, targets, strict=True)):  # noqa: ASYNC110
            await asyncio.sleep(0)  # a busy wait on purpose: an Event would add work to what is measured


def measure(requests: int, connections: int, profile: bool, lane: bool = True) -> dict[str, Any]:
    import uvloop

    from gateway._fast import protocol, router

    if profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.enable()
    seconds = uvloop.run(drive(requests, connections, lane))
    if profile:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    return {"us_per_request": round(seconds * 1e6, 2), "router": router.IMPLEMENTATION,
            "protocol": protocol.IMPLEMENTATION}


def run(quick: bool = False, lane: bool = True) -> dict[str, Any]:
    """Both builds, each in a child process; returns {build: {us_per_request, ...}}."""
    results = {}
    for build, env in (("compiled", {}), ("python", {"GATEWAY_NO_EXTENSIONS": "1"})):
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")} | env
        argv = [sys.executable, "-m", "bench.micro_pipeline", "--child", "--requests", "20000" if quick else "100000"]
        out = subprocess.run(argv + ([] if lane else ["--no-lane"]), env=child_env, capture_output=True, text=True,
                             check=True).stdout
        results[build] = json.loads(out.strip().splitlines()[-1])
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100000)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--no-lane", dest="lane", action="store_false", help="no fast lane: a task per request")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child or args.profile:
        print(json.dumps(measure(args.requests, args.connections, args.profile, args.lane)))
        return 0
    for build, figures in run(lane=args.lane).items():
        print(f"{build:9} {figures['us_per_request']:8.2f} us/request  "
              f"(router {figures['router']}, protocol {figures['protocol']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
