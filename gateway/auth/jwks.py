"""Remote keys: a JWKS URL (directly, or found through OIDC discovery), kept fresh off the request path.

How a worker keeps an issuer's keys (``RemoteJwks``):

- **Fresh in the background.** A task fetches at start, then again at 80% of the key set's TTL (the
  response's ``Cache-Control: max-age`` clamped to ``jwks_min_ttl``..``jwks_max_ttl``, else
  ``jwks_ttl``), so a request for a known kid never waits for a fetch.
- **Last good keys keep serving.** A failed fetch (error status, timeout, not JSON, no usable key)
  changes nothing but the retry time (backoff from ``jwks_cooldown`` up to the TTL). The failure is
  logged when fetching starts to fail and again when it recovers, never per attempt, and never with a
  token or key material.
- **Unknown kid: one shared refetch, rate-limited.** A token whose kid no key has waits for the next
  fetch: the one in flight, else one started now, else (within ``jwks_cooldown`` of the last) one
  scheduled for when the cooldown ends. Every waiter shares that one fetch, whatever its kid, so fetches
  happen at most once per cooldown however many kids arrive. A kid the fetch still lacks is remembered
  as unknown for ``unknown_kid_ttl`` (bounded LRU), and tokens with it fail at once without waiting.
- **Never on the event loop.** Fetching is urllib (http and https, the system's or ``ca_file``'s CAs) in
  a thread, with a timeout; redirects only to http(s); at most 1 MiB read.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import ssl
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from gateway import __version__
from gateway.auth.config import IssuerSpec
from gateway.auth.keys import Key, KeyIndex, KeyProblem, keys_from_jwks

logger = logging.getLogger("gateway.auth")

MAX_DOCUMENT_BYTES = 1024 * 1024
REFRESH_AT = 0.8  # of the TTL: refresh early so the keys never go stale while the endpoint works
MAX_UNKNOWN_KIDS = 4096
_MAX_AGE = re.compile(r"(?:^|[,\s])max-age\s*=\s*\"?(\d+)", re.IGNORECASE)
_NO_CACHE = re.compile(r"(?:^|[,\s])(?:no-cache|no-store)(?:$|[,\s])", re.IGNORECASE)

Fetch = Callable[[str, float, "ssl.SSLContext | None"], tuple[Any, "float | None"]]


class FetchError(Exception):
    """A key document could not be had; the message is safe to log (no bodies, no keys)."""


class _HttpRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects only to http and https (never file:, ftp: or data:)."""

    def redirect_request(  # noqa: PLR0917 - urllib's signature
        self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> Any:
        if not newurl.lower().startswith(("http://", "https://")):
            raise FetchError(f"redirected to a non-http URL (HTTP {code})")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def fetch_json(url: str, timeout: float, context: ssl.SSLContext | None) -> tuple[Any, float | None]:
    """GETs a JSON document (blocking: run it in a thread). Returns it and the response's max-age in
    seconds (0 for no-cache/no-store, None when the response says nothing)."""
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), _HttpRedirects())
    request = urllib.request.Request(url, headers={"Accept": "application/json",  # noqa: S310 - http(s) only
                                                   "User-Agent": f"gateway/{__version__}"})
    body, cache_control, failure = _get(opener, request, timeout)
    if failure is not None:
        raise FetchError(failure)  # raised here, not in the except: no chained traceback keeps the socket
    if len(body) > MAX_DOCUMENT_BYTES:
        raise FetchError(f"the document is larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise FetchError("the response is not JSON") from None
    return document, _max_age(cache_control)


def _get(opener: urllib.request.OpenerDirector, request: urllib.request.Request,
         timeout: float) -> tuple[bytes, str, str | None]:
    """The body (at most one byte over the limit) and Cache-Control, or why there are none."""
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.read(MAX_DOCUMENT_BYTES + 1), response.headers.get("Cache-Control", ""), None
    except FetchError as exc:
        return b"", "", str(exc)
    except urllib.error.HTTPError as exc:
        exc.close()
        return b"", "", f"HTTP {exc.code}"
    except urllib.error.URLError as exc:
        return b"", "", f"cannot connect: {exc.reason}"
    except (OSError, ValueError) as exc:  # timeouts, resets, a malformed response
        return b"", "", f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def shown(url: str | None) -> str:
    """A URL for a log line or ``gateway check``: without any user:password@."""
    if not url or "@" not in url:
        return url or ""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _max_age(cache_control: str) -> float | None:
    if _NO_CACHE.search(cache_control):
        return 0.0
    match = _MAX_AGE.search(cache_control)
    return float(match.group(1)) if match else None


class RemoteJwks:
    """An issuer's keys from its JWKS endpoint (see the module docstring); a ``KeySource``."""

    def __init__(self, spec: IssuerSpec, on_withdrawn: Callable[[], None] | None = None,
                 fetch: Fetch = fetch_json) -> None:
        self.spec = spec
        self.on_withdrawn = on_withdrawn  # keys left the set: the verifier forgets what they verified
        self.fetch = fetch
        self.context = ssl.create_default_context(cafile=spec.ca_file) if spec.ca_file else None
        self.index = KeyIndex(())
        self.jwks_uri = spec.jwks_url  # None until discovery finds it
        self.ttl = spec.jwks_ttl
        self.fetched_at = -math.inf  # loop time of the last good fetch
        self.started_at = -math.inf  # loop time the last fetch started
        self.failures = 0  # fetches failed in a row
        self.fetches = 0  # attempts made (for tests and metrics)
        self.pending: asyncio.Task[float | None] | None = None  # the next fetch, running or scheduled
        self.unknown: OrderedDict[str, float] = OrderedDict()  # kid -> loop time it may be looked up again
        self.skipped: tuple[str, ...] = ()
        self.keeper: asyncio.Task[None] | None = None

    # --- the request path ---------------------------------------------------------------------------

    def candidates(self, kid: str | None) -> tuple[Key, ...]:
        return self.index.lookup(kid, anonymous_for_unknown=False)

    async def refresh(self, kid: str | None) -> bool:
        """Waits for a fetch that may bring the kid's key; False when it is known not to come."""
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        if kid is not None:
            until = self.unknown.get(kid)
            if until is not None:
                if until > arrived:
                    return False
                del self.unknown[kid]
        for _ in range(2):
            started = await asyncio.shield(self._next_fetch())
            if started is None:  # the fetch failed: the kid is not known to be unknown
                return False
            if self.candidates(kid):
                return True
            if started >= arrived:  # a fetch begun after this token arrived lacks the key
                break
            # else the fetch this request joined began before it came: the key may be newer; once more
        if kid is not None:
            self._remember_unknown(kid, loop.time() + self.spec.unknown_kid_ttl)
        return False

    def _remember_unknown(self, kid: str, until: float) -> None:
        unknown = self.unknown
        unknown[kid] = until
        unknown.move_to_end(kid)
        if len(unknown) > MAX_UNKNOWN_KIDS:
            unknown.popitem(last=False)

    # --- fetching ------------------------------------------------------------------------------------

    def _next_fetch(self) -> asyncio.Task[float | None]:
        """The fetch every waiter shares: the pending one, or a new one (delayed by the cooldown)."""
        if self.pending is None:
            loop = asyncio.get_running_loop()
            delay = max(0.0, self.started_at + self.spec.jwks_cooldown - loop.time())
            self.pending = loop.create_task(self._fetch_after(delay))
        return self.pending

    async def _fetch_after(self, delay: float) -> float | None:
        try:
            if delay > 0:
                await asyncio.sleep(delay)
            return await self._fetch()
        finally:
            self.pending = None

    async def _fetch(self) -> float | None:
        """One fetch; returns the loop time it started, or None when it failed."""
        loop = asyncio.get_running_loop()
        started = self.started_at = loop.time()
        self.fetches += 1
        try:
            keys, ttl = await self._download()
        except FetchError as exc:
            self._failed(str(exc))
            return None
        except Exception as exc:  # a bug must not stop the refresh: counted as a failed fetch
            logger.debug("auth issuer %s: key fetch failed", self.spec.name, exc_info=True)
            self._failed(type(exc).__name__)
            return None
        if self.failures:
            logger.warning("auth issuer %s: signing keys fetched again from %s after %d failed attempt(s)",
                           self.spec.name, shown(self.jwks_uri), self.failures)
        self.failures = 0
        self._install(keys)
        self.ttl = ttl
        self.fetched_at = loop.time()
        return started

    def _failed(self, reason: str) -> None:
        self.failures += 1
        if self.failures == 1:  # logged once per change of state, not per attempt
            kept = f"serving the {len(self.index.all)} key(s) fetched before" if self.index.all else "no keys yet"
            logger.warning("auth issuer %s: cannot fetch signing keys from %s (%s); %s",
                           self.spec.name, shown(self.jwks_uri or self.spec.discovery_url), reason, kept)

    async def _download(self) -> tuple[list[Key], float]:
        if self.jwks_uri is None:
            self.jwks_uri = await self._discover()
        try:
            document, max_age = await self._get(self.jwks_uri)
            keys, skipped = keys_from_jwks(document, self.spec.algorithms)
        except KeyProblem as problem:
            raise FetchError(str(problem)) from None
        except FetchError:
            if self.spec.discovery_url is not None:
                self.jwks_uri = None  # discover again next time: the provider may have moved it
            raise
        if tuple(skipped) != self.skipped:  # logged when what is skipped changes, not on every fetch
            self.skipped = tuple(skipped)
            for reason in skipped:
                logger.warning("auth issuer %s: a key in %s is skipped: %s", self.spec.name, shown(self.jwks_uri),
                               reason)
        if not keys:
            raise FetchError("the key set holds no usable key")
        if max_age is None:
            return keys, self.spec.jwks_ttl
        return keys, min(max(max_age, self.spec.jwks_min_ttl), self.spec.jwks_max_ttl)

    async def _discover(self) -> str:
        """The jwks_uri of the OpenID Provider metadata (OpenID Connect Discovery 1.0, section 4)."""
        assert self.spec.discovery_url is not None
        document, _ = await self._get(self.spec.discovery_url)
        if not isinstance(document, dict):
            raise FetchError("the discovery document is not a JSON object")
        if document.get("issuer") != self.spec.issuer:
            raise FetchError("the discovery document names another issuer")
        uri = document.get("jwks_uri")
        if not isinstance(uri, str) or not uri.lower().startswith(("http://", "https://")):
            raise FetchError("the discovery document has no http(s) jwks_uri")
        return uri

    async def _get(self, url: str) -> tuple[Any, float | None]:
        timeout = self.spec.jwks_timeout
        try:
            return await asyncio.wait_for(asyncio.to_thread(self.fetch, url, timeout, self.context), timeout + 1)
        except TimeoutError:
            raise FetchError("timed out") from None

    def _install(self, keys: list[Key]) -> None:
        before = self.index.fingerprints()
        self.index = KeyIndex(keys)
        if before - self.index.fingerprints() and self.on_withdrawn is not None:
            self.on_withdrawn()

    # --- the background refresh ----------------------------------------------------------------------

    def start(self) -> None:
        if self.keeper is None:
            self.keeper = asyncio.get_running_loop().create_task(self._keep_fresh())

    def due(self) -> float:
        """Loop time of the next background fetch."""
        if self.failures:
            backoff = self.spec.jwks_cooldown * 2.0 ** min(self.failures - 1, 16)
            return self.started_at + min(backoff, max(self.ttl, self.spec.jwks_cooldown))
        return self.fetched_at + self.ttl * REFRESH_AT

    async def _keep_fresh(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            wait = self.due() - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
                continue  # a kid-driven fetch may have moved the due time meanwhile
            await asyncio.shield(self._next_fetch())

    def close(self) -> None:
        for task in (self.keeper, self.pending):
            if task is not None:
                task.cancel()
        self.keeper = self.pending = None
