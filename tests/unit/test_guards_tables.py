"""The guards' host-wide tables (gateway._fast.guards): every test runs on each implementation present.

Connection counting, caps, crash repair, ban growth, expiry and eviction, on private memory laid out as
the shared segment is. Times are passed in (nanoseconds), so nothing here sleeps.
"""

from __future__ import annotations

from types import ModuleType

import pytest

from gateway._fast import implementations
from gateway._fast.guards_py import segment_size, siphash24, slots_for

IMPLS = implementations("guards")
S = 1_000_000_000  # one second in ns
SLOTS, LANES = 64, 4


@pytest.fixture(params=sorted(IMPLS), ids=str)
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return IMPLS[request.param]


def key(n: int) -> bytes:
    """The key of IPv4 client 10.0.x.y (as gateway.guards.address makes it)."""
    return ((0xFFFF << 32) | (10 << 24) | n).to_bytes(16, "big")


def tables(impl: ModuleType, buffer: bytearray | None = None, slots: int = SLOTS) -> object:
    return impl.Tables(buffer if buffer is not None else bytearray(segment_size(slots, LANES)), slots, LANES)


def test_siphash_matches_the_reference_vectors(impl: ModuleType) -> None:
    k = bytes(range(16))
    k0, k1 = int.from_bytes(k[:8], "little"), int.from_bytes(k[8:], "little")
    assert siphash24(k0, k1, b"") == 0x726FDB47DD0E0E31  # the paper's vectors (Aumasson and Bernstein)
    assert siphash24(k0, k1, bytes(range(15))) == 0xA129CA6149BE45E5
    buffer = bytearray(segment_size(SLOTS, LANES))
    words = memoryview(buffer).cast("q")
    words[1], words[2] = k0, k1  # the secret lives in the header
    assert impl.Tables(buffer, SLOTS, LANES).hash(bytes(range(16))) == siphash24(k0, k1, bytes(range(16)))


def test_the_secret_is_made_once_and_shared_by_every_view(impl: ModuleType) -> None:
    buffer = bytearray(segment_size(SLOTS, LANES))
    first, second = tables(impl, buffer), tables(impl, buffer)
    assert first.secret() == second.secret() != (0, 0)
    assert first.hash(key(1)) == second.hash(key(1)) != first.hash(key(2))
    assert tables(impl).hash(key(1)) != first.hash(key(1))  # another host, another secret
    with pytest.raises(ValueError, match="16 bytes"):
        first.acquire(b"short", 1, 0)


def test_layout_sizes_round_trip() -> None:
    for slots in (64, 100, 16384):
        for lanes in (1, 8, 12):
            assert slots_for(segment_size(slots, lanes), lanes) == slots
    assert slots_for(100, 4) == 0


def test_too_small_a_table_or_buffer_is_refused(impl: ModuleType) -> None:
    with pytest.raises(ValueError, match="at least"):
        impl.Tables(bytearray(4096), 8, LANES)
    with pytest.raises(ValueError, match="needs"):
        impl.Tables(bytearray(64), SLOTS, LANES)


def test_per_client_cap_counts_each_client_apart(impl: ModuleType) -> None:
    t = tables(impl)
    slots = [t.acquire(key(1), 2, 0) for _ in range(3)]
    assert slots[0] >= 0 and slots[1] == slots[0] and slots[2] == impl.OVER_CLIENT
    assert t.count(key(1)) == 2
    assert t.acquire(key(2), 2, 0) >= 0  # another client has its own count
    t.release(slots[0], False)
    assert t.count(key(1)) == 1
    assert t.acquire(key(1), 2, 0) == slots[0]
    assert t.count(key(3)) == 0


def test_host_cap_counts_every_client(impl: ModuleType) -> None:
    t = tables(impl)
    assert t.acquire(key(1), 0, 2) == impl.UNCOUNTED
    assert t.acquire(key(2), 5, 2) >= 0
    assert t.connections() == 2
    assert t.acquire(key(3), 5, 2) == impl.OVER_TOTAL
    assert t.count(key(3)) == 0  # refused by the host cap: its client count was given back
    t.release(impl.UNCOUNTED, True)
    assert t.connections() == 1
    assert t.acquire(key(3), 5, 2) >= 0


def test_a_slot_whose_count_fell_to_zero_serves_another_client(impl: ModuleType) -> None:
    t = tables(impl, slots=16)  # one probe window: every client competes for the same 16 slots
    held = [t.acquire(key(n), 1, 0) for n in range(16)]
    assert sorted(held) == list(range(16))
    assert t.acquire(key(99), 1, 0) == impl.TABLE_FULL  # admitted, but uncounted
    t.release(held[3], False)
    assert t.acquire(key(99), 1, 0) == held[3]
    assert t.acquire(key(99), 1, 0) == impl.OVER_CLIENT


def test_repair_takes_back_a_dead_workers_connections() -> None:
    if "compiled" not in IMPLS:
        pytest.skip("the compiled tables are not built (the twin counts per process: nothing to repair)")
    impl = IMPLS["compiled"]
    buffer = bytearray(segment_size(SLOTS, LANES))
    dead, alive = tables(impl, buffer), tables(impl, buffer)
    assert dead.claim_lane(111) == 0 and alive.claim_lane(222) == 1
    for _ in range(2):
        dead.acquire(key(1), 3, 10)
    alive.acquire(key(1), 3, 10)
    assert alive.acquire(key(1), 3, 10) == impl.OVER_CLIENT  # shared: both workers' connections count
    assert alive.connections() == 3
    supervisor = tables(impl, buffer)
    assert supervisor.repair(111) == 2
    assert supervisor.repair(111) == 0  # its lane is free again
    assert alive.count(key(1)) == 1 and alive.connections() == 1
    assert supervisor.claim_lane(333) == 0  # the freed lane, zeroed
    assert [tables(impl, buffer).claim_lane(n) for n in (5, 6)] == [2, 3]
    assert tables(impl, buffer).claim_lane(9) == -1  # no lane left: counts still work, unrepairable


def test_the_twin_counts_per_process_and_repairs_nothing() -> None:
    impl = IMPLS["python"]
    buffer = bytearray(segment_size(SLOTS, LANES))
    one, two = tables(impl, buffer), tables(impl, buffer)
    assert one.acquire(key(1), 1, 0) >= 0 and two.acquire(key(1), 1, 0) >= 0
    assert one.claim_lane(1) == -1 and one.repair(1) == 0


def offend(t: object, client: bytes, now: int, after: int = 3) -> int:
    return int(t.offend(client, now, after, 60 * S, 10 * S, 40 * S, 300 * S))  # type: ignore[attr-defined]


def test_enough_offences_within_the_window_ban(impl: ModuleType) -> None:
    t = tables(impl)
    epoch = t.epoch()
    assert [offend(t, key(1), n * S) for n in range(3)] == [0, 0, 10 * S]
    assert t.epoch() == epoch + 1
    assert t.banned(key(1), 3 * S) == 9 * S
    assert t.banned(key(2), 3 * S) == 0
    assert offend(t, key(1), 4 * S) == 0  # offences while banned do not extend it
    assert t.banned(key(1), 12 * S) == 0  # expired by itself
    assert t.bans(3 * S) == [(key(1), 9 * S, 1)]
    assert t.bans(12 * S) == []


def test_offences_spread_wider_than_the_window_do_not_ban(impl: ModuleType) -> None:
    t = tables(impl)
    assert [offend(t, key(1), n * 40 * S) for n in range(6)] == [0] * 6  # a new window every other one


def test_repeat_bans_double_up_to_the_maximum_then_are_forgotten(impl: ModuleType) -> None:
    t = tables(impl)
    now, lengths = 0, []
    for _ in range(4):
        duration = 0
        while not duration:
            now += S
            duration = offend(t, key(1), now, after=1)
        lengths.append(duration // S)
        now += duration
    assert lengths == [10, 20, 40, 40]
    assert offend(t, key(1), now + 400 * S, after=1) == 10 * S  # 300 s after the last ban ended


def test_unban_lifts_the_ban_but_keeps_the_level(impl: ModuleType) -> None:
    t = tables(impl)
    assert offend(t, key(1), S, after=1) == 10 * S
    assert t.unban(key(1), 2 * S) is True
    assert t.banned(key(1), 2 * S) == 0
    assert t.unban(key(1), 2 * S) is False
    assert t.unban(key(7), 2 * S) is False
    assert offend(t, key(1), 3 * S, after=1) == 20 * S  # a repeat offender still escalates


def test_the_ban_table_reuses_the_least_recently_seen_client_never_a_banned_one(impl: ModuleType) -> None:
    t = tables(impl, slots=16)
    for n in range(16):
        offend(t, key(n), (n + 1) * S)  # one offence each: 16 records, client 0 seen first
    offend(t, key(100), 20 * S)  # takes client 0's record
    assert offend(t, key(0), 21 * S) == 0  # client 0 starts over (and takes client 1's record)
    for n in range(2, 16):
        assert offend(t, key(n), 22 * S, after=1) == 10 * S  # everyone else banned now
    for n in (100, 0):
        assert offend(t, key(n), 23 * S, after=1) == 10 * S
    assert offend(t, key(200), 24 * S) == -1  # every record holds a running ban: nothing to reuse
    assert len(t.bans(24 * S)) == 16
