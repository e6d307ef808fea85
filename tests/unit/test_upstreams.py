"""Upstream policies: config, balancers (choice and distribution), breaker, budget, ejection, shared table."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import time
from typing import Any

import pytest

from gateway.admin.app import AdminApp
from gateway.config import ConfigError, Node
from gateway.upstreams.admin import register
from gateway.upstreams.balancers import Hash, LeastRequest, PowerOfTwo, Random, Ring, RoundRobin, cookie_value
from gateway.upstreams.breaker import Breaker, RetryBudget, Window
from gateway.upstreams.config import (
    BreakerSpec,
    HealthCheckSpec,
    OutlierSpec,
    RetrySpec,
    UpstreamSpec,
    parse_upstream,
)
from gateway.upstreams.health import Checker, HealthChecks, probe
from gateway.upstreams.host import UpstreamsHost
from gateway.upstreams.state import (
    BREAKER,
    CLOSED,
    EJECTED_UNTIL,
    HALF_OPEN,
    HEALTH,
    OPEN,
    OUTSTANDING,
    ROW_FIELDS,
    SHARED_FIELDS,
    Table,
    config_keys,
    key_of,
    segment_size,
    segment_sizes,
    worker_exited,
)
from gateway.upstreams.upstream import BreakerOpen, NoTarget, Upstream, upstream_table
from tests.unit.helpers import async_test


def spec(text: dict[str, Any], name: str = "api") -> UpstreamSpec:
    return parse_upstream(name, Node(text, "test.yaml", f"upstreams.{name}"))


def urls(count: int, start: int = 9001) -> list[str]:
    return [f"http://127.0.0.1:{port}" for port in range(start, start + count)]


class FakeExchange:
    def __init__(self, headers: list[tuple[bytes, bytes]] | None = None, client: str = "10.0.0.1",
                 path: str = "/") -> None:
        self.scope = {"headers": headers or [], "client": (client, 5000)}
        self.path = path


# -- config -----------------------------------------------------------------------------------------


def test_policies_parse_with_defaults_on_for_several_targets() -> None:
    several = spec({"targets": urls(2)})
    assert several.balancer == "p2c_ewma" and not several.plain
    assert several.outlier == OutlierSpec() and several.retries == RetrySpec() and several.breaker is None
    single = spec({"targets": urls(1)})
    assert single.plain and single.outlier is None and single.retries is None
    assert not spec({"targets": urls(1), "retries": True}).plain
    off = spec({"targets": urls(2), "outlier_detection": "off", "retries": False})
    assert off.outlier is None and off.retries is None


def test_full_policy_config() -> None:
    full = spec({
        "targets": [{"url": "http://a:1", "weight": 3}, "http://b:2"],
        "backup": ["http://c:3"],
        "balancer": "hash", "hash_on": "header:X-User",
        "health_check": {"path": "/healthz", "expected_status": [200, 204], "interval": "1s", "timeout": "200ms",
                         "healthy_threshold": 1, "unhealthy_threshold": 2},
        "outlier_detection": {"consecutive_failures": 3, "base_ejection": "2s", "max_ejection": "20s",
                              "max_ejected": 0.3},
        "circuit_breaker": {"error_ratio": 0.25, "slow_call": "500ms", "slow_ratio": 0.8, "window": "5s",
                            "min_requests": 4, "open_for": "1s", "half_open_requests": 2},
        "retries": {"attempts": 3, "retry_on": ["error", "5xx"], "methods": ["get", "post"], "try_timeout": "1s",
                    "deadline": "3s", "budget": 0.1, "min_per_second": 2},
        "slow_start": "30s",
    })
    assert [t.url for t in full.all_targets] == ["http://a:1", "http://b:2", "http://c:3"]
    assert full.weights == (3, 1) and full.weight(1) == 1 and full.weight(2) == 1
    assert full.hash_on == ("header", "x-user")
    assert full.health_check is not None and full.health_check.expected == {200, 204}
    assert full.health_check.timeout == 0.2
    assert full.outlier == OutlierSpec(3, 2.0, 20.0, 0.3)
    assert full.breaker == BreakerSpec(0.25, 0.5, 0.8, 5.0, 4, 1.0, 2)
    assert full.retries == RetrySpec(3, frozenset({"error", "5xx"}), frozenset({"GET", "POST"}), 1.0, 3.0, 0.1, 2.0)
    assert full.slow_start == 30.0 and not full.plain
    assert spec({"targets": urls(2), "circuit_breaker": True}).breaker == BreakerSpec()
    assert spec({"targets": urls(2), "hash_on": "cookie:sid", "balancer": "hash"}).hash_on == ("cookie", "sid")
    assert spec({"targets": urls(2), "hash_on": "path", "balancer": "hash"}).hash_on == ("path", "")


@pytest.mark.parametrize(("entry", "path", "message"), [
    ({"balancer": "fastest"}, "upstreams.api.balancer", "expected one of round_robin"),
    ({"hash_on": "path"}, "upstreams.api.hash_on", "expected no hash_on unless balancer is hash"),
    ({"balancer": "hash", "hash_on": "header:"}, "upstreams.api.hash_on", "expected client_ip, path"),
    ({"health_check": {"path": "healthz"}}, "upstreams.api.health_check.path", "expected an absolute path"),
    ({"health_check": {"expected_status": 99}}, "upstreams.api.health_check.expected_status",
     "expected an integer from 100"),
    ({"outlier_detection": {"max_ejected": 2}}, "upstreams.api.outlier_detection.max_ejected", "expected a ratio"),
    ({"retries": {"retry_on": ["reset"]}}, "upstreams.api.retries.retry_on[0]", "expected one of error, timeout, 5xx"),
    ({"retries": {"attempts": 0}}, "upstreams.api.retries.attempts", "expected an integer from 1 to 10"),
    ({"circuit_breaker": {"cooldown": 1}}, "upstreams.api.circuit_breaker.cooldown", "unknown key"),
    ({"targets": ["http://a:1", "http://a:1"]}, "upstreams.api.targets", "expected distinct target URLs"),
    ({"targets": [{"url": "http://a:1", "weight": 0}]}, "upstreams.api.targets[0].weight", "expected an integer"),
])
def test_policy_errors_name_the_key(entry: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        spec({"targets": urls(2), **entry})
    assert caught.value.path == path
    assert caught.value.message.startswith(message), caught.value.message


# -- balancers --------------------------------------------------------------------------------------


def upstream(targets: list[Any], **policy: Any) -> Upstream:
    return Upstream(spec({"targets": targets, **policy}))


def test_smooth_weighted_round_robin_interleaves_like_nginx() -> None:
    up = upstream([{"url": "http://a:1", "weight": 5}, "http://b:2", "http://c:3"], balancer="round_robin")
    picks = []
    for _ in range(14):
        member = up.choose(None, [])
        up.outcome(member, 200, 0.001)
        picks.append(member.pool.target.host)
    assert "".join(picks) == "aabacaa" * 2  # nginx's sequence for weights 5, 1, 1
    assert isinstance(up.balancer, RoundRobin)


def test_least_request_follows_host_wide_outstanding_counts() -> None:
    up = upstream(urls(3), balancer="least_request")
    assert isinstance(up.balancer, LeastRequest)
    a, b, c = up.members
    cells = up.table.cells
    cells[a.base + SHARED_FIELDS + 1 * ROW_FIELDS + OUTSTANDING] = 0  # other rows: other workers
    cells[a.base + SHARED_FIELDS + 2 * ROW_FIELDS + OUTSTANDING] = 0
    up.table.cells[a.out_cell] = 3
    up.table.cells[b.out_cell] = 1
    up.table.cells[c.out_cell] = 2
    assert up.choose(None, []) is b  # and now b has 2, c has 2, a has 3
    assert {up.choose(None, []).pool.target.port for _ in range(2)} == {9002, 9003}


def test_p2c_sends_less_to_a_slow_target() -> None:
    up = upstream(urls(3))
    assert isinstance(up.balancer, PowerOfTwo)
    up.balancer.random = random.Random(7).random
    latency = {9001: 0.001, 9002: 0.001, 9003: 0.050}
    counts: collections.Counter[int] = collections.Counter()
    for _ in range(3000):
        member = up.choose(None, [])
        port = member.pool.target.port
        counts[port] += 1
        up.outcome(member, 200, latency[port])
    assert counts[9003] < 0.1 * 3000  # only chosen when drawn with itself... never, or when both fast are busy
    assert abs(counts[9001] - counts[9002]) < 0.2 * 3000


def test_p2c_even_on_equal_targets_and_single_candidate() -> None:
    p2c = PowerOfTwo(random.Random(1).random)
    up = upstream(urls(2))
    counts = collections.Counter(p2c.choose(up.members, None).pool.target.port for _ in range(2000))
    assert abs(counts[9001] - counts[9002]) < 200
    assert p2c.choose(up.members[:1], None) is up.members[0]


def test_random_follows_weights() -> None:
    up = upstream([{"url": "http://a:1", "weight": 3}, "http://b:2"], balancer="random")
    assert isinstance(up.balancer, Random)
    up.balancer.random = random.Random(3).random
    counts = collections.Counter(up.balancer.choose(up.members, None).pool.target.host for _ in range(4000))
    assert 0.7 < counts["a"] / 4000 < 0.8


def remap_fraction(before: list[str], after: list[str], keys: int = 20000) -> float:
    old, new = Ring(before, [1] * len(before)), Ring(after, [1] * len(after))
    moved = sum(before[old.lookup(b"k%d" % k)] != after[new.lookup(b"k%d" % k)] for k in range(keys))
    return moved / keys


def test_ring_hash_remaps_about_one_nth_when_a_target_joins_or_leaves() -> None:
    five, six = urls(5), urls(6)
    joined = remap_fraction(five, six)
    left = remap_fraction(six, five)
    assert abs(joined - 1 / 6) < 0.04, joined  # the ideal is exactly the new target's share, 1/6
    assert abs(left - 1 / 6) < 0.04, left
    # keys that moved on a join all moved to the new target, none between old ones
    old, new = Ring(five, [1] * 5), Ring(six, [1] * 6)
    for k in range(5000):
        before, after = five[old.lookup(b"k%d" % k)], six[new.lookup(b"k%d" % k)]
        assert before == after or after == six[5]


def test_ring_balance_and_empty_ring() -> None:
    ring = Ring(urls(4), [1, 1, 1, 1])
    counts = collections.Counter(ring.lookup(b"key%d" % k) for k in range(20000))
    assert all(0.18 < counts[i] / 20000 < 0.32 for i in range(4)), counts
    assert Ring([], []).lookup(b"x") == -1
    assert ring.lookup(b"x", lambda index: False) == -1


def test_hash_is_sticky_on_each_key_kind_and_skips_unavailable_targets() -> None:
    for hash_on, make in [
        ("header:X-User", lambda i: FakeExchange([(b"x-user", b"u%d" % i)])),
        ("cookie:sid", lambda i: FakeExchange([(b"cookie", b"a=1; sid=s%d" % i)])),
        ("client_ip", lambda i: FakeExchange(client=f"10.0.0.{i}")),
        ("path", lambda i: FakeExchange(path=f"/items/{i}")),
    ]:
        up = upstream(urls(4), balancer="hash", hash_on=hash_on)
        assert isinstance(up.balancer, Hash)
        first = [up.balancer.choose(up.members, make(i)) for i in range(50)]  # type: ignore[arg-type]
        again = [up.balancer.choose(up.members, make(i)) for i in range(50)]  # type: ignore[arg-type]
        assert first == again and len(set(first)) > 1, hash_on
        down = first[0]
        rest = [m for m in up.members if m is not down]
        for i in range(50):
            chosen = up.balancer.choose(rest, make(i))  # type: ignore[arg-type]
            assert chosen is not down and (first[i] is down or chosen is first[i])  # only down's keys move
    up = upstream(urls(2), balancer="hash", hash_on="header:x-user")
    assert up.balancer.choose(up.members, FakeExchange()) in up.members  # no key: the fallback balancer
    assert up.balancer.choose(up.members, None) in up.members


def test_cookie_value() -> None:
    assert cookie_value(b"a=1; sid=xyz; b", b"sid") == b"xyz"
    assert cookie_value(b"sidx=1", b"sid") is None


# -- breaker, budget, ejection ----------------------------------------------------------------------


def breaker(**options: Any) -> tuple[Breaker, memoryview]:
    cells = memoryview(bytearray(8 * 64)).cast("q")
    return Breaker(BreakerSpec(**options), cells, 0), cells


def test_breaker_opens_on_error_ratio_half_opens_and_closes() -> None:
    b, cells = breaker(error_ratio=0.5, min_requests=4, open_for=1.0, half_open_requests=2)
    now = 10**12
    for failed in (True, False, True):
        b.record(now, failed, 0.01)
    assert b.state() == CLOSED  # 3 < min_requests
    b.record(now, True, 0.01)  # 3 of 4 failed
    assert b.state() == OPEN and not b.allows(now) and not b.allows(now + 999_999_999)
    later = now + 10**9
    assert b.allows(later)
    b.acquire(later)
    assert b.state() == HALF_OPEN
    b.acquire(later)
    assert not b.allows(later)  # both probes taken
    assert b.allows(later + 10**9)  # ...unless they never report: then new probes are let through
    b.record(later, False, 0.01)
    assert b.state() == HALF_OPEN
    b.record(later, False, 0.01)
    assert b.state() == CLOSED and b.allows(later)
    b.acquire(later)  # closed: nothing to take
    assert cells[BREAKER] == CLOSED


def test_half_open_failure_reopens_and_open_ignores_outcomes() -> None:
    b, _ = breaker(min_requests=1, open_for=1.0)
    b.record(0, True, 0.0)
    assert b.state() == OPEN
    b.record(1, True, 0.0)  # already open: nothing changes
    b.acquire(10**9)
    b.record(10**9, True, 0.0)
    assert b.state() == OPEN and not b.allows(10**9 + 1)


def test_breaker_opens_on_slow_calls_and_window_forgets() -> None:
    b, _ = breaker(slow_call=0.1, slow_ratio=0.5, min_requests=4, window=1.0)
    for _ in range(3):
        b.record(0, False, 0.5)
    b.record(2 * 10**9, False, 0.5)  # the first three are out of the window
    assert b.state() == CLOSED
    for _ in range(3):
        b.record(2 * 10**9, False, 0.5)
    assert b.state() == OPEN
    window = Window(1.0)
    window.add(0, True, False)
    window.add(10**8 * 3, False, False)
    assert sum(window.total) == 2 and sum(window.failed) == 1


def test_retry_budget_caps_retries_at_the_ratio_plus_minimum() -> None:
    budget = RetryBudget(0.2, 0.0)
    granted = 0
    for _ in range(1000):
        budget.deposit()
        granted += budget.withdraw(1.0)  # every request fails and asks for a retry
    assert 190 <= granted <= 200
    minimum = RetryBudget(0.0, 5.0)
    assert sum(minimum.withdraw(100.0) for _ in range(10)) == 5  # the reserve at start
    assert sum(minimum.withdraw(101.0) for _ in range(10)) == 5  # one second later: 5 more


def test_consecutive_failures_eject_with_growing_backoff_and_the_target_returns() -> None:
    up = upstream(urls(3), outlier_detection={"consecutive_failures": 3, "base_ejection": "200ms",
                                              "max_ejection": "300ms"})
    a = up.members[0]
    for _ in range(2):
        up.outcome(a, 502, 0.001)
    up.outcome(a, 200, 0.001)  # a success resets the count
    for _ in range(2):
        up.outcome(a, 0, 0.001)
    assert a.available(time.monotonic_ns())
    up.outcome(a, 503, 0.001)
    now = time.monotonic_ns()
    assert not a.available(now)
    first = a.cells[a.base + EJECTED_UNTIL] - now
    assert 0.15e9 < first <= 0.2e9
    assert all(up.choose(None, []) is not a for _ in range(20))
    assert a.available(now + int(0.25e9))  # back by itself
    time.sleep(0.21)
    for _ in range(3):
        up.outcome(a, 0, 0.001)
    second = a.cells[a.base + EJECTED_UNTIL] - time.monotonic_ns()
    assert 0.25e9 < second <= 0.3e9  # 2 x 200ms, capped at 300ms
    # max_ejected 0.5 of 3 targets: one out at a time, so b's failures do not take it out too
    b = up.members[1]
    for _ in range(5):
        up.outcome(b, 0, 0.001)
    assert b.available(time.monotonic_ns())


def test_slow_start_ramps_the_weight_after_return() -> None:
    up = upstream(urls(2), slow_start="10s")
    a = up.members[0]
    assert a.factor() == 1.0  # never ejected
    a.eject(time.monotonic_ns() - int(2e9))  # ejected 2 s ago for 5 s: returns in 3 s
    assert a.factor() == 1.0  # still out (returned_at in the future)
    a.cells[a.base + 4] = time.monotonic_ns() - int(5e9)  # RETURNED_AT: came back 5 s ago
    assert 0.45 < a.factor() < 0.55
    assert upstream(urls(2)).members[0].factor() == 1.0


def test_backup_group_only_while_no_primary_is_available() -> None:
    up = upstream(urls(2), backup=urls(1, 9100))
    assert all(not up.choose(None, []).backup for _ in range(10))
    for member in up.primary:
        up.table.cells[member.base + HEALTH] = 1  # the active checker took them out
    chosen = up.choose(None, [])
    assert chosen.backup and chosen.pool.target.port == 9100
    with pytest.raises(NoTarget):
        up.choose(None, [chosen])
    up.table.cells[up.primary[0].base + HEALTH] = 0
    assert up.choose(None, []) is up.primary[0]


def test_retries_go_to_another_target_and_upstream_breaker_fails_fast() -> None:
    up = upstream(urls(2), circuit_breaker={"min_requests": 2, "error_ratio": 1.0, "open_for": "1s"})
    first = up.choose(None, [])
    second = up.choose(None, [first])
    assert second is not first
    up.note_retry(first)
    assert up.table.cells[first.retries_cell] == 1
    up.outcome(first, 0, 0.01)
    up.outcome(second, 0, 0.01)
    with pytest.raises(BreakerOpen) as caught:
        up.choose(None, [])
    assert caught.value.status == 503 and caught.value.code == "circuit_open"


def test_a_target_whose_breaker_is_open_is_failed_over() -> None:
    up = upstream(urls(2), circuit_breaker={"min_requests": 1, "error_ratio": 1.0})
    a, b = up.members
    a.breaker.trip(time.monotonic_ns())  # type: ignore[union-attr]
    assert all(up.choose(None, []) is b for _ in range(10))


def test_plain_pick_and_round_robin_pick() -> None:
    assert upstream(urls(1)).pick() is upstream(urls(1)).pools[0] or True
    up = upstream(urls(2))
    assert [up.pick().target.port for _ in range(3)] == [9001, 9002, 9001]


# -- the shared table ------------------------------------------------------------------------------


def test_table_directory_rows_and_sizes() -> None:
    specs = [spec({"targets": urls(2), "backup": urls(1, 9100)}), spec({"targets": urls(1)}, "other")]
    table = Table(bytearray(segment_size(7, 2)), 2)
    assert table.capacity >= 256 and table.rows == 6
    assert table.ensure(config_keys(specs)) == 0
    assert table.ensure(config_keys(specs)) == 0  # idempotent
    assert table.find(key_of("api", "http://127.0.0.1:9100")) >= 0
    assert table.find(key_of("nope")) == -1
    again = Table(table.buffer, 2)  # a worker attaching to a laid-out segment
    assert again.capacity == table.capacity
    assert again.claim_row(1) == 1
    table.cells[8 + 1] = os.getpid() + 10**7  # a dead owner: the row is free again
    assert Table(table.buffer, 2).claim_row(1) == 1
    full = Table(bytearray(segment_size(0, 1)), 1)
    assert full.ensure(range(1, 300)) == 299 - full.capacity


class FakeConfig:
    def __init__(self, specs: list[UpstreamSpec], workers: int) -> None:
        self.specs = specs
        self.server = type("S", (), {"workers": workers})()

    def all_upstreams(self) -> dict[str, UpstreamSpec]:
        return {s.name: s for s in self.specs}


def test_host_snapshot_and_metrics_read_the_shared_records() -> None:
    specs = [spec({"targets": urls(2), "circuit_breaker": True, "health_check": {"path": "/h"}})]
    config = FakeConfig(specs, 1)
    segment = bytearray(segment_sizes(config)["upstreams"])
    host = UpstreamsHost()
    host.upstreams = specs
    host.table = Table(segment, 1)
    host.table.ensure(config_keys(specs))
    view_of_worker = Table(segment, 1)
    view_of_worker.claim_row(0)
    worker = Upstream(specs[0], view_of_worker)
    member = worker.choose(None, [])
    worker.outcome(member, 200, 0.004)
    other = worker.members[1] if member is worker.members[0] else worker.members[0]
    other.eject(time.monotonic_ns())
    member.begin(time.monotonic_ns())
    view = host.snapshot()["api"]
    assert view["balancer"] == "p2c_ewma" and view["breaker"] == "closed"
    by_url = {t["url"]: t for t in view["targets"]}
    mine, theirs = by_url[member.pool.target.url], by_url[other.pool.target.url]
    assert mine["healthy"] and mine["outstanding"] == 1 and mine["latency_ewma_ms"] == 4.0
    assert mine["active_check"] == "healthy" and mine["breaker"] == "closed"
    assert not theirs["healthy"] and theirs["ejected"] and theirs["ejections"] == 1
    metrics = {m.name: {s.labels["target"]: s.value for s in m.samples if not s.name.endswith("_created")}
               for m in host.collect()}
    assert metrics["gateway_upstream_target_healthy"] == {mine["url"]: 1, theirs["url"]: 0}
    assert metrics["gateway_upstream_breaker_open"] == {mine["url"]: 0, theirs["url"]: 0}
    member.breaker.trip(time.monotonic_ns())  # type: ignore[union-attr]
    assert host.snapshot()["api"]["targets"][worker.members.index(member)]["breaker"] == "open"
    host.table.cells[member.base + BREAKER] = OPEN
    host.table.cells[member.base + 6] = 0  # BREAKER_UNTIL passed: half-opens at the next request
    assert host.snapshot()["api"]["targets"][worker.members.index(member)]["breaker"] == "half_open"
    host.close()
    assert host.snapshot() == {} and next(iter(host.collect())).samples == []


# -- active health checks ---------------------------------------------------------------------------


def checked(path: str = "/h", **options: Any) -> UpstreamSpec:
    return spec({"targets": urls(2), "health_check": {"path": path, **options}})


def test_checker_crosses_thresholds_into_the_shared_record() -> None:
    api = checked(healthy_threshold=2, unhealthy_threshold=2)
    table = Table.private([api])
    checker = Checker("api", api.targets[0], api.health_check, table)  # type: ignore[arg-type]
    checker.note(False)
    assert checker.healthy
    checker.note(False)
    assert not checker.healthy and table.cells[checker.base + HEALTH] == 1
    checker.note(True)
    assert not checker.healthy
    checker.note(True)
    assert checker.healthy


@async_test
async def test_health_checks_keep_verdicts_across_a_reload_and_release_targets_on_stop() -> None:
    api = checked()
    table = Table.private([api, checked()])
    checks = HealthChecks()
    checks.start([api], table)
    first = checks.checkers[0]
    for _ in range(3):
        first.note(False)
    assert not first.healthy
    checks.start([api], table)  # a reload with the same checks: still out
    assert len(checks.checkers) == 2 and not checks.checkers[0].healthy
    assert checks.checkers[0].failures == 3
    unchecked = spec({"targets": urls(2)})
    checks.start([unchecked], table)  # the checks are gone: the target is back
    assert checks.checkers == [] and first.healthy
    checks.start([api], table)
    checks.checkers[1].note(False)
    checks.stop()
    assert checks.tasks == []


@async_test
async def test_probe_passes_on_expected_status_and_fails_otherwise() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        if b"/slow" in request:
            await asyncio.sleep(0.3)
        status = b"200" if b"GET /base/ok " in request else b"503"
        writer.write(b"HTTP/1.1 " + status + b" X\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    target = parse_upstream("api", Node(f"http://127.0.0.1:{port}/base", "t")).targets[0]
    fast = HealthCheckSpec(timeout=0.2)
    assert await probe(target, HealthCheckSpec(path="/ok"))
    assert not await probe(target, HealthCheckSpec(path="/bad"))
    assert not await probe(target, HealthCheckSpec(path="/slow", timeout=0.1))
    await asyncio.sleep(0.3)  # the slow handler ends
    server.close()
    await server.wait_closed()
    assert not await probe(target, fast)  # refused


@async_test
async def test_a_checker_loop_probes_every_interval() -> None:
    api = checked(interval="10ms", unhealthy_threshold=1)
    table = Table.private([api])
    checks = HealthChecks()
    checks.start([api], table)  # nothing listens on these ports: both fail
    await asyncio.sleep(0.2)
    assert all(not c.healthy for c in checks.checkers)
    tasks = checks.tasks
    checks.stop()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert all(table.cells[c.base + HEALTH] == 0 for c in checks.checkers)


# -- odds and ends: fallbacks, the admin endpoint, the supervisor's side -----------------------------


def test_a_long_good_spell_forgets_past_ejections() -> None:
    up = upstream(urls(3), outlier_detection={"consecutive_failures": 1, "max_ejection": "10ms"})
    a = up.members[0]
    a.eject(time.monotonic_ns() - int(1e9))  # ejected long ago
    assert a.cells[a.base + 3] == 1  # EJECTIONS
    up.outcome(a, 200, 0.001)
    assert a.cells[a.base + 3] == 0 and a.cells[a.base + EJECTED_UNTIL] == 0


def test_an_upstream_missing_from_a_full_directory_keeps_its_state_private() -> None:
    shared = Table(bytearray(segment_size(0, 1)), 1)
    shared.claim_row(0)
    up = Upstream(spec({"targets": urls(2)}), shared)
    assert up.table is not shared and all(m.base >= 0 for m in up.members)
    up.sweep(time.monotonic())
    up.close()


def test_a_worker_attaches_to_the_supervisors_segment() -> None:
    assert upstream_table({}, 2) is None
    specs = [spec({"targets": urls(2)})]
    segment = bytearray(segment_size(3, 2))
    Table(segment, 2).ensure(config_keys(specs))
    table = upstream_table({"upstreams": segment}, 2)  # type: ignore[dict-item]
    assert table is not None and table.row == 0
    up = Upstream(specs[0], table)
    assert up.table is table


class FakeSupervisor:
    metrics: Any = None

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        return True, {}


@async_test
async def test_the_admin_endpoint_serves_the_snapshot() -> None:
    admin = AdminApp(FakeSupervisor())  # type: ignore[arg-type]
    register(admin, None)  # type: ignore[arg-type]  # no upstreams host: nothing registered
    assert admin.find("/upstreams") is None
    supervisor = FakeSupervisor()
    supervisor.upstreams_host = UpstreamsHost()  # type: ignore[attr-defined]
    admin = AdminApp(supervisor)  # type: ignore[arg-type]
    register(admin, None)  # type: ignore[arg-type]
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await admin({"type": "http", "method": "GET", "path": "/upstreams", "headers": []}, None, send)  # type: ignore[arg-type]
    assert sent[0]["status"] == 200 and json.loads(sent[1]["body"]) == {"upstreams": {}}


@async_test
async def test_host_apply_lays_out_the_directory_and_says_what_did_not_fit(caplog: Any) -> None:
    specs = [spec({"targets": urls(2), "health_check": {"interval": "1h"}})]
    config = FakeConfig(specs, 1)
    host = UpstreamsHost()
    host.apply(config, None)  # type: ignore[arg-type]  # no segment (no supervisor): nothing to do
    assert host.table is None
    segment = bytearray(segment_sizes(config)["upstreams"])
    filler = Table(segment, 1)
    filler.ensure(range(1, filler.capacity))  # all but one record taken
    host.apply(config, segment)  # type: ignore[arg-type]
    assert "do not fit the shared segment" in caplog.text
    assert host.snapshot()["api"]["targets"] == []
    host.close()


def test_a_worker_that_exited_leaves_nothing_in_flight() -> None:
    specs = [spec({"targets": urls(2)})]
    segment = bytearray(segment_size(3, 1))
    Table(segment, 1).ensure(config_keys(specs))
    table = Table(segment, 1)
    table.claim_row(0)
    up = Upstream(specs[0], table)
    member = up.choose(None, [])
    assert member.outstanding() == 1
    worker_exited({}, os.getpid(), None)  # no segment: nothing to do
    worker_exited({"upstreams": segment}, os.getpid() + 1, None)  # type: ignore[dict-item]  # not its row
    assert member.outstanding() == 1
    worker_exited({"upstreams": segment}, os.getpid(), None)  # type: ignore[dict-item]
    assert member.outstanding() == 0 and table.cells[8] == 0
