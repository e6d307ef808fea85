"""Opaque access tokens, checked by the provider: OAuth 2.0 Token Introspection (RFC 7662).

A route with ``provider: NAME`` whose provider has ``introspection:`` sends a token that is not a JWT
(not three dot-separated parts; RFC 6750 characters, at most 16 KiB, else refused as malformed without a
call) to the provider's ``introspection_endpoint`` (from its metadata), as the
gateway's confidential client (``client_secret_basic`` or ``_post``), with ``token_type_hint=access_token``.

    active: true    the answer's claims are the token's claims (sub, scope, client_id, aud, exp, ...);
                    iss, when given, must be the provider's; aud, when given, must hold one of the
                    provider's audiences (a token for another client is refused, 401 wrong audience);
                    exp and nbf are checked with the leeway
    active: false   401 invalid_token "token inactive" (expired, revoked, unknown: RFC 7662 says no more)
    no answer       503 (the provider's timeout; an error status; not JSON): the token is not let through

Answers are cached per worker by a BLAKE2b digest of the token (the token is not kept), for
``cache_ttl`` at most and never past the token's ``exp``; an inactive answer is cached too, so a replayed
bad token costs no call. Concurrent requests with the same token share one call.

The calls are bounded, per worker: at most ``max_calls_per_second`` (a token bucket holding one second's
worth; over it, a token not cached is answered 503 with ``Retry-After: 1`` instead of queueing) and at
most ``max_concurrent`` in flight (more wait, within the provider's timeout, then 503). So a flood of
random tokens costs the provider a bounded rate, and cached tokens are never limited.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from hashlib import blake2b
from typing import Any

from gateway.auth.oidc.config import IntrospectionSpec, ProviderSpec
from gateway.auth.oidc.discovery import ProviderMetadata, ProviderUnavailable, describe_error
from gateway.auth.verify import MAX_TOKEN_BYTES, TokenError, Verified
from gateway.errors import ServiceUnavailable

logger = logging.getLogger("gateway.auth")

MAX_CACHED = 10_000
B64TOKEN = re.compile(rb"[A-Za-z0-9._~+/-]+=*")  # RFC 6750 section 2.1: what a bearer token may hold
Answer = Verified | str | None  # claims; why refused; inactive
RETRY_AFTER = ((b"retry-after", b"1"),)


class IntrospectionBusy(ServiceUnavailable):
    """Over the introspection bound: the request is refused rather than queued (503, Retry-After)."""

    default_message = "too many tokens to check now; retry shortly"

    def __init__(self) -> None:
        super().__init__(headers=RETRY_AFTER)


class TokenBucket:
    """``rate`` tokens a second, holding at most ``burst`` (not thread-safe: one event loop)."""

    __slots__ = ("burst", "clock", "level", "rate", "updated")

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.level = burst
        self.updated = clock()

    def take(self) -> bool:
        now = self.clock()
        self.level = min(self.burst, self.level + (now - self.updated) * self.rate)
        self.updated = now
        if self.level < 1.0:
            return False
        self.level -= 1.0
        return True


class Introspector:
    """One provider's introspection in one worker; see the module docstring."""

    def __init__(self, spec: ProviderSpec, metadata: ProviderMetadata, client: Any, *,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic) -> None:
        settings = spec.introspection
        assert settings is not None
        self.spec = spec
        self.settings: IntrospectionSpec = settings
        self.metadata = metadata
        self.client = client
        self.clock = clock
        self.timeout = settings.timeout or spec.timeout
        self.audiences = frozenset(spec.accepted_audiences)
        self.bucket = TokenBucket(settings.max_calls_per_second, max(1.0, settings.max_calls_per_second),
                                  monotonic)
        self.slots = asyncio.Semaphore(settings.max_concurrent)
        self.cache: OrderedDict[bytes, tuple[Answer, float]] = OrderedDict()  # digest -> (answer, until)
        self.inflight: dict[bytes, asyncio.Future[Answer]] = {}
        self.calls = 0  # made (for tests and the admin endpoint)
        self.refused = 0  # over the bound
        self.failing = False

    async def verify(self, token: bytes) -> Verified:
        """The token's claims if the provider says it is active; raises TokenError (401),
        IntrospectionBusy or ServiceUnavailable (503)."""
        if len(token) > MAX_TOKEN_BYTES or not B64TOKEN.fullmatch(token):
            raise TokenError("malformed token")  # never sent to the provider
        digest = blake2b(token, digest_size=16).digest()
        now = self.clock()
        entry = self.cache.get(digest)
        if entry is not None:
            if entry[1] > now:
                self.cache.move_to_end(digest)
                return _answer(entry[0])
            del self.cache[digest]
        shared = self.inflight.get(digest)
        if shared is None:
            shared = self.inflight[digest] = asyncio.get_running_loop().create_future()
            try:
                answer = await self._introspect(token)
            except BaseException as exc:
                shared.set_exception(exc)
                shared.exception()  # retrieved: the waiters (if any) get it too
                raise
            else:
                shared.set_result(answer)
            finally:
                del self.inflight[digest]
            self._remember(digest, answer)
            return _answer(answer)
        return _answer(await asyncio.shield(shared))

    async def _introspect(self, token: bytes) -> Answer:
        if not self.bucket.take():
            self.refused += 1
            raise IntrospectionBusy()
        try:
            await asyncio.wait_for(self.slots.acquire(), self.timeout)
        except TimeoutError:
            self.refused += 1
            raise IntrospectionBusy() from None
        try:
            body = await self._call(token)
        finally:
            self.slots.release()
        return self.answer(body)

    async def _call(self, token: bytes) -> dict[str, Any]:
        try:
            url = await self.metadata.endpoint("introspection_endpoint")
        except ProviderUnavailable as exc:
            raise self._unavailable(str(exc)) from None
        self.calls += 1
        try:
            response = await asyncio.wait_for(
                self.client.introspect_token(url, token=token.decode("latin-1"), token_type_hint="access_token"),  # noqa: S106
                self.timeout + 1.0)
        except Exception as exc:  # timeouts and the transport's errors
            raise self._unavailable(describe_error(exc)) from None
        if response.status_code != 200:
            raise self._unavailable(f"HTTP {response.status_code}")
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("active"), bool):
            raise self._unavailable("the answer is not an introspection response")
        if self.failing:
            self.failing = False
            logger.warning("auth provider %s: introspection answers again", self.spec.name)
        return body

    def _unavailable(self, reason: str) -> ServiceUnavailable:
        if not self.failing:  # logged once per change of state
            self.failing = True
            logger.warning("auth provider %s: introspection fails (%s); opaque tokens are refused with 503",
                           self.spec.name, reason)
        return ServiceUnavailable("the token cannot be checked now")

    def answer(self, body: dict[str, Any]) -> Answer:
        """An introspection response as a verification; None: inactive; a string: why a token the
        provider vouches for is refused here (another issuer or audience, expired)."""
        if body.get("active") is not True:
            return None
        now = self.clock()
        leeway = self.spec.leeway
        iss = body.get("iss")
        if iss is not None and iss != self.spec.issuer:
            return "wrong issuer"
        aud = body.get("aud")
        if aud is not None:
            held = {aud} if isinstance(aud, str) else {a for a in aud if isinstance(a, str)} \
                if isinstance(aud, list) else set()
            if not held & self.audiences:
                return "wrong audience"
        exp = body.get("exp")
        if isinstance(exp, (int, float)) and not isinstance(exp, bool) and exp + leeway <= now:
            return "token expired"
        nbf = body.get("nbf")
        if isinstance(nbf, (int, float)) and not isinstance(nbf, bool) and nbf - leeway > now:
            return "token not yet valid"
        until = now + self.settings.cache_ttl
        if isinstance(exp, (int, float)) and not isinstance(exp, bool):
            until = min(until, exp + leeway)
        sub = body.get("sub")
        claims = {key: value for key, value in body.items() if key != "active"}
        return Verified(claims, self.spec.name, sub if isinstance(sub, str) else None, until)

    def _remember(self, digest: bytes, answer: Answer) -> None:
        ttl = self.settings.cache_ttl
        if ttl <= 0:
            return
        until = answer.expires if isinstance(answer, Verified) else self.clock() + ttl
        cache = self.cache
        cache[digest] = (answer, until)
        cache.move_to_end(digest)
        if len(cache) > MAX_CACHED:
            cache.popitem(last=False)

    def state(self) -> dict[str, Any]:
        return {"calls": self.calls, "refused": self.refused, "cached": len(self.cache), "failing": self.failing}


def _answer(answer: Answer) -> Verified:
    if isinstance(answer, Verified):
        return answer
    raise TokenError("token inactive" if answer is None else answer)
