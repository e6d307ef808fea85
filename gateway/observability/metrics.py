"""Host-wide metrics: per-worker cells in shared memory, summed by the supervisor on scrape.

Workers never take a lock or write a file to count a request. The supervisor makes one shared-memory
region (a memfd) per worker it starts, sized by the ``Schema`` of that worker's configuration; the worker
maps it and writes only its own cells (``gateway._fast.metrics.Recorder``). A scrape of ``GET /metrics``
on the admin port reads every live region, adds the counts kept from workers that have exited (so host
counters never go backwards when a worker is replaced), and hands the sums to prometheus-client's
collector API, which writes the Prometheus text format or OpenMetrics.

The ``Schema`` is a pure function of the configuration: the supervisor and the worker compute the same
layout from the same document. Label values are bounded by the configuration: routes by their configured
name (``(unmatched)`` for requests no route took), upstream targets as configured, methods from a fixed
list; nothing from the request itself becomes a label.
"""

from __future__ import annotations

import math
import mmap
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from gateway._fast.metrics import BUCKETS, HISTOGRAM_WIDTH, METHODS, STATUS_CLASSES, UPSTREAM_CLASSES, Recorder
from gateway.auth.reasons import REASONS as AUTH_REASONS
from gateway.guards.reasons import REASONS as GUARD_REASONS
from gateway.guards.reasons import TABLES as GUARD_TABLES

if TYPE_CHECKING:
    from gateway.loader import GatewayConfig

UNMATCHED = "(unmatched)"
RATELIMIT_DECISIONS = ("allowed", "rejected", "fallback")  # gateway/ratelimit/stage.py writes them in order
CELL = 8  # bytes per cell (int64)
BUCKET_LABELS = (*(repr(b) for b in BUCKETS), "+Inf")
Labels = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Dimension:
    """Label names and every value tuple they can take, e.g. (("upstream", "target"), ((u, t), ...))."""

    names: Labels
    values: tuple[Labels, ...]

    @classmethod
    def of(cls, name: str, values: Iterable[str]) -> Dimension:
        return cls((name,), tuple((v,) for v in values))


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family's cells: ``width`` cells per series, series in row-major order of ``dims``."""

    name: str  # counters without the "_total" suffix (prometheus-client adds it)
    kind: str  # "counter", "gauge" or "histogram"
    doc: str
    dims: tuple[Dimension, ...]
    offset: int

    @property
    def width(self) -> int:
        return HISTOGRAM_WIDTH if self.kind == "histogram" else 1

    @property
    def series_count(self) -> int:
        return math.prod(len(d.values) for d in self.dims)

    @property
    def size(self) -> int:
        return self.series_count * self.width

    @property
    def label_names(self) -> Labels:
        return tuple(name for d in self.dims for name in d.names)

    def labels(self, series: int) -> Labels:
        """The label values of series number ``series`` (row-major over ``dims``)."""
        parts: list[Labels] = []
        for dim in reversed(self.dims):
            series, index = divmod(series, len(dim.values))
            parts.append(dim.values[index])
        return tuple(value for part in reversed(parts) for value in part)

    def cell(self, *positions: int) -> int:
        """The first cell of the series at ``positions`` (one index per dimension)."""
        series = 0
        for dim, position in zip(self.dims, positions, strict=True):
            series = series * len(dim.values) + position
        return self.offset + series * self.width


class Schema:
    """The cell layout for one configuration; families are added in a fixed order."""

    def __init__(self) -> None:
        self.families: dict[str, Family] = {}
        self.size = 0

    def add(self, name: str, kind: str, doc: str, *dims: Dimension) -> Family:
        family = Family(name, kind, doc, dims, self.size)
        self.families[name] = family
        self.size += family.size
        return family

    @property
    def offsets(self) -> dict[str, int]:
        return {name: family.offset for name, family in self.families.items()}

    @classmethod
    def for_config(cls, config: GatewayConfig) -> Schema:
        """The layout every worker of ``config`` writes: route numbers follow ``config.routes``, then the
        built-in routes (``config.builtin_routes()``), then UNMATCHED; target numbers follow
        ``config.all_upstreams()`` and each upstream's targets."""
        names = [r.name for r in (*config.routes, *config.builtin_routes())]
        routes = Dimension.of("route", [*names, UNMATCHED])
        targets = Dimension(("upstream", "target"), tuple(
            (spec.name, target.url) for spec in config.all_upstreams().values() for target in spec.all_targets))
        schema = cls()
        schema.add("gateway_requests_in_flight", "gauge", "Requests being served.")
        schema.add("gateway_connections_open", "gauge", "Open client connections.")
        schema.add("gateway_access_log_dropped", "counter",
                   "Access-log lines dropped because the writer fell behind.")
        schema.add("gateway_requests", "counter", "Requests answered, by route, method and status class.",
                   routes, Dimension.of("method", METHODS), Dimension.of("status_class", STATUS_CLASSES))
        schema.add("gateway_request_duration_seconds", "histogram",
                   "Time from the request's arrival to the end of its response.", routes)
        schema.add("gateway_added_latency_seconds", "histogram",
                   "The gateway's own share of a request's time (not spent waiting on the upstream).", routes)
        schema.add("gateway_request_body_bytes", "counter", "Request body bytes received.", routes)
        schema.add("gateway_response_body_bytes", "counter", "Response body bytes sent.", routes)
        schema.add("gateway_upstream_requests", "counter",
                   "Exchanges with upstream targets by status class (error: no response).",
                   targets, Dimension.of("status_class", UPSTREAM_CLASSES))
        schema.add("gateway_upstream_duration_seconds", "histogram",
                   "Time from sending a request upstream to the end of its response.", targets)
        schema.add("gateway_upstream_connections_idle", "gauge", "Idle pooled upstream connections.", targets)
        schema.add("gateway_upstream_connections_opened", "counter", "Upstream connections opened.", targets)
        schema.add("gateway_upstream_connections_reused", "counter",
                   "Upstream exchanges served on an already-used connection.", targets)
        schema.add("gateway_ratelimit_decisions", "counter",
                   "Rate-limit decisions by route: allowed, rejected (429), fallback (admitted untracked).",
                   routes, Dimension.of("decision", RATELIMIT_DECISIONS))
        schema.add("gateway_ratelimit_degraded_decisions", "counter",
                   "Rate-limit decisions made while the limiter's Redis was unavailable (on_store_error in "
                   "effect), by route: allowed or rejected (also counted in gateway_ratelimit_decisions).",
                   routes, Dimension.of("decision", ("allowed", "rejected")))
        schema.add("gateway_ratelimit_evictions", "counter",
                   "Rate-limit table slots taken from the least recently used key (its probe window was full).")
        schema.add("gateway_auth_failures", "counter",
                   "Requests refused by a route's auth policy (401/403/400), by route and reason.",
                   routes, Dimension.of("reason", AUTH_REASONS))
        schema.add("gateway_guard_rejections", "counter",
                   "Connections and requests the guards and the protocol's limits turned away, by reason.",
                   Dimension.of("reason", GUARD_REASONS))
        schema.add("gateway_guard_bans", "counter", "Temporary bans imposed on clients (each holds host-wide).")
        schema.add("gateway_guard_table_full", "counter",
                   "Clients the guards could not track: their slots in a shared table were all taken.",
                   Dimension.of("table", GUARD_TABLES))
        return schema


class Region:
    """One worker's cells in shared memory (a memfd mapped by both the supervisor and the worker)."""

    def __init__(self, size: int, fd: int | None = None) -> None:
        length = max(size, 1) * CELL
        if fd is None:
            fd = os.memfd_create("gateway-metrics", os.MFD_CLOEXEC)  # pass_fds hands it to the worker
            os.ftruncate(fd, length)
        elif os.fstat(fd).st_size != length:
            raise ValueError(f"metrics region has {os.fstat(fd).st_size} bytes, the schema needs {length}")
        self.fd = fd
        self.map = mmap.mmap(fd, length)
        self.cells = memoryview(self.map).cast("q")

    def close(self) -> None:
        """Unmaps the region, unless a recorder still holds it (then it goes with the recorder)."""
        try:
            self.cells.release()
            self.map.close()
        except BufferError:
            pass
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class WorkerMetrics:
    """What a worker records into: its region (or private memory when run without a supervisor)."""

    def __init__(self, schema: Schema, fd: int | None = None) -> None:
        self.schema = schema
        if fd is None:
            self.cells = memoryview(bytearray(max(schema.size, 1) * CELL)).cast("q")
        else:
            self.region = Region(schema.size, fd)
            self.cells = self.region.cells
        self.recorder = Recorder(self.cells, schema.offsets)
        families = schema.families
        self.connections_cell = families["gateway_connections_open"].offset
        self.dropped_cell = families["gateway_access_log_dropped"].offset
        self.idle_cell = families["gateway_upstream_connections_idle"].offset
        self.opened_cell = families["gateway_upstream_connections_opened"].offset
        self.reused_cell = families["gateway_upstream_connections_reused"].offset


# -- the supervisor's side -------------------------------------------------------------------------


def read_family(family: Family, cells: memoryview) -> Iterator[tuple[Labels, list[int]]]:
    """The series of ``family`` in ``cells`` worth exposing (every gauge; counters and histograms once
    they counted something): label values and the series' cells."""
    width = family.width
    start = family.offset
    block = cells[start:start + family.size].tolist()
    if not family.dims:
        yield (), block
        return
    if width == 1:
        every = family.kind == "gauge"  # a gauge's 0 is news (a pool emptied); a counter's 0 is noise
        for series, value in enumerate(block):
            if value or every:
                yield family.labels(series), [value]
        return
    for series in range(family.series_count):
        values = block[series * width:(series + 1) * width]
        if any(values[:-1]):
            yield family.labels(series), values


class Totals:
    """Sums of series by family and label values."""

    def __init__(self) -> None:
        self.series: dict[str, dict[Labels, list[int]]] = {}

    def add(self, family: Family, cells: memoryview, counters_only: bool = False) -> None:
        if counters_only and family.kind == "gauge":
            return
        into = self.series.setdefault(family.name, {})
        for labels, values in read_family(family, cells):
            have = into.get(labels)
            if have is None:
                into[labels] = list(values)
            else:
                for i, value in enumerate(values):
                    have[i] += value


SupervisorFacts = Callable[[], dict[str, Any]]


class HostMetrics(Collector):
    """The supervisor's view: live regions, what retired workers counted, and its own counters."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.live: dict[int, tuple[Schema, Region]] = {}  # by worker pid
        self.retired = Totals()
        self.retired_families: dict[str, Family] = {}
        self.worker_restarts = 0
        self.reloads = {"success": 0, "failure": 0}
        self.facts: SupervisorFacts = dict
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def region_for(self, schema: Schema) -> Region:
        """A zeroed region for a worker about to start; ``attach`` it once the worker has a pid."""
        return Region(schema.size)

    def attach(self, pid: int, schema: Schema, region: Region) -> None:
        self.live[pid] = (schema, region)

    def detach(self, pid: int) -> None:
        """A worker exited: keep its counters and histograms (not its gauges), free its region."""
        entry = self.live.pop(pid, None)
        if entry is None:
            return
        schema, region = entry
        for family in schema.families.values():
            if family.kind != "gauge":
                self.retired.add(family, region.cells)
                self.retired_families.setdefault(family.name, family)
        region.close()

    def close(self) -> None:
        for pid in list(self.live):
            self.detach(pid)

    def totals(self) -> tuple[Totals, dict[str, Family]]:
        totals = Totals()
        for name, series in self.retired.series.items():
            totals.series[name] = {labels: list(values) for labels, values in series.items()}
        families = dict(self.retired_families)
        for schema, region in self.live.values():
            for family in schema.families.values():
                totals.add(family, region.cells)
                families[family.name] = family
        return totals, families

    def collect(self) -> Iterator[Metric]:
        totals, families = self.totals()
        for name, family in families.items():
            yield metric_family(family, totals.series.get(name, {}))
        facts = self.facts()
        yield _gauge("gateway_workers", "Configured worker slots.", facts.get("workers", 0))
        yield _gauge("gateway_workers_ready", "Worker slots with a serving worker.", facts.get("ready", 0))
        yield _gauge("gateway_config_generation", "Configuration generation (0 at start, +1 per reload).",
                     facts.get("generation", 0))
        restarts = CounterMetricFamily("gateway_worker_restarts", "Unexpected worker exits that were restarted.")
        restarts.add_metric((), self.worker_restarts)
        yield restarts
        reloads = CounterMetricFamily("gateway_config_reloads", "Configuration reloads by result.",
                                      labels=("result",))
        for result, count in self.reloads.items():
            reloads.add_metric((result,), count)
        yield reloads
        info = GaugeMetricFamily("gateway_build_info", "The gateway's version.", labels=("version",))
        info.add_metric((self.version,), 1)
        yield info

    def exposition(self, accept: str) -> tuple[bytes, str]:
        """The whole host's metrics in the format ``accept`` asks for (OpenMetrics or Prometheus text)."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def metric_family(family: Family, series: dict[Labels, list[int]]) -> Metric:
    """A prometheus-client family from summed cells."""
    names = family.label_names
    if family.kind == "histogram":
        histogram = HistogramMetricFamily(family.name, family.doc, labels=names)
        for labels, values in series.items():
            cumulative, buckets = 0, []
            for bound, count in zip(BUCKET_LABELS, values[:-1], strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            histogram.add_metric(labels, buckets, values[-1] / 1e9)
        return histogram
    metric: CounterMetricFamily | GaugeMetricFamily
    if family.kind == "counter":
        metric = CounterMetricFamily(family.name, family.doc, labels=names)
    else:
        metric = GaugeMetricFamily(family.name, family.doc, labels=names)
    if not names:
        metric.add_metric((), series.get((), [0])[0])
    for labels, values in series.items():
        if labels:
            metric.add_metric(labels, values[0])
    return metric
