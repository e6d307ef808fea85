"""Keep-alive connection pools to upstream targets, one per target in each worker.

Idle connections are reused last-in first-out (the warmest socket, and the longest-idle ones age out).
A connection goes back to the pool only when its response ended cleanly with keep-alive; one that broke,
timed out or was abandoned mid-exchange is closed, so it is never handed to the next request.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque

from gateway.proxy.target import Target
from gateway.proxy.upstream import UpstreamConnection, UpstreamError, UpstreamTimeout


class Pool:
    """Connections to one target. ``keepalive`` bounds idle connections; in-use ones are not bounded."""

    def __init__(self, target: Target, *, connect_timeout: float, read_timeout: float, keepalive: int,
                 keepalive_timeout: float) -> None:
        self.target = target
        self.host_header = target.authority.encode("idna")  # Host sent upstream unless preserved
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.keepalive = keepalive
        self.keepalive_timeout = keepalive_timeout
        self.idle: deque[UpstreamConnection] = deque()
        self.opened = 0  # connections opened over the pool's life (metrics, tests)
        self.reused = 0  # exchanges served on an already-used connection
        self.metric = 0  # the target's number in the metrics schema (set by the app)

    async def acquire(self) -> UpstreamConnection:
        """An idle connection that is still open and fresh, else a new one."""
        return self.take_idle() or await self.connect()

    def take_idle(self) -> UpstreamConnection | None:
        """The most recently used idle connection that is still open and fresh, if any."""
        idle = self.idle
        if not idle:
            return None
        now = idle[-1].loop.time()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < self.keepalive_timeout:
                conn.idle = False
                self.reused += 1
                return conn
            conn.close()
        return None

    async def connect(self) -> UpstreamConnection:
        """A new connection to the target (502 if refused, 504 past the connect timeout)."""
        loop = asyncio.get_running_loop()
        target = self.target
        try:
            async with asyncio.timeout(self.connect_timeout):
                # an asyncio protocol by its methods (compiled, it cannot subclass asyncio.Protocol)
                _, conn = await loop.create_connection(  # type: ignore[type-var]
                    lambda: UpstreamConnection(loop, self.read_timeout), target.host, target.port
                )
        except TimeoutError:
            raise UpstreamTimeout(f"connecting to the upstream took longer than {self.connect_timeout:g}s") \
                from None
        except OSError as exc:
            raise UpstreamError(f"the upstream refused or could not be reached ({exc.strerror or exc})") \
                from None
        sock = conn.transport.get_extra_info("socket") if conn.transport is not None else None
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.opened += 1
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        """Returns a connection after its exchange: pooled when reusable, else closed."""
        if conn.reusable and len(self.idle) < self.keepalive:
            conn.idle = True
            conn.idle_since = conn.loop.time()
            self.idle.append(conn)
        elif conn.reusable:
            conn.close()
        else:
            conn.abort()

    def sweep(self, now: float) -> None:
        """Closes idle connections older than the keep-alive timeout, and dead ones."""
        idle = self.idle
        while idle and (idle[0].closed or now - idle[0].idle_since >= self.keepalive_timeout):
            idle.popleft().close()

    def close(self) -> None:
        while self.idle:
            self.idle.pop().close()
