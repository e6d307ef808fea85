"""``GET /upstreams`` on the admin port: every upstream's targets with health, breaker state,
outstanding requests and latency EWMA, read from the host-wide shared segment; an upstream with discovery
sources also lists each source's state (``discovery``: what it watches, ok/failing/pending, the targets of
its last good answer, last refresh, last success, next refresh and last error)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from gateway._fast.protocol import Receive, Scope, Send
from gateway.admin.app import respond

if TYPE_CHECKING:
    from gateway.admin.app import AdminApp
    from gateway.loader import GatewayConfig
    from gateway.upstreams.host import UpstreamsHost


def register(admin: AdminApp, config: GatewayConfig) -> None:
    host: UpstreamsHost | None = getattr(admin.supervisor, "upstreams_host", None)
    if host is None:
        return

    supervisor = admin.supervisor

    async def upstreams(scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, 200, orjson.dumps({"upstreams": with_discovery(host.snapshot(), supervisor)}))

    admin.add("/upstreams", upstreams)


def with_discovery(snapshot: dict[str, Any], supervisor: object) -> dict[str, Any]:
    """Adds each discovered upstream's sources (gateway.upstreams.discovery.layer) to ``snapshot``."""
    for layer in getattr(supervisor, "layers", ()):
        if getattr(layer, "name", None) == "discovery":
            for name, views in layer.snapshot().items():
                if name in snapshot:
                    snapshot[name]["discovery"] = views
    return snapshot
