"""gateway.auth.store and gateway.auth.redis_store: the same promises from both stores (a real Redis, a real
SQLite database and key file), one suite run against each."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from gateway.auth import keyset
from gateway.auth.redis_store import RedisStore
from gateway.auth.store import COOKIE, JTI, REFRESH, SID, LocalStore, Revoked, Session, Store, StoreError
from tests.unit.helpers import async_test
from tests.unit.test_auth_support import drop_keys, require_redis

NOW = float(int(time.time()))  # Redis expires keys by the real clock: NOW is read again for every test


@pytest.fixture(autouse=True)
def fresh_now() -> None:
    """The suite may reach these tests minutes after import; TTLs derived from NOW must still be ahead."""
    global NOW  # noqa: PLW0603 - the tests and helpers below read the module's NOW
    NOW = float(int(time.time()))
KEYS = keyset.bootstrap(NOW, keyset.generate_key(NOW), keyset.generate_key(NOW))


@pytest.fixture(params=["local", "redis"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Any]]:
    """Opens the store under test (as an async context manager); each call a new client of the same state."""
    kind = request.param
    url, prefix = (require_redis(), f"test:auth:{os.urandom(6).hex()}:") if kind == "redis" else ("", "")

    @asynccontextmanager
    async def opened() -> AsyncIterator[Store]:
        store: Store = RedisStore(url, prefix) if kind == "redis" else \
            LocalStore(str(tmp_path / "state"), str(tmp_path / "state" / "keys.json"))
        try:
            yield store
        finally:
            await store.close()

    yield opened
    if kind == "redis":
        drop_keys(url, prefix)


def session(sid: str = "s1", subject: str = "alice", kind: str = REFRESH, expires: float = NOW + 3600,
            client_id: str = "demo") -> Session:
    return Session(sid, subject, kind, client_id, NOW, expires, NOW, "read", {"role": "admin"})


@async_test
async def test_the_key_set_is_replaced_only_from_the_generation_read(open_store: Any) -> None:
    async with open_store() as store, open_store() as other:
        assert await store.load_keys() is None
        empty_marker = await store.keys_marker()
        assert await store.save_keys(KEYS, 0)
        assert not await other.save_keys(KEYS, 0)  # the second creator loses
        assert (await other.load_keys()) == KEYS
        assert await store.keys_marker() != empty_marker
        rotated = keyset.rotate(KEYS, NOW + 10, keyset.generate_key(NOW + 10))
        assert await other.save_keys(rotated, KEYS.generation)
        assert not await store.save_keys(keyset.rotate(KEYS, NOW + 10, keyset.generate_key(NOW)), KEYS.generation)
        assert (await store.load_keys()) == rotated


@async_test
async def test_a_refresh_token_rotates_and_its_reuse_ends_the_family(open_store: Any) -> None:
    async with open_store() as store:
        await store.add_session(session(), "r1", NOW + 600)
        used = await store.use_refresh("r1", "r2", client_id="demo", now=NOW + 1, refresh_ttl=600,
                                       tokens_until=NOW + 400)
        assert used.outcome == "ok" and used.session is not None
        assert (used.session.subject, used.session.scope, dict(used.session.claims)) == \
            ("alice", "read", {"role": "admin"})
        assert (await store.use_refresh("r2", "r3", client_id="demo", now=NOW + 2, refresh_ttl=600,
                                        tokens_until=NOW + 400)).outcome == "ok"
        reused = await store.use_refresh("r1", "r4", client_id="demo", now=NOW + 3, refresh_ttl=600,
                                         tokens_until=NOW + 400)
        assert reused.outcome == "reused" and reused.session is not None and reused.session.id == "s1"
        # the family is over: even its newest token is refused now
        assert (await store.use_refresh("r3", "r5", client_id="demo", now=NOW + 4, refresh_ttl=600,
                                        tokens_until=NOW + 400)).outcome == "invalid"
        _, revoked, _ = await store.revocations(None, NOW)
        assert Revoked(SID, "s1", NOW + 400) in revoked


@async_test
async def test_refresh_tokens_that_are_unknown_expired_or_another_clients_are_invalid(open_store: Any) -> None:
    async with open_store() as store:
        await store.add_session(session(expires=NOW + 100), "r1", NOW + 50)
        use = store.use_refresh
        assert (await use("nope", "x", client_id="demo", now=NOW, refresh_ttl=60, tokens_until=NOW)).outcome \
            == "invalid"
        assert (await use("r1", "x", client_id="other", now=NOW, refresh_ttl=60, tokens_until=NOW)).outcome == "invalid"
        assert (await use("r1", "x", client_id="demo", now=NOW + 60, refresh_ttl=60, tokens_until=NOW)).outcome \
            == "invalid"  # the token expired
        # another client's attempt did not use it up
        assert (await use("r1", "r2", client_id="demo", now=NOW + 1, refresh_ttl=600, tokens_until=NOW)).outcome == "ok"
        # the next token never outlives its family
        assert (await use("r2", "r3", client_id="demo", now=NOW + 101, refresh_ttl=600, tokens_until=NOW)).outcome \
            == "invalid"


@async_test
async def test_racing_uses_of_one_refresh_token_accept_exactly_one(open_store: Any) -> None:
    async with open_store() as first, open_store() as second:
        await first.add_session(session(), "r1", NOW + 600)
        results = await asyncio.gather(*[
            store.use_refresh("r1", f"n{i}", client_id="demo", now=NOW + 1, refresh_ttl=600, tokens_until=NOW + 400)
            for i, store in enumerate([first, second, first, second])])
        # one wins; the next presents a token used by then, which ends the family (a copy is in other
        # hands); the rest find it ended
        assert sorted(result.outcome for result in results) == ["invalid", "invalid", "ok", "reused"]


@async_test
async def test_listing_and_ending_a_subjects_sessions(open_store: Any) -> None:
    async with open_store() as store:
        await store.add_session(session("a"), "ra", NOW + 600)
        await store.add_session(session("b", kind=COOKIE, expires=NOW + 7200), None, 0)
        await store.add_session(session("c", subject="bob"), None, 0)
        await store.add_session(session("old", expires=NOW - 1), None, 0)
        listed = await store.sessions("alice", NOW)
        assert [s.id for s in listed] == ["a", "b"]
        assert listed[1].public() == {"id": "b", "kind": "cookie", "client_id": "demo", "created": NOW,
                                      "last_seen": NOW, "expires": NOW + 7200}
        assert await store.end_sessions("alice", "c", NOW + 300) == []  # bob's session is not alice's
        assert await store.end_sessions("alice", "a", NOW + 300) == ["a"]
        assert [s.id for s in await store.sessions("alice", NOW)] == ["b"]
        assert await store.end_sessions("alice", None, NOW + 300) == ["b"]
        assert await store.sessions("alice", NOW) == []
        assert await store.end_sessions(None, "c", NOW + 300) == ["c"]
        _, revoked, _ = await store.revocations(None, NOW)
        # a cookie session stays revoked until its absolute end, a refresh family until its tokens expired
        assert sorted(revoked) == [Revoked(SID, "a", NOW + 300), Revoked(SID, "b", NOW + 7200),
                                   Revoked(SID, "c", NOW + 300)]
        assert (await store.use_refresh("ra", "x", client_id="demo", now=NOW, refresh_ttl=60,
                                        tokens_until=NOW)).outcome == "invalid"


@async_test
async def test_sessions_are_read_touched_and_ended_by_refresh_token(open_store: Any) -> None:
    async with open_store() as store:
        await store.add_session(session("a", kind=COOKIE), None, 0)
        found = await store.session("a")
        assert found is not None and found.kind == COOKIE and not found.revoked
        await store.touch("a", NOW + 30, 1800)
        touched = await store.session("a")
        assert touched is not None and touched.last_seen == NOW + 30
        assert await store.session("missing") is None
        await store.touch("missing", NOW, 60)  # nothing to touch: no error, nothing made
        assert await store.session("missing") is None
        await store.add_session(session("f"), "rf", NOW + 600)
        assert await store.end_refresh_family("rf", NOW + 300) == "f"
        assert await store.end_refresh_family("rf", NOW + 300) is None  # ended already
        assert await store.end_refresh_family("unknown", NOW + 300) is None
        ended = await store.session("f")
        assert ended is not None and ended.revoked


@async_test
async def test_revocations_are_seen_incrementally_and_lapse(open_store: Any) -> None:
    async with open_store() as store, open_store() as other:
        marker, entries, replace = await other.revocations(None, NOW)
        assert entries == [] and replace
        await store.revoke(JTI, "t1", time.time() + 60)
        await store.revoke(JTI, "gone", time.time() - 1)
        marker, entries, _ = await other.revocations(marker, time.time())
        assert [e.value for e in entries] == ["t1"]
        same, nothing, replace = await other.revocations(marker, time.time())
        assert (same, nothing, replace) == (marker, [], False)


@async_test
async def test_a_broken_key_file_is_a_store_error(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path), str(tmp_path / "keys.json"))
    (tmp_path / "keys.json").write_text("{not json")
    with pytest.raises(StoreError, match=r"keys\.json: the stored key set is not valid"):
        await store.load_keys()
    await store.close()


@async_test
async def test_the_local_store_files_are_private(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path / "state"), str(tmp_path / "state" / "keys.json"))
    assert await store.save_keys(KEYS, 0)
    await store.add_session(session(), "r1", NOW + 600)
    for name in ("keys.json", "auth.sqlite3"):
        assert (tmp_path / "state" / name).stat().st_mode & 0o077 == 0
    assert b"r1" not in (tmp_path / "state" / "auth.sqlite3").read_bytes()  # only its digest is stored
    await store.close()


@async_test
async def test_an_unreachable_redis_is_a_store_error_without_the_url() -> None:
    store = RedisStore("redis://:hunter2@127.0.0.1:1/0", "x:")
    with pytest.raises(StoreError) as info:
        await store.load_keys()
    assert "hunter2" not in str(info.value) and str(info.value).startswith("Redis: ")
    await store.close()


@async_test
async def test_an_unusable_state_dir_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    store = LocalStore(str(tmp_path / "file" / "state"), str(tmp_path / "file" / "keys.json"))
    with pytest.raises(StoreError):
        await store.add_session(session(), None, 0)
    await store.close()


def test_a_redis_key_set_that_is_not_one() -> None:
    url = require_redis()
    prefix = f"test:auth:{os.urandom(6).hex()}:"

    async def check() -> None:
        store = RedisStore(url, prefix)
        await store.client.set(prefix + "keys", b"[]")
        with pytest.raises(StoreError, match="the key set in Redis"):
            await store.load_keys()
        await store.close()

    try:
        asyncio.run(check())
    finally:
        drop_keys(url, prefix)
