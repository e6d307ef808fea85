"""Machine to machine: the gateway's own access token from a provider, by the client-credentials grant
(RFC 6749 section 4.4), cached and renewed before it expires; attached to upstream requests of routes
with ``relay: client_credentials`` (token relay: the upstream sees the gateway's token, never the
client's).

```yaml
auth:
  providers:
    corp:
      client_credentials: {scopes: [orders:read], resource: https://orders.internal/, refresh_before: 60s}
routes:
  - prefix: /orders/
    upstream: orders
    auth: {provider: corp, relay: client_credentials}
```

One token per provider per worker (``ClientCredentials``):

- fetched at start in the background, then again ``refresh_before`` ahead of its expiry (``expires_in``;
  300s when the provider gives none), so requests find a valid token in memory;
- a request that finds it within ``refresh_before`` of expiry uses it and starts the renewal; one that
  finds none (or an expired one) waits for the fetch every such request shares;
- a failed fetch keeps a still-valid token serving and is retried with a backoff (1s doubling up to a
  minute); without a valid token the request is answered 503. Failures are logged once per change of
  state; the token and the client secret never are.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from gateway.auth.oidc.config import ClientCredentialsSpec, ProviderSpec
from gateway.auth.oidc.discovery import ProviderMetadata, ProviderUnavailable, describe_error
from gateway.errors import ServiceUnavailable

logger = logging.getLogger("gateway.auth")

DEFAULT_LIFETIME = 300.0  # when the token response has no expires_in
MAX_BACKOFF = 60.0


class ClientCredentials:
    """The gateway's token from one provider in one worker; see the module docstring."""

    def __init__(self, spec: ProviderSpec, metadata: ProviderMetadata, client: Any, *,
                 clock: Callable[[], float] = time.time) -> None:
        settings = spec.client_credentials
        assert settings is not None
        self.spec = spec
        self.settings: ClientCredentialsSpec = settings
        self.metadata = metadata
        self.client = client
        self.clock = clock
        self.access_token: bytes | None = None
        self.expires_at = 0.0  # wall-clock time
        self.fetched_at: float | None = None
        self.failures = 0
        self.attempted_at = 0.0
        self.last_error: str | None = None
        self.fetches = 0
        self.pending: asyncio.Task[None] | None = None
        self.keeper: asyncio.Task[None] | None = None

    async def token(self) -> bytes:
        """A valid access token (raises ServiceUnavailable when none can be had)."""
        now = self.clock()
        token = self.access_token
        if token is not None and now < self.expires_at:
            if now >= self.renew_at():
                self.refresh()  # in the background: this one is still valid
            return token
        await asyncio.shield(self.refresh())
        token = self.access_token
        if token is None or self.clock() >= self.expires_at:
            raise ServiceUnavailable("the gateway cannot get its own access token now")
        return token

    def renew_at(self) -> float:
        return self.expires_at - self.settings.refresh_before

    def due(self) -> float:
        """Wall-clock time of the next background fetch."""
        if self.failures:
            return self.attempted_at + min(2.0 ** (self.failures - 1), MAX_BACKOFF)
        return self.renew_at()

    def refresh(self) -> asyncio.Task[None]:
        """The fetch every caller shares."""
        if self.pending is None:
            self.pending = asyncio.get_running_loop().create_task(self._fetch())
        return self.pending

    async def _fetch(self) -> None:
        self.fetches += 1
        try:
            url = await self.metadata.endpoint("token_endpoint")
            extra: dict[str, str] = {}
            if self.settings.scopes:
                extra["scope"] = " ".join(self.settings.scopes)
            if self.settings.resource is not None:
                extra["resource"] = self.settings.resource
            if self.settings.audience is not None:
                extra["audience"] = self.settings.audience
            response = await asyncio.wait_for(
                self.client.fetch_token(url, grant_type="client_credentials", **extra), self.spec.timeout + 1.0)
            self._install(response)
        except ProviderUnavailable as exc:
            self._failed(str(exc))
        except Exception as exc:  # the provider's error answer (authlib's OAuthError), timeouts, transport
            self._failed(_oauth_error(exc))
        finally:
            self.pending = None

    def _install(self, response: Any) -> None:
        token = response.get("access_token") if isinstance(response, dict) else None
        if not isinstance(token, str) or not token or not token.isascii() or not token.isprintable():
            raise ValueError("the token response has no usable access_token")
        lifetime = response.get("expires_in")
        if isinstance(lifetime, str) and lifetime.isdigit():
            lifetime = int(lifetime)
        if not isinstance(lifetime, (int, float)) or isinstance(lifetime, bool) or lifetime <= 0:
            lifetime = DEFAULT_LIFETIME
        now = self.clock()
        if self.failures:
            logger.warning("auth provider %s: client-credentials token fetched again after %d failed attempt(s)",
                           self.spec.name, self.failures)
        self.access_token = token.encode("ascii")
        self.fetched_at = self.attempted_at = now
        self.expires_at = now + float(lifetime)
        self.failures = 0

    def _failed(self, reason: str) -> None:
        self.failures += 1
        self.attempted_at = self.clock()
        self.last_error = reason
        if self.failures == 1:
            logger.warning("auth provider %s: cannot get a client-credentials token (%s)", self.spec.name, reason)

    def start(self) -> None:
        if self.keeper is None:
            self.keeper = asyncio.get_running_loop().create_task(self._keep_fresh())

    async def _keep_fresh(self) -> None:
        while True:
            wait = self.due() - self.clock()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            await asyncio.shield(self.refresh())

    def state(self) -> dict[str, Any]:
        now = self.clock()
        return {
            "has_token": self.access_token is not None and now < self.expires_at,
            "token_expires_in_seconds": round(self.expires_at - now, 3) if self.access_token else None,
            "failures": self.failures,
            "last_error": self.last_error,
        }

    def close(self) -> None:
        for task in (self.keeper, self.pending):
            if task is not None:
                task.cancel()
        self.keeper = self.pending = None


def _oauth_error(exc: Exception) -> str:
    """The provider's error code (``invalid_client``, ...) or the transport's error; never a secret."""
    error = getattr(exc, "error", None)
    if isinstance(error, str):
        return f"the provider answered {error}"
    return describe_error(exc)
