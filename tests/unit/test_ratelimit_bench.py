"""The one-host accuracy bench's arithmetic: its reference limiter decides as the gateway's buckets do, its
schedules offer what they say, and its windows count what they should (no gateway started here)."""

from __future__ import annotations

import mmap
import random

from bench import ratelimit_accuracy as accuracy
from gateway._fast import bucket, bucket_py

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
