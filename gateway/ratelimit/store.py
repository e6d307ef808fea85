"""The limiter's side of Redis: the client, the circuit breaker, and synchronous-mode limits.

Every Redis call the limiter makes has a short timeout (``ratelimit.redis.timeout``, 50 ms by default)
and goes through a ``Breaker``: after FAILURES failures in a row it opens, and while it is open nothing
waits on Redis (the sync loop skips its batch, a synchronous-mode limit decides as ``on_store_error``
says at once); after ``breaker_cooldown`` one call tries Redis again, and its success closes the breaker.
So an outage costs a request no latency beyond the few calls that discover it.

``RemoteLimit`` is a limit with ``mode: sync``: one atomic Lua check-and-increment in Redis per request
(gateway/ratelimit/lua.py: TAKE_GCRA on Redis's clock, TAKE_WINDOW on epoch window numbers), never over
the limit across any number of hosts, at the cost of one round trip per request. It reports the same
numbers as a table bucket (remaining, reset, wait), so the stage's headers do not care which decided.

The global key of a bucket is the table's GLOBAL word (gateway/_fast/bucket_py.py): SipHash-1-3 under a
fixed key for the compiled build, BLAKE2b for the pure-Python twin. A fleet therefore runs one build on
every host (the twin is for development: its limits are per worker process anyway).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from gateway import redisconn
from gateway._fast import bucket_ops
from gateway._fast.bucket import FIXED, GCRA, IMPLEMENTATION
from gateway._fast.bucket_py import GLOBAL_K0, GLOBAL_K1
from gateway.ratelimit.config import LimitSpec, RedisSpec
from gateway.ratelimit.lua import TAKE_GCRA, TAKE_WINDOW, bucket_key, window_key

logger = logging.getLogger("gateway.ratelimit")

FAILURES = 2  # failures in a row that open the breaker
MASK64 = 0xFFFF_FFFF_FFFF_FFFF
ALGORITHMS = {"gcra": GCRA, "sliding_window": 1, "fixed_window": FIXED}
STORE_ERRORS = (OSError, RedisError, TimeoutError, asyncio.TimeoutError)
PREPARE_TIMEOUT = 2.0  # a client's first I/O (a Cluster's slot map and command table: 250-400 ms here)


def new_host_id() -> str:
    """A random id naming this table's contributions in Redis (a restarted host is a new one)."""
    return os.urandom(6).hex()


@functools.lru_cache(maxsize=16384)
def global_hash(seed: int, key: bytes) -> int:
    """The bucket's host-independent name: what the table stores in GLOBAL for (seed, key). Cached: the
    compiled build's SipHash is only reachable from Python as its reference implementation (~20 us)."""
    if IMPLEMENTATION == "compiled":
        value = bucket_ops.siphash(GLOBAL_K0 & MASK64, GLOBAL_K1 & MASK64, (seed & MASK64).to_bytes(8, "little") + key)
        return value - (1 << 64) if value >= 1 << 63 else value
    return bucket_ops.keyed_hash(GLOBAL_K0, GLOBAL_K1, seed, key)


TAKE_GCRA_SCRIPT = redisconn.Script(TAKE_GCRA)
TAKE_WINDOW_SCRIPT = redisconn.Script(TAKE_WINDOW)


def open_client(url: str, timeout: float) -> redisconn.Client:
    """An asyncio client for ``url`` (any form gateway/redisconn.py reads: one server, Sentinel, Cluster);
    every call times out after ``timeout`` seconds (unless the URL says otherwise), and is never retried."""
    return redisconn.connect(url, timeout=timeout)


def redacted(exc: BaseException) -> str:
    """A failure's name, never its text (a URL with a password can be in it)."""
    return "timeout" if isinstance(exc, TimeoutError | asyncio.TimeoutError) else type(exc).__name__


class Breaker:
    """A circuit breaker over Redis calls (see the module docstring); ``clock`` in seconds."""

    def __init__(self, cooldown: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.cooldown = cooldown
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None  # None: closed

    @property
    def closed(self) -> bool:
        return self.opened_at is None

    def allow(self) -> bool:
        """Whether a call may go to Redis now (closed, or open long enough for one trial)."""
        if self.opened_at is None:
            return True
        if self.clock() - self.opened_at >= self.cooldown:
            self.opened_at = self.clock()  # one trial per cooldown
            return True
        return False

    def success(self) -> bool:
        """A call succeeded; True when that closed an open breaker."""
        self.failures = 0
        if self.opened_at is None:
            return False
        self.opened_at = None
        return True

    def failure(self) -> bool:
        """A call failed; True when that opened the breaker."""
        self.failures += 1
        if self.opened_at is None and self.failures >= FAILURES:
            self.opened_at = self.clock()
            return True
        return False


class RemoteLimit:
    """A ``mode: sync`` limit, decided by one atomic Redis script per request (see the module docstring).

    ``take`` answers True (admitted), False (refused) or None (Redis unavailable: ``on_store_error``
    decides), and leaves ``remaining``, ``reset``, ``wait`` (ns) as a table bucket does."""

    def __init__(self, spec: LimitSpec, store: RemoteStore) -> None:
        self.spec = spec
        self.store = store
        self.algorithm = ALGORITHMS[spec.algorithm]
        self.limit = spec.limit
        self.period = spec.period_ns
        self.burst = spec.burst
        self.seed = spec.seed
        self.interval = max(spec.period_ns // spec.limit, 1)
        self.tolerance = spec.burst * self.interval
        self.interval_us = max(self.interval // 1000, 1)
        self.tolerance_us = self.tolerance // 1000
        self.ttl_ms = (self.tolerance // 1_000_000 if self.algorithm == GCRA else 2 * self.period // 1_000_000) + 1000
        self.remaining = 0
        self.reset = 0
        self.wait = 0
        self.strikes = 0

    @property
    def quota(self) -> int:
        return self.burst if self.algorithm == GCRA else self.limit

    @property
    def span(self) -> int:
        return self.tolerance if self.algorithm == GCRA else self.period

    def keys(self, key: bytes, now: int) -> tuple[list[str], float, int]:
        """(Redis keys, weight of the previous window, ns elapsed in this window) for ``key`` at epoch ns."""
        glob = global_hash(self.seed, key)
        prefix = self.store.spec.prefix
        if self.algorithm == GCRA:
            return [bucket_key(prefix, self.seed, glob)], 0.0, 0
        window = now // self.period
        elapsed = now - window * self.period
        weight = (self.period - elapsed) / self.period if self.algorithm != FIXED else 0.0
        return [window_key(prefix, self.seed, glob, window), window_key(prefix, self.seed, glob, window - 1)], \
            weight, elapsed

    async def take(self, key: bytes, now: int, units: int = 1) -> bool | None:
        keys, weight, elapsed = self.keys(key, now)
        if self.algorithm == GCRA:
            args: list[Any] = [self.store.host, self.interval_us, self.tolerance_us, self.ttl_ms, units]
            reply = await self.store.call(TAKE_GCRA_SCRIPT, keys, args)
            if reply is None:
                return None
            occupied = int(reply[1]) * 1000
            if int(reply[0]) == 1:
                self.remaining = max((self.tolerance - occupied) // self.interval, 0)
                self.reset = occupied
                return True
            self.remaining, self.reset, self.wait = 0, occupied, max(int(reply[2]) * 1000, 1)
            return False
        args = [self.store.host, self.limit, repr(weight), self.ttl_ms, units]
        reply = await self.store.call(TAKE_WINDOW_SCRIPT, keys, args)
        if reply is None:
            return None
        current, previous = int(reply[1]), int(reply[2])
        self.reset = self.period - elapsed
        if int(reply[0]) == 1:
            self.remaining = max(int(self.limit - (previous * weight + current)), 0)
            return True
        self.remaining = 0
        self.wait = window_wait(self.period, self.limit, previous, current, elapsed) if weight > 0 else self.reset
        return False

    async def refund(self, key: bytes, now: int) -> None:
        """Gives back the unit ``take`` admitted (another limit of the same request refused it)."""
        await self.take(key, now, -1)


def window_wait(period: int, limit: int, previous: int, current: int, elapsed: int) -> int:
    """ns until a sliding window admits one more request (as gateway/_fast/bucket_py.py computes it)."""
    if current + 1 <= limit and previous > 0:
        needed = period - (limit - current - 1) * period / previous
        return max(int(-(-needed // 1.0)) - elapsed, 1)
    needed = period - (limit - 1) * period / current if current > 0 else 0.0
    return period - elapsed + max(int(-(-needed // 1.0)), 0)


class RemoteStore:
    """A worker's Redis for synchronous-mode limits: the client, its breaker, state changes logged once."""

    def __init__(self, url: str, spec: RedisSpec, client: redisconn.Client | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.spec = spec
        self.client = client if client is not None else open_client(url, spec.timeout)
        self.breaker = Breaker(spec.breaker_cooldown, clock)
        self.host = new_host_id()
        self.prepared = False

    async def call(self, script: redisconn.Script, keys: list[str], args: list[Any]) -> Any:
        """The script's reply, or None when Redis is unavailable (failed now, or the breaker is open)."""
        if not self.breaker.allow():
            return None
        try:
            if not self.prepared:  # once per worker (and after a failure): outside the short timeout
                async with asyncio.timeout(PREPARE_TIMEOUT):
                    await redisconn.prepare(self.client)
                self.prepared = True
            async with asyncio.timeout(self.spec.timeout):
                [reply] = await redisconn.run_script(self.client, script, [(keys, args)])
            if isinstance(reply, Exception):
                raise reply
        except STORE_ERRORS as exc:
            self.prepared = False
            if self.breaker.failure():
                logger.warning("rate limits: Redis unavailable (%s); synchronous limits decide as "
                               "on_store_error: %s says", redacted(exc), self.spec.on_store_error)
            return None
        if self.breaker.success():
            logger.warning("rate limits: Redis reachable again; synchronous limits decide in Redis")
        return reply

    async def close(self) -> None:
        await redisconn.close(self.client)
