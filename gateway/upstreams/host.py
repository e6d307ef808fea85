"""The supervisor's side of upstreams: the shared records' directory, active health checks, and the
host-wide gauges (target health, breaker state, ejections, retries) read from the shared segment.

The supervisor calls ``apply(config, segment)`` before the workers of a configuration start (at start and
on each reload) and ``close()`` when it stops; ``/metrics`` collects ``Collector.collect``.
"""

from __future__ import annotations

import logging
import mmap
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.upstreams.config import UpstreamSpec
from gateway.upstreams.health import HealthChecks
from gateway.upstreams.state import (
    BREAKER,
    BREAKER_OPENS,
    BREAKER_STATES,
    BREAKER_UNTIL,
    EJECTED_UNTIL,
    EJECTIONS,
    EJECTIONS_TOTAL,
    EWMA_US,
    HEALTH,
    OPEN,
    RETRIES,
    Table,
    config_keys,
    key_of,
)

if TYPE_CHECKING:
    from gateway.loader import GatewayConfig

logger = logging.getLogger("gateway.upstreams")


class UpstreamsHost(Collector):
    """Holds the current configuration's upstreams and the shared table for the supervisor."""

    def __init__(self) -> None:
        self.table: Table | None = None
        self.upstreams: list[UpstreamSpec] = []
        self.checks = HealthChecks()

    def apply(self, config: GatewayConfig, segment: mmap.mmap | None) -> None:
        """Adds the records of ``config``'s targets and (re)starts the active health checks."""
        if segment is None:
            return
        if self.table is None:
            self.table = Table(segment, config.server.workers)
        self.upstreams = list(config.all_upstreams().values())
        missing = self.table.ensure(config_keys(self.upstreams))
        if missing:
            logger.warning("upstream state: %d targets do not fit the shared segment (sized at start); "
                           "their state stays per worker until the next restart", missing)
        self.checks.start(self.upstreams, self.table)

    def close(self) -> None:
        self.checks.stop()
        if self.table is not None:
            self.table.close()
            self.table = None

    def snapshot(self) -> dict[str, Any]:
        """Each upstream's targets with health, breaker, outstanding requests and latency EWMAs."""
        table = self.table
        result: dict[str, Any] = {}
        if table is None:
            return result
        now = time.monotonic_ns()
        for spec in self.upstreams:
            base = table.find(key_of(spec.name))
            views = (target_view(table, spec, index, now) for index in range(len(spec.all_targets)))
            targets = [view for view in views if view is not None]  # records that did not fit: not shown
            result[spec.name] = {
                "balancer": spec.balancer if len(spec.all_targets) > 1 else "single",
                "breaker": breaker_view(table, base, now) if spec.breaker is not None and base >= 0 else None,
                "retries": sum(t["retries"] for t in targets),
                "targets": targets,
            }
        return result

    def collect(self) -> Iterator[Any]:
        table = self.table
        labels = ("upstream", "target")
        healthy = GaugeMetricFamily("gateway_upstream_target_healthy",
                                    "1 while a target takes requests (healthy, not ejected), else 0.",
                                    labels=labels)
        breaker = GaugeMetricFamily("gateway_upstream_breaker_open",
                                    "1 while a target's circuit breaker is open (failing fast), else 0.",
                                    labels=labels)
        outstanding = GaugeMetricFamily("gateway_upstream_outstanding_requests",
                                        "Requests in flight on a target, host-wide.", labels=labels)
        ejections = CounterMetricFamily("gateway_upstream_ejections",
                                        "Times passive checks ejected a target.", labels=labels)
        retries = CounterMetricFamily("gateway_upstream_retries",
                                      "Retries made after a failed try on a target.", labels=labels)
        opens = CounterMetricFamily("gateway_upstream_breaker_opens", "Times a target's breaker opened.",
                                    labels=labels)
        if table is not None:
            now = time.monotonic_ns()
            cells = table.cells
            for spec in self.upstreams:
                for target in spec.all_targets:
                    base = table.find(key_of(spec.name, target.url))
                    if base < 0:
                        continue
                    names = (spec.name, target.url)
                    up = not cells[base + HEALTH] and cells[base + EJECTED_UNTIL] <= now
                    healthy.add_metric(names, 1 if up else 0)
                    breaker.add_metric(names, 1 if breaker_open(table, base, now) else 0)
                    outstanding.add_metric(names, table.outstanding(base))
                    ejections.add_metric(names, cells[base + EJECTIONS_TOTAL])
                    retries.add_metric(names, sum(table.row_values(base, RETRIES)))
                    opens.add_metric(names, cells[base + BREAKER_OPENS])
        yield from (healthy, breaker, outstanding, ejections, retries, opens)


def breaker_open(table: Table, base: int, now: int) -> bool:
    cells = table.cells
    return bool(cells[base + BREAKER] == OPEN and cells[base + BREAKER_UNTIL] > now)


def breaker_view(table: Table, base: int, now: int) -> str:
    cells = table.cells
    state = int(cells[base + BREAKER])
    if state == OPEN and cells[base + BREAKER_UNTIL] <= now:
        return "half_open"  # it half-opens at the next request
    return BREAKER_STATES[state]


def target_view(table: Table, spec: UpstreamSpec, index: int, now: int) -> dict[str, Any] | None:
    target = spec.all_targets[index]
    base = table.find(key_of(spec.name, target.url))
    if base < 0:
        return None
    cells = table.cells
    until = cells[base + EJECTED_UNTIL]
    ewmas = [value / 1000 for value in table.row_values(base, EWMA_US) if value]
    active = "off" if spec.health_check is None else ("unhealthy" if cells[base + HEALTH] else "healthy")
    ejected = until > now
    return {
        "url": target.url,
        "weight": spec.weight(index),
        "backup": index >= len(spec.targets),
        "healthy": not cells[base + HEALTH] and not ejected,
        "active_check": active,
        "ejected": ejected,
        "ejected_for_s": round((until - now) / 1e9, 3) if ejected else 0,
        "ejections": int(cells[base + EJECTIONS_TOTAL]),
        "ejections_in_a_row": int(cells[base + EJECTIONS]),
        "breaker": breaker_view(table, base, now) if spec.breaker is not None else None,
        "outstanding": table.outstanding(base),
        "latency_ewma_ms": round(sum(ewmas) / len(ewmas), 3) if ewmas else None,  # mean of the workers'
        "latency_ewma_ms_by_worker": [round(v, 3) for v in ewmas],
        "retries": sum(table.row_values(base, RETRIES)),
    }
