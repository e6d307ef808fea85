"""The last stage of every route: stream the request to an upstream target and the response back.

Header rules are in ``gateway._fast.headers`` (compiled). Bodies stream both ways with backpressure: the
request body is pumped while the response is awaited, so an upstream that answers early is never stuck
behind it.

Failures before the response starts become 502 (refused, reset, malformed) or 504 (timeout). A reused
keep-alive connection that fails before any response byte is retried once on a fresh connection when the
request is idempotent and has no body, since the upstream may simply have closed it while idle.

A WebSocket upgrade goes upstream with its ``Upgrade`` header; on the upstream's 101 the exchange becomes
a byte tunnel (gateway.realtime.tunnel).
"""

from __future__ import annotations

import asyncio
from time import perf_counter

from gateway._fast.headers import request_head, response_headers
from gateway._fast.metrics import Recorder
from gateway._fast.protocol import ClientDisconnected
from gateway.exchange import Exchange, Stage
from gateway.proxy.pool import Pool
from gateway.proxy.upstream import UpstreamConnection, UpstreamError
from gateway.realtime.tunnel import switch
from gateway.routing.paths import Rewriter
from gateway.upstreams.upstream import Upstream

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


class ProxyStage(Stage):
    """Proxies the exchange to ``upstream``; ``rewrite`` maps the routed path to the upstream path."""

    def __init__(self, upstream: Upstream, rewrite: Rewriter | None, preserve_host: bool,
                 recorder: Recorder) -> None:
        self.upstream = upstream
        self.rewrite = rewrite
        self.preserve_host = preserve_host
        self.recorder = recorder

    async def __call__(self, ex: Exchange) -> None:
        method: str = ex.scope["method"]
        pool = self.upstream.pick()
        ex.target = pool.target
        head, body_framing = self.request_head(ex, method, self.target(ex), pool)
        # Retried once on a fresh connection when a reused one turns out dead before answering.
        retry_safe = not body_framing and method in IDEMPOTENT
        started = perf_counter()
        while True:
            try:
                conn = pool.take_idle() or await pool.connect()  # Pool.acquire, without its coroutine frame
            except UpstreamError:
                self.measure(ex, pool, 0, started)
                raise
            reused = conn.requests > 0
            conn.begin(method == "HEAD")
            pump: asyncio.Task[None] | None = None
            try:
                if body_framing:
                    pump = await self.send_first_body(ex, conn, head, body_framing)
                else:
                    conn.write(head)
                while not conn.head_done:
                    await conn.wait_head()
            except UpstreamError:
                self.finish(pool, conn, pump)
                if retry_safe and reused and not conn.received_any:
                    retry_safe = False
                    continue
                self.measure(ex, pool, 0, started)
                raise
            except BaseException:
                self.finish(pool, conn, pump)
                raise
            break
        try:
            if conn.status == 101:  # a WebSocket upgrade the upstream accepted
                started = await self.tunnel(ex, conn, started)
                return
            await ex.start_response(conn.status, response_headers(conn.headers))
            data, done = conn.take_body()
            while not done:  # the body, copied to the client as it arrives
                if data:
                    await ex.send_body(data, True)
                await conn.wait_body()
                data, done = conn.take_body()
            await ex.send_body(data, False)
        finally:
            self.finish(pool, conn, pump)
            self.measure(ex, pool, conn.status, started)

    async def tunnel(self, ex: Exchange, conn: UpstreamConnection, started: float) -> float:
        """Runs the WebSocket tunnel to its end; returns ``started`` moved on by the tunnel's lifetime,
        so the upstream's latency (metrics, balancing) is its handshake, not the session."""
        switched = perf_counter()
        try:
            await switch(ex, conn, self.upstream.spec.websocket_idle_timeout)
        finally:
            started += perf_counter() - switched
        return started

    def measure(self, ex: Exchange, pool: Pool, status: int, started: float) -> None:
        """Records the upstream exchange (``status`` 0: no response) and its time on the exchange."""
        elapsed = ex.upstream_time = perf_counter() - started
        self.recorder.upstream(pool.metric, status, elapsed)

    @staticmethod
    def finish(pool: Pool, conn: UpstreamConnection, pump: asyncio.Task[None] | None) -> None:
        """Returns the connection to the pool (which closes it unless the exchange ended cleanly)."""
        if pump is not None and not pump.done():
            pump.cancel()
            conn.keep_alive = False  # the request was not sent whole: this connection is spent
        pool.release(conn)

    async def send_first_body(
        self, ex: Exchange, conn: UpstreamConnection, head: bytes, framing: bytes
    ) -> asyncio.Task[None] | None:
        """Writes the head with the first body chunk; a task pumps the rest while the response is read."""
        message = await ex.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected("the client went away while sending the request body")
        body: bytes = message["body"]
        more: bool = message["more_body"]
        ex.bytes_received += len(body)
        chunked = framing == b"chunked"
        data = _frame(body, chunked)
        if chunked and not more:
            data += b"0\r\n\r\n"
        conn.write(head + data)
        if not more:
            return None
        return asyncio.get_running_loop().create_task(self.pump_body(ex, conn, chunked))

    async def pump_body(self, ex: Exchange, conn: UpstreamConnection, chunked: bool) -> None:
        """Streams the rest of the request body upstream, waiting whenever the upstream is slow."""
        try:
            while True:
                message = await ex.receive()
                if message["type"] == "http.disconnect":
                    raise ClientDisconnected("the client went away while sending the request body")
                body: bytes = message["body"]
                ex.bytes_received += len(body)
                if body:
                    conn.write(_frame(body, chunked))
                    if conn.write_paused:
                        await conn.drain()
                if not message["more_body"]:
                    break
            if chunked:
                conn.write(b"0\r\n\r\n")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the response side sees the failure through the aborted connection
            if conn.failure is None:
                conn.failure = exc if isinstance(exc, UpstreamError) else UpstreamError(str(exc))
            conn.abort()
            conn.wake()

    def target(self, ex: Exchange) -> bytes:
        """The request target sent upstream: the (rewritten) path and the query string."""
        path = ex.path if self.rewrite is None else self.rewrite(ex.path, ex.params, ex.consumed)
        query: bytes = ex.scope["query_string"]
        return path.encode("latin-1") + (b"?" + query if query else b"")

    def request_head(self, ex: Exchange, method: str, target: bytes, pool: Pool) -> tuple[bytes, bytes]:
        """The request line and headers for the upstream, and the body framing (b"", length or chunked)."""
        scope = ex.scope
        client = scope["client"]
        head, framing = request_head(method.encode("ascii"), target, scope["headers"],
                                     client[0].encode("ascii") if client else b"unknown",
                                     scope["scheme"].encode("ascii"), ex.request_id.encode("latin-1"),
                                     pool.host_header, self.preserve_host)
        if "extensions" in scope:  # a WebSocket upgrade (the protocol's gateway.tunnel): ask for it upstream
            head = head[:-2] + b"connection: upgrade\r\nupgrade: websocket\r\n\r\n"
        return head, framing


def _frame(body: bytes, chunked: bool) -> bytes:
    if not chunked:
        return body
    return b"%x\r\n%b\r\n" % (len(body), body) if body else b""
