"""Host services: what a feature runs once per host, in the supervisor, beside the workers.

A feature that keeps a background task for the whole host (the rate limiter's Redis sync loop, for one)
lists its module in ``SERVICES``; the module's ``service(segments, registry)`` returns a ``Service`` (or
None when the feature never runs one). The supervisor makes the services once the host's shared segments
exist, calls ``apply(config)`` before each configuration's workers start (at start and on every reload;
a service the configuration does not use stops itself there) and ``await close()`` when it stops. A
service that reports metrics registers its prometheus-client Collector on ``registry`` (the host's
``/metrics``). The supervisor thereby never imports a feature's internals.
"""

from __future__ import annotations

import importlib
import mmap
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from gateway.loader import GatewayConfig

SERVICES: tuple[str, ...] = ("gateway.ratelimit.host",)


class Service(Protocol):
    def apply(self, config: GatewayConfig) -> None:
        """Follows ``config`` (called in the supervisor's event loop, before its workers start)."""

    async def close(self) -> None:
        """Stops the service's tasks (the supervisor is stopping)."""


def make_services(segments: Mapping[str, mmap.mmap], registry: CollectorRegistry) -> list[Service]:
    services: list[Service] = []
    for name in SERVICES:
        service = importlib.import_module(name).service(segments, registry)
        if service is not None:
            services.append(service)
    return services
