"""gateway/_fast/bucket: GCRA, sliding and fixed windows, the keyed hash, probing and eviction, the header
written once per segment, and compare-and-swap under contention (compiled, real shared memory).

Every algorithm test runs against both implementations with an injected clock (``now`` in ns)."""

from __future__ import annotations

import mmap
import multiprocessing
import random
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from gateway._fast import bucket, bucket_ops, bucket_py, implementations

IMPLS = implementations("bucket")
SEC = 1_000_000_000
MS = 1_000_000
T0 = 1_700_000_000 * SEC  # an epoch-like start: what Table.now() returns on a real host


@pytest.fixture(params=sorted(IMPLS))
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return IMPLS[str(request.param)]


def make_table(impl: ModuleType, slots: int = 1024, buffer: Any = None) -> tuple[Any, memoryview]:
    cells = memoryview(bytearray(8 * 4)).cast("q")
    return impl.Table(buffer if buffer is not None else mmap.mmap(-1, bucket.table_bytes(slots)), cells, 1), cells


def limit(impl: ModuleType, algorithm: int, count: int, period: int = SEC, *, burst: int | None = None,
          seed: int = 7, table: Any = None) -> Any:
    table = table if table is not None else make_table(impl)[0]
    return impl.Limit(table, algorithm, count, period, burst=burst or count, seed=seed)


def takes(lim: Any, key: bytes, now: int, n: int) -> list[int]:
    return [lim.take(key, now) for _ in range(n)]


A, R = bucket.ADMITTED, bucket.REJECTED


# --- GCRA ------------------------------------------------------------------------------------------------


def test_gcra_burst_then_one_per_interval(impl: ModuleType) -> None:
    lim = limit(impl, bucket.GCRA, 10, burst=5)  # T = 100 ms, tolerance 500 ms
    remaining = []
    for _ in range(5):
        assert lim.take(b"k", T0) == A
        remaining.append(lim.remaining)
    assert remaining == [4, 3, 2, 1, 0]
    assert lim.reset == 500 * MS  # full again in 5 intervals
    assert lim.take(b"k", T0) == R
    assert (lim.remaining, lim.wait, lim.reset, lim.strikes) == (0, 100 * MS, 500 * MS, 1)
    assert lim.take(b"k", T0 + 100 * MS - 1) == R
    assert lim.wait == 1 and lim.strikes == 2
    assert lim.take(b"k", T0 + 100 * MS) == A
    assert lim.take(b"k", T0 + 100 * MS) == R
    assert takes(lim, b"k", T0 + 10 * SEC, 6) == [A] * 5 + [R]  # idle long enough: a full burst again


def test_gcra_admits_exactly_rate_times_time_plus_burst(impl: ModuleType) -> None:
    lim = limit(impl, bucket.GCRA, 50, burst=20)  # 50/s, T = 20 ms
    admitted = sum(lim.take(b"k", T0 + step * MS) == A for step in range(0, 10_000) for _ in range(2))
    # 10 s at 2 requests per ms: rate x time + burst, the last interval included
    assert admitted == 50 * 10 + 20 - 1


def test_gcra_rejections_do_not_push_the_next_admission(impl: ModuleType) -> None:
    lim = limit(impl, bucket.GCRA, 1, period=SEC, burst=1)
    assert lim.take(b"k", T0) == A
    assert takes(lim, b"k", T0 + 500 * MS, 100) == [R] * 100
    assert lim.take(b"k", T0 + SEC) == A  # a full second after the first, rejections not counted


# --- windows ---------------------------------------------------------------------------------------------


def test_sliding_window_weights_the_previous_window(impl: ModuleType) -> None:
    lim = limit(impl, bucket.SLIDING, 10)
    start = T0 - T0 % SEC  # the start of a window
    assert takes(lim, b"k", start + 900 * MS, 11) == [A] * 10 + [R]
    assert (lim.reset, lim.remaining) == (100 * MS, 0)
    # next window, half elapsed: the previous 10 weigh 5, so 5 more fit
    assert takes(lim, b"k", start + SEC + 500 * MS, 6) == [A] * 5 + [R]
    assert lim.wait > 0
    # a window later the 5 weigh their share of what is left of the window
    assert takes(lim, b"k", start + 2 * SEC + 800 * MS, 10) == [A] * 9 + [R]  # 5 x 0.2 = 1 weighed
    # two windows idle: nothing weighs
    assert takes(lim, b"k", start + 5 * SEC, 11) == [A] * 10 + [R]


def test_sliding_window_remaining_and_wait(impl: ModuleType) -> None:
    lim = limit(impl, bucket.SLIDING, 4)
    start = T0 - T0 % SEC
    assert lim.take(b"k", start) == A and lim.remaining == 3
    assert takes(lim, b"k", start, 3) == [A] * 3
    assert lim.take(b"k", start + 250 * MS) == R
    # full in this window: the next window, once the previous 4 weigh at most 3 (a quarter in)
    assert lim.wait == 750 * MS + 250 * MS
    assert lim.take(b"k", start + 250 * MS + lim.wait - 1) == R
    assert lim.take(b"k", start + SEC + 250 * MS) == A
    # previous 4, current 1 at 50%: weighs 2 + 1 = 3, one more fits; then wait for the weight to fall to 2
    assert lim.take(b"k", start + SEC + 500 * MS) == A
    assert lim.take(b"k", start + SEC + 500 * MS) == R
    assert lim.wait == 250 * MS  # at 75%: 4 x 0.25 + 2 + 1 = 4
    assert lim.take(b"k", start + SEC + 750 * MS) == A


def test_fixed_window_resets_at_the_boundary(impl: ModuleType) -> None:
    lim = limit(impl, bucket.FIXED, 10)
    start = T0 - T0 % SEC
    assert takes(lim, b"k", start + 999 * MS, 11) == [A] * 10 + [R]
    assert lim.wait == MS and lim.reset == MS
    assert takes(lim, b"k", start + SEC, 11) == [A] * 10 + [R]  # fixed windows allow 2x across the edge
    assert lim.remaining == 0


def test_window_rejections_do_not_count_against_the_next_window(impl: ModuleType) -> None:
    lim = limit(impl, bucket.SLIDING, 10)
    start = T0 - T0 % SEC
    assert sum(r == A for r in takes(lim, b"k", start, 1000)) == 10
    # half into the next window the previous window weighs 10 x 0.5 (not 1000 x 0.5)
    assert takes(lim, b"k", start + 1500 * MS, 6) == [A] * 5 + [R]


def test_window_ids_use_the_free_bits(impl: ModuleType) -> None:
    lim = limit(impl, bucket.SLIDING, 10_000, period=86_400 * SEC)
    assert lim.bits == 14 and lim.id_shift == 28 and lim.id_mask == (1 << 35) - 1
    assert takes(lim, b"k", T0, 3) == [A] * 3 and lim.remaining == 9997


# --- keys, refunds, sync hooks ---------------------------------------------------------------------------


def test_keys_and_limits_have_their_own_buckets(impl: ModuleType) -> None:
    table, _ = make_table(impl)
    one = limit(impl, bucket.GCRA, 1, burst=1, seed=1, table=table)
    two = limit(impl, bucket.GCRA, 1, burst=1, seed=2, table=table)
    assert one.take(b"a", T0) == A and one.take(b"a", T0) == R
    assert one.take(b"b", T0) == A  # another key
    assert two.take(b"a", T0) == A  # another limit, the same key


def test_refund_takes_back_the_last_unit(impl: ModuleType) -> None:
    start = T0 - T0 % SEC
    for algorithm in (bucket.GCRA, bucket.SLIDING, bucket.FIXED):
        lim = limit(impl, algorithm, 2, burst=2)
        assert takes(lim, b"k", start, 2) == [A, A]
        lim.refund(start)
        assert takes(lim, b"k", start, 2) == [A, R], algorithm


def test_refund_after_the_window_rolled_over(impl: ModuleType) -> None:
    """Two workers' views of one limit: a unit taken at the end of a window, given back after another
    worker's request rolled the word into the next window, comes out of the previous count."""
    table, _ = make_table(impl)
    one, other = (limit(impl, bucket.SLIDING, 2, table=table) for _ in range(2))
    start = T0 - T0 % SEC
    assert one.take(b"k", start + 999 * MS) == A
    assert other.take(b"k", start + SEC) == A  # previous 1 (weight 1.0) + current 1
    one.refund(start + SEC)
    assert takes(other, b"k", start + SEC, 2) == [A, R]  # without the refund: refused at once


def test_refund_is_a_no_op_without_a_slot_or_after_eviction(impl: ModuleType) -> None:
    table, _ = make_table(impl, slots=8)
    one, other = (limit(impl, bucket.FIXED, 1, period=3600 * SEC, table=table) for _ in range(2))
    one.refund(T0)  # nothing taken yet
    assert one.take(b"first", T0) == A
    for i in range(8):  # eight newer keys push "first" out of the only probe window
        assert other.take(b"other%d" % i, T0 + 1 + i) == A
    words = [table.slot(base) for base in table.slots()]
    one.refund(T0)  # its slot belongs to another key now
    assert [table.slot(base) for base in table.slots()] == words
    start = T0 - T0 % SEC
    one, other = (limit(impl, bucket.FIXED, 2, table=table, seed=3) for _ in range(2))
    assert one.take(b"k", start) == A
    assert other.take(b"k", start + 5 * SEC) == A  # the word moved on to a later window meanwhile
    words = [table.slot(base) for base in table.slots()]
    one.refund(start + 5 * SEC)  # its unit is in no window the word holds
    assert [table.slot(base) for base in table.slots()] == words


def test_drain_absorb_and_slot_words(impl: ModuleType) -> None:
    table, _ = make_table(impl)
    lim = limit(impl, bucket.GCRA, 10, burst=10, seed=99, table=table)
    assert takes(lim, b"k", T0, 3) == [A] * 3
    base = lim.slot
    tag, state, last_use, pending, seed, global_key, strikes, share = table.slot(base)
    assert (state, last_use, pending, seed, strikes, share) == (T0 + 3 * 100 * MS, T0, 3, 99, 0, 0)
    assert tag == table.hash(99, b"k") and global_key != 0
    assert table.pending(base) == 3
    table.settle(base, tag + 1, 3)  # another key's tag: the slot was taken over since, nothing to settle
    assert table.pending(base) == 3
    table.settle(base, tag, 3)
    assert table.pending(base) == 0
    lim.absorb(base, 4, T0)  # four units admitted by other hosts
    assert lim.take(b"k", T0) == A and lim.remaining == 2
    lim.absorb(base, 1000, T0)  # a debt past a full bucket, bounded by one more bucket and one period
    assert lim.debt_room == 2 * SEC
    assert lim.take(b"k", T0 + 100 * MS) == R
    assert lim.take(b"k", T0 + 2 * SEC) == R  # TAT is T0 + 3 s: waited out down to a full bucket
    assert lim.take(b"k", T0 + 2100 * MS) == A
    assert base in table.slots() and len(table.slots()) == table.nslots
    for algorithm in (bucket.SLIDING, bucket.FIXED):
        window = limit(impl, algorithm, 5, seed=algorithm, table=table)
        assert window.take(b"k", T0) == A
        window.absorb(window.slot, 3, T0)
        assert takes(window, b"k", T0, 2) == [A, R]
        window.absorb(window.slot, 100, T0)  # past the limit, up to what the count bits hold
        assert window.take(b"k", T0) == R
        window.absorb(window.slot, 1, T0 + 10 * SEC)  # a stale word starts a fresh window
        assert takes(window, b"k", T0 + 10 * SEC, 5) == [A] * 4 + [R]
        start = T0 - T0 % SEC
        window.absorb(window.slot, 1, start + 11 * SEC)  # the previous window rolls into "previous"
        assert window.take(b"k", start + 11 * SEC) == (R if algorithm == bucket.SLIDING else A)


def test_limits_are_checked(impl: ModuleType) -> None:
    table, _ = make_table(impl)
    with pytest.raises(ValueError, match="unknown algorithm"):
        impl.Limit(table, 9, 1, SEC, burst=1, seed=1)
    with pytest.raises(ValueError, match="at least 1"):
        impl.Limit(table, bucket.GCRA, 0, SEC, burst=1, seed=1)
    with pytest.raises(ValueError, match="window limit"):
        impl.Limit(table, bucket.FIXED, 1 << 20, SEC, burst=1, seed=1)
    assert limit(impl, bucket.GCRA, 5, burst=9).quota == 9 and limit(impl, bucket.FIXED, 5).quota == 5
    assert limit(impl, bucket.GCRA, 5, burst=10).span == 2 * SEC and limit(impl, bucket.FIXED, 5).span == SEC


# --- table: header, hash, probing, eviction ----------------------------------------------------------------


def test_header_is_written_once_and_shared(impl: ModuleType) -> None:
    buffer = mmap.mmap(-1, bucket.table_bytes(64))
    first, _ = make_table(impl, buffer=buffer)
    second, _ = make_table(impl, buffer=buffer)
    assert (first.k0, first.k1, first.clock) == (second.k0, second.k1, second.clock)
    assert first.nslots == second.nslots == 64 and first.mask == 63
    other, _ = make_table(impl)
    assert (other.k0, other.k1) != (first.k0, first.k1)  # a secret per segment
    assert first.hash(1, b"k") == second.hash(1, b"k") != other.hash(1, b"k")
    assert abs(first.now() - second.now()) < SEC  # one clock: CLOCK_MONOTONIC plus the segment's offset


def test_header_and_size_are_checked(impl: ModuleType) -> None:
    with pytest.raises(ValueError, match="at least"):
        make_table(impl, buffer=mmap.mmap(-1, bucket.table_bytes(8) - 64))
    buffer = mmap.mmap(-1, bucket.table_bytes(8))
    buffer[0:8] = (12345).to_bytes(8, "little")
    with pytest.raises(ValueError, match="different layout"):
        make_table(impl, buffer=buffer)
    buffer = mmap.mmap(-1, bucket.table_bytes(8))
    make_table(impl, buffer=buffer)
    buffer[8:16] = (16).to_bytes(8, "little")
    with pytest.raises(ValueError, match="another size"):
        make_table(impl, buffer=buffer)


def test_slot_counts() -> None:
    assert bucket.table_bytes(1) == bucket.table_bytes(8) == 64 + 8 * 64
    assert bucket.table_bytes(1000) == 64 + 1024 * 64
    assert bucket.slot_count(bucket.table_bytes(1000) // 8) == 1024
    assert bucket.slot_count(bucket.table_bytes(1000) // 8 + 100) == 1024  # the rest is not used
    assert bucket.slot_count(8) == 0


def test_compiled_hash_is_siphash_1_3() -> None:
    # the Python reference against SipHash-2-4's published vector (key 00..0f, message 00..0e)
    key0, key1 = int.from_bytes(bytes(range(8)), "little"), int.from_bytes(bytes(range(8, 16)), "little")
    assert bucket_ops.siphash(key0, key1, bytes(range(15)), 2, 4) == 0xA129CA6149BE45E5
    if "compiled" not in IMPLS:
        pytest.skip("the compiled module is not built")
    table, _ = make_table(IMPLS["compiled"])
    rng = random.Random(5)
    for length in range(40):
        data, seed = rng.randbytes(length), rng.getrandbits(64) - (1 << 63)
        expected = bucket_ops.siphash(table.k0 & (2**64 - 1), table.k1 & (2**64 - 1),
                                      (seed & (2**64 - 1)).to_bytes(8, "little") + data)
        assert table.hash(seed, data) & (2**64 - 1) == expected


def test_python_hash_is_keyed() -> None:
    assert bucket_ops.keyed_hash(1, 2, 3, b"k") == bucket_ops.keyed_hash(1, 2, 3, b"k")
    assert bucket_ops.keyed_hash(1, 2, 3, b"k") != bucket_ops.keyed_hash(1, 9, 3, b"k")
    assert bucket_ops.keyed_hash(1, 2, 3, b"k") != bucket_ops.keyed_hash(1, 2, 4, b"k")


def test_probing_fills_the_window_then_evicts_the_least_recently_used(impl: ModuleType) -> None:
    table, cells = make_table(impl, slots=8)  # one probe window spans the whole table
    lim = limit(impl, bucket.FIXED, 1, period=3600 * SEC, table=table)
    keys = [b"key-%d" % i for i in range(8)]
    for i, key in enumerate(keys):
        assert lim.take(key, T0 + i) == A
    for i, key in enumerate(keys):  # every key still tracked: refused, and now used again
        assert lim.take(key, T0 + 100 + i) == R
    assert table.evictions() == 0 and cells[1] == 0
    assert lim.take(b"newcomer", T0 + 200) == A  # evicts key-0, used least recently (at T0 + 100)
    assert table.evictions() == 1 and cells[1] == 1
    assert lim.take(keys[1], T0 + 201) == R  # still there
    assert lim.take(keys[0], T0 + 202) == A  # back with a fresh quota, evicting key-2
    assert table.evictions() == 2
    assert lim.take(keys[2], T0 + 203) == A


def test_a_key_is_found_past_the_slots_of_other_keys(impl: ModuleType) -> None:
    table, _ = make_table(impl, slots=8)
    lim = limit(impl, bucket.GCRA, 1, burst=1, table=table)
    for i in range(8):
        lim.take(b"%d" % i, T0)
    assert [lim.take(b"%d" % i, T0) for i in range(8)] == [R] * 8  # each found in its own slot
    assert len({table.slot(base)[0] for base in table.slots()}) == 8


def test_untracked_when_no_slot_can_be_claimed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only under extreme contention; the twin's compare-and-swap is made to fail to get there."""
    python = IMPLS["python"]
    lim = limit(python, bucket.GCRA, 1, burst=1)
    monkeypatch.setattr(bucket_ops, "atomic_cas", lambda *args: False)
    assert lim.take(b"k", T0) == bucket.UNTRACKED and lim.remaining == 1


def test_both_implementations_decide_alike() -> None:
    if "compiled" not in IMPLS:
        pytest.skip("the compiled module is not built")
    rng = random.Random(11)
    events = []
    now = T0
    for _ in range(3000):
        now += rng.choice((0, 0, 1, 10, 1000)) * 10_000
        events.append((rng.choice((b"a", b"b", b"c")), now))
    for algorithm in (bucket.GCRA, bucket.SLIDING, bucket.FIXED):
        results = []
        for module in (IMPLS["python"], IMPLS["compiled"]):
            lim = limit(module, algorithm, 7, period=50 * MS, burst=3)
            results.append([(lim.take(key, at), lim.remaining, lim.reset, lim.wait) for key, at in events])
        assert results[0] == results[1], algorithm


# --- contention: real shared memory, several processes, the compiled module ------------------------------


def hammer(buffer: mmap.mmap, algorithm: int, count: int, burst: int, start: Any, out: Any,  # noqa: PLR0917
           index: int) -> None:
    module = IMPLS["compiled"]
    start.wait()  # all at once: the header's first write races too
    table, _ = make_table(module, buffer=buffer)
    lim = module.Limit(table, algorithm, count, 3600 * SEC, burst=burst, seed=42)
    now = T0 - T0 % (3600 * SEC)
    admitted = 0
    for _ in range(20_000):
        admitted += lim.take(b"hot", now) == bucket.ADMITTED
        lim.take(b"cold-%d" % (admitted % 64), now)  # other keys claimed and probed meanwhile
    out[index] = admitted


@pytest.fixture
def shared_buffer() -> Iterator[mmap.mmap]:
    buffer = mmap.mmap(-1, bucket.table_bytes(256))  # MAP_SHARED: forked children see the same words
    yield buffer
    buffer.close()


@pytest.mark.skipif("compiled" not in IMPLS, reason="the compiled module is not built")
@pytest.mark.parametrize(("algorithm", "count", "burst"), [
    (bucket.GCRA, 1, 30_000),  # one an hour, a burst of 30,000: exactly the burst is admitted
    (bucket.SLIDING, 30_000, 1),
    (bucket.FIXED, 30_000, 1),
])
def test_processes_hammering_one_key_admit_exactly_the_limit(shared_buffer: mmap.mmap, algorithm: int,
                                                              count: int, burst: int) -> None:
    context = multiprocessing.get_context("fork")
    out = context.Array("q", 4, lock=False)
    start = context.Barrier(4)
    procs = [context.Process(target=hammer, args=(shared_buffer, algorithm, count, burst, start, out, i))
             for i in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    assert sum(out) == 30_000  # 80,000 attempts, at most 20,000 from each process: they shared it


def test_module_constants_match_the_twin() -> None:
    assert bucket.GCRA == bucket_py.GCRA and bucket.PROBE == 8 and bucket.MAX_COUNT_BITS == 20
    assert (bucket.IMPLEMENTATION == "compiled") == bucket.SHARED_SAFE


def test_share_counts_unsettled_units_once_per_host(impl: ModuleType) -> None:
    """SHARE = 4: each unit not yet settled counts four times in the next decisions (the unit decided
    counts once), so a host takes about a quarter of what the bucket holds until the sync loop settles;
    the stored state holds only the real units."""
    table, _ = make_table(impl)
    gcra = limit(impl, bucket.GCRA, 10, burst=20, seed=5, table=table)
    assert gcra.take(b"k", T0) == A  # claims the slot
    base = gcra.slot
    table.set_share(base, 4)
    # n unsettled units count 4n, the next one once: 4 x 4 + 1 = 17 of 20 admitted, 4 x 5 + 1 not
    assert takes(gcra, b"k", T0, 5) == [A, A, A, A, R]
    assert gcra.remaining == 0 and gcra.wait > 0
    tag, state = table.slot(base)[:2]
    assert state == T0 + 5 * 100 * MS  # five real units in the TAT, no weight stored
    table.settle(base, tag, table.pending(base))  # the tick merged: the estimate is gone
    assert gcra.take(b"k", T0) == A and gcra.remaining == 14
    table.set_share(base, 1)  # alone again: plain GCRA
    assert takes(gcra, b"k", T0, 14) == [A] * 14
    assert gcra.take(b"k", T0) == R
    table.set_share(base, 10**9)
    assert table.slot(base)[7] == bucket.MAX_SHARE
    for algorithm in (bucket.SLIDING, bucket.FIXED):
        window = limit(impl, algorithm, 8, seed=10 + algorithm, table=table)
        assert window.take(b"w", T0) == A
        wbase = window.slot
        table.settle(wbase, table.slot(wbase)[0], 1)
        table.set_share(wbase, 2)
        # settled 1, n unsettled counting 2n, the next once: 1 + 2 x 3 + 1 = 8 admitted, 1 + 2 x 4 + 1 not
        assert takes(window, b"w", T0, 5) == [A, A, A, A, R]
        table.settle(wbase, table.slot(wbase)[0], 4)
        table.set_share(wbase, 0)
        assert takes(window, b"w", T0, 4) == [A, A, A, R]  # 5 + 3 = 8
    one = limit(impl, bucket.FIXED, 1, seed=30, table=table)  # a limit of 1: still within reach when shared
    assert one.take(b"o", T0) == A
    table.settle(one.slot, table.slot(one.slot)[0], 1)
    table.set_share(one.slot, 8)
    assert one.take(b"o", T0 + SEC) == A


def test_a_claim_resets_share(impl: ModuleType) -> None:
    table, _ = make_table(impl, slots=8)
    lim = limit(impl, bucket.GCRA, 10, burst=10, seed=1, table=table)
    for i in range(8):
        assert lim.take(b"k%d" % i, T0 + i) == A
        table.set_share(lim.slot, 3)
    assert lim.take(b"new", T0 + 100) == A  # takes over the least recently used slot
    assert table.slot(lim.slot)[7] == 0
