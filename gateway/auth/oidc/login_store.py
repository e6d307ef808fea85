"""Where login at the edge keeps its state: pending logins, spent nonces, and login sessions.

Shared by every worker, the way the issuer's store is (gateway/auth/store.py): in Redis when the server
setting ``redis_url`` is set (every host), else in ``<auth.state_dir>/oidc-login.sqlite3`` (one host; WAL,
its own thread, never the event loop). Three kinds of entries, each with an expiry:

- **pending** logins, by the SHA-256 of their ``state``: taken (read and deleted atomically) by the
  callback, so a replayed callback finds nothing;
- **nonces** already used, by their SHA-256: a nonce is accepted once (``use_nonce`` is an atomic
  insert-if-absent), until the ID token that carried it has expired;
- **sessions**, by the SHA-256 of the cookie value (the id alone is no credential): a JSON record with a
  version, replaced by compare-and-swap (``replace_session``) so two workers refreshing the same
  session's tokens cannot both store a result; ``lock`` serializes the refresh itself.

Records are opaque here (login.py encrypts the tokens in them with a key derived from the cookie value,
so neither store holds a usable token). Every method may raise ``StoreError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

import orjson

from gateway.auth.store import StoreError

T = TypeVar("T")
PENDING, NONCE, SESSION, LOCK = "p", "n", "s", "l"
SCHEMA = """
CREATE TABLE IF NOT EXISTS oidc_entries (
    kind TEXT NOT NULL, id TEXT NOT NULL, data BLOB, version INTEGER NOT NULL DEFAULT 0,
    expires REAL NOT NULL, PRIMARY KEY (kind, id));
CREATE INDEX IF NOT EXISTS oidc_entries_expiry ON oidc_entries (expires);
"""
PURGE_EVERY = 300.0

# Redis: replace a session only when its version is the expected one
REPLACE = """
local current = redis.call('HGET', KEYS[1], 'v')
if current ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'd', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""
TAKE = """
local value = redis.call('GET', KEYS[1])
if value then redis.call('DEL', KEYS[1]) end
return value
"""


class LoginStore(Protocol):
    async def put_pending(self, key: str, record: dict[str, Any], ttl: float) -> None: ...

    async def take_pending(self, key: str) -> dict[str, Any] | None: ...

    async def use_nonce(self, key: str, ttl: float) -> bool:
        """True the first time ``key`` is used (within ``ttl``), False after."""

    async def put_session(self, sid: str, record: dict[str, Any], ttl: float) -> None: ...

    async def session(self, sid: str) -> tuple[int, dict[str, Any]] | None:
        """The session's version and record."""

    async def replace_session(self, sid: str, version: int, record: dict[str, Any], ttl: float) -> bool:
        """Stores ``record`` as version + 1 if the stored version is still ``version``."""

    async def delete_session(self, sid: str) -> None: ...

    async def lock(self, sid: str, ttl: float) -> bool:
        """True when this caller holds the session's refresh lock (for ``ttl`` at most)."""

    async def unlock(self, sid: str) -> None: ...

    async def close(self) -> None: ...


class LocalLoginStore:
    """The host-local store (see the module docstring)."""

    def __init__(self, state_dir: str, clock: Callable[[], float] = time.time) -> None:
        self.state_dir = Path(state_dir)
        self.database = self.state_dir / "oidc-login.sqlite3"
        self.clock = clock
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-oidc-login")
        self.conn: sqlite3.Connection | None = None
        self.purged = 0.0

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, partial(fn, *args))
        except sqlite3.Error as exc:
            raise StoreError(f"the login database {self.database} failed: {exc}") from None
        except OSError as exc:
            raise StoreError(f"login state in {self.state_dir}: {exc.strerror or exc}") from None

    def _db(self) -> sqlite3.Connection:
        if self.conn is None:
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            conn = sqlite3.connect(self.database, timeout=10.0, isolation_level=None, check_same_thread=False)
            for attempt in range(100):  # workers starting together race for the journal mode change
                try:
                    conn.execute("PRAGMA journal_mode=WAL")
                    conn.execute("PRAGMA synchronous=NORMAL")
                    conn.executescript(SCHEMA)
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or attempt == 99:
                        conn.close()
                        raise
                    time.sleep(0.05)
            with contextlib.suppress(OSError):
                os.chmod(self.database, 0o600)
            self.conn = conn
        now = self.clock()
        if now - self.purged > PURGE_EVERY:
            self.purged = now
            self.conn.execute("DELETE FROM oidc_entries WHERE expires <= ?", (now,))
        return self.conn

    def _insert(self, kind: str, key: str, data: bytes | None, ttl: float, replace: bool) -> bool:
        db, now = self._db(), self.clock()
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT expires FROM oidc_entries WHERE kind = ? AND id = ?", (kind, key)).fetchone()
            if row is not None and row[0] > now and not replace:
                return False
            db.execute("INSERT OR REPLACE INTO oidc_entries (kind, id, data, version, expires) VALUES (?, ?, ?, 0, ?)",
                       (kind, key, data, now + ttl))
            return True
        finally:
            db.execute("COMMIT")

    async def put_pending(self, key: str, record: dict[str, Any], ttl: float) -> None:
        await self._run(self._insert, PENDING, key, orjson.dumps(record), ttl, True)

    def _take(self, key: str) -> bytes | None:
        db = self._db()
        row = db.execute("DELETE FROM oidc_entries WHERE kind = ? AND id = ? AND expires > ? RETURNING data",
                         (PENDING, key, self.clock())).fetchone()
        return None if row is None else bytes(row[0])

    async def take_pending(self, key: str) -> dict[str, Any] | None:
        data = await self._run(self._take, key)
        return None if data is None else dict(orjson.loads(data))

    async def use_nonce(self, key: str, ttl: float) -> bool:
        return await self._run(self._insert, NONCE, key, None, ttl, False)

    async def put_session(self, sid: str, record: dict[str, Any], ttl: float) -> None:
        await self._run(self._insert, SESSION, sid, orjson.dumps(record), ttl, True)

    def _session(self, sid: str) -> tuple[int, bytes] | None:
        row = self._db().execute("SELECT version, data FROM oidc_entries WHERE kind = ? AND id = ? AND expires > ?",
                                 (SESSION, sid, self.clock())).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    async def session(self, sid: str) -> tuple[int, dict[str, Any]] | None:
        found = await self._run(self._session, sid)
        return None if found is None else (found[0], dict(orjson.loads(found[1])))

    def _replace(self, sid: str, version: int, data: bytes, ttl: float) -> bool:
        cursor = self._db().execute(
            "UPDATE oidc_entries SET data = ?, version = version + 1, expires = ? "
            "WHERE kind = ? AND id = ? AND version = ? AND expires > ?",
            (data, self.clock() + ttl, SESSION, sid, version, self.clock()))
        return cursor.rowcount == 1

    async def replace_session(self, sid: str, version: int, record: dict[str, Any], ttl: float) -> bool:
        return await self._run(self._replace, sid, version, orjson.dumps(record), ttl)

    def _delete(self, kind: str, key: str) -> None:
        self._db().execute("DELETE FROM oidc_entries WHERE kind = ? AND id = ?", (kind, key))

    async def delete_session(self, sid: str) -> None:
        await self._run(self._delete, SESSION, sid)

    async def lock(self, sid: str, ttl: float) -> bool:
        return await self._run(self._insert, LOCK, sid, None, ttl, False)

    async def unlock(self, sid: str) -> None:
        await self._run(self._delete, LOCK, sid)

    async def close(self) -> None:
        def close() -> None:
            if self.conn is not None:
                self.conn.close()
                self.conn = None

        with contextlib.suppress(Exception):
            await self._run(close)
        self.pool.shutdown(wait=False)


class RedisLoginStore:
    """The store in Redis, under ``<redis_prefix>oidc:`` (see the module docstring)."""

    def __init__(self, url: str, prefix: str, client: Any = None) -> None:
        import redis.asyncio as aioredis

        self.client = client or aioredis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0,
                                                        health_check_interval=30)
        self.prefix = prefix + "oidc:"
        self.replace_script = self.client.register_script(REPLACE)
        self.take_script = self.client.register_script(TAKE)

    async def _call(self, operation: Callable[[], Awaitable[T]]) -> T:
        from redis.exceptions import RedisError

        try:
            return await operation()
        except RedisError as exc:  # the message names the failure, never the URL (it may hold a password)
            raise StoreError(f"Redis: {type(exc).__name__}") from None

    def key(self, kind: str, key: str) -> str:
        return f"{self.prefix}{kind}:{key}"

    @staticmethod
    def ms(ttl: float) -> int:
        return max(1, int(ttl * 1000))

    async def put_pending(self, key: str, record: dict[str, Any], ttl: float) -> None:
        await self._call(lambda: self.client.set(self.key(PENDING, key), orjson.dumps(record), px=self.ms(ttl)))

    async def take_pending(self, key: str) -> dict[str, Any] | None:
        data = await self._call(lambda: self.take_script(keys=[self.key(PENDING, key)]))
        return None if data is None else dict(orjson.loads(data))

    async def use_nonce(self, key: str, ttl: float) -> bool:
        return bool(await self._call(lambda: self.client.set(self.key(NONCE, key), b"1", px=self.ms(ttl), nx=True)))

    async def put_session(self, sid: str, record: dict[str, Any], ttl: float) -> None:
        name = self.key(SESSION, sid)

        async def put() -> None:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.delete(name)
                pipe.hset(name, mapping={"v": "0", "d": orjson.dumps(record)})
                pipe.pexpire(name, self.ms(ttl))
                await pipe.execute()

        await self._call(put)

    async def session(self, sid: str) -> tuple[int, dict[str, Any]] | None:
        found = await self._call(lambda: self.client.hmget(self.key(SESSION, sid), ["v", "d"]))
        if found[0] is None or found[1] is None:
            return None
        return int(found[0]), dict(orjson.loads(found[1]))

    async def replace_session(self, sid: str, version: int, record: dict[str, Any], ttl: float) -> bool:
        args: list[bytes | str | int] = [str(version), str(version + 1), orjson.dumps(record), self.ms(ttl)]
        return bool(await self._call(lambda: self.replace_script(keys=[self.key(SESSION, sid)], args=args)))

    async def delete_session(self, sid: str) -> None:
        await self._call(lambda: self.client.delete(self.key(SESSION, sid)))

    async def lock(self, sid: str, ttl: float) -> bool:
        return bool(await self._call(lambda: self.client.set(self.key(LOCK, sid), b"1", px=self.ms(ttl), nx=True)))

    async def unlock(self, sid: str) -> None:
        await self._call(lambda: self.client.delete(self.key(LOCK, sid)))

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.aclose()


def open_login_store(state_dir: str, redis_url: str | None, redis_prefix: str) -> LoginStore:
    if redis_url:
        return RedisLoginStore(redis_url, redis_prefix)
    return LocalLoginStore(state_dir)
