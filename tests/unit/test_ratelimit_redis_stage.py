"""gateway/ratelimit/stage.py and store.py with Redis: ``mode: sync`` limits decided by one Redis script per
request (a real Redis), refunds across the table and Redis, and ``on_store_error`` (local, open, closed)
when the store is unavailable (the table's STORE_STATE word, or the synchronous limit's own breaker)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from gateway._fast import bucket_py
from gateway.errors import ServiceUnavailable, TooManyRequests
from gateway.exchange import Exchange
from gateway.loader import GatewayConfig
from gateway.observability.metrics import Schema, WorkerMetrics
from gateway.ratelimit.runtime import RateLimiter
from gateway.ratelimit.store import RemoteLimit, RemoteStore, window_wait
from gateway.ratelimit.sync import FALLBACK, HOSTS_WORD, STORE_STATE
from tests.unit.helpers import async_test
from tests.unit.test_ratelimit_redis import scratch_prefix
from tests.unit.test_ratelimit_stage import T0, Upstream, document, noop_send

SEC = 1_000_000_000
DEAD = "redis://127.0.0.1:1/0"


@pytest.fixture
def redis_prefix() -> Iterator[tuple[str, str]]:
    yield from scratch_prefix("rls")


def section(limits: list[dict[str, Any]], prefix: str = "gateway:rl:", **redis_options: Any) -> dict[str, Any]:
    return {"default": ["p"], "policies": {"p": {"key": "ip", "limits": limits}},
            "redis": {"prefix": prefix, "timeout": "500ms", "breaker_cooldown": "50ms", **redis_options}}


class Harness:
    """One route's stage on a worker limiter with Redis (its clock fixed unless ``live``)."""

    def __init__(self, config: GatewayConfig, url: str | None, *, live: bool = False) -> None:
        assert config.ratelimit is not None
        self.metrics = WorkerMetrics(Schema.for_config(config))
        self.limiter = RateLimiter(config.ratelimit, self.metrics, None, workers=1, redis_url=url)
        stage = self.limiter.stage(config.routes[0])
        assert stage is not None
        self.stage = stage
        self.upstream = stage.next = Upstream()
        if not live:
            self.now = T0
            stage.now = lambda: self.now
        families = self.metrics.schema.families
        self.cells = {name: families["gateway_ratelimit_decisions"].cell(0, i)
                      for i, name in enumerate(("allowed", "rejected", "fallback"))}
        self.cells.update({f"degraded_{name}": families["gateway_ratelimit_degraded_decisions"].cell(0, i)
                           for i, name in enumerate(("allowed", "rejected"))})

    async def call(self, client: str = "10.0.0.1") -> dict[bytes, bytes]:
        ex = Exchange({"headers": [], "client": (client, 4000)}, None, noop_send, 0.0)  # type: ignore[arg-type]
        if self.stage.remote:  # a mode: sync limit with Redis: never decided without awaiting Redis, and
            assert self.stage.enter(ex) is False  # nothing taken (the exact counts below would see it)
        await self.stage(ex)
        return dict(self.upstream.headers)

    async def outcome(self, client: str = "10.0.0.1") -> int:
        try:
            await self.call(client)
        except TooManyRequests:
            return 429
        except ServiceUnavailable as exc:
            assert exc.code == "ratelimit_unavailable" and dict(exc.headers) == {b"retry-after": b"1"}
            return 503
        return 200

    def key(self, client: str = "10.0.0.1") -> bytes:
        ex = Exchange({"headers": [], "client": (client, 4000)}, None, noop_send, 0.0)  # type: ignore[arg-type]
        return self.stage.policies[0].keys.make(ex, {})

    def count(self, name: str) -> int:
        return int(self.metrics.cells[self.cells[name]])

    def degrade(self, hosts: int = 1) -> None:
        """What the host's sync loop does when Redis fails (``hosts``: live at its last heartbeat)."""
        words = self.limiter.store_state()
        assert words is not None
        words[STORE_STATE] = FALLBACK
        words[HOSTS_WORD] = hosts


@pytest.mark.parametrize("algorithm", ["gcra", "sliding_window", "fixed_window"])
@async_test
async def test_sync_mode_is_exact_across_workers(redis_prefix: tuple[str, str], algorithm: str) -> None:
    url, prefix = redis_prefix
    limit = {"rate": "5/h", "mode": "sync", "algorithm": algorithm}
    if algorithm == "gcra":
        limit.update(rate="1/h", burst=5)
    config = document(section([limit], prefix))
    workers = [Harness(config, url, live=True) for _ in range(3)]  # three limiters: three workers or hosts
    try:
        got = await asyncio.gather(*(workers[i % 3].outcome() for i in range(15)))
        assert got.count(200) == 5 and got.count(429) == 10
        headers = await workers[0].call("10.0.0.2")
        assert headers[b"x-ratelimit-limit"] == b"5" and headers[b"x-ratelimit-remaining"] == b"4"
        assert sum(w.count("rejected") for w in workers) == 10
        with pytest.raises(TooManyRequests) as info:
            await workers[1].call()
        assert int(dict(info.value.headers)[b"retry-after"]) >= 1
    finally:
        for worker in workers:
            await worker.limiter.close()


@async_test
async def test_a_refusal_gives_back_the_units_taken_here_and_in_redis(redis_prefix: tuple[str, str]) -> None:
    url, prefix = redis_prefix
    limits = [{"rate": "1/h", "burst": 10, "name": "table"},
              {"rate": "1/h", "burst": 3, "mode": "sync", "name": "strict-a"},
              {"rate": "1/h", "burst": 2, "mode": "sync", "name": "strict-b"}]
    h = Harness(document(section(limits, prefix)), url)
    try:
        assert [await h.outcome() for _ in range(4)] == [200, 200, 429, 429]
        table = h.limiter.buckets[h.limiter.spec.policies["p"].limits[0].seed]
        assert table.take(h.key(), h.now) == 1 and table.remaining == 10 - 3  # 2 admitted, refusals gave back
        with redis.Redis.from_url(url) as client:
            counts = sorted(int(client.hget(key, "n")) for key in client.scan_iter(match=prefix + "*"))
        assert counts == [2, 2]  # strict-a took a unit for each refusal by strict-b and gave it back
    finally:
        await h.limiter.close()


@pytest.mark.parametrize(("mode", "expected"), [("local", [200, 200, 429]), ("open", [200, 200, 200]),
                                                ("closed", [503, 503, 503])])
@async_test
async def test_redis_unreachable_for_a_sync_limit(mode: str, expected: list[int], caplog) -> None:
    caplog.set_level(logging.WARNING, "gateway.ratelimit")
    limits = [{"rate": "1/h", "burst": 5, "name": "table"}, {"rate": "1/h", "burst": 2, "mode": "sync"}]
    h = Harness(document(section(limits, on_store_error=mode)), DEAD)
    try:
        assert [await h.outcome() for _ in range(3)] == expected
        allowed = expected.count(200)
        assert (h.count("degraded_allowed"), h.count("degraded_rejected")) == (allowed, 3 - allowed)
        assert caplog.text.count("Redis unavailable") == 1
        assert f"synchronous limits decide as on_store_error: {mode} says" in caplog.text
        table = h.limiter.buckets[h.limiter.spec.policies["p"].limits[0].seed]
        table.take(h.key(), h.now)
        assert table.remaining == 5 - allowed - 1  # closed took nothing; the others kept their units
    finally:
        await h.limiter.close()


@async_test
async def test_a_sync_limit_recovers_when_redis_answers(redis_prefix: tuple[str, str], caplog) -> None:
    caplog.set_level(logging.WARNING, "gateway.ratelimit")
    url, prefix = redis_prefix
    h = Harness(document(section([{"rate": "1/h", "burst": 3, "mode": "sync"}], prefix)), DEAD)
    try:
        assert await h.outcome() == 200 and await h.outcome() == 200  # local: the table decides
        store = h.limiter.remote
        assert isinstance(store, RemoteStore) and not store.breaker.closed
        assert await store.call(None, [], []) is None  # type: ignore[arg-type]  # open: no call made
        await store.close()
        store.client = RemoteStore(url, store.spec).client
        await asyncio.sleep(0.06)
        assert await h.outcome() == 200  # Redis decides again (it never saw the outage's two)
        assert "Redis reachable again" in caplog.text and store.breaker.closed
    finally:
        await h.limiter.close()


@pytest.mark.parametrize(("mode", "expected"), [("local", [200, 200, 429]), ("open", [200, 200, 200]),
                                                ("closed", [503, 503, 503])])
@async_test
async def test_the_host_loop_says_redis_is_down(mode: str, expected: list[int]) -> None:
    limits = [{"rate": "1/h", "burst": 2}, {"rate": "1/h", "burst": 9, "mode": "sync", "name": "strict"}]
    h = Harness(document(section(limits, on_store_error=mode)), DEAD)
    try:
        h.degrade()
        assert [await h.outcome() for _ in range(3)] == expected
        allowed = expected.count(200)
        assert (h.count("degraded_allowed"), h.count("degraded_rejected")) == (allowed, 3 - allowed)
        assert h.limiter.remote is not None and h.limiter.remote.breaker.closed  # no Redis call was made
    finally:
        await h.limiter.close()


@pytest.mark.parametrize("algorithm", ["gcra", "sliding_window"])
@async_test
async def test_in_local_fallback_each_host_keeps_to_its_share(algorithm: str) -> None:
    limit: dict[str, Any] = {"rate": "12/h", "algorithm": algorithm}
    if algorithm == "gcra":
        limit.update(rate="1/h", burst=12)
    h = Harness(document(section([limit, {"rate": "1/h", "burst": 99, "mode": "sync", "name": "strict"}])), DEAD)
    try:
        assert await h.outcome() == 200  # Redis decides... or would: it is down, the table decides
        h.degrade(hosts=3)
        headers = await h.call()
        assert headers[b"x-ratelimit-remaining"] == b"3"  # a third of the 10 left
        got = [await h.outcome() for _ in range(6)]
        assert got == [200, 200, 200, 429, 429, 429]  # 8 left, each unit counts 3 times
        h.degrade(hosts=1)  # alone (or never reached Redis): the whole limit
        assert [await h.outcome("10.0.0.9") for _ in range(13)].count(200) == 12
    finally:
        await h.limiter.close()


def test_without_redis_the_stage_reads_no_store_state() -> None:
    h = Harness(document(section([{"rate": "1/h", "burst": 1, "mode": "sync"}])), None)
    assert h.stage.store_state is None and h.limiter.remote_limit(h.limiter.spec.policies["p"].limits[0]) is None
    assert asyncio.run(h.outcome()) == 200 and asyncio.run(h.outcome()) == 429  # the table decides


def test_remote_window_numbers() -> None:
    twin = bucket_py.Limit(bucket_py.Table(bytearray(bucket_py.table_bytes(8)), memoryview(bytearray(8)).cast("q"), -1),
                           bucket_py.SLIDING, 10, 100, burst=1, seed=1)
    for previous, current, elapsed in ((0, 10, 40), (10, 5, 40), (3, 9, 90), (10, 0, 1)):
        assert window_wait(100, 10, previous, current, elapsed) == twin.window_wait(previous, current, elapsed)
    spec = document(section([{"rate": "10/s", "algorithm": "fixed_window", "mode": "sync"}])).ratelimit
    assert spec is not None
    [limit] = spec.policies["p"].limits
    remote = RemoteLimit(limit, RemoteStore(DEAD, spec.redis))
    keys, weight, elapsed = remote.keys(b"k", 25 * SEC // 10)
    assert weight == 0.0 and elapsed == SEC // 2 and keys[0].endswith(":2") and keys[1].endswith(":1")
    assert (remote.quota, remote.span) == (10, SEC)


@async_test
async def test_a_worker_with_a_private_table_runs_its_own_loop(redis_prefix: tuple[str, str]) -> None:
    url, prefix = redis_prefix
    h = Harness(document(section([{"rate": "1/h", "burst": 5}], prefix, sync_interval="5ms")), url, live=True)
    h.limiter.start()
    loop = h.limiter.sync
    assert loop is not None
    h.limiter.start()  # once
    assert h.limiter.sync is loop
    await h.call()
    for _ in range(200):
        await asyncio.sleep(0.01)
        if loop.stats[2] == 1:  # PUSHED
            break
    with redis.Redis.from_url(url) as client:
        assert sum(int(client.hget(key, "n") or 0) for key in client.scan_iter(match=prefix + "{[0-9a-f]*")) == 1
    await h.limiter.close()
    assert h.limiter.sync is None
    await h.limiter.close()  # twice: nothing left to close
