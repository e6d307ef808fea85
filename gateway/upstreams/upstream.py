"""A configured upstream at run time: its targets' pools, which target takes a request, and what each
outcome teaches (latency EWMA, passive ejection, breakers, retry budget).

A plain upstream (one target, no policy) keeps the original one-line ``pick``; the proxy stage does not
even call ``choose`` for it. Everything the workers must agree on is read from and written to the
shared records (``gateway.upstreams.state``); the EWMA and the breaker windows are this worker's own.
"""

from __future__ import annotations

import mmap
import os
import time
from collections.abc import Mapping

from gateway.errors import ServiceUnavailable
from gateway.exchange import Exchange
from gateway.proxy.pool import Pool
from gateway.upstreams.balancers import Balancer, make_balancer
from gateway.upstreams.breaker import Breaker, RetryBudget
from gateway.upstreams.config import UpstreamSpec
from gateway.upstreams.state import (
    EJECTED_UNTIL,
    EJECTIONS,
    EJECTIONS_TOTAL,
    EWMA_US,
    HEALTH,
    OUTSTANDING,
    RETRIES,
    RETURNED_AT,
    ROW_FIELDS,
    SEGMENT,
    SHARED_FIELDS,
    Table,
    key_of,
)

EWMA_DECAY = 0.3  # weight of the newest latency in the EWMA
FAILURE_PENALTY = 1.0  # seconds counted as the latency of a failed exchange (P2C steers away from it)
EPSILON = 1e-4  # seconds added to a latency EWMA so untried targets (EWMA 0) still compare by load
MIN_FACTOR = 0.1  # a slow-starting target gets at least this share of its weight
EWMA_HALF_LIFE = 2e9  # ns: an EWMA not refreshed by new samples halves this often, so a target P2C
# steered away from (after failures or slowness) is tried again, and one that recovered wins back traffic


class NoTarget(ServiceUnavailable):
    code = "no_healthy_upstream"
    default_message = "no upstream target is available (all unhealthy, ejected or failing fast)"


class BreakerOpen(ServiceUnavailable):
    code = "circuit_open"
    default_message = "the upstream is failing; the gateway is not sending it requests for a moment"


class Member:
    """One target of an upstream in this worker: its pool, weight, shared record and learned latency."""

    def __init__(self, upstream: Upstream, pool: Pool, weight: int, backup: bool, base: int) -> None:
        self.upstream = upstream
        self.pool = pool
        self.weight = weight
        self.backup = backup
        self.cells = upstream.table.cells
        self.base = base
        self.out_cell = upstream.table.row_cell(base, OUTSTANDING)
        self.ewma_cell = upstream.table.row_cell(base, EWMA_US)
        self.retries_cell = upstream.table.row_cell(base, RETRIES)
        self.first_row = base + SHARED_FIELDS + OUTSTANDING
        self.rows = upstream.table.rows
        self.row_offsets = tuple(row * ROW_FIELDS for row in range(self.rows))
        self.current = 0.0  # smooth round-robin's running score
        self.ewma = 0.0  # seconds
        self.sampled = 0  # when the EWMA last took a sample (monotonic ns)
        self.failures = 0  # consecutive, in this worker
        spec = upstream.spec
        self.breaker = Breaker(spec.breaker, self.cells, base) if spec.breaker is not None else None

    def outstanding(self) -> int:
        """Requests in flight on this target across the host (every worker's row)."""
        cells = self.cells
        start = self.first_row
        total = 0
        for offset in self.row_offsets:
            total += cells[start + offset]
        return total

    def cost(self, now: int) -> float:
        """P2C's score: latency EWMA x (host-wide in-flight requests + 1) / weight; lower wins.
        (One method reading the cells directly: it runs twice per request.)"""
        age = now - self.sampled
        ewma = self.ewma if age < EWMA_HALF_LIFE / 8 else self.ewma * 2.0 ** (-age / EWMA_HALF_LIFE)
        cells = self.cells
        start = self.first_row
        load = 1
        for offset in self.row_offsets:
            load += cells[start + offset]
        weight = self.weight if not self.upstream.slow_start_ns else self.weight * self.factor()
        return float((ewma + EPSILON) * load / weight)

    def latency(self, now: int) -> float:
        """The latency EWMA in seconds, decayed for the time since its last sample."""
        age = now - self.sampled
        if age < EWMA_HALF_LIFE / 8:
            return self.ewma
        return float(self.ewma * 2.0 ** (-age / EWMA_HALF_LIFE))

    def available(self, now: int) -> bool:
        cells, base = self.cells, self.base
        if cells[base + HEALTH] or cells[base + EJECTED_UNTIL] > now:
            return False
        return self.breaker is None or self.breaker.allows(now)

    def factor(self) -> float:
        """The slow-start share of the weight: ramps from MIN_FACTOR to 1 after the target returned."""
        slow = self.upstream.slow_start_ns
        if not slow:
            return 1.0
        elapsed = time.monotonic_ns() - self.cells[self.base + RETURNED_AT]
        if elapsed >= slow or elapsed < 0:
            return 1.0
        return max(MIN_FACTOR, elapsed / slow)

    def begin(self, now: int) -> None:
        if self.breaker is not None:
            self.breaker.acquire(now)
        self.cells[self.out_cell] += 1

    def abandon(self) -> None:
        """A try given up for reasons of the client's or the gateway's: it only stops being in flight."""
        self.cells[self.out_cell] -= 1

    def end(self, status: int, seconds: float) -> None:
        """An exchange ended: ``status`` 0 means no response (refused, reset, timed out)."""
        cells = self.cells
        cells[self.out_cell] -= 1
        failed = status == 0 or status >= 500
        sample = seconds if not failed else max(seconds, FAILURE_PENALTY, self.ewma * 2)
        now = time.monotonic_ns()
        ewma = self.latency(now)
        self.ewma = sample if not ewma else ewma + EWMA_DECAY * (sample - ewma)
        self.sampled = now
        cells[self.ewma_cell] = int(self.ewma * 1e6)
        if self.breaker is not None:
            self.breaker.record(now, failed, seconds)
        outlier = self.upstream.spec.outlier
        if outlier is None:
            return
        if not failed:
            self.failures = 0
            until = cells[self.base + EJECTED_UNTIL]
            if until and now > until + int(outlier.max_ejection * 1e9):
                cells[self.base + EJECTIONS] = 0  # a long good spell forgets past ejections
                cells[self.base + EJECTED_UNTIL] = 0
            return
        self.failures += 1
        if self.failures >= outlier.consecutive and self.upstream.may_eject(now):
            self.eject(now)

    def eject(self, now: int) -> None:
        """Takes the target out for a back-off that grows with each ejection in a row."""
        outlier = self.upstream.spec.outlier
        assert outlier is not None
        cells, base = self.cells, self.base
        self.failures = 0
        ejections = cells[base + EJECTIONS] + 1
        seconds = min(outlier.base_ejection * ejections, outlier.max_ejection)
        until = now + int(seconds * 1e9)
        cells[base + EJECTIONS] = ejections
        cells[base + EJECTED_UNTIL] = until
        cells[base + RETURNED_AT] = until  # slow start counts from the return
        cells[base + EJECTIONS_TOTAL] += 1


class Upstream:
    """Targets of one upstream and the choice of target per request."""

    def __init__(self, spec: UpstreamSpec, table: Table | None = None) -> None:
        self.spec = spec
        self.name = spec.name
        self.base_path = spec.all_targets[0].base_path if spec.all_targets else ""  # none: discovery pending
        self.plain = spec.plain
        self.pools = tuple(
            Pool(target, connect_timeout=spec.connect_timeout, read_timeout=spec.read_timeout,
                 keepalive=spec.keepalive, keepalive_timeout=spec.keepalive_timeout)
            for target in spec.all_targets
        )
        self._next = 0
        self.now = 0  # the time of the current choice (monotonic ns), for the balancers
        table = table if table is not None else Table.private([spec])
        keys = [key_of(spec.name), *(key_of(spec.name, t.url) for t in spec.all_targets)]
        if any(table.find(key) < 0 for key in keys):  # the supervisor's directory was full (see host.py)
            table = Table.private([spec])  # this upstream keeps its state to itself
        self.table = table
        self.slow_start_ns = int(spec.slow_start * 1e9)
        self.members = [
            Member(self, pool, spec.weight(index), index >= len(spec.targets), self.record(pool.target.url))
            for index, pool in enumerate(self.pools)
        ]
        self.primary = [m for m in self.members if not m.backup]
        self.backup = [m for m in self.members if m.backup]
        self.balancer: Balancer = make_balancer(spec.balancer, self.primary, spec.hash_on)
        self.backup_balancer: Balancer = make_balancer(spec.balancer, self.backup, spec.hash_on)
        self.breaker = (Breaker(spec.breaker, self.table.cells, self.record(""))
                        if spec.breaker is not None else None)
        retries = spec.retries
        self.budget = RetryBudget(retries.budget, retries.min_per_second) if retries is not None else None

    def record(self, target: str) -> int:
        return self.table.find(key_of(self.name, target))

    def pick(self) -> Pool:
        """The plain path: one target, or round-robin without any state (tests, simple callers)."""
        pools = self.pools
        if len(pools) == 1:
            return pools[0]
        index = self._next
        self._next = (index + 1) % len(pools)
        return pools[index]

    def choose(self, ex: Exchange | None, tried: list[Member]) -> Member:
        """The target for a try: an available primary target not tried yet, else a backup one."""
        now = time.monotonic_ns()
        self.now = now
        if self.breaker is not None and not self.breaker.allows(now):
            raise BreakerOpen()
        if tried:
            candidates = [m for m in self.primary if m.available(now) and m not in tried]
        else:
            candidates = [m for m in self.primary if m.available(now)]
        balancer = self.balancer
        if not candidates and self.backup:
            candidates = [m for m in self.backup if m.available(now) and m not in tried]
            balancer = self.backup_balancer
        if not candidates:
            raise NoTarget()
        member = balancer.choose(candidates, ex)
        if self.breaker is not None:
            self.breaker.acquire(now)
        member.begin(now)
        return member

    def outcome(self, member: Member, status: int, seconds: float) -> None:
        member.end(status, seconds)
        if self.breaker is not None:
            self.breaker.record(time.monotonic_ns(), status == 0 or status >= 500, seconds)

    def may_eject(self, now: int) -> bool:
        """Passive checks never take out more than ``max_ejected`` of the primary targets."""
        outlier = self.spec.outlier
        assert outlier is not None
        out = sum(1 for m in self.primary if m.cells[m.base + EJECTED_UNTIL] > now)
        allowed = max(1, int(outlier.max_ejected * len(self.primary)))
        # never the last primary target, unless a backup group is there to take over
        return out < allowed and out + 1 < len(self.primary) + bool(self.backup)

    def note_retry(self, member: Member) -> None:
        self.table.cells[member.retries_cell] += 1

    def sweep(self, now: float) -> None:
        for pool in self.pools:
            pool.sweep(now)

    def close(self) -> None:
        for pool in self.pools:
            pool.close()


def upstream_table(shared: Mapping[str, mmap.mmap], workers: int) -> Table | None:
    """The worker's view of the shared records (None without a supervisor: each upstream keeps its own)."""
    segment = shared.get(SEGMENT)
    if segment is None:
        return None
    table = Table(segment, workers)
    table.claim_row(int(os.environ.get("GATEWAY_WORKER_SLOT", "0")))
    return table
