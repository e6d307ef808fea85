"""The ASGI callable: the request's path as one ordered list, and the single error boundary.

The path of a request (DESIGN.md), as this module runs it:

    protocol (gateway._fast.protocol: strict parse, size limits, timeouts)
    -> request id + access log          (host-wide, here)
    -> route                            (host-wide, here: the trie picks the route)
    -> the route's own stages           (route_stages(), built once per route at config load)
       -> proxy                         (the last stage: balancer, pooled connection, streaming)

Stages a route does not use are not in its chain, so they cost nothing on that route.
"""

from __future__ import annotations

import asyncio
import logging
import time

from gateway._fast.headers import request_info
from gateway._fast.protocol import Message, Receive, Scope, Send, new_request_id
from gateway.config import Node
from gateway.errors import BadRequest, GatewayError, error_body
from gateway.exchange import Exchange, Stage, chain
from gateway.loader import GatewayConfig
from gateway.observability.access_log import AccessLog
from gateway.proxy.stage import ProxyStage
from gateway.proxy.target import parse_target
from gateway.routing.config import RouteSpec
from gateway.routing.paths import make_rewriter, normalize_path
from gateway.routing.table import RouteTable
from gateway.upstreams.config import UpstreamSpec
from gateway.upstreams.upstream import Upstream

logger = logging.getLogger("gateway")

MAX_REQUEST_ID = 200
SWEEP_INTERVAL = 5.0  # at most; shorter when an upstream's keep-alive timeout is shorter


class Route:
    """A route at run time: its spec and the first stage of its chain."""

    __slots__ = ("first", "name", "spec")

    def __init__(self, spec: RouteSpec, first: Stage) -> None:
        self.spec = spec
        self.name = spec.name
        self.first = first


def route_stages(spec: RouteSpec, upstream: Upstream) -> list[Stage]:
    """A route's own stages, in request order. Later features insert theirs before the proxy:
    CORS -> auth -> rate limit -> validation/transform -> cache -> proxy."""
    rewrite = make_rewriter(spec, upstream.base_path)
    return [ProxyStage(upstream, rewrite, spec.preserve_host)]


class Gateway:
    """The raw ASGI app every worker runs."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.upstreams = {name: Upstream(spec) for name, spec in config.upstreams.items()}
        routes = []
        for spec in config.routes:
            upstream = self._upstream_for(spec)
            routes.append((spec, Route(spec, chain(route_stages(spec, upstream)))))
        self.table: RouteTable[Route] = RouteTable(routes, config.source)
        self.access_log = AccessLog() if config.server.access_log else None
        self.sweeper: asyncio.Task[None] | None = None

    def _upstream_for(self, spec: RouteSpec) -> Upstream:
        if spec.upstream in self.upstreams:
            return self.upstreams[spec.upstream]
        target = parse_target(Node(spec.upstream, self.config.source))  # an inline URL, checked at load
        upstream = Upstream(UpstreamSpec(spec.upstream, (target,)))
        self.upstreams[spec.upstream] = upstream
        return upstream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self.lifespan(receive, send)

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        ex = Exchange(scope, receive, send, time.perf_counter())
        try:
            self.identify(ex)
            route = self.route(ex)
            await route.first(ex)
        except GatewayError as exc:
            await self.fail(ex, exc)
        except asyncio.CancelledError:
            ex.status = ex.status or 499  # the client went away
            raise
        finally:
            if self.access_log is not None:
                self.access_log.write(ex, time.perf_counter())

    def identify(self, ex: Exchange) -> None:
        """Stage: request id (passed through when sane, else generated) and the request's host."""
        ex.host, request_id = request_info(ex.scope["headers"])
        if not request_id or len(request_id) > MAX_REQUEST_ID or not request_id.isprintable() \
                or " " in request_id:
            request_id = new_request_id()
        ex.request_id = request_id

    def route(self, ex: Exchange) -> Route:
        """Stage: routing. Normalises the path, picks the most specific route (404/405 otherwise)."""
        scope = ex.scope
        path = normalize_path(scope["raw_path"].decode("latin-1"))
        if path is None:
            raise BadRequest("the request path is not a valid absolute path")
        ex.path = path
        route, ex.params, ex.consumed = self.table.match(ex.host, scope["method"], path)
        ex.route = route
        return route

    async def fail(self, ex: Exchange, exc: GatewayError) -> None:
        """The error boundary: a JSON error if the response has not started, else end the connection."""
        if ex.response_started:
            logger.warning("request %s failed after the response started: %s", ex.request_id, exc.message)
            raise exc
        if exc.status >= 500:
            logger.warning("request %s: %d %s: %s", ex.request_id, exc.status, exc.code, exc.message)
        body = error_body(exc.status, exc.code, exc.message, ex.request_id)
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        headers.extend(exc.headers)
        await ex.start_response(exc.status, headers)
        await ex.send_body(body, False)

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message: Message = await receive()
            if message["type"] == "lifespan.startup":
                self.sweeper = asyncio.get_running_loop().create_task(self.sweep_pools())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def sweep_pools(self) -> None:
        """Closes idle upstream connections past their keep-alive timeout."""
        loop = asyncio.get_running_loop()
        timeouts = [u.spec.keepalive_timeout for u in self.upstreams.values()]
        interval = min(SWEEP_INTERVAL, max(0.25, min(timeouts, default=SWEEP_INTERVAL) / 2))
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            for upstream in self.upstreams.values():
                upstream.sweep(now)

    def close(self) -> None:
        if self.sweeper is not None:
            self.sweeper.cancel()
        for upstream in self.upstreams.values():
            upstream.close()
