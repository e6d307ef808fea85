"""The configured providers in one worker (or in the supervisor, for the admin endpoint).

Per provider, independent of the others (a provider that is down delays nothing but its own routes):
its HTTP client, its metadata (discovery.py), its keys (``ProviderJwks``: the JWT issuer's key source,
with the ``jwks_uri`` taken from the metadata), its introspection (when configured) and its
client-credentials token (when configured). ``start`` begins their background refreshes; ``close`` ends
them and closes the clients.

``RouteOidc`` is what a route's auth stage (gateway/auth/stage.py) gets from here: the introspector for
opaque tokens, the scope check, the relayed token.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from gateway.auth.jwks import FetchError, RemoteJwks
from gateway.auth.oidc.client_credentials import ClientCredentials
from gateway.auth.oidc.discovery import ProviderMetadata, ProviderUnavailable, http_client
from gateway.auth.oidc.introspection import Introspector
from gateway.auth.oidc.scopes import ScopeCheck

if TYPE_CHECKING:
    from gateway.auth.config import IssuerSpec
    from gateway.auth.oidc.config import ProviderSpec
    from gateway.auth.policy import RoutePolicy


class ProviderJwks(RemoteJwks):
    """A provider's signing keys: a ``RemoteJwks`` whose JWKS URL is its metadata's ``jwks_uri``."""

    def __init__(self, spec: IssuerSpec, metadata: ProviderMetadata,
                 on_withdrawn: Callable[[], None] | None = None) -> None:
        super().__init__(spec, on_withdrawn)
        self.metadata = metadata

    async def _discover(self) -> str:
        try:
            return await self.metadata.endpoint("jwks_uri")
        except ProviderUnavailable as exc:
            raise FetchError(str(exc)) from None


class Provider:
    """One provider's client-side state in one process."""

    def __init__(self, spec: ProviderSpec, issuer: IssuerSpec, on_withdrawn: Callable[[], None] | None = None,
                 client: Any = None) -> None:
        self.spec = spec
        self.client = client if client is not None else http_client(spec)
        self.metadata = ProviderMetadata(spec, self.client)
        self.keys = ProviderJwks(issuer, self.metadata, on_withdrawn)
        self.introspector = None if spec.introspection is None else Introspector(spec, self.metadata, self.client)
        self.credentials = None if spec.client_credentials is None else \
            ClientCredentials(spec, self.metadata, self.client)
        self.closing: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.metadata.start()
        if self.credentials is not None:
            self.credentials.start()
        # the keys start as the issuer's key source (gateway/auth/runtime.py)

    def state(self) -> dict[str, Any]:
        """For the admin endpoint (never a secret or a token)."""
        keys = self.keys
        try:
            now = asyncio.get_running_loop().time()
        except RuntimeError:
            now = 0.0
        fetched = keys.fetched_at != float("-inf")
        state: dict[str, Any] = {
            "issuer": self.spec.issuer,
            "client_id": self.spec.client_id,
            **self.metadata.state(),
            "jwks_uri": keys.jwks_uri,
            "keys": len(keys.index.all),
            "keys_age_seconds": round(now - keys.fetched_at, 3) if fetched else None,
            "keys_failures": keys.failures,
        }
        if self.introspector is not None:
            state["introspection"] = self.introspector.state()
        if self.credentials is not None:
            state["client_credentials"] = self.credentials.state()
        return state

    def close(self) -> None:
        self.metadata.close()
        if self.credentials is not None:
            self.credentials.close()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self.closing = loop.create_task(self.client.aclose())


class RouteOidc:
    """A route's OAuth parts, worked out once: the introspector for opaque tokens, the scope check, and
    the provider whose client-credentials token is relayed."""

    __slots__ = ("credentials", "introspector", "scopes")

    def __init__(self, introspector: Introspector | None, scopes: ScopeCheck | None,
                 credentials: ClientCredentials | None) -> None:
        self.introspector = introspector
        self.scopes = scopes
        self.credentials = credentials


class OidcRuntime:
    """Every configured provider in one process."""

    def __init__(self, providers: Mapping[str, ProviderSpec], issuers: Mapping[str, IssuerSpec],
                 on_withdrawn: Callable[[], None] | None = None) -> None:
        self.providers = {name: Provider(spec, issuers[name], on_withdrawn) for name, spec in providers.items()}

    def route(self, policy: RoutePolicy) -> RouteOidc | None:
        """The route's OAuth parts (None when it uses none of them)."""
        introspector = None
        if policy.provider is not None:
            introspector = self.providers[policy.provider].introspector
        else:  # opaque tokens go to a provider only when exactly one of the route's could take them
            names = policy.issuers if policy.issuers is not None else tuple(self.providers)
            able = [self.providers[name].introspector for name in names
                    if name in self.providers and self.providers[name].introspector is not None]
            introspector = able[0] if len(able) == 1 else None
        scopes = None if policy.scope_rules.empty else ScopeCheck(policy.scope_rules)
        credentials = None
        if policy.relay is not None and policy.provider is not None:
            credentials = self.providers[policy.provider].credentials
        if introspector is None and scopes is None and credentials is None:
            return None
        return RouteOidc(introspector, scopes, credentials)

    def start(self) -> None:
        for provider in self.providers.values():
            provider.start()

    def close(self) -> None:
        for provider in self.providers.values():
            provider.close()

    def state(self) -> dict[str, Any]:
        return {name: provider.state() for name, provider in self.providers.items()}
