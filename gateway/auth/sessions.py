"""Login sessions: a cookie that authenticates requests on routes with ``token: {session: true}``.

A consumer logs in at ``sessions.login_path`` (the same client authentication as the token endpoint) and
gets the cookie (``HttpOnly``, ``SameSite``, ``Secure`` unless turned off). Two ways to keep sessions:

- **server-side, in Redis** (when ``redis_url`` is set): the cookie holds 256 random bits; the session
  (subject, client, scope, claims, times) is the Redis hash named by the SHA-256 of that value, read on
  each request (one round trip);
- **embedded** (no Redis): the cookie holds the session itself, sealed with AES-256-GCM (encrypted and
  authenticated) under a key of the shared key set (gateway/auth/keyset.py), so any worker reads it
  without I/O. The host's store keeps an index of session ids per subject, for listing and ending them.

Both enforce the idle timeout (the last-seen time is renewed at most every ``touch_interval``: a new
cookie, or a Redis write) and the absolute timeout (set at login, never extended). Logout, the admin API
and refresh-token reuse end a session by revoking its id (gateway/auth/revocation.py): ended sessions are
refused by every worker within a second, whichever way they are kept.

A session authenticates like a token of the gateway's own issuer: the route's claim rules and forwarded
headers apply to its claims (``sub``, ``client_id``, ``scope``, ``sid`` and the consumer's claims).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import secrets
import time
from collections.abc import Callable
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag

from gateway.auth.issuer import IssuerKeys
from gateway.auth.issuer_config import ConsumerSpec, LocalIssuerSpec, SessionSpec
from gateway.auth.revocation import RevocationList
from gateway.auth.store import COOKIE, SID, Revoked, Session, Store, StoreError
from gateway.auth.verify import Verified
from gateway.exchange import Exchange, Headers

MAX_COOKIE = 4096


def session_id_of(secret: bytes) -> str:
    """The id of a server-side session: the SHA-256 of its cookie value (the id alone is no credential)."""
    return hashlib.sha256(secret).hexdigest()[:32]


class Sessions:
    """Creates, reads and ends login sessions (see the module docstring)."""

    def __init__(self, spec: SessionSpec, issuer: LocalIssuerSpec, keys: IssuerKeys, store: Store, *,
                 revocations: RevocationList, server_side: bool, clock: Callable[[], float] = time.time) -> None:
        self.spec = spec
        self.issuer = issuer
        self.keys = keys
        self.store = store
        self.revocations = revocations
        self.server_side = server_side
        self.clock = clock
        self.cookie = spec.cookie
        self.prefix = (spec.cookie + "=").encode("latin-1")
        secure = "; Secure" if spec.secure else ""
        self.attributes = f"; Path=/; HttpOnly; SameSite={spec.same_site}{secure}"
        self.cleared = f"{spec.cookie}=; Path=/; Max-Age=0; HttpOnly; SameSite={spec.same_site}{secure}".encode()

    # --- login and logout ------------------------------------------------------------------------------------

    async def create(self, consumer: ConsumerSpec) -> tuple[bytes, Session]:
        """A new session for ``consumer``: the Set-Cookie value and the session."""
        now = self.clock()
        scope = " ".join(consumer.scope)
        if self.server_side:
            secret = secrets.token_urlsafe(32).encode("ascii")
            session = self._session(session_id_of(secret), consumer, scope, now)
            await self.store.add_session(session, None, 0.0)
            return self.set_cookie(secret, session.expires - now), session
        session = self._session(secrets.token_hex(16), consumer, scope, now)
        await self.store.add_session(session, None, 0.0)  # the index for listing and ending
        sealed = await self.seal(session, now)
        return self.set_cookie(sealed, session.expires - now), session

    def _session(self, sid: str, consumer: ConsumerSpec, scope: str, now: float) -> Session:
        return Session(sid, consumer.subject, COOKIE, consumer.client_id, now, now + self.spec.absolute_timeout, now,
                       scope, dict(consumer.claims))

    async def end(self, value: bytes, tokens_until: float) -> str | None:
        """Logout: ends the session the cookie names, if it is a live one."""
        session = await self.read(value)
        if session is None:
            return None
        until = session.revoke_until(tokens_until)
        if not await self.store.end_sessions(None, session.id, tokens_until):
            await self.store.revoke(SID, session.id, until)  # a sealed cookie the host's index lost: still ended
        self.revocations.add(Revoked(SID, session.id, until))  # this worker at once; the others poll
        return session.id

    def set_cookie(self, value: bytes, max_age: float) -> bytes:
        return b"%s=%s; Max-Age=%d%s" % (self.cookie.encode(), value, max(0, int(max_age)), self.attributes.encode())

    # --- the request path ------------------------------------------------------------------------------------

    async def authenticate(self, value: bytes, ex: Exchange) -> Verified | None:
        """The session the cookie carries or names, as a verified identity; None when it is not a live one
        (malformed, forged, expired, idle too long, ended). Renews the idle clock when it is stale."""
        session = await self.read(value)
        if session is None:
            return None
        now = self.clock()
        if now - session.last_seen >= self.spec.touch_interval:
            await self.touch(session, now, ex)
        claims: dict[str, Any] = {**session.claims, "iss": self.issuer.issuer, "sub": session.subject,
                                  "client_id": session.client_id, "sid": session.id}
        if session.scope:
            claims["scope"] = session.scope
        expires = min(session.expires, now + self.spec.idle_timeout)
        return Verified(claims, self.issuer.name, session.subject, expires)

    async def read(self, value: bytes) -> Session | None:
        """The live session of a cookie value, or None."""
        if not value or len(value) > MAX_COOKIE:
            return None
        session = await self.store.session(session_id_of(value)) if self.server_side else await self.unseal(value)
        now = self.clock()
        if session is None or session.revoked or session.kind != COOKIE or now >= session.expires \
                or now - session.last_seen >= self.spec.idle_timeout or self.revocations.session_ended(session.id):
            return None
        return session

    async def touch(self, session: Session, now: float, ex: Exchange) -> None:
        if self.server_side:
            await self.store.touch(session.id, now, self.spec.idle_timeout)
            return
        with contextlib.suppress(StoreError):  # the index's last-seen time is for listing only
            await self.store.touch(session.id, now, self.spec.idle_timeout)
        renewed = Session(session.id, session.subject, COOKIE, session.client_id, session.created, session.expires,
                          now, session.scope, session.claims)
        cookie = self.set_cookie(await self.seal(renewed, now), session.expires - now)

        def renew(_: Exchange, status: int, headers: Headers) -> None:
            headers.append((b"set-cookie", cookie))

        ex.on_response(renew)

    # --- the sealed cookie (embedded) ------------------------------------------------------------------------

    async def seal(self, session: Session, now: float) -> bytes:
        prepared = await self.keys.ready()
        key_id = prepared.keys.session_keys[0].id
        payload = orjson.dumps({"i": session.id, "u": session.subject, "c": session.client_id, "t": session.created,
                                "x": session.expires, "s": now, "p": session.scope, "d": session.claims})
        nonce = os.urandom(12)
        sealed = prepared.aeads[key_id].encrypt(nonce, payload, self._aad(key_id))
        return key_id.encode("ascii") + b"." + base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=")

    async def unseal(self, value: bytes) -> Session | None:
        prepared = await self.keys.ready()
        key_id, _, sealed = value.partition(b".")
        aead = prepared.aeads.get(key_id.decode("ascii", "replace"))
        if aead is None:
            return None
        try:
            data = base64.urlsafe_b64decode(sealed + b"=" * (-len(sealed) % 4))
            payload = orjson.loads(aead.decrypt(data[:12], data[12:], self._aad(key_id.decode("ascii"))))
            return Session(payload["i"], payload["u"], COOKIE, payload["c"], payload["t"], payload["x"], payload["s"],
                           payload["p"], payload["d"])
        except (InvalidTag, ValueError, binascii.Error, KeyError, TypeError):
            return None

    def _aad(self, key_id: str) -> bytes:
        """Binds a sealed value to this cookie name and key id."""
        return f"gateway-session:{self.cookie}:{key_id}".encode()
