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

``--full`` measures the bench's full path (scenario 2, bench/routes.py ``write_config(jwt=True)``) instead:
1,000 routes, each requiring an RS256 JWT (a key generated here, one token reused by every request, so the
verifier's cache answers) and forwarding its subject, a GCRA rate limit per subject, the access log on (to
/dev/null) and request ids; the requests cycle over the bench's paths of distinct routes.

    python -m bench.micro_pipeline [--requests 50000] [--connections 64] [--no-lane] [--full] [--profile]

``--key FILE`` (with ``--full``) keeps the generated signing key in FILE and reuses it, so that
instruction counts under callgrind leave out key generation's random cost. ``--profile`` prints the top
functions by own time (cProfile) for the current build.
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

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def full_config(key_file: str | None = None) -> tuple[Any, list[bytes]]:
    """The bench's full-path config (access log to /dev/null) and a request per path it serves. With
    ``key_file``, the signing key is kept there and reused: generating one costs a random number of
    instructions (the search for primes), which would blur a count under callgrind."""
    import tempfile
    from pathlib import Path
    from unittest import mock

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from bench.routes import write_config
    from gateway.loader import from_document

    generate = rsa.generate_private_key

    def kept_key(*args: Any, **kwargs: Any) -> Any:
        assert key_file is not None
        if os.path.exists(key_file):
            with open(key_file, "rb") as file:
                return serialization.load_pem_private_key(file.read(), None)
        key = generate(*args, **kwargs)
        with open(key_file, "wb") as file:
            file.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
        return key

    with tempfile.TemporaryDirectory() as directory, \
            mock.patch.object(rsa, "generate_private_key", kept_key if key_file else generate):
        path, paths, headers = write_config(Path(directory), 1_000, 9, access_log=True, jwt=True)
        document = json.loads(path.read_text())
        document["source"] = "bench"
        document["server"]["access_log_file"] = os.devnull
        config = from_document(document)
    extra = b"".join(b"%s: %s\r\n" % (name.encode(), value.encode()) for name, value in headers.items())
    requests = [b"GET %s HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: bench\r\nAccept: */*\r\n%s\r\n"
                % (target.encode(), extra) for target in paths]
    return config, requests


def make_gateway(loop: asyncio.AbstractEventLoop, lane: bool = True, config: Any = None) -> Any:
    from uvicorn.server import ServerState

    from gateway._fast.protocol import HttpProtocol, Limits
    from gateway.app import Gateway
    from gateway.loader import from_document
    from gateway.proxy.upstream import UpstreamConnection
    from gateway.server.worker import tune_gc

    if config is None:
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


async def drive(requests: int, connections: int, lane: bool = True, full: bool = False,
                key_file: str | None = None) -> float:
    """CPU seconds for ``requests`` requests over ``connections`` keep-alive connections."""
    loop = asyncio.get_running_loop()
    config, sent = full_config(key_file) if full else (None, [REQUEST])
    factory = make_gateway(loop, lane, config)
    clients = []
    for _ in range(connections):
        protocol, transport = factory(), ClientTransport()
        protocol.connection_made(transport)
        clients.append((protocol, transport))
    rounds = max(1, requests // connections)
    # each round's requests, one per connection: the same one (plain), or the next paths in turn (full)
    batches = [[sent[(start + i) % len(sent)] for i in range(connections)]
               for start in range(0, max(len(sent), 1), connections)]
    await run_rounds(clients, 20, batches)  # warm-up: pool filled, caches hot
    start = time.process_time()
    await run_rounds(clients, rounds, batches)
    return (time.process_time() - start) / (rounds * connections)


async def run_rounds(clients: list[tuple[Any, ClientTransport]], rounds: int, batches: list[list[bytes]]) -> None:
    for number in range(rounds):
        targets = [transport.responses + 1 for _, transport in clients]
        for (protocol, _), request in zip(clients, batches[number % len(batches)], strict=True):
            protocol.data_received(request)
        while any(t.responses < target for (_, t), target in zip(clients, targets, strict=True)):  # noqa: ASYNC110
            await asyncio.sleep(0)  # a busy wait on purpose: an Event would add work to what is measured


def measure(requests: int, connections: int, profile: bool, *, lane: bool = True, full: bool = False,
            key_file: str | None = None) -> dict[str, Any]:
    import uvloop

    from gateway._fast import protocol, router

    if profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.enable()
    seconds = uvloop.run(drive(requests, connections, lane, full, key_file))
    if profile:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    return {"us_per_request": round(seconds * 1e6, 2), "router": router.IMPLEMENTATION,
            "protocol": protocol.IMPLEMENTATION}


def run(quick: bool = False, lane: bool = True, full: bool = False) -> dict[str, Any]:
    """Both builds, each in a child process; returns {build: {us_per_request, ...}}."""
    results = {}
    for build, env in (("compiled", {}), ("python", {"GATEWAY_NO_EXTENSIONS": "1"})):
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")} | env
        argv = [sys.executable, "-m", "bench.micro_pipeline", "--child", "--requests", "20000" if quick else "100000"]
        options = ([] if lane else ["--no-lane"]) + (["--full"] if full else [])
        out = subprocess.run(argv + options, env=child_env, capture_output=True, text=True,
                             check=True).stdout
        results[build] = json.loads(out.strip().splitlines()[-1])
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100000)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--no-lane", dest="lane", action="store_false", help="no fast lane: a task per request")
    parser.add_argument("--full", action="store_true", help="the bench's full path: 1,000 routes, JWT, rate limit, "
                        "access log")
    parser.add_argument("--key", help="with --full: keep the signing key in this file and reuse it (for "
                        "callgrind counts)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child or args.profile:
        print(json.dumps(measure(args.requests, args.connections, args.profile, lane=args.lane, full=args.full,
                                 key_file=args.key)))
        return 0
    for build, figures in run(lane=args.lane, full=args.full).items():
        print(f"{build:9} {figures['us_per_request']:8.2f} us/request  "
              f"(router {figures['router']}, protocol {figures['protocol']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
