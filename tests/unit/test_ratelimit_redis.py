"""gateway/ratelimit/sync.py, lua.py, host.py and the store config: the cross-host sync loop against a real
Redis (tables in private memory standing for hosts), its fallback and recovery with Redis unreachable, the
circuit breaker, the host service and its metrics."""

from __future__ import annotations

import asyncio
import logging
import mmap
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest

from gateway import redisconn
from gateway._fast import bucket
from gateway._fast.bucket import ADMITTED, REJECTED, Table, table_bytes
from gateway.config import ConfigError
from gateway.loader import GatewayConfig, from_document
from gateway.ratelimit import host as host_module
from gateway.ratelimit.config import LimitSpec, RedisSpec
from gateway.ratelimit.lua import bucket_key, hosts_key, window_key
from gateway.ratelimit.runtime import SEGMENT, SYNC_SEGMENT, make_limit, segment_sizes, stats_row
from gateway.ratelimit.store import Breaker, global_hash, open_client, redacted
from gateway.ratelimit.sync import (
    ABSORBED,
    BATCHES,
    ERRORS,
    FALLBACK,
    HOSTS,
    PUSHED,
    ROW_FALLBACK,
    ROW_STOPPED,
    ROW_UP,
    STATE,
    STORE_STATE,
    TRANSITIONS,
    UP,
    Entry,
    HostSync,
    dirty_slots,
    gcra_catch_up,
    gcra_floor,
)
from gateway.server.services import SERVICES, make_services
from gateway.server.shared import Segments
from tests.unit.helpers import async_test
from tests.unit.test_auth_support import require_redis

SEC = 1_000_000_000
DEAD = "redis://127.0.0.1:1/0"  # nothing listens there


def scratch_prefix(tag: str) -> Iterator[tuple[str, str]]:
    """The test Redis's URL and a fresh key prefix; the keys under it are deleted afterwards."""
    url = require_redis()
    name = f"test:{tag}:{uuid.uuid4().hex[:10]}:"
    yield url, name
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=name + "*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def prefix() -> Iterator[tuple[str, str]]:
    yield from scratch_prefix("rl")


def limit_spec(rate: str = "1/h", algorithm: str = "gcra", burst: int = 10) -> LimitSpec:
    limit, unit = rate.split("/")
    period = {"h": 3600, "s": 1}[unit] * SEC
    return LimitSpec("l", algorithm, int(limit), period, burst if algorithm == "gcra" else 1, rate, "p")


class Host:
    """A table in private memory and its sync loop: one host of the fleet."""

    def __init__(self, url: str, prefix: str, spec: LimitSpec, **redis_options: Any) -> None:
        self.buffer = mmap.mmap(-1, table_bytes(64))
        self.table = Table(self.buffer, memoryview(bytearray(8)).cast("q"), -1)
        self.spec = spec
        self.limit = make_limit(self.table, spec)
        options = {"sync_interval": 0.01, "timeout": 0.5, "breaker_cooldown": 0.05, "prefix": prefix, **redis_options}
        self.sync = HostSync(self.buffer, self.table, {spec.seed: self.limit}, {spec.seed: spec},
                             spec=RedisSpec(**options), client=open_client(url, options["timeout"]))

    def take(self, count: int, key: bytes = b"k") -> list[int]:
        return [self.limit.take(key, self.table.now()) for _ in range(count)]

    async def close(self) -> None:
        await self.sync.stop()
        await redisconn.close(self.sync.client)


def admitted(results: list[int]) -> int:
    return results.count(ADMITTED)


# --- pure parts ----------------------------------------------------------------------------------------


def test_dirty_slots_finds_every_non_zero_pending_word() -> None:
    buffer = mmap.mmap(-1, table_bytes(64))
    words = memoryview(buffer).cast("q")
    assert dirty_slots(words, 64) == []
    for slot, value in ((0, 1), (1, -1), (2, 1 << 40), (40, 3), (63, -(1 << 62))):
        words[8 + slot * 8 + 3] = value
    words[8 + 5 * 8 + 2] = 7  # another word of a slot: not pending
    assert dirty_slots(words, 64) == [8 + s * 8 for s in (0, 1, 2, 40, 63)]


def test_gcra_catch_up_counts_the_units_to_the_global_occupancy() -> None:
    host = Host(DEAD, "x:", limit_spec())
    interval = host.limit.interval
    now = 10 * interval
    assert gcra_catch_up(host.limit, 0, now, 3 * interval) == 3  # an idle local bucket
    assert gcra_catch_up(host.limit, now + 2 * interval, now, 3 * interval) == 1
    assert gcra_catch_up(host.limit, now + 2 * interval, now, 2 * interval - 5) == 0  # ahead of the global
    assert gcra_catch_up(host.limit, now, now, 2 * interval - 1) == 2  # to the nearest unit
    assert gcra_catch_up(host.limit, now, now, interval + interval // 3) == 1


def test_the_breaker_opens_after_failures_and_tries_once_per_cooldown() -> None:
    clock = [0.0]
    breaker = Breaker(1.0, lambda: clock[0])
    assert breaker.allow() and breaker.closed
    assert breaker.failure() is False  # one failure in a row: still closed
    assert breaker.success() is False and breaker.failures == 0
    breaker.failure()
    assert breaker.failure() is True and not breaker.closed  # opened
    assert breaker.allow() is False
    clock[0] = 1.0
    assert breaker.allow() is True  # the trial
    assert breaker.allow() is False  # one per cooldown
    assert breaker.failure() is False  # the trial failed: still open (no second "opened")
    clock[0] = 2.5
    assert breaker.allow() is True
    assert breaker.success() is True and breaker.closed and breaker.allow()


def test_keys_share_one_hash_tag_per_bucket() -> None:
    assert bucket_key("gw:", 1, -1) == "gw:{0000000000000001.ffffffffffffffff}"
    assert window_key("gw:", 1, 2, 7) == "gw:{0000000000000001.0000000000000002}:7"
    assert hosts_key("gw:") == "gw:{hosts}"
    assert redacted(TimeoutError()) == "timeout" and redacted(redis.ConnectionError("p@ss")) == "ConnectionError"


def test_global_hash_is_the_tables_global_word() -> None:
    host = Host(DEAD, "x:", limit_spec())
    host.take(1, b"client-1")
    slot = host.table.slot(host.limit.slot)
    assert slot[5] == global_hash(host.spec.seed, b"client-1")


# --- config ---------------------------------------------------------------------------------------------


def config(redis_section: Any = None, limit: dict[str, Any] | None = None, **server: Any) -> GatewayConfig:
    section: dict[str, Any] = {"default": ["p"], "policies": {"p": {"key": "ip", "limits": [limit or {"rate": "5/s"}]}}}
    if redis_section is not None:
        section["redis"] = redis_section
    return from_document({"source": "gw.yaml", "server": {"access_log": False, **server},
                          "upstreams": {"api": "http://127.0.0.1:9"},
                          "routes": [{"name": "r", "prefix": "/", "upstream": "api"}], "ratelimit": section})


def test_the_redis_section_and_sync_mode() -> None:
    spec = config().ratelimit
    assert spec is not None and spec.redis == RedisSpec()
    assert (spec.redis.sync_interval, spec.redis.on_store_error, spec.redis.timeout) == (0.02, "local", 0.05)
    spec = config({"sync_interval": "10ms", "on_store_error": "closed", "timeout": "20ms", "breaker_cooldown": "2s",
                   "prefix": "gw1:"}, {"rate": "5/m", "mode": "sync"}).ratelimit
    assert spec is not None
    assert spec.redis == RedisSpec(0.01, "closed", 0.02, 2.0, "gw1:")
    [limit] = spec.policies["p"].limits
    assert limit.mode == "sync" and list(spec.all_limits()) == [limit.seed]
    lines = config(limit={"rate": "5/m", "mode": "sync"}).summary()
    assert "sync every 20ms, on_store_error local, timeout 50ms" in lines and "(gcra, sync)" in lines


@pytest.mark.parametrize(("section", "limit", "message"), [
    ({"sync_interval": "0ms"}, None, "ratelimit.redis.sync_interval: expected a duration"),
    ({"sync_interval": "1h"}, None, "ratelimit.redis.sync_interval: expected a sync interval from 1ms to 10s"),
    ({"timeout": "11s"}, None, "ratelimit.redis.timeout: expected a timeout of at most 10s"),
    ({"on_store_error": "maybe"}, None, "ratelimit.redis.on_store_error: expected one of local, open, closed"),
    ({"prefix": "a{b"}, None, "ratelimit.redis.prefix: expected a prefix without { or }"),
    ({"sync": 1}, None, "ratelimit.redis.sync: unknown key"),
    (None, {"rate": "5/s", "mode": "eventually"}, "limits[0].mode: expected one of async, sync"),
])
def test_store_config_errors_name_the_key(section: Any, limit: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config(section, limit)
    assert message in str(info.value)


# --- the sync loop against a real Redis ---------------------------------------------------------------------


@async_test
async def test_two_hosts_share_a_gcra_bucket(prefix: tuple[str, str]) -> None:
    url, name = prefix
    a, b = Host(url, name, limit_spec()), Host(url, name, limit_spec())
    try:
        assert admitted(a.take(6)) == 6
        await a.sync.tick()
        assert a.sync.stats[PUSHED] == 6 and a.sync.stats[BATCHES] == 1
        assert admitted(b.take(1)) == 1
        await b.sync.tick()  # B pushes 1, learns the global occupancy (7 units), catches up to it
        assert b.sync.stats[ABSORBED] == 6
        assert b.table.slot(b.limit.slot)[7] == 0  # SHARE: a catch-up is no clump, B decides alone
        assert admitted(b.take(5)) == 3  # 10 - 7 left
        await b.sync.tick()
        assert b.table.pending(b.limit.slot) == 0  # settled
        await a.sync.tick()  # A hears of B's 4 units by the counters, while it watches the key
        assert a.sync.stats[ABSORBED] == 4
        assert a.table.slot(a.limit.slot)[7] == 2  # shared: A's unsettled units count twice from now on
        assert a.take(1) == [REJECTED]
        assert b.sync.hosts == 2 or a.sync.hosts == 2  # the heartbeats
        with redis.Redis.from_url(url) as client:
            key = bucket_key(name, a.spec.seed, global_hash(a.spec.seed, b"k"))
            assert int(client.hget(key, "n")) == 10 and client.pttl(key) > 0
            assert client.zcard(hosts_key(name)) == 2
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize("algorithm", ["fixed_window", "sliding_window"])
@async_test
async def test_two_hosts_share_a_window(prefix: tuple[str, str], algorithm: str) -> None:
    url, name = prefix
    spec = limit_spec("10/h", algorithm)
    a, b = Host(url, name, spec), Host(url, name, spec)
    try:
        assert admitted(a.take(4)) == 4
        assert admitted(b.take(1)) == 1
        await a.sync.tick()
        await b.sync.tick()  # B: 4 others in this window
        await a.sync.tick()  # A: 1 other
        assert (a.sync.stats[ABSORBED], b.sync.stats[ABSORBED]) == (1, 4)
        assert a.table.slot(a.limit.slot)[7] == 2  # A saw B admit meanwhile: shared
        assert b.table.slot(b.limit.slot)[7] == 0  # B's first reply, a catch-up: alone
        assert admitted(b.take(10)) == 5
        await b.sync.tick()
        await a.sync.tick()
        assert a.take(1) == [REJECTED]
        await a.sync.tick()  # nothing new: a pull, nothing absorbed twice
        assert a.sync.stats[ABSORBED] == 6
    finally:
        await a.close()
        await b.close()


@async_test
async def test_redis_down_local_share_then_recovery_pushes_the_outage(prefix: tuple[str, str], caplog) -> None:
    caplog.set_level(logging.WARNING, "gateway.ratelimit")
    url, name = prefix
    a = Host(DEAD, name, limit_spec(burst=20), on_store_error="local")
    a.sync.hosts = 2  # as the last heartbeat said (the stage keeps to the share: test_ratelimit_redis_stage)
    try:
        assert admitted(a.take(2)) == 2
        await a.sync.tick()
        assert not a.sync.degraded and a.sync.stats[ERRORS] == 1 and a.sync.unsent  # one failure: not yet
        await a.sync.tick()
        assert a.sync.degraded and a.sync.words[STORE_STATE] == FALLBACK
        assert a.sync.stats[STATE] == ROW_FALLBACK and a.sync.stats[TRANSITIONS] == 1
        for _ in range(9):
            a.take(1)
            await a.sync.tick()  # breaker open: no call to Redis, the units are kept
        assert a.sync.stats[ERRORS] <= 4
        assert sum(units for units, _ in a.sync.unsent.values()) == 2 + 9
        assert "Redis unavailable (ConnectionError); on_store_error local: each host keeps to its share (1/2)" \
            in caplog.text
        a.sync.client = open_client(url, 0.5)  # Redis answers again
        await asyncio.sleep(0.06)  # the breaker's cooldown
        await a.sync.tick()
        assert not a.sync.degraded and a.sync.words[STORE_STATE] == UP and a.sync.stats[STATE] == ROW_UP
        assert a.sync.unsent == {}
        with redis.Redis.from_url(url) as client:
            key = bucket_key(name, a.spec.seed, global_hash(a.spec.seed, b"k"))
            assert int(client.hget(key, "n")) == 11  # the outage's admissions reached Redis
        assert caplog.text.count("Redis unavailable") == 1
        assert "Redis answers again; 11 units admitted during the outage pushed" in caplog.text
    finally:
        await a.close()


@async_test
async def test_kept_units_of_an_ended_window_are_dropped(prefix: tuple[str, str]) -> None:
    url, name = prefix
    a = Host(url, name, limit_spec("10/h", "fixed_window"))
    try:
        a.take(1)
        window = a.table.now() // a.limit.period
        a.sync.unsent[(a.spec.seed, 99)] = [5, window - 1]
        assert a.sync.kept((a.spec.seed, 99), a.limit, window) == 0
        a.sync.unsent[(a.spec.seed, 99)] = [5, window]
        assert a.sync.kept((a.spec.seed, 99), a.limit, window) == 5
    finally:
        await a.close()


@async_test
async def test_apply_skips_failed_calls_moved_slots_and_ended_windows(prefix: tuple[str, str]) -> None:
    url, name = prefix
    spec = limit_spec("10/h", "fixed_window")
    a = Host(url, name, spec)
    try:
        a.take(1)
        batch, _ = a.sync.collect(a.table.now())
        [entry] = batch
        a.sync.apply(batch, [redis.ConnectionError("node down")])  # a Cluster node failed: nothing absorbed
        ended = Entry(entry.key, entry.limit, 0, entry.window - 1)
        a.sync.apply([ended], [(5, 0)])  # the window ended during the round trip
        assert a.sync.stats[ABSORBED] == 0
        a.sync.tracked[entry.key].tag ^= 1  # the slot went to another key meanwhile
        a.sync.apply(batch, [(3, 0)])
        assert entry.key not in a.sync.tracked and a.sync.stats[ABSORBED] == 0
    finally:
        await a.close()


@async_test
async def test_a_partial_failure_keeps_those_units(prefix: tuple[str, str], monkeypatch) -> None:
    url, name = prefix
    a = Host(url, name, limit_spec())
    try:
        a.take(3)

        async def one_node_down(batch: list[Entry], now: int) -> list[Any]:
            return [redis.ConnectionError("down") for _ in batch] + [1]  # the heartbeat's node answered

        monkeypatch.setattr(a.sync, "send", one_node_down)
        await a.sync.tick()
        assert a.sync.stats[ERRORS] == 1 and not a.sync.degraded and a.sync.stats[BATCHES] == 1
        assert list(a.sync.unsent.values()) == [[3, 0]]
        await a.sync.tick()  # twice in a row: the store counts as unavailable
        assert a.sync.degraded and a.sync.stats[ERRORS] == 2

        async def all_down(batch: list[Entry], now: int) -> list[Any]:
            return [redis.ConnectionError("down") for _ in batch]

        monkeypatch.setattr(a.sync, "send", all_down)
        await asyncio.sleep(0.06)  # the breaker's cooldown: one trial
        await a.sync.tick()
        assert a.sync.stats[ERRORS] == 3 and a.sync.degraded
    finally:
        await a.close()


@async_test
async def test_the_loop_runs_ticks_survives_a_failing_one_and_stops(prefix: tuple[str, str], caplog,
                                                                    monkeypatch) -> None:
    url, name = prefix
    a = Host(url, name, limit_spec())
    calls = []
    real_tick = a.sync.tick

    async def tick() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("boom")
        await real_tick()

    monkeypatch.setattr(a.sync, "tick", tick)
    a.take(2)
    a.sync.start()
    a.sync.start()  # once
    for _ in range(200):
        await asyncio.sleep(0.01)
        if a.sync.stats[PUSHED] == 2:
            break
    assert a.sync.stats[PUSHED] == 2 and a.sync.stats[ERRORS] == 1 and "sync tick failed" in caplog.text
    await a.close()
    assert a.sync.task is None and a.sync.stats[STATE] == ROW_STOPPED


@async_test
async def test_limits_dropped_by_a_reload_are_drained_and_left_alone(prefix: tuple[str, str]) -> None:
    url, name = prefix
    a = Host(url, name, limit_spec())
    try:
        a.take(2)
        a.sync.configure({}, {}, RedisSpec(prefix=name, breaker_cooldown=3.0))
        await a.sync.tick()  # the heartbeat only
        assert a.sync.stats[PUSHED] == 0 and a.sync.tracked == {} and a.sync.breaker.cooldown == 3.0
        assert dirty_slots(a.sync.words, a.table.nslots) == []
        await a.sync.tick()  # nothing to send, no heartbeat due: no call
        assert a.sync.stats[BATCHES] == 1
    finally:
        await a.close()


# --- the host service -------------------------------------------------------------------------------------


@async_test
async def test_the_host_service_runs_the_loop_and_reports_every_row(prefix: tuple[str, str]) -> None:
    url, name = prefix
    cfg = config({"prefix": name, "sync_interval": "10ms"}, {"rate": "1/h", "burst": 5}, redis_url=url, workers=2)
    segments = Segments(segment_sizes(cfg))
    registry = CollectorRegistry()
    [service] = make_services(segments.maps, registry)
    assert SERVICES == ("gateway.ratelimit.host",)
    try:
        service.apply(cfg)
        if not bucket.SHARED_SAFE:
            assert service.sync is None  # the twin: the workers run their loops
            return
        assert service.sync is not None
        service.apply(cfg)  # a reload with the same URL keeps the loop
        worker_row = stats_row(segments.maps[SYNC_SEGMENT], 2)
        assert worker_row is not None
        worker_row[BATCHES] = 3  # a worker's own loop (the twin), reported beside the host's
        worker_row[STATE] = ROW_UP
        worker_row[HOSTS] = 3
        table = Table(segments.maps[SEGMENT], memoryview(bytearray(8)).cast("q"), -1)
        limit = make_limit(table, next(iter(cfg.ratelimit.all_limits().values())))  # type: ignore[union-attr]
        assert admitted([limit.take(b"k", table.now()) for _ in range(3)]) == 3
        for _ in range(300):
            await asyncio.sleep(0.01)
            if service.sync.stats[PUSHED] == 3:
                break
        text = generate_latest(registry).decode()
        assert 'gateway_ratelimit_sync_units_total{direction="pushed"} 3.0' in text
        assert "gateway_ratelimit_store_up 1.0" in text and "gateway_ratelimit_store_hosts 3.0" in text
        assert 'gateway_ratelimit_sync_duration_seconds_bucket{le="+Inf"}' in text
        service.apply(config({"prefix": name}, redis_url=url.replace("/0", "/1")))  # another Redis: a new loop
        assert service.sync is not None and service.url.endswith("/1")
        service.apply(config({"prefix": name}))  # Redis dropped
        assert service.sync is None
        for _ in range(200):  # the old loops stop in the background
            if not service.stopping:
                break
            await asyncio.sleep(0.01)
        assert not service.stopping
    finally:
        table = limit = worker_row = None  # this test's own views, also when an assertion failed above
        await service.close()
        segments.close()  # the service let go of every view of the segments


def test_the_host_service_collects_nothing_without_loops() -> None:
    assert list(host_module.RateLimitHost({}).collect()) == []
    sizes = segment_sizes(config())
    segments = Segments(sizes)
    try:
        host = host_module.RateLimitHost(segments.maps)
        assert list(host.collect()) == []
        row = stats_row(segments.maps[SYNC_SEGMENT], 0)
        assert row is not None and stats_row(segments.maps[SYNC_SEGMENT], 99) is None
        row[STATE], row[ERRORS] = ROW_FALLBACK, 2
        names = {metric.name: metric for metric in host.collect()}
        assert names["gateway_ratelimit_store_up"].samples[0].value == 0
        assert names["gateway_ratelimit_sync_errors"].samples[0].value == 2
        host.stop()  # nothing running: nothing to stop
        del row
    finally:
        segments.close()



@async_test
async def test_a_cluster_batch_has_one_script_call_per_slot() -> None:
    a = Host(DEAD, "gw:", limit_spec())
    try:
        keys = [window_key("gw:", 1, 2, 7), bucket_key("gw:", 3, 4), window_key("gw:", 1, 2, 8), hosts_key("gw:")]
        assert a.sync.groups(keys) == [[0, 1, 2, 3]]  # one server: one call
        assert a.sync.groups([]) == []
        await redisconn.close(a.sync.client)
        a.sync.client = redisconn.connect("redis+cluster://127.0.0.1:1")  # no I/O until a command
        groups = a.sync.groups(keys)
        assert [0, 2] in groups and sorted(i for group in groups for i in group) == [0, 1, 2, 3]
        assert len(groups) == 3  # one bucket's windows share its hash tag; other keys have their own slots
    finally:
        await a.close()


@async_test
async def test_a_bucket_redis_lost_is_put_back_by_the_hosts_that_know_it(prefix: tuple[str, str]) -> None:
    url, name = prefix
    a, b = Host(url, name, limit_spec()), Host(url, name, limit_spec())
    try:
        assert admitted(a.take(6)) == 6
        await a.sync.tick()
        key = bucket_key(name, a.spec.seed, global_hash(a.spec.seed, b"k"))
        with redis.Redis.from_url(url) as client:
            client.delete(key)  # a Redis restarted without persistence
            await a.sync.tick()  # a pull: A's floor puts its 6 units of occupancy back
            assert int(client.hget(key, "n") or 0) == 0 and client.pttl(key) > 0
        assert admitted(b.take(1)) == 1
        await b.sync.tick()  # B, new to the key, catches up on the occupancy A put back
        assert b.sync.stats[ABSORBED] == 6
        assert admitted(b.take(5)) == 3
        empty = a.sync.collect(a.table.now())[0][0]
        assert gcra_floor(a.limit, (0,) * 7, 1, 0, 0) == 0 and empty.floor > 0  # another key's slot: no floor
    finally:
        await a.close()
        await b.close()
