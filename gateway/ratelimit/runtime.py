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
- for a cross-host sync loop: ``table.slots()``, ``table.slot(base)`` (LIMIT seed, GLOBAL key),
  ``table.drain(base)`` (units admitted here since the last drain) and ``buckets[seed].absorb(base,
  units, now)`` (merge what other hosts admitted).
"""

from __future__ import annotations

import logging
import mmap
from collections.abc import Mapping
from typing import TYPE_CHECKING

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
ALGORITHMS = {"gcra": GCRA, "sliding_window": SLIDING, "fixed_window": FIXED}


def segment_sizes(config: GatewayConfig) -> dict[str, int]:
    """The host-wide segment the table lives in (made even without a ``ratelimit:`` section, so a reload
    can add limits; its pages cost memory only once keys touch them)."""
    spec = config.ratelimit
    return {SEGMENT: table_bytes(spec.table_slots if spec is not None else DEFAULT_TABLE_SLOTS)}


class RateLimiter:
    """The rate-limit state of one worker."""

    def __init__(self, spec: RateLimitSpec, metrics: WorkerMetrics, segment: mmap.mmap | None = None,
                 workers: int | None = None) -> None:
        self.spec = spec
        self.metrics = metrics
        families = metrics.schema.families
        decisions = families["gateway_ratelimit_decisions"]
        self.route_cells = {values[0]: decisions.cell(i, 0) for i, values in enumerate(decisions.dims[0].values)}
        self.shared = SHARED_SAFE and segment is not None
        buffer = segment if SHARED_SAFE and segment is not None else mmap.mmap(-1, table_bytes(spec.table_slots))
        self.table = Table(buffer, metrics.cells, families["gateway_ratelimit_evictions"].offset)
        self.buckets: dict[int, Limit] = {}  # by seed
        self.listeners: list[ExceededListener] = []
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
            found = self.buckets[seed] = Limit(self.table, ALGORITHMS[spec.algorithm], spec.limit, spec.period_ns,
                                               burst=spec.burst, seed=seed)
        return found

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
                              headers=self.spec.headers, listeners=self.listeners)

    def applied(self, spec: LimitSpec) -> Applied:
        return Applied.of(spec, self.bucket(spec))


def make_limiter(spec: RateLimitSpec | None, metrics: WorkerMetrics, shared: Mapping[str, mmap.mmap],
                 workers: int | None) -> RateLimiter | None:
    """The worker's limiter (None without a ``ratelimit:`` section)."""
    return None if spec is None else RateLimiter(spec, metrics, shared.get(SEGMENT), workers)
