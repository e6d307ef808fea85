"""The ASGI callable: the request's path as one ordered list, and the single error boundary.

The path of a request (DESIGN.md), as this module runs it:

    protocol (gateway._fast.protocol: strict parse, size limits, timeouts)
    -> request id + access log          (host-wide, here)
    -> route                            (host-wide, here: the trie picks the route)
    -> the route's own stages           (route_stages(), built once per route at config load)
       -> proxy                         (the last stage: balancer, pooled connection, streaming)

Stages a route does not use are not in its chain, so they cost nothing on that route.

The fast lane (gateway.proxy.lane): the protocol offers each request without a body to ``take_lane``
before it makes a task. A route whose stages can decide without awaiting, ending in a plain upstream's
proxy, answers it from callbacks, without a task, coroutine frames or ASGI messages; any other route, and
a lane request that has to wait or fails, continues in a task (``resume``, the same error boundary as
``http``) from where it stopped, without being routed again.
"""

from __future__ import annotations

import asyncio
import logging
import mmap
from collections.abc import Callable, Mapping
from time import perf_counter
from typing import TYPE_CHECKING, Any

from gateway._fast.headers import request_info
from gateway._fast.protocol import Message, Receive, Scope, Send, new_request_id
from gateway.auth.reasons import REASON_INDEX as AUTH_REASON_INDEX
from gateway.errors import BadRequest, GatewayError, error_body
from gateway.exchange import Exchange, Stage, chain
from gateway.guards.body import BodyLimitStage
from gateway.loader import GatewayConfig
from gateway.observability.access_log import AccessLog
from gateway.observability.metrics import Schema, WorkerMetrics
from gateway.observability.tracing import RequestSpan, Tracer, start_tracer
from gateway.proxy.lane import ProxyLane, lane_for
from gateway.proxy.stage import ProxyStage
from gateway.routing.config import RouteSpec
from gateway.routing.paths import make_rewriter, normalize_path
from gateway.routing.table import RouteTable
from gateway.upstreams.stage import BalancedProxyStage
from gateway.upstreams.upstream import Upstream, upstream_table

if TYPE_CHECKING:
    from gateway.auth.runtime import Auth
    from gateway.ratelimit.runtime import RateLimiter

logger = logging.getLogger("gateway")

MAX_REQUEST_ID = 200
GAUGE_INTERVAL = 1.0
SWEEP_INTERVAL = 5.0  # at most; shorter when an upstream's keep-alive timeout is shorter


class Route:
    """A route at run time: its spec and the first stage of its chain."""

    __slots__ = ("first", "lane", "metric", "name", "spec")

    def __init__(self, spec: RouteSpec, first: Stage, metric: int, lane: ProxyLane | None = None) -> None:
        self.spec = spec
        self.name = spec.name
        self.first = first
        self.metric = metric  # the route's number in the metrics schema
        self.lane = lane  # the fast lane, where the chain allows one (gateway.proxy.lane)


def route_stages(spec: RouteSpec, upstream: Upstream, metrics: WorkerMetrics,
                 auth: Auth | None = None, ratelimit: RateLimiter | None = None) -> list[Stage]:
    """A route's own stages, in request order. Later features insert theirs before the proxy:
    CORS -> auth -> rate limit -> validation/transform -> cache -> proxy."""
    rewrite = make_rewriter(spec, upstream.base_path)
    auth_stages: list[Stage] = [auth.stage(spec.auth)] if spec.auth is not None and auth is not None else []
    limit_stage = ratelimit.stage(spec) if ratelimit is not None else None  # after auth: keys may use ex.subject
    limit_stages: list[Stage] = [limit_stage] if limit_stage is not None else []
    proxy = ProxyStage if upstream.plain else BalancedProxyStage  # plain: one target, no policy
    body_stages: list[Stage] = [BodyLimitStage(spec.max_body_bytes)] if spec.max_body_bytes is not None else []
    return [*body_stages, *auth_stages, *limit_stages, proxy(upstream, rewrite, spec.preserve_host, metrics.recorder)]


def offend_on_refusal(ex: Exchange, policy: object, limit: object, strikes: int) -> None:
    """A rate-limit refusal counts towards a temporary ban of the connection's peer (when guards have
    bans configured; a no-op otherwise). The peer, not a forwarded address: that is what a ban refuses,
    and a trusted proxy's address belongs in the guards' allow list."""
    from gateway import guards

    client = ex.scope["client"]
    if client:
        guards.offend(client[0], "rate_limit")


class Gateway:
    """The raw ASGI app every worker runs."""

    def __init__(self, config: GatewayConfig, metrics: WorkerMetrics | None = None,
                 shared: Mapping[str, mmap.mmap] | None = None) -> None:
        self.config = config
        self.shared = shared or {}  # host-wide segments by name (gateway.server.shared); empty in tests
        # Without a supervisor's shared region (tests, benchmarks) the worker counts in private memory.
        self.metrics = metrics if metrics is not None else WorkerMetrics(Schema.for_config(config))
        self.recorder = self.metrics.recorder
        self.upstreams: dict[str, Upstream] = {}
        target_number = 0
        table = upstream_table(self.shared, config.server.workers)  # shared upstream state (None: private)
        for name, upstream_spec in config.all_upstreams().items():  # the schema's order of targets
            upstream = self.upstreams[name] = Upstream(upstream_spec, table)
            for pool in upstream.pools:
                pool.metric = target_number
                target_number += 1
        self.auth: Auth | None = None
        if config.auth is not None:  # the auth modules (pyjwt, cryptography) load only when configured
            from gateway.auth import runtime

            self.auth = runtime.Auth(config.auth, redis_url=config.server.redis_url)
        self.ratelimit: RateLimiter | None = None
        if config.ratelimit is not None:
            from gateway.ratelimit.runtime import make_limiter

            self.ratelimit = make_limiter(config.ratelimit, self.metrics, self.shared, config.server.workers,
                                          config.server.redis_url)
            assert self.ratelimit is not None
            self.ratelimit.on_exceeded(offend_on_refusal)  # clients that keep exceeding get banned
        routes = []
        for number, spec in enumerate(config.routes):
            stages = route_stages(spec, self.upstreams[spec.upstream], self.metrics, self.auth, self.ratelimit)
            routes.append((spec, Route(spec, chain(stages), number, lane_for(self, stages))))
        self.unmatched = len(config.routes)  # the metrics' "(unmatched)" route, after the built-in ones
        if self.auth is not None:  # the token issuer's own endpoints, served here (config.builtin_routes())
            builtin = self.auth.builtin_routes()
            routes += [(spec, Route(spec, stage, self.unmatched + i)) for i, (spec, stage) in enumerate(builtin)]
            self.unmatched += len(builtin)
        self.table: RouteTable[Route] = RouteTable(routes, config.source)
        self.lookup = self.table.lookup  # the router itself: None where table.match raises a 404/405
        server = config.server
        self.access_log = AccessLog(server.access_log_file, server.access_log_sample) if server.access_log else None
        self.tracer: Tracer | None = start_tracer(config.tracing) if config.tracing is not None else None
        self.sweeper: asyncio.Task[None] | None = None
        self.sampler: asyncio.Task[None] | None = None
        self.count_connections: Callable[[], int] | None = None  # set by the worker (uvicorn's state)
        # What the protocol offers requests without a body (see the module docstring); None: no route
        # has a lane, or a tracer needs every request's span
        lanes = self.tracer is None and any(route.lane is not None for _, route in routes)
        self.fast_lane: Callable[[Any, Any], bool] | None = self.take_lane if lanes else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self.lifespan(receive, send)

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        ex = Exchange(scope, receive, send, perf_counter())
        self.recorder.begin()
        span: RequestSpan | None = None
        try:
            self.identify(ex)
            if self.tracer is not None:
                span = self.tracer.begin(ex)  # continues the caller's trace; sets the upstream's traceparent
            route = self.route(ex)
            await route.first(ex)
        except GatewayError as exc:
            await self.fail(ex, exc)
        except asyncio.CancelledError:
            ex.status = ex.status or 499  # the client went away
            raise
        except BaseException:
            ex.status = ex.status or 500  # the protocol answers 500 for an unexpected failure
            raise
        finally:
            self.record(ex, span)

    def take_lane(self, protocol: Any, cycle: Any) -> bool:
        """The protocol's fast lane (``fast_lane``): identifies and routes the request at once. A route
        with a lane answers it from callbacks; any other continues it in a task. False (the normal path)
        when identifying or routing fails: ``http`` meets the same error inside its error boundary."""
        ex = Exchange(cycle.scope, cycle.receive, cycle.send, perf_counter())
        try:
            self.identify(ex)
            route = self.route(ex)
        except Exception:  # a 400/404/405 (or a bug): raised again in http, answered there
            return False
        self.recorder.begin()
        if route.lane is None:
            self.resume(protocol, cycle, ex, route.first)
        else:
            route.lane.take(protocol, cycle, ex)
        return True

    def resume(self, protocol: Any, cycle: Any, ex: Exchange, stage: Stage | None,
               failure: Exception | None = None) -> None:
        """Continues a request ``take_lane`` took in a task: from ``stage`` (and the rest of the chain),
        or from ``failure`` (a stage's answer, an upstream failure), inside the error boundary."""
        protocol.start(cycle, lambda scope, receive, send: self.proceed(ex, stage, failure))

    async def proceed(self, ex: Exchange, stage: Stage | None, failure: Exception | None) -> None:
        """``http`` after routing: the same error boundary and recording."""
        try:
            if failure is not None:
                raise failure
            assert stage is not None
            await stage(ex)
        except GatewayError as exc:
            await self.fail(ex, exc)
        except asyncio.CancelledError:
            ex.status = ex.status or 499
            raise
        except BaseException:
            ex.status = ex.status or 500
            raise
        finally:
            self.record(ex, None)

    def record(self, ex: Exchange, span: RequestSpan | None) -> None:
        """A request ended: metrics, the access log line, its span."""
        now = perf_counter()
        route = ex.route
        self.recorder.request(self.unmatched if route is None else route.metric, ex.scope["method"], ex.status,
                              now - ex.started_at, ex.upstream_time, ex.bytes_received, ex.bytes_sent)
        if self.access_log is not None:
            self.access_log.write(ex, now)
        if span is not None:
            span.end(ex)

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
        path = scope["raw_path"].decode("latin-1")
        if not path.startswith("/") or "%" in path or "/." in path:  # else normalize_path has nothing to do
            path = normalize_path(path)
            if path is None:
                raise BadRequest("the request path is not a valid absolute path")
        ex.path = path
        method = scope["method"]
        found = self.lookup(ex.host, method, path)  # None: match raises the 404 or 405
        route, ex.params, ex.consumed = found if found is not None else self.table.match(ex.host, method, path)
        ex.route = route
        return route

    async def fail(self, ex: Exchange, exc: GatewayError) -> None:
        """The error boundary: a JSON error if the response has not started, else end the connection."""
        if ex.response_started:
            logger.warning("request %s failed after the response started: %s", ex.request_id, exc.message)
            raise exc
        if exc.status >= 500 and not exc.logged_once:
            logger.warning("request %s: %d %s: %s", ex.request_id, exc.status, exc.code, exc.message)
        reason = getattr(exc, "auth_reason", None)  # an auth failure: counted by route and reason
        if reason is not None:
            self.count_auth_failure(ex, reason)
        body = error_body(exc.status, exc.code, exc.message, ex.request_id)
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        headers.extend(exc.headers)
        await ex.start_response(exc.status, headers)
        await ex.send_body(body, False)

    def count_auth_failure(self, ex: Exchange, reason: str) -> None:
        family = self.metrics.schema.families["gateway_auth_failures"]
        route = ex.route.metric if ex.route is not None else self.unmatched
        self.recorder.add(family.cell(route, AUTH_REASON_INDEX.get(reason, len(AUTH_REASON_INDEX) - 1)), 1)

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message: Message = await receive()
            if message["type"] == "lifespan.startup":
                loop = asyncio.get_running_loop()
                self.sweeper = loop.create_task(self.sweep_pools())
                self.sampler = loop.create_task(self.sample_gauges())
                if self.auth is not None:
                    self.auth.start()  # signing keys fetched and kept fresh in the background
                if self.ratelimit is not None:
                    self.ratelimit.start()  # a private table's Redis sync loop (when it has one)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.ratelimit is not None:
                    await self.ratelimit.close()
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

    async def sample_gauges(self) -> None:
        """Once a second, writes what is not counted per request: open connections, pool gauges."""
        while True:
            self.sample()
            await asyncio.sleep(GAUGE_INTERVAL)

    def sample(self) -> None:
        metrics, recorder = self.metrics, self.recorder
        if self.count_connections is not None:
            recorder.set(metrics.connections_cell, self.count_connections())
        if self.access_log is not None:
            recorder.set(metrics.dropped_cell, getattr(self.access_log, "dropped", 0))
        for upstream in self.upstreams.values():
            for pool in upstream.pools:
                recorder.set(metrics.idle_cell + pool.metric, len(pool.idle))
                recorder.set(metrics.opened_cell + pool.metric, pool.opened)
                recorder.set(metrics.reused_cell + pool.metric, pool.reused)

    def close(self) -> None:
        if self.auth is not None:
            self.auth.close()
        if self.access_log is not None:
            self.access_log.close()  # writes the last lines (bounded wait)
        self.sample()  # the last counts of a draining worker
        for task in (self.sweeper, self.sampler):
            if task is not None:
                task.cancel()
        for upstream in self.upstreams.values():
            upstream.close()
        if self.tracer is not None:
            self.tracer.close()  # exports the last spans
