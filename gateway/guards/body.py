"""Request body limits per route: a route's ``max_body_bytes`` overrides the server's, up or down.

The protocol enforces one limit before the route is known: the largest of all (0, no limit, is the
largest). A route whose own limit is lower gets a ``BodyLimitStage`` first in its chain, which hands the
limit to the protocol (``gateway._fast.protocol.limit_body``): a Content-Length over it is answered 413
before any body byte is read, and a chunked body is cut with 413 the moment it passes the limit (the
protocol stops reading there). Routes without a limit of their own keep the server's; they need a stage
only when another route raised the protocol's ceiling above it. Decided once, at config load.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from gateway._fast.protocol import limit_body
from gateway.errors import PayloadTooLarge
from gateway.exchange import Exchange, Stage
from gateway.guards import current
from gateway.routing.config import RouteSpec


def ceiling(limits: Sequence[int]) -> int:
    """The largest body limit (0: no limit)."""
    return 0 if 0 in limits else max(limits)


def protocol_body_limit(server_limit: int, routes: Sequence[RouteSpec]) -> int:
    """The limit the protocol enforces before routing: the server's, or a route's if larger."""
    return ceiling([server_limit, *(r.max_body_bytes for r in routes if r.max_body_bytes is not None)])


def route_body_limits(server_limit: int, routes: Sequence[RouteSpec]) -> list[RouteSpec]:
    """The routes with ``max_body_bytes`` set to what their stage enforces: their own limit, or the
    server's where another route raised the protocol's above it; None: no stage, the protocol's limit is
    the route's. (``protocol_body_limit`` of the result is that of the configured routes.)"""
    top = protocol_body_limit(server_limit, routes)
    if top == server_limit:
        return list(routes)
    return [dataclasses.replace(r, max_body_bytes=server_limit) if r.max_body_bytes is None else r for r in routes]


class BodyLimitStage(Stage):
    """Stage: the route's request body limit (413 past it), first in the route's chain."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.message = f"the request body is larger than this route accepts ({limit} bytes)"

    async def __call__(self, ex: Exchange) -> None:
        self.enter(ex)
        assert self.next is not None
        await self.next(ex)

    def enter(self, ex: Exchange) -> bool:
        """The stage's whole work, which never waits (also the proxy's fast lane's: gateway/proxy/lane.py)."""
        if not limit_body(ex.receive, self.limit):
            guard = current()
            if guard is not None:
                client = ex.scope["client"]
                guard.rejected_request(client[0] if client else None, "body_size")
            raise PayloadTooLarge(self.message)
        return True
