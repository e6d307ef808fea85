"""The guards' admin endpoints and host gauges, in the supervisor (listed in gateway.admin.features).

``GET /guards/bans``: the running bans, host-wide::

    {"bans": [{"client": "203.0.113.7", "seconds_left": 57.2, "until": "2026-11-26T10:00:00Z", "level": 1}]}

``level`` counts this client's bans in a row (each lasts twice the last, up to ``max_duration``).
``DELETE /guards/bans?client=203.0.113.7`` lifts a ban (an IPv6 client is its network, like
``2001:db8:1:2::/64``): 200 ``{"unbanned": CLIENT}``, or 404 when that client is not banned. The level
stays, so a client that offends again is banned for longer.

Metrics (on the same scrape as every worker's): ``gateway_bans_active`` (running bans on the host) and,
with the compiled tables, ``gateway_guard_connections`` (connections counted against the caps).
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import orjson
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from gateway._fast.guards import SHARED_COUNTS, Tables
from gateway._fast.protocol import Receive, Scope, Send, new_request_id
from gateway.admin.app import respond
from gateway.errors import error_body
from gateway.guards.address import describe_key, parse_client
from gateway.guards.segment import SEGMENT, open_tables

if TYPE_CHECKING:
    from gateway.admin.app import AdminApp
    from gateway.loader import GatewayConfig

NS = 1_000_000_000
_collectors: weakref.WeakKeyDictionary[CollectorRegistry, BansGauge] = weakref.WeakKeyDictionary()


class HostTables:
    """The supervisor's view of the segment once it exists (it is made with the first worker). Opened for
    each use and dropped after: a view held open would keep the supervisor from unmapping the segment."""

    def __init__(self, supervisor: Any) -> None:
        self.supervisor = supervisor

    def get(self) -> Tables | None:
        segments = getattr(self.supervisor, "segments", None)
        buffer = None if segments is None else segments.maps.get(SEGMENT)
        if buffer is None:
            return None
        return open_tables(buffer, self.supervisor.config.server.workers)


class BansGauge(Collector):
    """Host gauges read from the segment on each scrape."""

    def __init__(self, tables: HostTables) -> None:
        self.tables = tables

    def collect(self) -> Iterator[Metric]:
        tables = self.tables.get()
        bans = tables.bans(time.monotonic_ns()) if tables is not None else []
        yield GaugeMetricFamily("gateway_bans_active", "Clients banned now, on the host.", value=len(bans))
        if SHARED_COUNTS:
            yield GaugeMetricFamily("gateway_guard_connections", "Connections counted against the guards' caps.",
                                    value=tables.connections() if tables is not None else 0)


def register(admin: AdminApp, config: GatewayConfig) -> None:
    """Adds the bans endpoints (again on reload, with the new config) and, once, the host gauges."""
    tables = HostTables(admin.supervisor)
    prefix = config.guards.ipv6_prefix if config.guards is not None else 64
    admin.add("/guards/bans", Bans(tables, prefix).handle, methods=("GET", "HEAD", "DELETE"))
    registry = getattr(getattr(admin.supervisor, "metrics", None), "registry", None)
    if isinstance(registry, CollectorRegistry) and registry not in _collectors:
        _collectors[registry] = BansGauge(tables)
        registry.register(_collectors[registry])


class Bans:
    """``/guards/bans``: list (GET) and lift (DELETE ?client=...)."""

    def __init__(self, tables: HostTables, ipv6_prefix: int) -> None:
        self.tables = tables
        self.ipv6_prefix = ipv6_prefix

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] == "DELETE":
            await self.unban(scope, send)
        else:
            await respond(send, 200, orjson.dumps({"bans": self.listing()}))

    def listing(self) -> list[dict[str, Any]]:
        tables = self.tables.get()
        if tables is None:
            return []
        now, wall = time.monotonic_ns(), time.time()
        found = []
        for key, left, level in sorted(tables.bans(now), key=lambda ban: -ban[1]):
            until = datetime.fromtimestamp(wall + left / NS, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            found.append({"client": describe_key(key, self.ipv6_prefix), "seconds_left": round(left / NS, 3),
                          "until": until, "level": level})
        return found

    async def unban(self, scope: Scope, send: Send) -> None:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        client = (query.get("client") or [""])[0]
        key = parse_client(client, self.ipv6_prefix)
        if key is None:
            message = f"pass ?client=ADDRESS (an IPv6 client as its /{self.ipv6_prefix} network)"
            await respond(send, 400, error_body(400, "bad_request", message, new_request_id()))
            return
        tables = self.tables.get()
        if tables is None or not tables.unban(key, time.monotonic_ns()):
            await respond(send, 404, error_body(404, "not_found", f"{client} is not banned", new_request_id()))
            return
        await respond(send, 200, orjson.dumps({"unbanned": describe_key(key, self.ipv6_prefix)}))
