"""The proxy stage for upstreams with a policy: balancer, breakers, passive checks and retries.

Plain upstreams (one target, nothing configured) use ``gateway.proxy.stage.ProxyStage`` unchanged; this
subclass is chosen at config load for the others, so the single-target default pays nothing for it.

A try is: choose a target (not one tried already for this request), send the request, wait for the
response head. A try that fails before the response head (refused, reset, timed out) or, when ``5xx`` is
a retry condition, answers 5xx, is retried on another target when the method is retryable, the request
has no body, tries remain, the deadline allows and the retry budget has a token. Once the response head
is accepted, its body streams to the client and is never retried. A reused keep-alive connection found
dead before any response byte is retried on a fresh connection of the same target, as in the plain
stage, and does not count as a retry.
"""

from __future__ import annotations

import asyncio
from time import perf_counter

from gateway._fast.headers import response_headers
from gateway._fast.metrics import Recorder
from gateway.errors import ServiceUnavailable
from gateway.exchange import Exchange
from gateway.proxy.stage import ProxyStage
from gateway.proxy.upstream import UpstreamConnection, UpstreamError, UpstreamTimeout
from gateway.routing.paths import Rewriter
from gateway.upstreams.upstream import Member, Upstream


class Retryable(Exception):
    """A try ended in a way a retry may fix (carries what the client gets if none is made)."""

    def __init__(self, error: UpstreamError | UpstreamTimeout) -> None:
        super().__init__(error.message)
        self.error = error


class BalancedProxyStage(ProxyStage):
    """Proxies the exchange to one of ``upstream``'s targets, with retries on another one."""

    def __init__(self, upstream: Upstream, rewrite: Rewriter | None, preserve_host: bool,
                 recorder: Recorder) -> None:
        super().__init__(upstream, rewrite, preserve_host, recorder)
        self.retry = upstream.spec.retries

    async def __call__(self, ex: Exchange) -> None:
        scope = ex.scope
        method: str = scope["method"]
        path = ex.path if self.rewrite is None else self.rewrite(ex.path, ex.params, ex.consumed)
        query: bytes = scope["query_string"]
        target = path.encode("latin-1") + (b"?" + query if query else b"")
        member, conn, pump, started = await self.send(ex, method, target)
        try:
            if conn.status == 101:  # a WebSocket upgrade the upstream accepted (gateway.realtime)
                started = await self.tunnel(ex, conn, started)
                return
            await ex.start_response(conn.status, response_headers(conn.headers))
            data, done = conn.take_body()
            while not done:  # from here on nothing is retried: the client has the response head
                if data:
                    await ex.send_body(data, True)
                await conn.wait_body()
                data, done = conn.take_body()
            await ex.send_body(data, False)
        finally:
            self.finish(member.pool, conn, pump)
            # a body the upstream broke off is its failure; a client that left is not
            self.upstream.outcome(member, 0 if conn.failure is not None else conn.status,
                                  perf_counter() - started)
            self.measure(ex, member.pool, conn.status, started)

    async def send(self, ex: Exchange, method: str, target: bytes
                   ) -> tuple[Member, UpstreamConnection, asyncio.Task[None] | None, float]:
        """Tries targets until one answers with a response head to pass on (or raises the last error)."""
        upstream, retry, budget = self.upstream, self.retry, self.upstream.budget
        attempts = retry.attempts if retry is not None and method in retry.methods else 1
        if budget is not None:
            budget.deposit()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + retry.deadline if retry is not None and retry.deadline else None
        tried: list[Member] = []
        last: UpstreamError | UpstreamTimeout | None = None  # the failure a retry is trying to mend
        while True:
            try:
                member = upstream.choose(ex, tried)
            except ServiceUnavailable:
                if last is None:
                    raise
                raise last from None  # no other target to retry on: the client gets the real failure
            tried.append(member)
            pool = member.pool
            ex.target = pool.target
            head, framing = self.request_head(ex, method, target, pool)
            if framing:
                attempts = 1  # a request body streams through once: it cannot be sent again
            started = perf_counter()
            try:
                conn, pump = await self.try_once(ex, member, head, framing, method, limit=self.limit(deadline, loop))
            except Retryable as failure:
                upstream.outcome(member, 0, perf_counter() - started)
                self.measure(ex, pool, 0, started)
                if len(tried) >= attempts or not self.may_retry(failure.error, deadline, loop):
                    raise failure.error from None
                last = failure.error
                upstream.note_retry(member)
                continue
            except BaseException:
                member.abandon()  # the client left (or the gateway stops): nothing learnt about the target
                raise
            if conn.status >= 500 and len(tried) < attempts and retry is not None and "5xx" in retry.on \
                    and self.may_retry(None, deadline, loop):
                conn.keep_alive = False  # its body is not read: the connection cannot be reused
                self.finish(pool, conn, pump)
                upstream.outcome(member, conn.status, perf_counter() - started)
                self.measure(ex, pool, conn.status, started)
                upstream.note_retry(member)
                continue
            return member, conn, pump, started

    def limit(self, deadline: float | None, loop: asyncio.AbstractEventLoop) -> float | None:
        """Seconds this try may take to get a response head: the per-try timeout within the deadline."""
        retry = self.retry
        limit = retry.try_timeout if retry is not None else None
        if deadline is not None:
            left = deadline - loop.time()
            limit = left if limit is None else min(limit, left)
        return limit

    def may_retry(self, error: UpstreamError | UpstreamTimeout | None, deadline: float | None,
                  loop: asyncio.AbstractEventLoop) -> bool:
        retry = self.retry
        assert retry is not None  # only asked when there are tries left, so retries are configured
        if error is not None:
            condition = "timeout" if isinstance(error, UpstreamTimeout) else "error"
            if condition not in retry.on:
                return False
        now = loop.time()
        if deadline is not None and now >= deadline:
            return False
        budget = self.upstream.budget
        return budget is not None and budget.withdraw(now)

    async def try_once(self, ex: Exchange, member: Member, head: bytes, framing: bytes, method: str, *,
                       limit: float | None) -> tuple[UpstreamConnection, asyncio.Task[None] | None]:
        """One try up to the response head, within ``limit`` seconds when there is one."""
        if limit is None:
            return await self.exchange_head(ex, member, head, framing, method)
        try:
            async with asyncio.timeout(max(limit, 0.0)):
                return await self.exchange_head(ex, member, head, framing, method)
        except TimeoutError:
            raise Retryable(UpstreamTimeout(f"the upstream did not answer within {limit:g}s")) from None

    async def exchange_head(self, ex: Exchange, member: Member, head: bytes, framing: bytes, method: str
                            ) -> tuple[UpstreamConnection, asyncio.Task[None] | None]:
        pool = member.pool
        fresh_retry = not framing and method in ("GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE")
        while True:
            try:
                conn = pool.take_idle() or await pool.connect()
            except (UpstreamError, UpstreamTimeout) as exc:
                raise Retryable(exc) from None
            reused = conn.requests > 0
            conn.begin(method == "HEAD")
            pump: asyncio.Task[None] | None = None
            try:
                if framing:
                    pump = await self.send_first_body(ex, conn, head, framing)
                else:
                    conn.write(head)
                while not conn.head_done:
                    await conn.wait_head()
            except (UpstreamError, UpstreamTimeout) as exc:
                self.finish(pool, conn, pump)
                if fresh_retry and reused and not conn.received_any and not isinstance(exc, UpstreamTimeout):
                    fresh_retry = False
                    continue
                raise Retryable(exc) from None
            except BaseException:
                self.finish(pool, conn, pump)
                raise
            return conn, pump

