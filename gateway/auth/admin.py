"""The token issuer's admin endpoints, on the admin port (served by the supervisor; listed in
gateway/admin/features.py). They act on the shared store directly: Redis, or this host's key file and
SQLite database, the same state every worker follows.

    GET     /auth/keys                      the key set: kids, roles, times (never key material)
    POST    /auth/keys/rotate               rotate now; body {"force": true} to promote a next key younger
                                            than jwks_max_age (409 with Retry-After otherwise)
    GET     /auth/sessions?subject=S        a subject's live sessions (refresh families and cookie sessions)
    DELETE  /auth/sessions?subject=S[&id=I] end them all, or one: their access tokens and cookies are
                                            refused by every worker within a second
    POST    /auth/revoke                    body {"jti": "...", "expires_at": 1767225600 (optional)}: refuse
                                            that access token everywhere until it would have expired

Without an ``auth.issuer`` there are none (after a reload that removed it, they answer 404). The admin
listener binds 127.0.0.1 by default: whoever can reach it can rotate keys and end sessions.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import orjson

from gateway._fast.protocol import Receive, Scope, Send, new_request_id
from gateway.admin.app import read_body, respond
from gateway.errors import error_body

if TYPE_CHECKING:
    from gateway.admin.app import AdminApp
    from gateway.auth.config import AuthSpec
    from gateway.auth.store import Store
    from gateway.loader import GatewayConfig

MAX_BODY = 64 * 1024
MAX_JTI = 256
_stores: dict[tuple[str, ...], Store] = {}  # one per store across reloads (the supervisor's loop)


def register(admin: AdminApp, config: GatewayConfig) -> None:
    """Adds the endpoints when the config has an issuer (again on reload: the handlers follow the new
    config; a reload that drops the issuer leaves them answering 404)."""
    auth = config.auth if config.auth is not None and config.auth.local is not None else None
    if auth is None and admin.find("/auth/keys") is None:
        return  # no issuer, now or before: nothing to add
    handlers = AuthAdmin(auth, config.server.redis_url)
    admin.add("/auth/keys", handlers.keys)
    admin.add("/auth/keys/rotate", handlers.rotate, methods=("POST",))
    admin.add("/auth/sessions", handlers.sessions, methods=("GET", "HEAD", "DELETE"))
    admin.add("/auth/revoke", handlers.revoke, methods=("POST",))


class AdminError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.code = code
        self.message = message
        super().__init__(message)


Answer = tuple[int, bytes, tuple[tuple[bytes, bytes], ...]]


class AuthAdmin:
    """The handlers, bound to one config's issuer (None: no issuer configured)."""

    def __init__(self, auth: AuthSpec | None, redis_url: str | None, clock: Callable[[], float] = time.time) -> None:
        self.auth = auth
        self.redis_url = redis_url
        self.clock = clock

    def store(self) -> Store:
        auth = self.auth
        if auth is None or auth.local is None:
            raise AdminError(404, "not_found", "the gateway issues no tokens (no auth.issuer section)")
        from gateway.auth.runtime import open_store

        key = ("redis", self.redis_url, auth.redis_prefix) if self.redis_url else \
            ("local", auth.state_dir, auth.local.key_file)
        store = _stores.get(key)
        if store is None:
            store = _stores[key] = open_store(auth, self.redis_url)
        return store

    def tokens_until(self) -> float:
        assert self.auth is not None and self.auth.local is not None
        return self.clock() + self.auth.local.access_ttl + self.auth.local.leeway

    async def _answer(self, send: Send, work: Callable[[], Awaitable[Answer]]) -> None:
        from gateway.auth.store import StoreError

        try:
            status, body, extra = await work()
        except AdminError as exc:
            await respond(send, exc.status, error_body(exc.status, exc.code, exc.message, new_request_id()))
            return
        except StoreError as exc:
            await respond(send, 503, error_body(503, "store_unavailable", str(exc), new_request_id()))
            return
        await respond(send, status, body, extra)

    # --- keys ---------------------------------------------------------------------------------------------------

    async def keys(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def work() -> Answer:
            from gateway.auth.issuer import ensure_keys

            keys = await ensure_keys(self.store(), self.clock)
            return 200, orjson.dumps(keys.summary()), ()

        await self._answer(send, work)

    async def rotate(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def work() -> Answer:
            from gateway.auth.issuer import rotate_keys

            store = self.store()
            body = await read_json(receive)
            force = body.get("force", False)
            if not isinstance(force, bool):
                raise AdminError(400, "bad_request", "force must be true or false")
            assert self.auth is not None and self.auth.local is not None
            result = await rotate_keys(store, self.auth.local, self.auth.sessions, force=force, clock=self.clock)
            if result.rotated:
                return 200, orjson.dumps(result.keys.summary()), ()
            wait = int(result.wait) + 1
            message = (f"the next key has been published for less than jwks_max_age; retry in {wait}s, or send "
                       '{"force": true}')
            return 409, error_body(409, "next_key_too_young", message, new_request_id()), \
                ((b"retry-after", b"%d" % wait),)

        await self._answer(send, work)

    # --- sessions -----------------------------------------------------------------------------------------------

    async def sessions(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def work() -> Answer:
            query = parse_qs(scope.get("query_string", b"").decode("utf-8", "replace"))
            subject = _single(query, "subject")
            sid = _single(query, "id")
            store = self.store()
            if scope["method"] == "DELETE":
                if subject is None and sid is None:
                    raise AdminError(400, "bad_request", "give ?subject=... (and optionally &id=...), or ?id=...")
                ended = await store.end_sessions(subject, sid, self.tokens_until())
                return 200, orjson.dumps({"subject": subject, "ended": ended}), ()
            if subject is None:
                raise AdminError(400, "bad_request", "give ?subject=...")
            found = await store.sessions(subject, self.clock())
            return 200, orjson.dumps({"subject": subject, "sessions": [s.public() for s in found]}), ()

        await self._answer(send, work)

    # --- revocation ---------------------------------------------------------------------------------------------

    async def revoke(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def work() -> Answer:
            from gateway.auth.store import JTI

            store = self.store()
            body = await read_json(receive)
            jti, expires_at = body.get("jti"), body.get("expires_at")
            if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI:
                raise AdminError(400, "bad_request", f"jti must be a string of 1 to {MAX_JTI} characters")
            if expires_at is not None and (not isinstance(expires_at, (int, float)) or isinstance(expires_at, bool)):
                raise AdminError(400, "bad_request", "expires_at must be a number (seconds since the epoch)")
            assert self.auth is not None and self.auth.local is not None
            until = self.tokens_until() if expires_at is None else float(expires_at) + self.auth.local.leeway
            await store.revoke(JTI, jti, until)
            return 200, orjson.dumps({"revoked": jti, "until": until}), ()

        await self._answer(send, work)


def _single(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise AdminError(400, "bad_request", f"give {name} once")
    return values[0]


async def read_json(receive: Receive) -> dict[str, Any]:
    """The request's JSON object body ({} when empty)."""
    body = await read_body(receive, MAX_BODY)
    if body is None:
        raise AdminError(413, "payload_too_large", f"the body is larger than {MAX_BODY} bytes")
    if not body.strip():
        return {}
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise AdminError(400, "bad_request", "the body is not JSON") from None
    if not isinstance(document, dict):
        raise AdminError(400, "bad_request", "the body must be a JSON object")
    return document


async def close_stores() -> None:
    """Closes the stores the handlers opened (tests; the supervisor's end closes them with the process)."""
    stores = list(_stores.values())
    _stores.clear()
    for store in stores:
        await store.close()
