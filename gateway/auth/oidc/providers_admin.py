"""``GET /auth/providers`` on the admin port: the configured OAuth/OIDC providers and their state.

    {"providers": {"corp": {"issuer": "...", "client_id": "gw", "reachable": true,
                            "metadata_url": ".../.well-known/openid-configuration", "metadata_age_seconds": 12.5,
                            "failures": 0, "last_error": null, "last_error_age_seconds": null,
                            "jwks_uri": ".../jwks", "keys": 2, "keys_age_seconds": 12.4, "keys_failures": 0}}}

The supervisor keeps its own view (it serves the admin port; workers are separate processes): each
provider's metadata and signing keys, fetched and refreshed in the background exactly as a worker does
(gateway/auth/oidc/discovery.py), so ``reachable`` and ``last_error`` say what a worker meets. No client
secret, token or key material is ever shown. Listed in gateway/admin/features.py; after a reload the
providers follow the new config (none: an empty listing).
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING, Any

import orjson

from gateway.admin.app import respond

if TYPE_CHECKING:
    from gateway._fast.protocol import Receive, Scope, Send
    from gateway.admin.app import AdminApp
    from gateway.auth.oidc.runtime import OidcRuntime
    from gateway.loader import GatewayConfig

PATH = "/auth/providers"
_monitors: dict[int, ProvidersMonitor] = {}  # by id(admin): one per admin app, replaced on reload


def register(admin: AdminApp, config: GatewayConfig) -> None:
    """Serves the listing when providers are configured (and, once served, after a reload that drops
    them: empty)."""
    auth = config.auth
    providers = dict(auth.providers) if auth is not None else {}
    old = _monitors.pop(id(admin), None)
    if old is not None:
        old.close()
    if not providers and old is None and admin.find(PATH) is None:
        return
    monitor = _monitors[id(admin)] = ProvidersMonitor(config)
    admin.add(PATH, monitor.handle)


class ProvidersMonitor:
    """The supervisor's view of the providers: metadata and keys kept fresh, no tokens fetched."""

    def __init__(self, config: GatewayConfig) -> None:
        self.runtime: OidcRuntime | None = None
        auth = config.auth
        if auth is not None and auth.providers:
            from gateway.auth.oidc.runtime import OidcRuntime

            # metadata and keys only: the supervisor neither introspects nor holds client-credentials tokens
            watched = {name: dataclasses.replace(spec, introspection=None, client_credentials=None)
                       for name, spec in auth.providers.items()}
            self.runtime = OidcRuntime(watched, auth.issuers)
        self.started = False
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # started by the first request
        self.start()

    def start(self) -> None:
        if self.started or self.runtime is None:
            return
        self.started = True
        self.runtime.start()
        for provider in self.runtime.providers.values():
            provider.keys.start()

    def listing(self) -> dict[str, Any]:
        return {"providers": self.runtime.state() if self.runtime is not None else {}}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.start()
        await respond(send, 200, orjson.dumps(self.listing()))

    def close(self) -> None:
        if self.runtime is not None:
            for provider in self.runtime.providers.values():
                provider.keys.close()
            self.runtime.close()
