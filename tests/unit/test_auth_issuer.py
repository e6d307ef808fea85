"""gateway.auth.issuer (the worker's copy of the key set: following the store, scheduled rotation that one
worker wins, pruning) and gateway.auth.revocation (the revocation list every worker polls); on real stores."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.auth import keyset
from gateway.auth.issuer import IssuerKeys, ensure_keys, rotate_keys
from gateway.auth.issuer_config import LocalIssuerSpec
from gateway.auth.redis_store import RedisStore
from gateway.auth.revocation import RevocationList
from gateway.auth.store import JTI, SID, LocalStore, Revoked, StoreError
from gateway.auth.verify import Verified
from tests.unit.helpers import async_test

SPEC = LocalIssuerSpec(issuer="https://gw.test/", rotation=100.0, jwks_max_age=10.0, access_ttl=30.0, leeway=5.0)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def eventually(predicate: Any, timeout: float = 10.0) -> None:
    """Waits until ``predicate()`` holds (background polls take their time on a busy machine)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def local(tmp: Path) -> LocalStore:
    return LocalStore(str(tmp), str(tmp / "keys.json"))


@async_test
async def test_workers_follow_the_stored_key_set(tmp_path: Path) -> None:
    clock = Clock()
    first_store, second_store = local(tmp_path), local(tmp_path)
    withdrawn: list[str] = []
    first = IssuerKeys(SPEC, None, first_store, clock=clock, poll=0.05)
    second = IssuerKeys(SPEC, None, second_store, clock=clock, on_withdrawn=lambda: withdrawn.append("x"), poll=0.05)
    first.start()
    second.start()
    try:
        one = await first.ready()
        two = await second.ready()
        assert one.keys == two.keys  # one creator won; the other read its set
        current, upcoming = one.keys.current.kid, one.keys.next.kid
        assert first.candidates(current) and first.candidates(upcoming)  # the next key verifies already
        assert first.candidates("nope") == () and first.candidates(None) == ()
        # another worker (or the admin API) rotates: the others see it within a poll
        clock.now += 20
        rotated = await rotate_keys(first_store, SPEC, None, clock=clock)
        assert rotated.rotated and rotated.keys.current.kid == upcoming
        await eventually(lambda: second.prepared is not None
                         and second.prepared.keys.generation == rotated.keys.generation)
        assert second.candidates(rotated.keys.next.kid)
        # the retired key goes once its tokens have expired (keep_retired = 30 + 5 + 5 s)
        clock.now += 41
        await first.maintain()
        await eventually(lambda: not second.candidates(current))
        assert withdrawn  # the verifier forgets what it verified
    finally:
        first.close()
        second.close()
        await first_store.close()
        await second_store.close()


@async_test
async def test_a_scheduled_rotation_is_won_by_one_worker(tmp_path: Path) -> None:
    clock = Clock()
    stores = [local(tmp_path) for _ in range(3)]
    workers = [IssuerKeys(SPEC, None, store, clock=clock, poll=0.02) for store in stores]
    try:
        for worker in workers:
            await worker.sync()
        generation = workers[0].prepared.keys.generation  # type: ignore[union-attr]
        clock.now += 99
        await asyncio.gather(*(worker.maintain() for worker in workers))
        assert workers[0].prepared.keys.generation == generation  # type: ignore[union-attr]  # not due yet
        clock.now += 2
        await asyncio.gather(*(worker.maintain() for worker in workers))
        gens = {worker.prepared.keys.generation for worker in workers}  # type: ignore[union-attr]
        assert gens == {generation + 1}  # one rotation, seen by all
    finally:
        for store in stores:
            await store.close()


@async_test
async def test_an_on_demand_rotation_waits_for_the_next_key_to_be_published(tmp_path: Path) -> None:
    clock = Clock()
    store = local(tmp_path)
    try:
        keys = await ensure_keys(store, clock)
        early = await rotate_keys(store, SPEC, None, clock=clock)
        assert not early.rotated and early.keys == keys and early.wait == 10.0
        forced = await rotate_keys(store, SPEC, None, force=True, clock=clock)
        assert forced.rotated and forced.keys.generation == keys.generation + 1
        not_due = await rotate_keys(store, SPEC, None, scheduled=True, clock=clock)
        assert not not_due.rotated and not_due.keys == forced.keys
    finally:
        await store.close()


@async_test
async def test_an_unknown_kid_looks_at_the_store_at_once_but_not_too_often(tmp_path: Path) -> None:
    clock = Clock()
    store, other = local(tmp_path), local(tmp_path)
    worker = IssuerKeys(SPEC, None, store, clock=clock)  # not started: no background poll
    try:
        await worker.sync()
        assert not await worker.refresh("unknown")
        clock.now += 20
        rotated = await rotate_keys(other, SPEC, None, clock=clock)
        fresh = rotated.keys.next.kid
        loop = asyncio.get_running_loop()
        worker.synced_at = loop.time() - 0.4
        assert not await worker.refresh(fresh)  # within MIN_REFRESH_GAP (0.5 s) of the last look
        worker.synced_at = loop.time() - 0.6
        assert await worker.refresh(fresh)
    finally:
        await store.close()
        await other.close()


@async_test
async def test_an_unreadable_key_set_is_logged_once_and_the_keys_read_before_stay(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = local(tmp_path)
    worker = IssuerKeys(SPEC, None, store, poll=0.05)
    worker.start()
    try:
        prepared = await worker.ready()
        good = (tmp_path / "keys.json").read_bytes()
        (tmp_path / "keys.json").write_text("{broken")
        await eventually(lambda: worker.failing)
        assert worker.prepared is prepared and worker.candidates(prepared.keys.current.kid)
        (tmp_path / "keys.json").write_bytes(good + b" ")
        await eventually(lambda: not worker.failing)
    finally:
        worker.close()
        await store.close()
    assert caplog.text.count("cannot read the issuer's keys") == 1
    assert caplog.text.count("the issuer's keys are read again") == 1
    assert "PRIVATE" not in caplog.text


@async_test
async def test_no_keys_at_all_is_a_store_error_for_the_issuer(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    store = LocalStore(str(tmp_path / "file"), str(tmp_path / "file" / "keys.json"))
    worker = IssuerKeys(SPEC, None, store, poll=0.05)
    worker.start()
    try:
        with pytest.raises(StoreError, match="not available"):
            await worker.ready(wait=2.0)
        assert not await worker.refresh("k")
    finally:
        worker.close()
        await store.close()


# --- revocations ------------------------------------------------------------------------------------------------


def verified(issuer: str = "gateway", **claims: Any) -> Verified:
    return Verified(claims, issuer, claims.get("sub"), time.time() + 60)


@async_test
async def test_revocations_reach_every_worker_by_polling(tmp_path: Path) -> None:
    writer, reader = local(tmp_path), local(tmp_path)
    revocations = RevocationList(reader, "gateway", interval=0.05)
    revocations.start()
    try:
        token = verified(jti="t1", sid="s1", sub="alice")
        assert not revocations.revoked(token)
        await writer.revoke(JTI, "t1", time.time() + 60)
        await eventually(lambda: revocations.revoked(token))
        assert not revocations.revoked(verified(jti="t2", sid="s1"))
        await writer.revoke(SID, "s1", time.time() + 60)
        await eventually(lambda: revocations.revoked(verified(jti="t2", sid="s1")))
        assert revocations.session_ended("s1")
        assert not revocations.revoked(verified("idp", jti="t2", sid="s1"))  # sid counts in our own tokens only
        assert not revocations.revoked(verified(jti=["t1"], sid=5))  # odd claim types are no match, no error
    finally:
        revocations.close()
        await writer.close()
        await reader.close()


@async_test
async def test_lapsed_revocations_are_forgotten(tmp_path: Path) -> None:
    store = local(tmp_path)
    clock = Clock()
    revocations = RevocationList(store, "gateway", clock=clock)
    try:
        await revocations.poll()  # the first poll replaces what is known; later ones add to it
        revocations.add(Revoked(JTI, "old", clock.now + 1))
        revocations.add(Revoked(SID, "s", clock.now + 100))
        await store.revoke(JTI, "new", clock.now + 100)
        clock.now += 61
        await revocations.poll()
        assert set(revocations.jtis) == {"new"} and set(revocations.sids) == {"s"}
    finally:
        await store.close()


@async_test
async def test_an_unreachable_store_keeps_the_known_revocations(caplog: pytest.LogCaptureFixture,
                                                                tmp_path: Path) -> None:
    caplog.set_level(logging.WARNING)
    dead = RedisStore("redis://127.0.0.1:1/0", "x:")
    revocations = RevocationList(dead, "gateway", interval=0.05)
    revocations.add(Revoked(JTI, "t1", time.time() + 60))
    revocations.start()
    await eventually(lambda: revocations.failing)
    assert revocations.revoked(verified(jti="t1"))
    alive = local(tmp_path)
    await alive.revoke(JTI, "t2", time.time() + 60)
    revocations.store = alive  # the store answers again
    await eventually(lambda: revocations.revoked(verified(jti="t2")))
    revocations.close()
    await dead.close()
    await alive.close()
    assert caplog.text.count("cannot read revocations") == 1
    assert caplog.text.count("revocations read again") == 1
    assert revocations.revoked(verified(jti="t2")) and not revocations.revoked(verified(jti="t1"))


def test_the_key_set_round_trips_through_the_worker_copy() -> None:
    keys = keyset.bootstrap(1.0, keyset.generate_key(1.0), keyset.generate_key(1.0))
    from gateway.auth.issuer import prepare

    prepared = prepare(keys, {})
    again = prepare(keys, prepared.private)  # parsed keys are reused, not parsed again
    assert again.private[keys.current.kid] is prepared.private[keys.current.kid]
    assert again.jwks == prepared.jwks and set(again.aeads) == {keys.session_keys[0].id}
