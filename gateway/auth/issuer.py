"""The gateway as token issuer: its shared, rotating keys in each worker, and the tokens it issues.

``IssuerKeys`` is the worker's copy of the key set (gateway/auth/keyset.py) and a ``KeySource``, so the
gateway's own tokens are verified like any other issuer's. It follows the store: every ``poll`` seconds
it compares the store's marker (the key file's inode and mtime, or the generation in Redis: one cheap
read) and installs a newer set; a token with a kid it does not know makes it look at once (at most
twice a second). The same background task rotates on schedule: when the current key has signed for
``rotation``, one worker of one host wins the compare-and-set (the others read its result); and drops
previous keys whose tokens have all expired. Key generation and PEM parsing run in a thread.

``TokenIssuer`` makes the responses of the token endpoint (gateway/auth/endpoints.py): RS256 access
tokens (RFC 9068 ``typ: at+jwt``) signed by the current key, and opaque refresh tokens (256 random bits;
only their SHA-256 is stored) that rotate on every use; presenting a used one again ends its family.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
import math
import random
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.auth import keyset
from gateway.auth.issuer_config import ConsumerSpec, LocalIssuerSpec, SessionSpec, digest
from gateway.auth.keys import Key, KeyIndex, public_key
from gateway.auth.keyset import KeySet
from gateway.auth.store import REFRESH, RefreshResult, Session, Store, StoreError

logger = logging.getLogger("gateway.auth")
KEY_POLL = 1.0
MIN_REFRESH_GAP = 0.5
ATTEMPTS = 3


def keep_session_keys(sessions: SessionSpec | None) -> float:
    return sessions.absolute_timeout if sessions is not None else 0.0


# --- the key set in the store: creation and rotation (workers and the admin API) ---------------------------


async def ensure_keys(store: Store, clock: Callable[[], float] = time.time) -> KeySet:
    """The stored key set, created if there is none (one creator wins; the others read its set)."""
    for _ in range(ATTEMPTS):
        found = await store.load_keys()
        if found is not None:
            return found
        now = clock()
        first, second = await asyncio.to_thread(_two_keys, now)
        created = keyset.bootstrap(now, first, second)
        if await store.save_keys(created, 0):
            logger.info("auth: created the issuer's signing keys (current %s, next %s)", first.kid, second.kid)
            return created
    raise StoreError("the issuer's key set could not be created")


def _two_keys(now: float) -> tuple[keyset.SigningKey, keyset.SigningKey]:
    return keyset.generate_key(now), keyset.generate_key(now)


@dataclass(frozen=True, slots=True)
class Rotation:
    """What a rotation attempt did: the key set now stored, whether this call rotated it, and (when it
    may not yet) the seconds until the next key has been published long enough to sign."""

    keys: KeySet
    rotated: bool = False
    wait: float = 0.0


async def rotate_keys(store: Store, spec: LocalIssuerSpec, sessions: SessionSpec | None, *, force: bool = False,
                      scheduled: bool = False, clock: Callable[[], float] = time.time) -> Rotation:
    """Rotates the stored key set: on demand (``force`` even if the next key is younger than the JWKS
    cache time: verifiers that cached the JWKS refuse the new key's tokens until they refetch), or on
    schedule (only if still due when the set is read: racing workers rotate once)."""
    for _ in range(ATTEMPTS):
        keys = await ensure_keys(store, clock)
        now = clock()
        if scheduled and not keyset.rotation_due(keys, now, spec.rotation):
            return Rotation(keys)
        wait = keyset.wait_before_promoting(keys, now, spec.jwks_max_age)
        if wait > 0 and not force:
            return Rotation(keys, wait=wait)
        fresh = await asyncio.to_thread(keyset.generate_key, now)
        rotated = keyset.rotate(keys, now, fresh)
        pruned = keyset.prune(rotated, now, spec.keep_retired, keep_session_keys(sessions))
        if pruned is not None:  # one change, one generation
            rotated = dataclasses.replace(pruned, generation=rotated.generation)
        if await store.save_keys(rotated, keys.generation):
            logger.info("auth: signing keys rotated (generation %d, current %s, next %s)", rotated.generation,
                        rotated.current.kid, rotated.next.kid)
            return Rotation(rotated, rotated=True)
        if scheduled:
            continue  # another worker or host rotated: read what it stored
    raise StoreError("the key set kept changing during the rotation; try again")


@dataclass(frozen=True, slots=True)
class Prepared:
    """A key set made ready for the request path (off the event loop: PEM parsing costs milliseconds)."""

    keys: KeySet
    private: Mapping[str, RSAPrivateKey]
    index: KeyIndex
    jwks: bytes
    aeads: Mapping[str, AESGCM]


def prepare(keys: KeySet, known: Mapping[str, RSAPrivateKey]) -> Prepared:
    private = {key.kid: known.get(key.kid) or key.private_key() for key in keys.keys}
    verification: list[Key] = [public_key(private[key.kid].public_key(), key.kid, ("RS256",)) for key in keys.keys]
    aeads = {key.id: AESGCM(key.secret) for key in keys.session_keys}
    return Prepared(keys, private, KeyIndex(verification), keyset.jwks(keys, private), aeads)


class IssuerKeys:
    """A worker's copy of the issuer's key set: a ``KeySource``, the signer, the JWKS document and the
    session cookie keys (see the module docstring)."""

    def __init__(self, spec: LocalIssuerSpec, sessions: SessionSpec | None, store: Store, *,
                 on_withdrawn: Callable[[], None] | None = None, clock: Callable[[], float] = time.time,
                 poll: float = KEY_POLL) -> None:
        self.spec = spec
        self.sessions = sessions
        self.store = store
        self.on_withdrawn = on_withdrawn
        self.clock = clock
        self.poll = poll
        self.prepared: Prepared | None = None
        self.index = KeyIndex(())
        self.marker: object = object()  # nothing read yet
        self.synced_at = -math.inf
        self.attempted = asyncio.Event()  # the first read of the store is over (whatever its outcome)
        self.keeper: asyncio.Task[None] | None = None
        self.pending: asyncio.Task[None] | None = None
        self.failing = False

    # --- KeySource -----------------------------------------------------------------------------------------

    def candidates(self, kid: str | None) -> tuple[Key, ...]:
        return self.index.lookup(kid, anonymous_for_unknown=False)

    async def refresh(self, kid: str | None) -> bool:
        """An unknown kid: waits for the read of the store in progress, else reads it now (at most every
        MIN_REFRESH_GAP seconds), then looks again."""
        loop = asyncio.get_running_loop()
        if self.pending is not None or loop.time() - self.synced_at >= MIN_REFRESH_GAP:
            try:
                await self.shared_sync()
            except StoreError:
                return False
        return bool(self.candidates(kid))

    async def shared_sync(self) -> None:
        """``sync``, shared by everyone who asks while it runs (the keeper and unknown kids)."""
        if self.pending is None:
            self.pending = asyncio.get_running_loop().create_task(self._sync_once())
        await asyncio.shield(self.pending)

    async def _sync_once(self) -> None:
        try:
            await self.sync()
        finally:
            self.pending = None

    def start(self) -> None:
        if self.keeper is None:
            self.keeper = asyncio.get_running_loop().create_task(self._keep())

    def close(self) -> None:
        for task in (self.keeper, self.pending):
            if task is not None:
                task.cancel()
        self.keeper = self.pending = None

    # --- what the issuer uses ------------------------------------------------------------------------------

    async def ready(self, wait: float = 5.0) -> Prepared:
        """The key set, once read (StoreError when the store could not give it, or not within ``wait``)."""
        if self.prepared is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.attempted.wait(), wait)
            if self.prepared is None:
                raise StoreError("the issuer's keys are not available")
        return self.prepared

    # --- following the store -------------------------------------------------------------------------------

    async def sync(self) -> None:
        """Installs the stored key set if it changed (the marker is read first: a change after it is seen
        at the next poll, never missed)."""
        self.synced_at = asyncio.get_running_loop().time()
        marker = await self.store.keys_marker()
        if self.prepared is not None and marker == self.marker:
            return
        keys = await ensure_keys(self.store, self.clock)
        if self.prepared is None or keys.generation != self.prepared.keys.generation:
            known = self.prepared.private if self.prepared is not None else {}
            self.install(await asyncio.to_thread(prepare, keys, known))
        self.marker = marker

    def install(self, prepared: Prepared) -> None:
        before = self.index.fingerprints()
        self.prepared = prepared
        self.index = prepared.index
        if before - self.index.fingerprints() and self.on_withdrawn is not None:
            self.on_withdrawn()  # tokens a dropped key verified are verified again (and refused)

    async def maintain(self) -> None:
        """Scheduled rotation and pruning, if due (the store's compare-and-set makes one worker win)."""
        prepared = self.prepared
        if prepared is None:
            return
        keys, now = prepared.keys, self.clock()
        if keyset.rotation_due(keys, now, self.spec.rotation):
            await asyncio.sleep(random.uniform(0, self.poll / 2))  # noqa: S311 - spreads the racing workers
            await rotate_keys(self.store, self.spec, self.sessions, scheduled=True, clock=self.clock)
            await self.sync()
            return
        pruned = keyset.prune(keys, now, self.spec.keep_retired, keep_session_keys(self.sessions))
        if pruned is not None and await self.store.save_keys(pruned, keys.generation):
            await self.sync()

    async def _keep(self) -> None:
        while True:
            try:
                await self.shared_sync()
                self.attempted.set()
                await self.maintain()
            except StoreError as exc:
                if not self.failing:
                    held = "keeping the keys read before" if self.prepared else "no keys yet"
                    logger.warning("auth: cannot read the issuer's keys (%s); %s", exc, held)
                self.failing = True
            except Exception:  # a bug must not end the task that keeps the keys current
                logger.exception("auth: keeping the issuer's keys failed")
            else:
                if self.failing:
                    logger.warning("auth: the issuer's keys are read again")
                self.failing = False
            self.attempted.set()
            await asyncio.sleep(self.poll)


# --- issuing tokens ----------------------------------------------------------------------------------------


class OAuthError(Exception):
    """An RFC 6749 section 5.2 error: status, ``error`` code and a description safe to show."""

    def __init__(self, status: int, error: str, description: str) -> None:
        self.status = status
        self.error = error
        self.description = description
        super().__init__(description)


def invalid_client() -> OAuthError:
    return OAuthError(401, "invalid_client", "client authentication failed")


class Grant(NamedTuple):
    """Whom an access token is for, and what it carries."""

    subject: str
    client_id: str
    scope: tuple[str, ...]
    claims: Mapping[str, Any]
    sid: str | None

    @classmethod
    def of(cls, session: Session, scope: tuple[str, ...]) -> Grant:
        return cls(session.subject, session.client_id, scope, session.claims, session.id)


class TokenIssuer:
    """Access and refresh tokens for consumers (see the module docstring)."""

    def __init__(self, spec: LocalIssuerSpec, consumers: tuple[ConsumerSpec, ...], keys: IssuerKeys, store: Store,
                 clock: Callable[[], float] = time.time) -> None:
        self.spec = spec
        self.keys = keys
        self.store = store
        self.clock = clock
        self.by_client_id = {consumer.client_id: consumer for consumer in consumers}
        self.by_api_key = {consumer.api_key_digest: consumer for consumer in consumers
                           if consumer.api_key_digest is not None}
        self.audience = spec.audience
        self.tokens_until_margin = spec.access_ttl + spec.leeway

    # --- client authentication ------------------------------------------------------------------------------

    def client(self, client_id: str, secret: str) -> ConsumerSpec:
        """The consumer whose id and secret these are (secrets compared as digests, in constant time)."""
        consumer = self.by_client_id.get(client_id)
        expected = consumer.secret_digest if consumer is not None else None
        # an unknown id (or one without a secret) costs the same comparison
        matches = hmac.compare_digest(digest(secret), expected or bytes(32))
        if consumer is None or expected is None or not matches:
            raise invalid_client()
        return consumer

    def api_client(self, api_key: str) -> ConsumerSpec:
        consumer = self.by_api_key.get(digest(api_key))
        if consumer is None:
            raise invalid_client()
        return consumer

    # --- grants ---------------------------------------------------------------------------------------------

    async def client_credentials(self, consumer: ConsumerSpec, scope: str | None) -> dict[str, Any]:
        """RFC 6749 section 4.4: an access token, and (unless turned off) a refresh token in a new family."""
        granted = granted_scope(consumer.scope, scope)
        prepared = await self.keys.ready()
        now = self.clock()
        response: dict[str, Any]
        if not (self.spec.refresh_tokens and consumer.refresh_tokens):
            grant = Grant(consumer.subject, consumer.client_id, granted, consumer.claims, None)
            return self.response(prepared, grant, now)
        session = Session(secrets.token_hex(16), consumer.subject, REFRESH, consumer.client_id, now,
                          now + self.spec.refresh_absolute_ttl, now, " ".join(granted), dict(consumer.claims))
        refresh = new_refresh_token()
        await self.store.add_session(session, refresh, min(now + self.spec.refresh_ttl, session.expires))
        response = self.response(prepared, Grant.of(session, granted), now)
        response["refresh_token"] = refresh
        return response

    async def refresh(self, consumer: ConsumerSpec, presented: str, scope: str | None) -> dict[str, Any]:
        """RFC 6749 section 6: the refresh token rotates; a used one presented again ends its family.

        A requested scope is checked against the client's before the token is used (an error must not
        cost the client its family), and the grant is what the family holds of it (announced in the
        response's ``scope`` when narrower)."""
        requested = granted_scope(consumer.scope, scope) if scope is not None else None
        prepared = await self.keys.ready()
        now = self.clock()
        fresh = new_refresh_token()
        result: RefreshResult = await self.store.use_refresh(
            presented, fresh, client_id=consumer.client_id, now=now, refresh_ttl=self.spec.refresh_ttl,
            tokens_until=now + self.tokens_until_margin)
        if result.outcome == "reused":
            assert result.session is not None
            logger.warning("auth: a used refresh token of client %s was presented again; its session %s "
                           "(subject %s) is ended", consumer.client_id, result.session.id, result.session.subject)
        if result.outcome != "ok" or result.session is None:
            raise OAuthError(400, "invalid_grant", "the refresh token is invalid, expired or revoked")
        session = result.session
        held = tuple(session.scope.split())
        granted = held if requested is None else tuple(item for item in requested if item in held)
        response = self.response(prepared, Grant.of(session, granted), now)
        response["refresh_token"] = fresh
        return response

    def response(self, prepared: Prepared, grant: Grant, now: float) -> dict[str, Any]:
        """RFC 6749 section 5.1."""
        response: dict[str, Any] = {"access_token": self.access_token(prepared, grant, now), "token_type": "Bearer",
                                    "expires_in": int(self.spec.access_ttl)}
        if grant.scope:
            response["scope"] = " ".join(grant.scope)
        return response

    def access_token(self, prepared: Prepared, grant: Grant, now: float) -> str:
        issued = int(now)
        payload: dict[str, Any] = {**grant.claims, "iss": self.spec.issuer, "sub": grant.subject, "iat": issued,
                                   "exp": issued + int(self.spec.access_ttl), "jti": secrets.token_urlsafe(16),
                                   "client_id": grant.client_id}
        if self.audience is not None:
            payload["aud"] = self.audience
        if grant.scope:
            payload["scope"] = " ".join(grant.scope)
        if grant.sid is not None:
            payload["sid"] = grant.sid
        current = prepared.keys.current
        return jwt.encode(payload, prepared.private[current.kid], algorithm="RS256",
                          headers={"kid": current.kid, "typ": "at+jwt"})


def new_refresh_token() -> str:
    """256 random bits, base64url (43 characters)."""
    return secrets.token_urlsafe(32)


def granted_scope(allowed: tuple[str, ...], requested: str | None) -> tuple[str, ...]:
    """The scope to grant: all that is allowed when none is asked for, else what is asked if allowed."""
    if requested is None:
        return allowed
    asked = tuple(dict.fromkeys(requested.split(" ")))
    if any(not item for item in asked) or not set(asked) <= set(allowed):
        raise OAuthError(400, "invalid_scope", "the requested scope is not allowed for this client")
    return asked
