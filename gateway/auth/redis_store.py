"""The issuer's shared state in Redis: one store for every worker of every host (``Store``, see
gateway/auth/store.py for the promises).

Keys, under ``auth.redis_prefix`` (default ``gateway:auth:``; Redis's own ``/N`` database in the URL
separates gateways further):

    keys, keys:generation     the key set (JSON, private keys included) and its generation
    s:<sid>                   a session (hash); expires at its end (a cookie session: also when idle)
    u:<subject>               the ids of a subject's sessions (set; ended or expired ids are dropped
                              when listed)
    r:<sha256 of token>       a refresh token: its session and whether it was used; expires with it
    revoked, revoked:v        revoked jtis and sids (sorted set scored by the time they may be
                              forgotten) and a version every worker polls (twice a second)

What must be atomic is a Lua script: replacing the key set only if its generation is the one read (so
one rotation wins when workers and hosts race), using a refresh token (check, mark used, store the next
one, or revoke the family on reuse), ending a session.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.auth import keyset
from gateway.auth.keyset import KeySet
from gateway.auth.store import COOKIE, RefreshResult, Revoked, Session, StoreError, refresh_digest

T = TypeVar("T")

SAVE_KEYS = """
local stored = tonumber(redis.call('GET', KEYS[2]) or '0')
if stored ~= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[3])
return 1
"""

# KEYS: r:<presented>, r:<fresh>, revoked, revoked:v
# ARGV: prefix, client_id, now, refresh_ttl, tokens_until
USE_REFRESH = """
local rt = redis.call('HMGET', KEYS[1], 'session', 'used', 'expires')
local now = tonumber(ARGV[3])
if not rt[1] or tonumber(rt[3]) <= now then return {'invalid'} end
local skey = ARGV[1] .. 's:' .. rt[1]
local s = redis.call('HMGET', skey, 'client_id', 'revoked', 'expires')
if not s[1] or s[2] == '1' or tonumber(s[3]) <= now or s[1] ~= ARGV[2] then return {'invalid'} end
local outcome = 'ok'
if rt[2] == '1' then
  outcome = 'reused'
  redis.call('HSET', skey, 'revoked', '1')
  redis.call('ZADD', KEYS[3], ARGV[5], 'sid:' .. rt[1])
  redis.call('INCR', KEYS[4])
else
  redis.call('HSET', KEYS[1], 'used', '1')
  local expires = math.min(now + tonumber(ARGV[4]), tonumber(s[3]))
  redis.call('HSET', KEYS[2], 'session', rt[1], 'used', '0', 'expires', tostring(expires))
  redis.call('PEXPIREAT', KEYS[2], math.floor(expires * 1000))
  redis.call('HSET', skey, 'last_seen', ARGV[3])
end
local found = {outcome, rt[1]}
local fields = redis.call('HGETALL', skey)
for i = 1, #fields do found[#found + 1] = fields[i] end
return found
"""

# KEYS: s:<sid>, revoked, revoked:v; ARGV: tokens_until, subject ('' for any), sid
END_SESSION = """
local s = redis.call('HMGET', KEYS[1], 'kind', 'expires', 'revoked', 'subject')
if not s[1] or s[3] == '1' then return 0 end
if ARGV[2] ~= '' and s[4] ~= ARGV[2] then return 0 end
local until_ = tonumber(ARGV[1])
if s[1] == 'cookie' and tonumber(s[2]) > until_ then until_ = tonumber(s[2]) end
redis.call('HSET', KEYS[1], 'revoked', '1')
redis.call('ZADD', KEYS[2], until_, 'sid:' .. ARGV[3])
redis.call('INCR', KEYS[3])
return 1
"""

# KEYS: s:<sid>; ARGV: now, idle_timeout
TOUCH = """
local expires = redis.call('HGET', KEYS[1], 'expires')
if not expires then return 0 end
redis.call('HSET', KEYS[1], 'last_seen', ARGV[1])
local until_ = math.min(tonumber(expires), tonumber(ARGV[1]) + tonumber(ARGV[2]))
redis.call('PEXPIREAT', KEYS[1], math.floor(until_ * 1000))
return 1
"""


class RedisStore:
    """The issuer's state in Redis (see the module docstring)."""

    def __init__(self, url: str, prefix: str, client: aioredis.Redis | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.client = client or aioredis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0,
                                                        health_check_interval=30)
        self.prefix = prefix
        self.revoked_key = prefix + "revoked"
        self.version_key = prefix + "revoked:v"
        self.save_script = self.client.register_script(SAVE_KEYS)
        self.refresh_script = self.client.register_script(USE_REFRESH)
        self.end_script = self.client.register_script(END_SESSION)
        self.touch_script = self.client.register_script(TOUCH)

    async def _call(self, operation: Callable[[], Awaitable[T]]) -> T:
        try:
            return await operation()
        except RedisError as exc:  # the message names the failure, never the URL (it may hold a password)
            raise StoreError(f"Redis: {type(exc).__name__}") from None

    # --- the key set ----------------------------------------------------------------------------------------

    async def load_keys(self) -> KeySet | None:
        data = await self._call(lambda: self.client.get(self.prefix + "keys"))
        if data is None:
            return None
        try:
            return keyset.loads(data)
        except keyset.KeySetError as exc:
            raise StoreError(f"the key set in Redis: {exc}") from None

    async def keys_marker(self) -> Any:
        return await self._call(lambda: self.client.get(self.prefix + "keys:generation"))

    async def save_keys(self, keys: KeySet, replaces: int) -> bool:
        stored = await self._call(lambda: self.save_script(
            keys=[self.prefix + "keys", self.prefix + "keys:generation"],
            args=[replaces, keyset.dumps(keys), keys.generation]))
        return bool(stored)

    # --- sessions and refresh tokens ------------------------------------------------------------------------

    def _session_key(self, sid: str) -> str:
        return self.prefix + "s:" + sid

    async def add_session(self, session: Session, refresh: str | None, refresh_expires: float) -> None:
        key = self._session_key(session.id)
        fields = {"subject": session.subject, "kind": session.kind, "client_id": session.client_id,
                  "created": repr(session.created), "expires": repr(session.expires),
                  "last_seen": repr(session.last_seen), "scope": session.scope,
                  "claims": orjson.dumps(dict(session.claims)), "revoked": "0"}
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
        pipe.pexpireat(key, int(session.expires * 1000))
        pipe.sadd(self.prefix + "u:" + session.subject, session.id)
        if refresh is not None:
            rkey = self.prefix + "r:" + refresh_digest(refresh)
            pipe.hset(rkey, mapping={"session": session.id, "used": "0", "expires": repr(refresh_expires)})
            pipe.pexpireat(rkey, int(refresh_expires * 1000))
        await self._call(pipe.execute)

    async def use_refresh(self, presented: str, fresh: str, *, client_id: str, now: float, refresh_ttl: float,
                          tokens_until: float) -> RefreshResult:
        found = await self._call(lambda: self.refresh_script(
            keys=[self.prefix + "r:" + refresh_digest(presented), self.prefix + "r:" + refresh_digest(fresh),
                  self.revoked_key, self.version_key],
            args=[self.prefix, client_id, repr(now), repr(refresh_ttl), repr(tokens_until)]))
        outcome = found[0].decode()
        if outcome == "invalid":
            return RefreshResult(outcome)
        return RefreshResult(outcome, _session_of(found[1].decode(), _pairs(found[2:])))

    async def session(self, sid: str) -> Session | None:
        fields = await self._call(lambda: self.client.hgetall(self._session_key(sid)))
        return _session_of(sid, _as_bytes(fields)) if fields else None

    async def touch(self, sid: str, now: float, idle_timeout: float) -> None:
        await self._call(lambda: self.touch_script(keys=[self._session_key(sid)],
                                                   args=[repr(now), repr(idle_timeout)]))

    async def sessions(self, subject: str, now: float) -> list[Session]:
        index = self.prefix + "u:" + subject
        sids = sorted(_text(member) for member in await self._call(lambda: self.client.smembers(index)))
        pipe = self.client.pipeline(transaction=False)
        for sid in sids:
            pipe.hgetall(self._session_key(sid))
        rows = await self._call(pipe.execute) if sids else []
        found, gone = [], []
        for sid, fields in zip(sids, rows, strict=True):
            session = _session_of(sid, fields) if fields else None
            if session is None or session.revoked or session.expires <= now:
                gone.append(sid)
            else:
                found.append(session)
        if gone:
            await self._call(lambda: self.client.srem(index, *gone))
        return sorted(found, key=lambda session: session.created)

    async def end_sessions(self, subject: str | None, sid: str | None, tokens_until: float) -> list[str]:
        if sid is not None:
            candidates = [sid]
        else:
            assert subject is not None
            members = await self._call(lambda: self.client.smembers(self.prefix + "u:" + subject))
            candidates = sorted(_text(member) for member in members)
        ended = []
        for candidate in candidates:
            if await self._end(candidate, subject or "", tokens_until):
                ended.append(candidate)
        return ended

    async def _end(self, sid: str, subject: str, tokens_until: float) -> bool:
        ended = await self._call(lambda: self.end_script(
            keys=[self._session_key(sid), self.revoked_key, self.version_key],
            args=[repr(tokens_until), subject, sid]))
        return bool(ended)

    async def end_refresh_family(self, presented: str, tokens_until: float) -> str | None:
        sid = await self._call(lambda: self.client.hget(self.prefix + "r:" + refresh_digest(presented), "session"))
        if sid is None or not await self._end(_text(sid), "", tokens_until):
            return None
        return _text(sid)

    # --- revocations ----------------------------------------------------------------------------------------

    async def revoke(self, kind: str, value: str, until: float) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.zadd(self.revoked_key, {f"{kind}:{value}": until})
        pipe.zremrangebyscore(self.revoked_key, "-inf", f"({self.clock()!r}")  # lapsed ones go
        pipe.incr(self.version_key)
        await self._call(pipe.execute)

    async def revocations(self, marker: Any, now: float) -> tuple[Any, list[Revoked], bool]:
        version = await self._call(lambda: self.client.get(self.version_key)) or b"0"
        if version == marker:
            return marker, [], False
        pipe = self.client.pipeline(transaction=True)
        pipe.get(self.version_key)
        pipe.zrangebyscore(self.revoked_key, f"({now!r}", "+inf", withscores=True)
        version, members = await self._call(pipe.execute)
        entries = []
        for member, until in members:
            kind, _, value = member.decode().partition(":")
            entries.append(Revoked(kind, value, float(until)))
        return version or b"0", entries, True

    async def close(self) -> None:
        await self.client.aclose()


def _text(value: bytes | str) -> str:
    """A Redis reply as text (the client returns bytes: decode_responses is off)."""
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _as_bytes(fields: Mapping[Any, Any]) -> dict[bytes, bytes]:
    return {k if isinstance(k, bytes) else str(k).encode(): v if isinstance(v, bytes) else str(v).encode()
            for k, v in fields.items()}


def _pairs(flat: list[bytes]) -> dict[bytes, bytes]:
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}


def _session_of(sid: str, fields: dict[bytes, bytes]) -> Session:
    def text(name: str) -> str:
        return fields.get(name.encode(), b"").decode("utf-8")

    return Session(
        id=sid, subject=text("subject"), kind=text("kind") or COOKIE, client_id=text("client_id"),
        created=float(text("created") or 0), expires=float(text("expires") or 0),
        last_seen=float(text("last_seen") or 0), scope=text("scope"),
        claims=orjson.loads(fields.get(b"claims", b"{}")), revoked=text("revoked") == "1",
    )
