"""The proxy's fast lane: a request without a body on a plain proxy route, answered from callbacks.

The normal path runs each request as an asyncio Task driving the ASGI app: a Task created, stepped and
woken, a coroutine frame per stage, an ASGI message dict per ``send``. A route whose chain ends in the
``ProxyStage`` of a plain upstream, and whose other stages can decide without awaiting (``enter(ex)``: the
body limit, auth, rate limit), needs none of it for a request without a body when those stages decide at
once and an idle keep-alive connection to the target is at hand (no tracer). Measured on a small proxied response
(bench.micro_pipeline, compiled build): 138,000 instructions per request (callgrind) and 12.3 us through
the task, 110,000 and 9.4 us on the lane, when the lane was added (since: 130,000 and 99,000 instructions).

    protocol: head parsed, no body -> Gateway.take_lane: request id, route (synchronous)
      -> ProxyLane.take: each stage's ``enter``, then the ProxyStage's request head written on an idle
         pooled connection, whose listener (``UpstreamConnection.listen``) is a LaneRun
    upstream connection, each read -> LaneRun.on_upstream: the response head and body written to the
      client through the request cycle's own framing (``_start``/``_send_body``, as ``send`` does); at
      the end the connection goes back to the pool and the request is recorded as ``Gateway.http`` does

What stays on the normal path, so that what a client, an upstream and the metrics see does not change:
the request continues in a task (``Gateway.resume``) from a stage that must await (its ``enter`` returned
False, having done nothing), with a stage's refusal raised inside the app's error boundary (401, 429...),
and from the ProxyStage when no connection is idle (the task connects). A failure before the response
started hands the request to a task that continues it as well: a reused connection that
failed before answering is tried again there (the ProxyStage's retry, which may then retry once more on
another reused connection), any other failure is raised
inside the app's error boundary (the same 502/504 JSON and logs), after being measured as the ProxyStage
measures it. A failure after the response started ends there too: the client connection closes. A client
that goes away cancels the run (it is ``cycle.task`` meanwhile, and in uvicorn's ``state.tasks`` so a
drain waits for it and a drain timeout cancels it): the upstream connection is aborted and the request is
recorded as 499, as a cancelled task would be. Backpressure: while the client's socket is full, the
upstream socket is not read (and its read timeout does not run, as the ProxyStage does not wait then).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from time import perf_counter
from typing import TYPE_CHECKING, Any

from gateway._fast.done import DONE
from gateway._fast.headers import response_headers
from gateway._fast.protocol import HttpProtocol, RequestCycle
from gateway.errors import GatewayError, UpstreamError
from gateway.exchange import Exchange, Stage
from gateway.proxy.pool import Pool
from gateway.proxy.stage import IDEMPOTENT, ProxyStage
from gateway.proxy.upstream import UpstreamConnection

if TYPE_CHECKING:
    from gateway.app import Gateway

logger = logging.getLogger("gateway.protocol")  # the protocol's error boundary, mirrored by LaneRun.crash


def lane_for(gateway: Gateway, stages: Sequence[Stage]) -> ProxyLane | None:
    """The fast lane of a route with these stages (built at config load), or None: its last stage must be
    a plain upstream's ProxyStage and every other one able to decide without awaiting (``enter``)."""
    *before, proxy = stages
    if type(proxy) is not ProxyStage or not all(hasattr(stage, "enter") for stage in before):
        return None
    return ProxyLane(gateway, [(stage, stage.enter) for stage in before], proxy)  # type: ignore[attr-defined]


class ProxyLane:
    """The fast lane of a route: the ``enter`` of the stages ``before`` its ProxyStage, then ``stage``."""

    __slots__ = ("before", "gateway", "stage")

    def __init__(self, gateway: Gateway, before: list[tuple[Stage, Callable[[Exchange], bool]]],
                 stage: ProxyStage) -> None:
        self.gateway = gateway
        self.before = before
        self.stage = stage

    def take(self, protocol: HttpProtocol, cycle: RequestCycle, ex: Exchange) -> None:
        """Runs the stages before the proxy and sends the request on an idle pooled connection, listening
        for the response; continues in a task (``Gateway.resume``) where any of that cannot be done now."""
        for step, enter in self.before:
            try:
                entered = enter(ex)
            except Exception as exc:  # the stage's answer (a GatewayError), or a failure: in the boundary
                self.gateway.resume(protocol, cycle, ex, None, exc)
                return
            if not entered:  # the stage must await: it runs in the task, and the rest of the chain after it
                self.gateway.resume(protocol, cycle, ex, step)
                return
        stage = self.stage
        method: str = ex.scope["method"]
        try:
            pool = stage.upstream.pick()
            head, _ = stage.request_head(ex, method, stage.target(ex), pool)
        except Exception:  # raised again by the ProxyStage, inside the error boundary
            self.gateway.resume(protocol, cycle, ex, stage)
            return
        conn = pool.take_idle()
        if conn is None:  # the ProxyStage connects
            self.gateway.resume(protocol, cycle, ex, stage)
            return
        ex.target = pool.target
        conn.begin(method == "HEAD")
        tasks = protocol.state.tasks
        run = LaneRun(self, cycle, ex, pool, conn, tasks)
        conn.listen(run)
        cycle.task = run
        tasks.add(run)
        try:
            conn.write(head)
        except Exception:  # a transport already shut under the connection: as the ProxyStage's 500
            run.crash()
            return
        conn.watch()


class LaneRun:
    """One request on the fast lane: its upstream connection's listener, and its ``cycle.task``."""

    __slots__ = ("conn", "cycle", "ex", "finished", "lane", "pool", "started", "tasks")

    def __init__(self, lane: ProxyLane, cycle: RequestCycle, ex: Exchange, pool: Pool,  # noqa: PLR0917 - hot path
                 conn: UpstreamConnection, tasks: set[Any]) -> None:
        self.lane = lane
        self.cycle = cycle
        self.ex = ex
        self.pool = pool
        self.conn = conn
        self.tasks = tasks  # the server's running requests (uvicorn's state.tasks), this one among them
        self.started = perf_counter()
        self.finished = False  # the connection is released (done(): the request no longer runs here)

    def on_upstream(self) -> None:
        """Something happened on the upstream connection: forwards what arrived, or ends the run."""
        conn = self.conn
        try:
            if conn.failure is not None:
                self.fail(conn.failure)
                return
            if not conn.head_done:
                conn.watch()
                return
            ex = self.ex
            if not ex.response_started:
                status = conn.status
                if status == 101:  # only an upgrade request may switch, and none takes this lane
                    self.fail(UpstreamError("the upstream switched protocols without being asked to"))
                    return
                headers = response_headers(conn.headers)
                ex.begin_response(status, headers)
                self.cycle._start(status, headers)
            data, done = conn.take_body()
            if done:
                self.complete(data)
            elif data:
                self.send(data)
            else:
                conn.watch()
        except Exception:
            self.crash()

    def send(self, data: bytes) -> None:
        """Writes body bytes; while the client's socket is full the upstream is not read."""
        self.ex.bytes_sent += len(data)
        drained = self.cycle._send_body(data, True)
        if drained is DONE:
            self.conn.watch()
            return
        self.conn.pause_reading()
        drained.add_done_callback(self.on_drained)  # type: ignore[attr-defined]

    def on_drained(self, drained: asyncio.Future[None]) -> None:
        if drained.cancelled() or drained.exception() is not None or self.finished:
            return  # the client went away: cancel() ended the run
        self.conn.resume_reading()
        self.conn.watch()

    def complete(self, data: bytes) -> None:
        """The response ended: the last bytes, the connection back to the pool, the request recorded."""
        ex = self.ex
        ex.bytes_sent += len(data)
        self.cycle._send_body(data, False)
        self.stop()
        lane = self.lane
        lane.stage.measure(ex, self.pool, self.conn.status, self.started)
        lane.gateway.record(ex, None)

    def fail(self, error: Exception) -> None:
        """The upstream failed: the request continues in a task, measured as the ProxyStage measures."""
        ex, conn = self.ex, self.conn
        self.stop()
        failure: Exception | None = error
        if ex.response_started:
            self.measure_answered()
        elif isinstance(error, UpstreamError):  # a timeout is neither retried nor measured there
            # idempotent (and without a body): a reused connection that fails unanswered is tried again
            if ex.scope["method"] in IDEMPOTENT and not conn.received_any:
                failure = None  # the ProxyStage tries again, on another connection
            else:
                self.lane.stage.measure(ex, self.pool, 0, self.started)
        self.lane.gateway.resume(self.cycle.protocol, self.cycle, ex, self.lane.stage, failure)

    def stop(self) -> None:
        """The run lets go of its connection (pooled if its exchange ended cleanly, else aborted) and of
        its request: ``cycle.task`` would otherwise keep a reference cycle alive until the next garbage
        collection (measured: a busy server then runs slower than without the lane)."""
        self.finished = True
        self.conn.listen(None)
        self.pool.release(self.conn)
        self.tasks.discard(self)
        self.cycle.task = None

    def measure_answered(self) -> None:
        """Measures the upstream exchange if it answered: the ProxyStage measures an exchange it leaves
        early (cancelled, crashed) only once the response has started."""
        if self.ex.response_started:
            self.lane.stage.measure(self.ex, self.pool, self.conn.status, self.started)

    def done(self) -> bool:
        return self.finished

    def cancel(self, msg: Any = None) -> bool:
        """The client went away, or a drain stopped waiting: what cancelling the request's task does."""
        if self.finished:
            return False
        ex = self.ex
        self.stop()
        self.measure_answered()
        ex.status = ex.status or 499
        self.lane.gateway.record(ex, None)
        cycle = self.cycle
        if not cycle.disconnected:  # as the cancelled task would, once it ran: end the connection
            protocol = cycle.protocol
            protocol.loop.call_soon(protocol.abort, cycle, None)
        return True

    def crash(self) -> None:
        """An unexpected error in a callback: what the protocol's error boundary does with one."""
        logger.exception("request failed inside the gateway")
        if self.finished:
            return
        ex = self.ex
        self.stop()
        self.measure_answered()
        ex.status = ex.status or 500
        self.lane.gateway.record(ex, None)
        self.cycle.protocol.abort(self.cycle, GatewayError())
