"""Admin endpoints that features add: each module listed here has ``register(admin, config)``.

The supervisor calls every ``register`` once its admin listener starts (and again with the new config on
reload, for endpoints whose behaviour follows the config). A feature keeps its admin endpoints in its own
folder (``gateway/<feature>/admin.py``) and is listed here, so the admin app never imports a feature's
internals and a feature the config does not use registers nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.admin.app import AdminApp
    from gateway.loader import GatewayConfig

FEATURES: tuple[str, ...] = ("gateway.upstreams.admin", "gateway.auth.admin",
                               "gateway.guards.admin", "gateway.admin.config_api",
                               "gateway.auth.oidc.providers_admin")  # e.g. "gateway.auth.admin"


def register_all(admin: AdminApp, config: GatewayConfig) -> None:
    for name in FEATURES:
        importlib.import_module(name).register(admin, config)
