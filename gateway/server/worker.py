"""A worker process: uvicorn on uvloop, the gateway's protocol, the ASGI app, on its slot's socket.

Started by the supervisor as ``python -m gateway.server.worker --fd N --ready-fd M --slot K``: the
listening socket (SO_REUSEPORT, already bound by the supervisor, which keeps it open so a worker's
replacement inherits its accept queue) arrives as file descriptor N; the resolved configuration arrives as
JSON on stdin; one byte on ``ready-fd`` tells the supervisor the worker serves. SIGTERM drains: stop
accepting, finish in-flight requests within ``drain_timeout``, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import logging
import os
import signal
import socket
import sys
from types import FrameType
from typing import Any

import orjson
import uvicorn

from gateway._fast.protocol import Limits, uvicorn_protocol
from gateway.app import Gateway
from gateway.guards.body import protocol_body_limit
from gateway.guards.runtime import Guard, build_guard
from gateway.loader import GatewayConfig, from_document
from gateway.observability.metrics import Schema, WorkerMetrics
from gateway.server.logs import setup_logging
from gateway.server.shared import attach

logger = logging.getLogger("gateway.worker")
PR_SET_PDEATHSIG = 1


class WorkerServer(uvicorn.Server):
    """uvicorn's Server, telling the supervisor once it serves."""

    def __init__(self, config: uvicorn.Config, ready_fd: int) -> None:
        super().__init__(config)
        self.ready_fd = ready_fd
        self.loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.loop = asyncio.get_running_loop()
        if self.started and self.ready_fd >= 0:
            os.write(self.ready_fd, b"R")
            os.close(self.ready_fd)
            self.ready_fd = -1

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Stops accepting at once (uvicorn would only notice at its next 0.1 s tick), so after a reload
        no new connection reaches a worker running the previous configuration."""
        super().handle_exit(sig, frame)
        if self.loop is not None and self.started:
            self.loop.call_soon_threadsafe(self.stop_accepting)

    def stop_accepting(self) -> None:
        for server in self.servers:
            server.close()


def die_with_parent() -> None:
    """Asks Linux to SIGTERM this worker if the supervisor dies, so no worker outlives it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def uvicorn_config(app: Gateway, config: GatewayConfig, guard: Guard | None = None) -> uvicorn.Config:
    server = config.server
    limits = Limits(
        max_header_bytes=server.max_header_bytes,
        max_body_bytes=protocol_body_limit(server.max_body_bytes, config.routes),  # the largest; stages lower it
        keepalive_timeout=server.keepalive_timeout,
        header_timeout=server.header_timeout,
        max_header_count=server.max_header_count,
        min_body_rate=server.min_body_rate,
        body_rate_grace=server.body_rate_grace,
        body_rate_window=server.body_rate_window,
    )
    return uvicorn.Config(
        app,
        http=uvicorn_protocol(app, limits, guard),  # type: ignore[arg-type]
        loop="uvloop",
        lifespan="on",
        interface="asgi3",
        access_log=False,
        log_config=None,
        proxy_headers=False,
        server_header=False,
        date_header=False,
        backlog=server.backlog,
        timeout_graceful_shutdown=max(1, round(server.drain_timeout)),
    )


def tune_gc(threshold: int) -> None:
    """Objects made at start-up are frozen (never scanned again) and young-generation collections run
    every ``threshold`` allocations instead of 700: a request allocates and frees hundreds of objects,
    and scanning the survivors of each batch is pure overhead (measured: bench.micro_pipeline)."""
    gc.freeze()
    if threshold:
        _, middle, old = gc.get_threshold()
        gc.set_threshold(threshold, middle, old)


def run(fd: int, ready_fd: int, document: dict[str, Any], metrics_fd: int | None = None,
        shared: str | None = None) -> int:
    config = from_document(document)
    setup_logging(config.server.log_level)
    app = Gateway(config, WorkerMetrics(Schema.for_config(config), metrics_fd), attach(shared))
    tune_gc(config.server.gc_threshold)
    sock = socket.socket(fileno=fd)
    guard = build_guard(config, app.shared, app.metrics)  # connection guards (gateway.guards)
    server = WorkerServer(uvicorn_config(app, config, guard), ready_fd)
    app.count_connections = lambda: len(server.server_state.connections)
    # uvicorn re-raises the signal that stopped it once it is done; a no-op handler makes that a clean exit
    signal.signal(signal.SIGTERM, lambda *_: None)
    signal.signal(signal.SIGINT, lambda *_: None)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reloads are the supervisor's business
    signal.signal(signal.SIGUSR1, lambda *_: app.access_log.reopen() if app.access_log else None)  # rotation
    server.run(sockets=[sock])
    return 0


def main(argv: list[str] | None = None) -> int:
    die_with_parent()
    parser = argparse.ArgumentParser(prog="gateway-worker")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--ready-fd", type=int, default=-1)
    parser.add_argument("--slot", type=int, default=0)
    parser.add_argument("--metrics-fd", type=int, default=None)
    parser.add_argument("--shared", default=None, help="host-wide segments: name=fd,...")
    args = parser.parse_args(argv)
    os.environ["GATEWAY_WORKER_SLOT"] = str(args.slot)
    document = orjson.loads(sys.stdin.buffer.read())
    return run(args.fd, args.ready_fd, document, args.metrics_fd, args.shared)


if __name__ == "__main__":
    sys.exit(main())
