"""A provider's metadata, found by discovery, kept fresh off the request path; and its HTTP client.

Where the metadata comes from (``ProviderSpec.discovery_urls``): the configured ``discovery_url``, else
``{issuer}/.well-known/openid-configuration`` (OpenID Connect Discovery 1.0 section 4) and, when that
fails, ``{scheme}://{host}/.well-known/oauth-authorization-server{issuer path}`` (RFC 8414 section 3).
Both are read when both exist: the OpenID document wins, the RFC 8414 one adds what it lacks (django-oauth-
toolkit, for one, lists its introspection endpoint only there); either alone is enough. A
document is accepted only when its ``issuer`` is exactly the configured one (OIDC Discovery section 4.3,
RFC 8414 section 3.3: a document naming another issuer could redirect every endpoint) and every endpoint
it names is an http(s) URL.

How a process keeps it (``ProviderMetadata``), one per provider, so providers never wait on each other:

- **In the background.** ``start`` fetches at once and again every ``metadata_ttl``; after a failure it
  retries with a backoff (1s doubling, at most the TTL). Requests read the document in memory.
- **Last good document keeps serving.** A failed refresh keeps the document fetched before; the failure
  is logged once when fetching starts to fail and once when it recovers.
- **Never blocks for long.** A request that needs the document before the first fetch succeeded joins
  the fetch in flight (bounded by the provider's ``timeout``); while the provider is known to be down
  (within the retry backoff) it fails at once with ``ProviderUnavailable`` (503), instead of waiting.
- **State for the admin endpoint**: reachable, when fetched, the last error and when, the URL it came from.

All HTTP is async (httpx2 under authlib's ``AsyncOAuth2Client``, one client per provider per worker):
every call has the provider's ``timeout`` and a bound on the whole exchange; redirects are not followed;
a body over 1 MiB is refused. Nothing logged ever holds a token or the client secret.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any

import orjson
from authlib.integrations.httpx_client import AsyncOAuth2Client

from gateway import __version__
from gateway.auth.oidc.config import ProviderSpec

logger = logging.getLogger("gateway.auth")

MAX_DOCUMENT_BYTES = 1024 * 1024
FIRST_RETRY = 1.0  # seconds after the first failure; doubles up to the TTL
ENDPOINTS = ("authorization_endpoint", "token_endpoint", "userinfo_endpoint", "jwks_uri", "introspection_endpoint",
             "revocation_endpoint", "end_session_endpoint")


class ProviderUnavailable(Exception):
    """The provider cannot be used now (its metadata or an endpoint is unreachable); safe to log."""


class ProviderError(Exception):
    """The provider answered, but not as the protocol says (an error status, not JSON); safe to log."""


def http_client(spec: ProviderSpec) -> AsyncOAuth2Client:
    """The provider's HTTP client: its client credentials (for token and introspection requests), its
    timeout on connect, read, write and pool, its CAs, no redirects."""
    quiet = logging.getLogger("httpx2")
    if quiet.level == logging.NOTSET:  # it logs every request at INFO: introspection would flood the log
        quiet.setLevel(logging.WARNING)
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=spec.ca_file) if spec.ca_file else True
    secret = spec.client_secret.reveal() if spec.client_secret is not None else None
    return AsyncOAuth2Client(
        client_id=spec.client_id, client_secret=secret,
        token_endpoint_auth_method=spec.client_auth if secret is not None else "none",
        timeout=spec.timeout, verify=verify, follow_redirects=False, trust_env=False,
        headers={"user-agent": f"gateway/{__version__}", "accept": "application/json"},
    )


async def get_json(client: AsyncOAuth2Client, url: str, limit: float) -> Any:
    """GET a JSON document (no token sent), bounded in time and size."""
    try:
        return await asyncio.wait_for(_get_json(client, url), limit + 1.0)
    except TimeoutError:
        raise ProviderUnavailable(f"{url}: timed out") from None


async def _get_json(client: AsyncOAuth2Client, url: str) -> Any:
    try:
        async with client.stream("GET", url, withhold_token=True) as response:
            if response.status_code != 200:
                raise ProviderError(f"{url}: HTTP {response.status_code}")
            body = b""
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise ProviderError(f"{url}: larger than {MAX_DOCUMENT_BYTES} bytes")
    except (ProviderError, ProviderUnavailable):
        raise
    except Exception as exc:  # connection refused, reset, TLS, timeout: the transport's many errors
        raise ProviderUnavailable(f"{url}: {describe_error(exc)}") from None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ProviderError(f"{url}: the response is not JSON") from None


def describe_error(exc: BaseException) -> str:
    """A transport error in words (httpx's messages may be empty)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def validate(document: Any, spec: ProviderSpec, url: str) -> dict[str, Any]:
    """The metadata document, checked: a JSON object naming exactly our issuer, endpoints http(s) URLs."""
    if not isinstance(document, dict):
        raise ProviderError(f"{url}: the metadata is not a JSON object")
    if document.get("issuer") != spec.issuer:
        raise ProviderError(f"{url}: the metadata names another issuer")
    for key in ENDPOINTS:
        value = document.get(key)
        if value is not None and (not isinstance(value, str) or not value.lower().startswith(("http://", "https://"))):
            raise ProviderError(f"{url}: {key} is not an http(s) URL")
    return document


class ProviderMetadata:
    """One provider's metadata in one process; see the module docstring."""

    def __init__(self, spec: ProviderSpec, client: AsyncOAuth2Client, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.spec = spec
        self.client = client
        self.clock = clock
        self.document: dict[str, Any] | None = None
        self.source: str | None = None  # the URL the document came from
        self.fetched_at: float | None = None  # wall-clock time of the last good fetch
        self.attempted_at: float | None = None  # wall-clock time the last fetch ended
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.failures = 0  # fetches failed in a row
        self.fetches = 0
        self.pending: asyncio.Task[None] | None = None
        self.keeper: asyncio.Task[None] | None = None

    # --- what the request path uses -----------------------------------------------------------------

    async def get(self) -> dict[str, Any]:
        """The document; fetched now (joining a fetch in flight) only if none was had yet and the
        provider is not known to be down. Raises ProviderUnavailable."""
        if self.document is not None:
            return self.document
        if self.failures and self.clock() < self.retry_at():
            raise ProviderUnavailable(f"provider {self.spec.name} is unreachable ({self.last_error})")
        await asyncio.shield(self.refresh())
        if self.document is None:
            raise ProviderUnavailable(f"provider {self.spec.name} is unreachable ({self.last_error})")
        return self.document

    async def endpoint(self, key: str) -> str:
        """An endpoint URL of the metadata; ProviderUnavailable when the provider names none."""
        value = (await self.get()).get(key)
        if not isinstance(value, str):
            raise ProviderUnavailable(f"provider {self.spec.name} has no {key}")
        return value

    def retry_at(self) -> float:
        """Wall-clock time of the next fetch."""
        if self.failures:
            backoff = min(FIRST_RETRY * 2.0 ** min(self.failures - 1, 20), self.spec.metadata_ttl)
            return (self.attempted_at or 0.0) + backoff
        return (self.fetched_at or 0.0) + self.spec.metadata_ttl

    # --- fetching ------------------------------------------------------------------------------------

    def refresh(self) -> asyncio.Task[None]:
        """The fetch every caller shares: the one in flight, or a new one."""
        if self.pending is None:
            self.pending = asyncio.get_running_loop().create_task(self._fetch())
        return self.pending

    async def _fetch(self) -> None:
        try:
            self.fetches += 1
            errors = []
            merged: dict[str, Any] | None = None
            source = ""
            for url in self.spec.discovery_urls():
                try:
                    document = validate(await get_json(self.client, url, self.spec.timeout), self.spec, url)
                except (ProviderError, ProviderUnavailable) as exc:
                    errors.append(str(exc))
                    continue
                if merged is None:
                    merged, source = document, url
                else:  # the first document found wins; a later one only adds what it lacks
                    merged = {**document, **merged}
            if merged is None:
                self._failed("; ".join(errors))
            else:
                self._succeeded(merged, source)
        except Exception as exc:  # a bug must not stop the refresh: counted as a failure
            logger.debug("auth provider %s: discovery failed", self.spec.name, exc_info=True)
            self._failed(describe_error(exc))
        finally:
            self.pending = None

    def _succeeded(self, document: dict[str, Any], url: str) -> None:
        if self.failures:
            logger.warning("auth provider %s: metadata fetched again from %s after %d failed attempt(s)",
                           self.spec.name, url, self.failures)
        self.document, self.source = document, url
        self.fetched_at = self.attempted_at = self.clock()
        self.failures = 0

    def _failed(self, reason: str) -> None:
        self.failures += 1
        self.attempted_at = self.last_error_at = self.clock()
        self.last_error = reason
        if self.failures == 1:  # once per change of state, not per attempt
            kept = "serving the metadata fetched before" if self.document is not None else "no metadata yet"
            logger.warning("auth provider %s: cannot fetch its metadata (%s); %s", self.spec.name, reason, kept)

    # --- the background refresh ----------------------------------------------------------------------

    def start(self) -> None:
        if self.keeper is None:
            self.keeper = asyncio.get_running_loop().create_task(self._keep_fresh())

    async def _keep_fresh(self) -> None:
        while True:
            wait = self.retry_at() - self.clock() if self.attempted_at is not None else 0.0
            if wait > 0:
                await asyncio.sleep(wait)
                continue  # a request-driven fetch may have moved the due time meanwhile
            await asyncio.shield(self.refresh())

    def state(self) -> dict[str, Any]:
        """For the admin endpoint: never the secret, never a token."""
        now = self.clock()
        return {
            "reachable": self.document is not None and self.failures == 0,
            "metadata_url": self.source,
            "metadata_age_seconds": None if self.fetched_at is None else round(now - self.fetched_at, 3),
            "failures": self.failures,
            "last_error": self.last_error,
            "last_error_age_seconds": None if self.last_error_at is None else round(now - self.last_error_at, 3),
        }

    def close(self) -> None:
        for task in (self.keeper, self.pending):
            if task is not None:
                task.cancel()
        self.keeper = self.pending = None
