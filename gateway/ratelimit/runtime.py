"""A worker's rate limiter: the host's shared table, every configured limit's bucket, each route's stage.

The supervisor makes the table's segment (``segment_sizes``, listed in gateway.server.shared) before the
first worker and keeps it across worker crashes and reloads, so counts survive both; every worker maps it
and lays its ``Table`` over it (the first one writes the header: see gateway/_fast/bucket_py.py). A
worker on the pure-Python twin cannot update shared words atomically, so it keeps a private table: its
limits then hold per worker, which it logs at start when it is one of several.

Extension points:
- ``on_exceeded(listener)``: called on every refusal with the request, the policy, the limit and the
  key's strike count (refusals of that key by that limit since it got its slot): what temporary bans
  build on.
- the cross-host sync loop (gateway/ratelimit/sync.py) uses ``table.slot(base)`` (LIMIT seed, GLOBAL
  key), ``table.pending(base)`` / ``table.settle(base, tag, units)`` (units admitted here and not yet
  settled), ``buckets[seed].absorb(base, units, now)`` (merge what other hosts admitted) and
  ``table.set_share(base, hosts)`` (how many hosts a key's traffic is spread over).

Across hosts (``server.redis_url`` set): with a shared table the supervisor runs the host's sync loop
(gateway/ratelimit/host.py); a worker with a private table (the pure-Python twin, or no supervisor) runs
its own, started with the app (``start``) and stopped with it (``close``). Limits with ``mode: sync`` are
decided in Redis by the worker (gateway/ratelimit/store.py), whichever table it has.
"""

from __future__ import annotations

import logging
import mmap
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gateway import redisconn
from gateway._fast.bucket import FIXED, GCRA, SHARED_SAFE, SLIDING, Limit, Table, table_bytes
from gateway.observability.metrics import WorkerMetrics
from gateway.ratelimit.config import DEFAULT_TABLE_SLOTS, LimitSpec, RateLimitSpec, route_policies
from gateway.ratelimit.keys import KeyMaker
from gateway.ratelimit.stage import Applied, ExceededListener, Policy, RateLimitStage

if TYPE_CHECKING:
    from gateway.loader import GatewayConfig
    from gateway.routing.config import RouteSpec

logger = logging.getLogger("gateway.ratelimit")

SEGMENT = "ratelimit"
SYNC_SEGMENT = "ratelimit_sync"  # the sync loops' counters: row 0 the supervisor's, row 1 + slot a worker's
ALGORITHMS = {"gcra": GCRA, "sliding_window": SLIDING, "fixed_window": FIXED}


def segment_sizes(config: GatewayConfig) -> dict[str, int]:
    """The host-wide segment the table lives in (made even without a ``ratelimit:`` section, so a reload
    can add limits; its pages cost memory only once keys touch them), and the sync loops' counters."""
    from gateway.ratelimit.sync import ROW_WORDS

    spec = config.ratelimit
    return {SEGMENT: table_bytes(spec.table_slots if spec is not None else DEFAULT_TABLE_SLOTS),
            SYNC_SEGMENT: (1 + config.server.workers) * ROW_WORDS * 8}


def stats_row(segment: mmap.mmap | None, row: int) -> memoryview | None:
    """Row ``row`` of the sync counters (None when the segment lacks it: the loop counts privately)."""
    from gateway.ratelimit.sync import ROW_WORDS

    if segment is None or (row + 1) * ROW_WORDS * 8 > len(segment):
        return None
    return memoryview(segment).cast("q")[row * ROW_WORDS:(row + 1) * ROW_WORDS]


def make_limit(table: Table, spec: LimitSpec) -> Limit:
    return Limit(table, ALGORITHMS[spec.algorithm], spec.limit, spec.period_ns, burst=spec.burst, seed=spec.seed)


class RateLimiter:
    """The rate-limit state of one worker."""

    def __init__(self, spec: RateLimitSpec, metrics: WorkerMetrics, segment: mmap.mmap | None = None,
                 workers: int | None = None, *, redis_url: str | None = None,
                 stats: mmap.mmap | None = None) -> None:
        self.spec = spec
        self.metrics = metrics
        families = metrics.schema.families
        decisions = families["gateway_ratelimit_decisions"]
        self.route_cells = {values[0]: decisions.cell(i, 0) for i, values in enumerate(decisions.dims[0].values)}
        degraded = families["gateway_ratelimit_degraded_decisions"]
        self.degraded_cells = {values[0]: degraded.cell(i, 0) for i, values in enumerate(degraded.dims[0].values)}
        self.shared = SHARED_SAFE and segment is not None
        buffer = segment if SHARED_SAFE and segment is not None else mmap.mmap(-1, table_bytes(spec.table_slots))
        self.buffer = buffer
        self.table = Table(buffer, metrics.cells, families["gateway_ratelimit_evictions"].offset)
        self.buckets: dict[int, Limit] = {}  # by seed
        self.listeners: list[ExceededListener] = []
        self.redis_url = redis_url or None
        self.remote: Any = None  # a RemoteStore once a sync-mode limit needs Redis
        self.remote_limits: dict[int, Any] = {}  # RemoteLimit by seed
        self.sync: Any = None  # this worker's HostSync (private table and Redis only)
        self.stats = stats
        self.explain(workers)

    def explain(self, workers: int | None) -> None:
        wanted = table_bytes(self.spec.table_slots) // 64 - 1
        if self.shared and self.table.nslots != wanted:
            logger.info("the rate-limit table keeps its %d slots until the gateway restarts (%d configured)",
                        self.table.nslots, wanted)
        if not self.shared and workers != 1:
            logger.warning("rate limits are counted per worker, not per host: %s",
                           "no shared segment" if SHARED_SAFE else "the compiled bucket module is not built")

    def on_exceeded(self, listener: ExceededListener) -> None:
        """``listener(ex, policy, limit, strikes)`` hears every refusal (see the module docstring)."""
        self.listeners.append(listener)

    def bucket(self, spec: LimitSpec) -> Limit:
        """The bucket of a configured limit (one per limit, shared by every route that applies it)."""
        seed = spec.seed
        found = self.buckets.get(seed)
        if found is None:
            found = self.buckets[seed] = make_limit(self.table, spec)
        return found

    def remote_limit(self, spec: LimitSpec) -> Any:
        """The Redis-decided twin of a ``mode: sync`` limit (None without Redis: the table decides)."""
        if spec.mode != "sync" or self.redis_url is None:
            return None
        from gateway.ratelimit.store import RemoteLimit, RemoteStore

        if self.remote is None:
            self.remote = RemoteStore(self.redis_url, self.spec.redis)
        found = self.remote_limits.get(spec.seed)
        if found is None:
            found = self.remote_limits[spec.seed] = RemoteLimit(spec, self.remote)
        return found

    def start(self) -> None:
        """With Redis and a private table: this worker's own sync loop (in the running event loop)."""
        if self.shared or self.redis_url is None or self.sync is not None:
            return
        from gateway.ratelimit.store import open_client
        from gateway.ratelimit.sync import HostSync

        slot = int(os.environ.get("GATEWAY_WORKER_SLOT", "0"))
        specs = self.spec.all_limits()
        limits = {seed: self.bucket(limit) for seed, limit in specs.items()}
        self.sync = HostSync(self.buffer, self.table, limits, specs, spec=self.spec.redis,
                             client=open_client(self.redis_url, self.spec.redis.timeout),
                             stats=stats_row(self.stats, 1 + slot))
        self.sync.start()

    async def close(self) -> None:
        if self.sync is not None:
            await self.sync.stop()
            await redisconn.close(self.sync.client)
            self.sync = None
        if self.remote is not None:
            await self.remote.close()
            self.remote = None

    def stage(self, route: RouteSpec) -> RateLimitStage | None:
        """The route's rate-limit stage, or None when no policy applies to it."""
        specs = route_policies(route.ratelimit, self.spec)
        if not specs:
            return None
        policies = []
        for spec in specs:
            extra = [spec.tier_header] if spec.tier_header else []
            keys = KeyMaker(spec.key, self.spec.trusted_hops, route.name, extra)
            limits = {"": tuple(self.applied(limit) for limit in spec.limits)}
            limits.update({tier: tuple(self.applied(limit) for limit in tier_limits)
                           for tier, tier_limits in spec.tiers.items()})
            policies.append(Policy(spec, keys, limits))
        return RateLimitStage(tuple(policies), self.table.now, self.metrics.recorder, self.route_cells[route.name],
                              headers=self.spec.headers, listeners=self.listeners, store_state=self.store_state(),
                              on_store_error=self.spec.redis.on_store_error,
                              degraded_cell=self.degraded_cells[route.name])

    def store_state(self) -> memoryview | None:
        """The table's words, whose STORE_STATE a sync loop sets while Redis is unavailable (None: no Redis)."""
        return memoryview(self.buffer).cast("q") if self.redis_url is not None else None

    def applied(self, spec: LimitSpec) -> Applied:
        return Applied.of(spec, self.bucket(spec), self.remote_limit(spec))


def make_limiter(spec: RateLimitSpec | None, metrics: WorkerMetrics, shared: Mapping[str, mmap.mmap],
                 workers: int | None, redis_url: str | None = None) -> RateLimiter | None:
    """The worker's limiter (None without a ``ratelimit:`` section)."""
    if spec is None:
        return None
    return RateLimiter(spec, metrics, shared.get(SEGMENT), workers, redis_url=redis_url,
                       stats=shared.get(SYNC_SEGMENT))
