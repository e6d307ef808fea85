"""The rate limiter's host service (gateway/server/services.py): the host's Redis sync loop and its metrics.

With the compiled build every worker of the host decides in one shared table, so the supervisor runs
the one sync loop of the host (gateway/ratelimit/sync.py) over its own view of that table, started once
``server.redis_url`` and a ``ratelimit:`` section are both configured and following reloads (new limits,
another URL, Redis dropped). With the pure-Python twin the workers run the loops themselves and this
service only reports them.

Metrics (every loop of the host, from the ``ratelimit_sync`` segment's rows: the supervisor's and each
worker's):

    gateway_ratelimit_sync_batches_total          batches Redis answered
    gateway_ratelimit_sync_errors_total           batches that failed or timed out
    gateway_ratelimit_sync_units_total{direction} units pushed to Redis / absorbed from other hosts
    gateway_ratelimit_sync_duration_seconds       a batch's round trip (histogram)
    gateway_ratelimit_store_up                    1 while limits are global, 0 while on_store_error applies
    gateway_ratelimit_store_transitions_total     changes between the two
    gateway_ratelimit_store_hosts                 live hosts at the last heartbeat
"""

from __future__ import annotations

import asyncio
import logging
import mmap
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from gateway import redisconn
from gateway._fast.bucket import SHARED_SAFE, Table
from gateway.ratelimit.runtime import SEGMENT, SYNC_SEGMENT, make_limit, stats_row
from gateway.ratelimit.store import open_client
from gateway.ratelimit.sync import (
    ABSORBED,
    BATCHES,
    ERRORS,
    HOSTS,
    LATENCY_BUCKETS,
    LATENCY_CELLS,
    LATENCY_SUM,
    PUSHED,
    ROW_FALLBACK,
    ROW_STOPPED,
    ROW_WORDS,
    STATE,
    TRANSITIONS,
    HostSync,
)

if TYPE_CHECKING:
    from gateway.loader import GatewayConfig

logger = logging.getLogger("gateway.ratelimit")


def service(segments: Mapping[str, mmap.mmap], registry: CollectorRegistry) -> RateLimitHost:
    host = RateLimitHost(segments)
    registry.register(host)
    return host


class RateLimitHost(Collector):
    """Runs the host's sync loop (compiled build) and collects every loop's counters."""

    def __init__(self, segments: Mapping[str, mmap.mmap]) -> None:
        self.segments = segments
        self.table: Table | None = None
        self.sync: HostSync | None = None
        self.url: str | None = None
        self.stopping: set[Any] = set()

    def apply(self, config: GatewayConfig) -> None:
        spec, url = config.ratelimit, config.server.redis_url or None
        segment = self.segments.get(SEGMENT)
        if spec is None or url is None or not SHARED_SAFE or segment is None:
            self.stop()
            return
        if self.sync is not None and url != self.url:
            self.stop()
        if self.table is None:
            cells = memoryview(bytearray(8)).cast("q")
            self.table = Table(segment, cells, -1)
        specs = spec.all_limits()
        limits = {seed: make_limit(self.table, limit) for seed, limit in specs.items()}
        if self.sync is None:
            self.url = url
            self.sync = HostSync(segment, self.table, limits, specs, spec=spec.redis,
                                 client=open_client(url, spec.redis.timeout),
                                 stats=stats_row(self.segments.get(SYNC_SEGMENT), 0))
            self.sync.start()
            logger.info("rate limits: this host syncs its counts through Redis every %gms",
                        spec.redis.sync_interval * 1000)
        else:
            self.sync.configure(limits, specs, spec.redis)

    def stop(self) -> None:
        """Stops the loop (in the background: ``apply`` is not a coroutine)."""
        if self.sync is None:
            return
        sync, self.sync = self.sync, None
        task = asyncio.get_running_loop().create_task(self.finish(sync))
        self.stopping.add(task)
        task.add_done_callback(self.stopping.discard)

    async def finish(self, sync: HostSync) -> None:
        await sync.stop()
        await redisconn.close(sync.client)
        sync.release()

    async def close(self) -> None:
        """Stops the loop and lets go of the segments (the supervisor unmaps them next)."""
        if self.sync is not None:
            sync, self.sync = self.sync, None
            await self.finish(sync)
        for task in list(self.stopping):
            await task
        self.table = None

    def rows(self) -> list[memoryview]:
        segment = self.segments.get(SYNC_SEGMENT)
        if segment is None:
            return []
        words = memoryview(segment).cast("q")
        rows = [words[i:i + ROW_WORDS] for i in range(0, len(words) - ROW_WORDS + 1, ROW_WORDS)]
        return [row for row in rows if row[STATE] != ROW_STOPPED or row[BATCHES] or row[ERRORS]]

    def collect(self) -> Iterator[Any]:
        rows = self.rows()
        if not rows:
            return
        total = [sum(row[i] for row in rows) for i in range(ROW_WORDS)]
        running = [row for row in rows if row[STATE] != ROW_STOPPED]
        yield CounterMetricFamily("gateway_ratelimit_sync_batches", "Rate-limit sync batches Redis answered.",
                                  value=total[BATCHES])
        yield CounterMetricFamily("gateway_ratelimit_sync_errors",
                                  "Rate-limit sync batches that failed or timed out.", value=total[ERRORS])
        units = CounterMetricFamily("gateway_ratelimit_sync_units",
                                    "Rate-limit units pushed to Redis (this host's admissions) and absorbed "
                                    "from it (the other hosts').", labels=("direction",))
        units.add_metric(("pushed",), total[PUSHED])
        units.add_metric(("absorbed",), total[ABSORBED])
        yield units
        cumulative, buckets = 0, []
        for i, bound in enumerate(LATENCY_BUCKETS):
            cumulative += total[LATENCY_CELLS + i]
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        yield HistogramMetricFamily("gateway_ratelimit_sync_duration_seconds",
                                    "Round trip of one rate-limit sync batch.", buckets=buckets,
                                    sum_value=total[LATENCY_SUM] / 1e9)
        if running:
            up = 0 if any(row[STATE] == ROW_FALLBACK for row in running) else 1
            yield GaugeMetricFamily("gateway_ratelimit_store_up",
                                    "1 while rate limits are global (Redis answers), 0 while on_store_error "
                                    "applies.", value=up)
            yield GaugeMetricFamily("gateway_ratelimit_store_hosts",
                                    "Gateway hosts sharing the rate limits (live at the last heartbeat).",
                                    value=max(row[HOSTS] for row in running))
        yield CounterMetricFamily("gateway_ratelimit_store_transitions",
                                  "Changes between global rate limits and on_store_error's fallback.",
                                  value=total[TRANSITIONS])
