"""The discovery layer: the targets found by every upstream's sources, applied over the configuration.

``apply(document)`` (gateway.server.layers) looks at each upstream of the composed document: one with
``dns:``, ``file:`` or ``etcd:`` gets its static ``targets`` (and ``backup``) followed by what its sources
found last (SRV backups into ``backup``), each URL once, in a stable order, so the same answers always
compose the same document and an unchanged answer rolls nothing.

The sources run in the supervisor, one task each, keyed by upstream and source spec: a source that
appears in a composition (the file at start or SIGHUP, an upstream the admin API stored) starts there;
one that neither the last composition nor the running configuration uses any more stops (checked at each
composition and every second). A source that has not answered yet adds nothing, so an upstream with no
static target answers 503 (``no_healthy_upstream``) until its first answer. At start the layer waits for
the first answers (up to the sources' timeouts) so the first workers have them; a file is read at once.

A source whose targets changed marks the layer dirty; one task turns dirty marks into
``supervisor.reconfigure`` calls, one at a time, so a burst of changes (several sources, a flapping
answer) becomes one roll of the workers. A roll that fails is tried again after ``RETRY_DELAY``; a
composition the loader rejects (a found target that conflicts with the static ones) is logged and waits
for the next change, the previous configuration still serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from gateway.config import ConfigError, Node
from gateway.proxy.target import parse_target
from gateway.upstreams.discovery.config import SOURCE_KEYS, SourceSpec, parse_sources
from gateway.upstreams.discovery.dns import DnsWatcher
from gateway.upstreams.discovery.etcd import EtcdWatcher
from gateway.upstreams.discovery.file import FileWatcher
from gateway.upstreams.discovery.watcher import Watcher

if TYPE_CHECKING:
    from gateway.loader import GatewayConfig
    from gateway.server.layers import Reconfigurer

logger = logging.getLogger("gateway.upstreams.discovery")

RETRY_DELAY = 5.0  # seconds before a failed roll is tried again
PRUNE_INTERVAL = 1.0  # seconds between looks for sources nothing uses any more
STARTING_POLL = 0.5  # seconds between tries while the gateway is still starting
FIRST_ANSWER_CAP = 10.0  # the longest wait at start for the sources' first answers
WATCHERS = {"dns": DnsWatcher, "file": FileWatcher, "etcd": EtcdWatcher}

Key = tuple[str, SourceSpec]


def sources_of(document: Mapping[str, Any]) -> dict[str, tuple[SourceSpec, ...]]:
    """Upstream name -> its discovery sources, for the upstreams of ``document`` that have any (an
    upstream whose sources are invalid is left out: the loader reports it)."""
    upstreams = document.get("upstreams")
    found: dict[str, tuple[SourceSpec, ...]] = {}
    if not isinstance(upstreams, dict):
        return found
    source = str(document.get("source", ""))
    for name, entry in upstreams.items():
        if isinstance(entry, dict) and any(key in entry for key in SOURCE_KEYS):
            with contextlib.suppress(ConfigError):
                specs = parse_sources(name, Node(entry, source, f"upstreams.{name}"))
                if specs:
                    found[name] = specs
    return found


def _url(entry: Any) -> str | None:
    """A static target entry's normalised URL (None when it is invalid: the loader reports it)."""
    value = entry.get("url") if isinstance(entry, dict) else entry
    try:
        return parse_target(Node(value, "")).url
    except ConfigError:
        return None


class DiscoveryLayer:
    """Runs the sources and composes their targets into the configuration."""

    name = "discovery"

    def __init__(self, supervisor: Any) -> None:  # the Supervisor (reconfigure, base, config, layers)
        self.supervisor = supervisor
        self.watchers: dict[Key, Watcher] = {}
        self.composed: set[Key] = set()  # the sources the last composition used
        self.dirty = asyncio.Event()
        self.changed_upstreams: set[str] = set()
        self.applier: asyncio.Task[None] | None = None
        self.rejected: str | None = None  # why the last composition with new targets was refused
        self.applied = {"success": 0, "failure": 0}
        self.collector: Collector | None = None

    async def start(self) -> None:
        document = self.preceding(self.supervisor.base.document)
        self.sync(sources_of(document))
        waiting = [w.answered.wait() for w in self.watchers.values()]
        if waiting:
            timeout = min(FIRST_ANSWER_CAP, max(getattr(w.spec, "timeout", 1.0) for w in self.watchers.values()) + 1)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await asyncio.gather(*waiting)
        self.dirty.clear()  # what was found so far goes into the first composition
        self.changed_upstreams.clear()
        self.applier = asyncio.get_running_loop().create_task(self.apply_changes(), name="discovery")
        registry = getattr(getattr(self.supervisor, "metrics", None), "registry", None)
        if isinstance(registry, CollectorRegistry):
            self.collector = DiscoveryMetrics(self)
            registry.register(self.collector)

    def preceding(self, document: dict[str, Any]) -> dict[str, Any]:
        """``document`` with the layers before this one applied (the admin API's upstreams, at start)."""
        for layer in getattr(self.supervisor, "layers", ()):
            if layer is self:
                break
            document = layer.apply(document)
        return document

    def apply(self, document: dict[str, Any]) -> dict[str, Any]:
        wanted = sources_of(document)
        self.sync(wanted)
        self.prune()
        if not wanted:
            return document
        upstreams = dict(document["upstreams"])
        for name, specs in wanted.items():
            upstreams[name] = self.merge(upstreams[name], [self.watchers[(name, spec)] for spec in specs])
        return {**document, "upstreams": upstreams}

    @staticmethod
    def merge(entry: dict[str, Any], watchers: list[Watcher]) -> dict[str, Any]:
        """The upstream's entry with the found targets after the static ones (each URL once)."""
        targets = list(entry.get("targets") or ())
        backup = list(entry.get("backup") or ())
        seen = {_url(e) for e in targets + backup}
        for watcher in watchers:
            for found in watcher.found or ():
                if found.url not in seen:
                    seen.add(found.url)
                    (backup if found.backup else targets).append(found.entry())
        merged = {**entry, "targets": targets}
        if backup:
            merged["backup"] = backup
        return merged

    def sync(self, wanted: Mapping[str, tuple[SourceSpec, ...]]) -> None:
        """Starts the sources ``wanted`` names that do not run yet (the sources of this composition)."""
        self.composed = {(name, spec) for name, specs in wanted.items() for spec in specs}
        for key in self.composed - self.watchers.keys():
            watcher = self.watchers[key] = WATCHERS[key[1].kind](key[0], key[1], self.on_change)
            watcher.start()

    def prune(self) -> None:
        """Stops the sources that neither the last composition nor the running configuration uses (one
        a refused reload dropped keeps running: the previous configuration still needs its targets)."""
        running = sources_of(getattr(getattr(self.supervisor, "config", None), "document", None) or {})
        kept = self.composed | {(name, spec) for name, specs in running.items() for spec in specs}
        for key in self.watchers.keys() - kept:
            self.watchers.pop(key).close()

    def on_change(self, upstream: str) -> None:
        self.changed_upstreams.add(upstream)
        self.dirty.set()

    async def apply_changes(self) -> None:
        """Turns changes into reconfigurations, one at a time."""
        from gateway.server.supervisor import ReconfigureError

        while True:
            try:
                async with asyncio.timeout(PRUNE_INTERVAL):
                    await self.dirty.wait()
            except TimeoutError:
                self.prune()  # after a reload that dropped a source, once it runs
                continue
            self.dirty.clear()
            names = ", ".join(sorted(self.changed_upstreams))
            self.changed_upstreams.clear()
            try:
                if await self.supervisor.reconfigure(f"discovery: {names}"):
                    self.applied["success"] += 1
                self.rejected = None
            except ConfigError as exc:
                self.applied["failure"] += 1
                if str(exc) != self.rejected:
                    logger.error("discovery: the targets found make an invalid configuration; still serving "
                                 "the previous targets: %s", exc)
                self.rejected = str(exc)
            except ReconfigureError as exc:
                state = getattr(self.supervisor, "state", "")
                if state == "draining":  # stopping: nothing more to apply
                    return
                starting = state == "starting"
                if not starting:
                    self.applied["failure"] += 1
                    logger.error("discovery: %s; trying again in %gs", exc, RETRY_DELAY)
                await asyncio.sleep(STARTING_POLL if starting else RETRY_DELAY)
                self.changed_upstreams.update(names.split(", ") if names else ())
                self.dirty.set()

    def close(self) -> None:
        if self.applier is not None:
            self.applier.cancel()
        for watcher in self.watchers.values():
            watcher.close()
        registry = getattr(getattr(self.supervisor, "metrics", None), "registry", None)
        if self.collector is not None and isinstance(registry, CollectorRegistry):
            with contextlib.suppress(KeyError):
                registry.unregister(self.collector)

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        """Upstream name -> its sources' state (``GET /upstreams``)."""
        views: dict[str, list[dict[str, Any]]] = {}
        for (name, _), watcher in sorted(self.watchers.items(), key=lambda item: (item[0][0], item[0][1].kind)):
            views.setdefault(name, []).append(watcher.view())
        return views


class DiscoveryMetrics(Collector):
    """Per source: targets found, whether the last refresh worked, refreshes by result, last success."""

    def __init__(self, layer: DiscoveryLayer) -> None:
        self.layer = layer

    def collect(self) -> Iterator[Any]:
        labels = ("upstream", "source")
        targets = GaugeMetricFamily("gateway_discovery_targets",
                                    "Targets in a discovery source's last good answer.", labels=labels)
        up = GaugeMetricFamily("gateway_discovery_up",
                               "1 while a discovery source's last refresh worked, else 0 (its last good "
                               "targets stay).", labels=labels)
        refreshes = CounterMetricFamily("gateway_discovery_refreshes",
                                        "Refreshes of a discovery source by result.",
                                        labels=(*labels, "result"))
        success = GaugeMetricFamily("gateway_discovery_last_success_timestamp_seconds",
                                    "When a discovery source last refreshed successfully (Unix time).",
                                    labels=labels)
        for (name, spec), watcher in list(self.layer.watchers.items()):
            names = (name, spec.kind)
            targets.add_metric(names, len(watcher.found or ()))
            up.add_metric(names, 1 if watcher.state == "ok" else 0)
            for result, count in watcher.refreshes.items():
                refreshes.add_metric((*names, result), count)
            if watcher.last_success is not None:
                success.add_metric(names, watcher.last_success)
        yield from (targets, up, refreshes, success)


def layer(supervisor: Reconfigurer, config: GatewayConfig) -> DiscoveryLayer:
    """Always a layer: a file reloaded on SIGHUP or the admin API may add a discovered upstream later;
    without one, ``apply`` only looks for the source keys."""
    return DiscoveryLayer(supervisor)
