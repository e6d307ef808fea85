"""Where the issuer's shared state lives: the key set, sessions, refresh tokens and revocations.

``Store`` is what workers (and the supervisor's admin endpoints) use; two implementations keep the same
promises:

- ``RedisStore`` (gateway/auth/redis_store.py) when the server setting ``redis_url`` is set: state shared
  by every worker of every host;
- ``LocalStore`` (here) otherwise: one host's workers share a key file and an SQLite database in
  ``auth.state_dir``.

Why SQLite for the host-local store: the workers are separate processes that must agree on refresh-token
rotation (read, check, mark used, insert: atomically, or two workers could both accept one token) and on
revocations, durably across restarts. SQLite gives cross-process transactions (``BEGIN IMMEDIATE``) from
the standard library; in WAL mode readers (the revocation poll of every worker, twice a second) never
wait for a writer, and ``synchronous=NORMAL`` makes a commit a write to the log without an fsync. The
host-wide shared memory segments are fixed in size and lost on restart; a JSON file would need its own
locking and a rewrite per change.

The key set is a separate file, replaced atomically (write, fsync, rename) under an ``flock``, only when
its generation is still the one the writer read; workers notice a new one by its inode and mtime.

Every blocking call runs on the store's own thread (one per process), never on the event loop. Refresh
tokens are kept as SHA-256 digests; a stolen database does not yield usable refresh tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import sqlite3
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

import orjson

from gateway.auth import keyset
from gateway.auth.keyset import KeySet

T = TypeVar("T")
REFRESH, COOKIE = "refresh", "cookie"
JTI, SID = "jti", "sid"
PURGE_EVERY = 600.0
SETUP_ATTEMPTS = 100


@dataclass(frozen=True, slots=True)
class Session:
    """A login that lasts: a refresh-token family (``refresh``) or a cookie session (``cookie``).

    Access tokens issued within it carry its id as the ``sid`` claim, so ending it ends them too."""

    id: str
    subject: str
    kind: str
    client_id: str
    created: float
    expires: float  # the absolute end
    last_seen: float
    scope: str = ""
    claims: Mapping[str, Any] = field(default_factory=dict)
    revoked: bool = False

    def public(self) -> dict[str, Any]:
        """The admin API's view (no secrets: a session id alone is no credential)."""
        return {"id": self.id, "kind": self.kind, "client_id": self.client_id, "created": self.created,
                "last_seen": self.last_seen, "expires": self.expires}

    def revoke_until(self, tokens_until: float) -> float:
        """How long its id must stay revoked: until its access tokens have expired and, for a cookie
        session (whose sealed cookie stays readable until its absolute end), until then."""
        return max(tokens_until, self.expires) if self.kind == COOKIE else tokens_until


class RefreshResult(NamedTuple):
    """``ok`` (the session it belongs to), ``invalid`` (unknown, expired, ended, another client's) or
    ``reused`` (already rotated: its whole family has just been revoked)."""

    outcome: str
    session: Session | None = None


class Revoked(NamedTuple):
    kind: str  # JTI or SID
    value: str
    until: float


def refresh_digest(token: str) -> str:
    """What is stored of a refresh token."""
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


class Store(Protocol):
    """The issuer's shared state (see the module docstring). Every method may raise ``StoreError``."""

    async def load_keys(self) -> KeySet | None: ...

    async def keys_marker(self) -> Any:
        """Something that changes whenever the stored key set does (cheap: polled every second)."""

    async def save_keys(self, keys: KeySet, replaces: int) -> bool:
        """Stores ``keys`` if the stored generation is ``replaces`` (0: none stored); False otherwise."""

    async def add_session(self, session: Session, refresh: str | None, refresh_expires: float) -> None: ...

    async def use_refresh(self, presented: str, fresh: str, *, client_id: str, now: float, refresh_ttl: float,
                          tokens_until: float) -> RefreshResult:
        """Atomically: checks ``presented`` (a refresh token), marks it used and stores ``fresh`` in its
        family. A token used before revokes its family (its sid until ``tokens_until``)."""

    async def session(self, sid: str) -> Session | None: ...

    async def touch(self, sid: str, now: float, idle_timeout: float) -> None: ...

    async def sessions(self, subject: str, now: float) -> list[Session]: ...

    async def end_sessions(self, subject: str | None, sid: str | None, tokens_until: float) -> list[str]:
        """Ends a subject's sessions (all, or the one ``sid``; or ``sid`` whoever's it is): their ids are
        revoked so their access tokens and cookies are refused. Returns the ids ended."""

    async def end_refresh_family(self, presented: str, tokens_until: float) -> str | None: ...

    async def revoke(self, kind: str, value: str, until: float) -> None: ...

    async def revocations(self, marker: Any, now: float) -> tuple[Any, list[Revoked], bool]:
        """Revocations since ``marker`` (None: all live ones): the new marker, the entries, and whether
        they replace everything known (True) or add to it."""

    async def close(self) -> None: ...


class StoreError(Exception):
    """The store cannot be used now (Redis down, the database locked too long); the message is safe."""


# --- host-local: a key file and SQLite ----------------------------------------------------------------------

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY, subject TEXT NOT NULL, kind TEXT NOT NULL, client_id TEXT NOT NULL,
    created REAL NOT NULL, expires REAL NOT NULL, last_seen REAL NOT NULL, scope TEXT NOT NULL,
    claims TEXT NOT NULL, revoked INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS sessions_subject ON sessions (subject);
CREATE TABLE IF NOT EXISTS refresh (
    hash TEXT PRIMARY KEY, session TEXT NOT NULL, expires REAL NOT NULL, used INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS revoked (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, value TEXT NOT NULL, until REAL NOT NULL);
"""
SESSION_COLUMNS = "id, subject, kind, client_id, created, expires, last_seen, scope, claims, revoked"
SELECT_SESSIONS = f"SELECT {SESSION_COLUMNS} FROM sessions"  # noqa: S608 - constants only


class LocalStore:
    """The store of one host: ``key_file`` and ``<state_dir>/auth.sqlite3`` (see the module docstring)."""

    def __init__(self, state_dir: str, key_file: str, clock: Callable[[], float] = time.time) -> None:
        self.state_dir = Path(state_dir)
        self.key_file = Path(key_file)
        self.database = self.state_dir / "auth.sqlite3"
        self.clock = clock
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-auth-store")
        self.conn: sqlite3.Connection | None = None
        self.purged = 0.0

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.pool, partial(fn, *args))
        except sqlite3.Error as exc:
            raise StoreError(f"the auth database {self.database} failed: {exc}") from None
        except OSError as exc:
            raise StoreError(f"auth state in {self.state_dir}: {exc.strerror or exc}") from None

    def _db(self) -> sqlite3.Connection:
        if self.conn is None:
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            conn = sqlite3.connect(self.database, timeout=10.0, isolation_level=None, check_same_thread=False)
            try:
                self._setup(conn)
            except BaseException:
                conn.close()
                raise
            with contextlib.suppress(OSError):
                os.chmod(self.database, 0o600)
            self.conn = conn
        return self.conn

    @staticmethod
    def _setup(conn: sqlite3.Connection) -> None:
        """WAL mode and the schema. Workers starting together race for the database's first set-up, where
        SQLite may answer "locked" without waiting (changing the journal mode): that is retried."""
        for attempt in range(SETUP_ATTEMPTS):
            try:
                if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    conn.execute("PRAGMA journal_mode=WAL")  # persistent: done once per database
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.executescript(SCHEMA)
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == SETUP_ATTEMPTS - 1:
                    raise
                time.sleep(0.05)

    # --- the key set ----------------------------------------------------------------------------------------

    async def load_keys(self) -> KeySet | None:
        return await self._run(self._read_keys)

    def _read_keys(self) -> KeySet | None:
        try:
            data = self.key_file.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return keyset.loads(data)
        except keyset.KeySetError as exc:
            raise StoreError(f"key file {self.key_file}: {exc}") from None

    async def keys_marker(self) -> Any:
        try:
            stat = os.stat(self.key_file)
        except FileNotFoundError:
            return None
        return stat.st_ino, stat.st_mtime_ns, stat.st_size

    async def save_keys(self, keys: KeySet, replaces: int) -> bool:
        return await self._run(self._save_keys, keys, replaces)

    def _save_keys(self, keys: KeySet, replaces: int) -> bool:
        self.key_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock = os.open(f"{self.key_file}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            stored = self._read_keys()
            if (stored.generation if stored is not None else 0) != replaces:
                return False  # another worker or host rotated first: it wins
            temporary = f"{self.key_file}.{os.getpid()}.tmp"
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, keyset.dumps(keys))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, self.key_file)
            directory = os.open(self.key_file.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
            return True
        finally:
            os.close(lock)  # releases the flock

    # --- sessions and refresh tokens ------------------------------------------------------------------------

    async def add_session(self, session: Session, refresh: str | None, refresh_expires: float) -> None:
        await self._run(self._add_session, session, refresh, refresh_expires)

    def _add_session(self, session: Session, refresh: str | None, refresh_expires: float) -> None:
        db = self._db()
        with self._transaction(db):
            db.execute(f"INSERT INTO sessions ({SESSION_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,0)",  # noqa: S608 - constants
                       (session.id, session.subject, session.kind, session.client_id, session.created,
                        session.expires, session.last_seen, session.scope,
                        orjson.dumps(dict(session.claims)).decode("utf-8")))
            if refresh is not None:
                db.execute("INSERT INTO refresh (hash, session, expires) VALUES (?,?,?)",
                           (refresh_digest(refresh), session.id, refresh_expires))
        self._purge(db)

    @staticmethod
    @contextlib.contextmanager
    def _transaction(db: sqlite3.Connection) -> Any:
        db.execute("BEGIN IMMEDIATE")  # the write lock now: read-check-write cannot interleave
        try:
            yield
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    async def use_refresh(self, presented: str, fresh: str, *, client_id: str, now: float, refresh_ttl: float,
                          tokens_until: float) -> RefreshResult:
        return await self._run(partial(self._use_refresh, presented, fresh, client_id=client_id, now=now,
                                       refresh_ttl=refresh_ttl, tokens_until=tokens_until))

    def _use_refresh(self, presented: str, fresh: str, *, client_id: str, now: float, refresh_ttl: float,
                     tokens_until: float) -> RefreshResult:
        db = self._db()
        old = refresh_digest(presented)
        with self._transaction(db):
            row = db.execute("SELECT session, used, expires FROM refresh WHERE hash = ?", (old,)).fetchone()
            if row is None or row[2] <= now:
                return RefreshResult("invalid")
            session = self._session(db, row[0])
            if session is None or session.revoked or session.expires <= now or session.client_id != client_id:
                return RefreshResult("invalid")
            if row[1]:  # rotated before: a copy is in other hands; the whole family ends
                self._end(db, session, tokens_until)
                return RefreshResult("reused", session)
            db.execute("UPDATE refresh SET used = 1 WHERE hash = ?", (old,))
            db.execute("INSERT INTO refresh (hash, session, expires) VALUES (?,?,?)",
                       (refresh_digest(fresh), session.id, min(now + refresh_ttl, session.expires)))
            db.execute("UPDATE sessions SET last_seen = ? WHERE id = ?", (now, session.id))
        return RefreshResult("ok", session)

    @staticmethod
    def _session(db: sqlite3.Connection, sid: str) -> Session | None:
        row = db.execute(SELECT_SESSIONS + " WHERE id = ?", (sid,)).fetchone()
        return None if row is None else _session_of(row)

    def _end(self, db: sqlite3.Connection, session: Session, tokens_until: float) -> None:
        db.execute("UPDATE sessions SET revoked = 1 WHERE id = ?", (session.id,))
        db.execute("INSERT INTO revoked (kind, value, until) VALUES (?,?,?)",
                   (SID, session.id, session.revoke_until(tokens_until)))

    async def session(self, sid: str) -> Session | None:
        return await self._run(lambda: self._session(self._db(), sid))

    async def touch(self, sid: str, now: float, idle_timeout: float) -> None:
        await self._run(lambda: self._db().execute("UPDATE sessions SET last_seen = ? WHERE id = ?", (now, sid)))

    async def sessions(self, subject: str, now: float) -> list[Session]:
        def select() -> list[Session]:
            rows = self._db().execute(SELECT_SESSIONS + " WHERE subject = ? AND revoked = 0 AND expires > ? "
                                      "ORDER BY created", (subject, now)).fetchall()
            return [_session_of(row) for row in rows]

        return await self._run(select)

    async def end_sessions(self, subject: str | None, sid: str | None, tokens_until: float) -> list[str]:
        return await self._run(self._end_sessions, subject, sid, tokens_until)

    def _end_sessions(self, subject: str | None, sid: str | None, tokens_until: float) -> list[str]:
        db = self._db()
        query = SELECT_SESSIONS + " WHERE revoked = 0 AND expires > ?"
        args: list[str | float] = [self.clock()]
        if subject is not None:
            query += " AND subject = ?"
            args.append(subject)
        if sid is not None:
            query += " AND id = ?"
            args.append(sid)
        with self._transaction(db):
            ended = [_session_of(row) for row in db.execute(query, args).fetchall()]
            for session in ended:
                self._end(db, session, tokens_until)
        return [session.id for session in ended]

    async def end_refresh_family(self, presented: str, tokens_until: float) -> str | None:
        def end() -> str | None:
            db = self._db()
            with self._transaction(db):
                row = db.execute("SELECT session FROM refresh WHERE hash = ?", (refresh_digest(presented),)).fetchone()
                session = None if row is None else self._session(db, row[0])
                if session is None or session.revoked:
                    return None
                self._end(db, session, tokens_until)
                return session.id

        return await self._run(end)

    # --- revocations ----------------------------------------------------------------------------------------

    async def revoke(self, kind: str, value: str, until: float) -> None:
        def insert() -> None:
            self._db().execute("INSERT INTO revoked (kind, value, until) VALUES (?,?,?)", (kind, value, until))

        await self._run(insert)

    async def revocations(self, marker: Any, now: float) -> tuple[Any, list[Revoked], bool]:
        def select() -> tuple[Any, list[Revoked], bool]:
            db = self._db()
            since = marker or 0
            rows = db.execute("SELECT seq, kind, value, until FROM revoked WHERE seq > ? ORDER BY seq",
                              (since,)).fetchall()
            if not rows:
                return since, [], marker is None
            live = [Revoked(kind, value, until) for _, kind, value, until in rows if until > now]
            return rows[-1][0], live, marker is None

        return await self._run(select)

    def _purge(self, db: sqlite3.Connection) -> None:
        """Drops what has expired, at most every ten minutes per process (on a write it already makes)."""
        now = self.clock()
        if now - self.purged < PURGE_EVERY:
            return
        self.purged = now
        with self._transaction(db):
            db.execute("DELETE FROM refresh WHERE expires <= ?", (now,))
            db.execute("DELETE FROM sessions WHERE expires <= ?", (now,))
            db.execute("DELETE FROM revoked WHERE until <= ?", (now,))

    async def close(self) -> None:
        def close() -> None:
            if self.conn is not None:
                self.conn.close()
                self.conn = None

        with contextlib.suppress(RuntimeError):  # the loop is closing: the thread ends with the process
            await self._run(close)
        self.pool.shutdown(wait=False)


def _session_of(row: tuple[Any, ...]) -> Session:
    sid, subject, kind, client_id, created, expires, last_seen, scope, claims, revoked = row
    return Session(sid, subject, kind, client_id, created, expires, last_seen, scope, orjson.loads(claims),
                   bool(revoked))
