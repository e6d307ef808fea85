"""Layers over the configuration file: what changes the running configuration without editing the file.

The configuration the workers run is composed in the supervisor: the base (file, ``GATEWAY_*`` variables,
flags; read again on SIGHUP), then each layer in the order of ``LAYERS`` (``apply(document)`` returns the
document with the layer's changes: the admin API's routes and upstreams, then targets found by service
discovery). The result is validated like the file (``gateway.loader.from_document``) and rolled out to
every worker by the supervisor's ``reconfigure``: a new worker per slot on the same sockets, the old ones
drained once all new ones serve, so no connection is refused and no request fails. A composed document
equal to the running one rolls nothing.

A feature that changes the configuration at run time lists its module here; the module's
``layer(supervisor, config)`` returns a ``Layer`` or None when the configuration does not use it. The layer
calls ``await supervisor.reconfigure(reason)`` when its part changed; that raises ``ConfigError`` when the
composed configuration is invalid and ``ReconfigureError`` when the new workers did not start (in both
cases the previous configuration keeps serving, and the layer should take its change back).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from gateway.loader import GatewayConfig

LAYERS: tuple[str, ...] = ("gateway.admin.config_api",  # the admin API first, then discovery
                           "gateway.upstreams.discovery.layer")


class Layer(Protocol):
    name: str

    async def start(self) -> None:
        """Called once before the first workers start (load persisted state, first resolution)."""

    def apply(self, document: dict[str, Any]) -> dict[str, Any]:
        """The document with this layer's changes (a new dict; ``document`` is not modified)."""

    def close(self) -> None:
        """Called when the supervisor stops."""


class Reconfigurer(Protocol):
    async def reconfigure(self, reason: str) -> bool: ...


def make_layers(supervisor: Reconfigurer, config: GatewayConfig) -> list[Layer]:
    layers = []
    for name in LAYERS:
        layer = importlib.import_module(name).layer(supervisor, config)
        if layer is not None:
            layers.append(layer)
    return layers
