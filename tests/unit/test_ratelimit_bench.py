"""The one-host accuracy bench's arithmetic: its reference limiter decides as the gateway's buckets do, its
schedules offer what they say, and its windows count what they should (no gateway started here)."""

from __future__ import annotations

import mmap
import random
from pathlib import Path

from bench import ratelimit_accuracy as accuracy
from gateway._fast import bucket, bucket_py
from gateway.loader import load

SEC = 1_000_000_000


def bucket_decisions(algorithm: int, times: list[int], offset: int, *, limit: int, burst: int,
                     period: int) -> list[bool]:
    table = bucket_py.Table(mmap.mmap(-1, bucket.table_bytes(64)), memoryview(bytearray(64)).cast("q"), 0)
    lim = bucket_py.Limit(table, algorithm, limit, period, burst=burst, seed=1)
    return [lim.take(b"hot", at + offset) == bucket.ADMITTED for at in times]


def test_the_reference_decides_like_the_buckets() -> None:
    rng = random.Random(3)
    times = sorted(rng.randrange(0, 5 * SEC) for _ in range(2000))
    offset = 1_700_000_000 * SEC + 123_456_789
    assert accuracy.reference(times, "gcra", 100, 20, offset) == \
        bucket_decisions(bucket.GCRA, times, offset, limit=100, burst=20, period=SEC)
    assert accuracy.reference(times, "sliding_window", 100, 1, offset) == \
        bucket_decisions(bucket.SLIDING, times, offset, limit=100, burst=1, period=SEC)
    assert accuracy.reference(times, "quota", 100, 150, offset) == \
        bucket_decisions(bucket.GCRA, times, offset, limit=1, burst=150, period=3600 * SEC)


def test_schedules_and_windows() -> None:
    constant = accuracy.schedule("hot", 50.0, 2.0, "constant", ["c1", "c2"])
    hot = [at for at, sample in constant.due if sample.key == "hot"]
    assert len(hot) == 100 and hot[1] - hot[0] == 0.02
    assert sum(1 for _, sample in constant.due if sample.key != "hot") == 4  # two cold keys, 1/s each
    bursty = accuracy.schedule("hot", 50.0, 2.0, "bursty", [])
    assert len(bursty.due) == 100 and len({at for at, _ in bursty.due}) == 20  # 5 every 100 ms
    assert accuracy.worst_window([]) == 0
    assert accuracy.worst_window([0.0, 0.5, 0.99, 1.0, 1.2, 5.0]) == 4


def test_analysis_of_a_run() -> None:
    samples = [accuracy.Sample("hot", i * SEC // 10, 200 if i < 12 else 429) for i in range(20)]
    figures = accuracy.analyse(samples, "gcra", 5, 10, 0, multiple=3.0)
    assert figures["offered"] == 20 and figures["admitted"] == 12
    assert figures["reference"] == 19  # a burst of 10, then 5 a second
    assert figures["error_pct"] < 0 and figures["false_reject_pct"] is None
    assert accuracy.analyse(samples, "quota", 5, 12, 0, multiple=0.5)["false_reject_pct"] == 0.0
    assert "| gcra | constant | 3.0x |" in accuracy.markdown({
        "workers": 2, "limit": 5, "burst": 10, "seconds": 2.0, "cold_keys": 0,
        "runs": [{"algorithm": "gcra", "pattern": "constant", "load": 3.0, **figures,
                  "cold_false_rejects": 0, "cold_offered": 0}]})


def test_the_bench_configs_load(tmp_path: Path) -> None:
    for redis in (None, {"sync_interval": "10ms", "on_store_error": "closed"}):
        path = tmp_path / "gateway.yaml"
        path.write_text(accuracy.gateway_config(8000, 100, 20, 600, redis=redis))
        config = load({}, {"config": str(path)})
        names = {route.name for route in config.routes}
        assert names == ({"gcra", "sliding_window", "quota"} if redis is None
                         else {"gcra", "sliding_window", "quota", "gcra_sync", "sliding_window_sync"})
    assert config.ratelimit is not None and config.ratelimit.redis.on_store_error == "closed"
    assert config.ratelimit.redis.sync_interval == 0.01
    modes = {spec.limits[0].mode for spec in config.ratelimit.policies.values()}
    assert modes == {"async", "sync"}


def test_the_runs_of_a_fleet() -> None:
    one_host = accuracy.runs(accuracy.ALGORITHMS)
    assert len(one_host) == 14 and ("quota", "constant", 3.0) in one_host
    assert ("quota", "bursty", 3.0) not in one_host and ("quota", "constant", 0.9) not in one_host
    fleet = accuracy.runs((*accuracy.ALGORITHMS, *accuracy.SYNC_ALGORITHMS))
    assert len(fleet) == 20 and ("gcra_sync", "constant", 0.9) in fleet and ("gcra_sync", "bursty", 3.0) not in fleet
    assert accuracy.base_algorithm("sliding_window_sync") == "sliding_window"


def test_the_client_spreads_each_key_round_robin() -> None:
    plan = accuracy.schedule("hot", 100.0, 0.1, "constant", [])
    plan.due.insert(1, (0.0, accuracy.Sample("cold")))
    client = accuracy.Client("/gcra/x", plan, hosts=3)
    client.tick(1.0)
    assert [sample.host for _, sample in plan.due if sample.key == "hot"] == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    assert next(sample.host for _, sample in plan.due if sample.key == "cold") == 0
    assert [len(queue) for queue in client.queues] == [5, 3, 3]  # no connection yet: all queued
    client.lost()
    assert client.done == 1 and not client.finished.is_set()


def test_outage_phases() -> None:
    # 10 a second for 9 s: admitted before 3 s and after 6 s, refused (503) between
    samples = [accuracy.Sample("hot", i * SEC // 10, 200 if i < 30 or i >= 60 else 503) for i in range(90)]
    samples[45].status = 0  # one left unanswered
    figures = accuracy.phases(samples, 0, 3 * SEC, 6 * SEC, 9 * SEC)
    assert (figures["before"], figures["during"], figures["after"], figures["first_second_after"]) == \
        (10.0, 0.0, 10.0, 10.0)
    assert figures["statuses_during"] == {"503": 29, "none": 1}
    assert accuracy.phases([], 0, SEC, SEC, SEC)["during"] == 0.0
    results = {"hosts": 4, "workers": 2, "sync_interval": "10ms", "limit": 5, "burst": 10, "seconds": 2.0,
               "cold_keys": 0, "runs": [], "outage": [{"on_store_error": "closed", **figures}]}
    text = accuracy.markdown(results)
    assert "4 hosts x 2 workers, one Redis, sync every 10ms" in text
    assert "| closed | 10.0 | 0.0 | 10.0 | 10.0 | 503: 29, none: 1 |" in text
