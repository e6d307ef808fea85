"""``GET /upstreams`` on the admin port: every upstream's targets with health, breaker state,
outstanding requests and latency EWMA, read from the host-wide shared segment."""

from __future__ import annotations

from typing import TYPE_CHECKING

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

    async def upstreams(scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, 200, orjson.dumps({"upstreams": host.snapshot()}))

    admin.add("/upstreams", upstreams)
