"""Circuit breakers (per target and per upstream) and the retry budget.

A breaker's state lives in the shared record (closed / open / half-open, when it may half-open, probes
granted and passed), so every worker fails fast together; the rolling window of outcomes that trips it
is each worker's own (``Window``): a worker that sees the error ratio cross the line opens it for all.
"""

from __future__ import annotations

from gateway.upstreams.config import BreakerSpec
from gateway.upstreams.state import (
    BREAKER,
    BREAKER_OPENS,
    BREAKER_UNTIL,
    CLOSED,
    HALF_OPEN,
    OPEN,
    PROBES,
    PROBES_OK,
)

BUCKETS = 10


class Window:
    """Outcomes over the last ``span`` seconds, in ``BUCKETS`` buckets (counts: total, failed, slow)."""

    def __init__(self, span: float) -> None:
        self.width = max(1, int(span * 1e9 / BUCKETS))  # ns per bucket
        self.total = [0] * BUCKETS
        self.failed = [0] * BUCKETS
        self.slow = [0] * BUCKETS
        self.epoch = 0  # the bucket number of the newest bucket

    def add(self, now: int, failed: bool, slow: bool) -> None:
        epoch = now // self.width
        if epoch != self.epoch:
            for number in range(max(self.epoch + 1, epoch - BUCKETS + 1), epoch + 1):
                index = number % BUCKETS
                self.total[index] = self.failed[index] = self.slow[index] = 0
            self.epoch = epoch
        index = epoch % BUCKETS
        self.total[index] += 1
        self.failed[index] += failed
        self.slow[index] += slow

    def clear(self) -> None:
        for counts in (self.total, self.failed, self.slow):
            counts[:] = [0] * BUCKETS


class Breaker:
    """One breaker: ``cells[base + ...]`` is its shared state, the window is this worker's."""

    def __init__(self, spec: BreakerSpec, cells: memoryview, base: int) -> None:
        self.spec = spec
        self.cells = cells
        self.base = base
        self.window = Window(spec.window)
        self.open_ns = int(spec.open_for * 1e9)
        self.slow_s = spec.slow_call if spec.slow_call is not None else float("inf")

    def state(self) -> int:
        return int(self.cells[self.base + BREAKER])

    def allows(self, now: int) -> bool:
        """Whether a request may go through now (without taking a half-open probe)."""
        cells, base = self.cells, self.base
        state = cells[base + BREAKER]
        if state == CLOSED:
            return True
        if state == OPEN:
            return now >= cells[base + BREAKER_UNTIL]
        # half-open: a free probe, or probes that never reported (a worker died) are given up on
        return cells[base + PROBES] < self.spec.half_open_requests or now >= cells[base + BREAKER_UNTIL]

    def acquire(self, now: int) -> None:
        """A request goes through: an open breaker past its time half-opens; half-open counts a probe."""
        cells, base = self.cells, self.base
        state = cells[base + BREAKER]
        if state == CLOSED:
            return
        if state == OPEN or now >= cells[base + BREAKER_UNTIL]:  # (again) half-open: fresh probes
            cells[base + PROBES] = 0
            cells[base + PROBES_OK] = 0
            cells[base + BREAKER_UNTIL] = now + self.open_ns  # by then the probes must have reported
            cells[base + BREAKER] = HALF_OPEN
        cells[base + PROBES] += 1

    def record(self, now: int, failed: bool, seconds: float) -> None:
        """An outcome: trips a closed breaker over its thresholds; settles a half-open one."""
        cells, base, spec = self.cells, self.base, self.spec
        state = cells[base + BREAKER]
        if state == HALF_OPEN:
            if failed:
                self.trip(now)
            else:
                cells[base + PROBES_OK] += 1
                if cells[base + PROBES_OK] >= spec.half_open_requests:
                    cells[base + BREAKER] = CLOSED
                    self.window.clear()
            return
        if state == OPEN:
            return
        window = self.window
        window.add(now, failed, seconds >= self.slow_s)
        total, bad, slow = sum(window.total), sum(window.failed), sum(window.slow)
        if total >= spec.min_requests and (bad >= spec.error_ratio * total or slow >= spec.slow_ratio * total):
            self.trip(now)

    def trip(self, now: int) -> None:
        cells, base = self.cells, self.base
        cells[base + BREAKER_UNTIL] = now + self.open_ns
        cells[base + BREAKER] = OPEN
        cells[base + BREAKER_OPENS] += 1
        self.window.clear()


class RetryBudget:
    """Retries allowed: ``ratio`` of the requests seen plus ``min_per_second`` (a token bucket per worker).

    Each request deposits ``ratio`` tokens, each second deposits ``min_per_second``; a retry spends one.
    The balance is capped, so a quiet period cannot bank a retry storm.
    """

    def __init__(self, ratio: float, min_per_second: float, cap: float = 100.0) -> None:
        self.ratio = ratio
        self.min_per_second = min_per_second
        self.cap = max(cap, min_per_second)
        self.tokens = min_per_second
        self.last = 0.0

    def deposit(self) -> None:
        self.tokens = min(self.cap, self.tokens + self.ratio)

    def withdraw(self, now: float) -> bool:
        """Takes one retry if the budget has it."""
        if self.last:
            self.tokens = min(self.cap, self.tokens + (now - self.last) * self.min_per_second)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
