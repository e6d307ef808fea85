# cython: annotation_typing=False
"""Rate-limit buckets in one table of 64-bit words: GCRA, sliding-window and fixed-window counters.

The table is one host-wide shared-memory segment (``gateway.ratelimit.runtime``), made by the supervisor
before the first worker and mapped by every worker. Compiled (``bucket_c.py`` links here and is compiled
with ``bucket_c.pxd``), every word operation (``ops.*``, from ``bucket_ops``) is a GCC ``__atomic``
builtin and every read-modify-write of a bucket one compare-and-swap on an aligned 64-bit word, so
workers never take a lock a crashed worker could hold, and a host with any number of workers admits
exactly what one limit allows. The pure-Python twin's word operations are plain reads and writes, correct
within one process (one event-loop thread) only, so the gateway gives each worker a private table when
it runs on the twin: limits are then per worker.

Layout (every field a signed 64-bit word; a slot is one 64-byte cache line):

    header  0 MAGIC  1 NSLOTS  2 K0  3 K1  4 CLOCK (epoch ns - monotonic ns)  5 EVICTIONS  6-7 spare
    slot    0 TAG    1 STATE   2 LAST_USE  3 PENDING  4 LIMIT  5 GLOBAL  6 STRIKES  7 SHARE

The header is written once, by whichever worker maps the zeroed segment first: each word goes from 0 to
its value with one compare-and-swap, and every worker then reads back the value that won. So the hash
secret (K0, K1: random) and the clock offset are made once per segment, i.e. once per supervisor, and no
worker can be caught half-way: a crash leaves each word either 0 or final.

A key's slot: SipHash-1-3 keyed with (K0, K1) over the limit's seed (8 bytes) and the key's bytes; the
low bits pick the first slot, and the next PROBE - 1 slots (linear probing) are the key's probe window.
TAG holds the whole 64-bit hash (0 means empty; a hash of 0 is stored as 1): two keys are confused only
if all 64 bits agree. A slot is claimed by a compare-and-swap of TAG from 0; tags never go back to 0, so
a key is found before any empty slot of its window. When the window is full, the slot with the oldest
LAST_USE is taken over (its TAG swapped by compare-and-swap, its STATE reset to 0 the same way) and the
eviction is counted: the evicted key starts afresh if it comes back, so size the table generously.

STATE, the one word each decision swaps (time is nanoseconds on the host's CLOCK_MONOTONIC plus CLOCK,
i.e. epoch-aligned, never going backwards; 63 bits hold it until the year 2262):

    GCRA     the theoretical arrival time (TAT) in ns. T = period / rate, tolerance = burst * T. A request
             at ``now`` is admitted when max(TAT, now) + T - now <= tolerance, and TAT becomes
             max(TAT, now) + T. Tokens are never stored, so no refill timer exists; 0 is a full bucket.
    windows  ``window id << 2c | previous count << c | current count``, with c = bit length of the limit
             (at most 20) and 63 - 2c bits of window id (window number = now // period, modulo 2^(63-2c):
             with c = 20, 2^23 windows, 97 days of one-second windows, before an idle key could alias).
             Sliding: admitted when previous * (period - elapsed) / period + current + 1 <= limit; fixed:
             when current + 1 <= limit. Only admitted requests are counted, so counts never exceed the
             limit and a rejected request never counts against the next window.

The other slot words: LAST_USE (ns, for eviction), PENDING (units admitted here that a sync loop has not
yet settled: it reads them with ``Table.pending`` and takes them off with ``Table.settle`` once the other
hosts' units of the same tick are merged in), LIMIT (the limit's seed), GLOBAL (the key's hash under a
fixed, host-independent key: what a cross-host sync loop names the key by, since TAG's secret differs per
host), STRIKES (rejections since the slot was claimed: "this client keeps exceeding this limit") and SHARE.

SHARE: the hosts a key's traffic is spread over, as the sync loop last saw it (0 or 1: this host alone,
or no sync loop). Between two ticks a host knows only its own admissions, so hosts that each see a clump
of one key at once would each admit what the bucket holds. With SHARE = S > 1, each unit this host
admitted and the sync loop has not settled yet counts S times in its next decisions (the other hosts are
assumed to be admitting alike meanwhile); the unit being decided counts once, so every host may still
take a unit the bucket holds (no limit is ever out of reach, however small). A clump spread over S hosts
is then admitted up to what the bucket holds plus at most S - 1 units, not S times what it holds. The
stored state never holds the weight: the tick's merge of the others' real units replaces the estimate,
and nothing is paid back. A key only this host serves keeps SHARE 1: a client sticking to one host loses
nothing.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import gateway._fast.bucket_ops as ops

if TYPE_CHECKING:
    import mmap

MAGIC = 0x4757_524C_0001_0040  # "GWRL", layout version 1, 64-byte slots
HEADER_WORDS = 8
SLOT_WORDS = 8
PROBE = 8  # slots in a key's probe window
CLAIM_ATTEMPTS = 4  # probe rounds before a key is left untracked (only under heavy eviction churn)

H_MAGIC = 0
H_NSLOTS = 1
H_K0 = 2
H_K1 = 3
H_CLOCK = 4
H_EVICTIONS = 5

TAG = 0
STATE = 1
LAST_USE = 2
PENDING = 3
LIMIT = 4
GLOBAL = 5
STRIKES = 6
SHARE = 7
MAX_SHARE = 1024  # hosts a SHARE word may claim (bounds the weighted arithmetic)

GCRA = 0
SLIDING = 1
FIXED = 2

REJECTED = 0
ADMITTED = 1
UNTRACKED = 2  # admitted without a decision: no slot could be claimed for the key

MAX_COUNT_BITS = 20  # window limits up to 2^20 - 1 per window
# The host-independent key of GLOBAL (SipHash's own test key): the same key hashes alike on every host.
GLOBAL_K0 = 0x0706050403020100
GLOBAL_K1 = 0x0F0E0D0C0B0A0908


# --- the table ----------------------------------------------------------------------------------------


def slot_count(words: int) -> int:
    """Slots that fit ``words`` 64-bit words after the header: the largest power of two (at least PROBE)."""
    available = (words - HEADER_WORDS) // SLOT_WORDS
    if available < PROBE:
        return 0
    count = PROBE
    while count * 2 <= available:
        count *= 2
    return count


def table_bytes(slots: int) -> int:
    """Bytes of a table with ``slots`` slots (rounded up to a power of two, at least PROBE)."""
    count = PROBE
    while count < slots:
        count *= 2
    return (HEADER_WORDS + count * SLOT_WORDS) * 8


def random_word() -> int:
    """A random non-zero signed 64-bit word (0 means "not yet set" in the header)."""
    while True:
        value = int.from_bytes(os.urandom(8), "little", signed=True)
        if value != 0:
            return value


def init_word(words: memoryview, index: int, candidate: int) -> int:
    """The header word at ``index``: ``candidate`` if it was still 0, else what another worker put there."""
    ops.atomic_cas(words, index, 0, candidate)
    return ops.atomic_load(words, index)


class Table:
    """A view of the table in ``buffer`` (a writable buffer, e.g. the mmap of the shared segment).

    ``cells``/``eviction_cell``: the worker's metric cells and the cell that counts evictions (-1: none).
    """

    def __init__(self, buffer: mmap.mmap | bytearray, cells: memoryview, eviction_cell: int) -> None:
        words = memoryview(buffer).cast("q")
        self.words = words
        self.nslots = slot_count(len(words))
        if self.nslots == 0:
            raise ValueError(f"a rate-limit table needs at least {table_bytes(PROBE)} bytes")
        self.mask = self.nslots - 1
        self.cells = cells
        self.eviction_cell = eviction_cell
        if init_word(words, H_MAGIC, MAGIC) != MAGIC:
            raise ValueError("the rate-limit segment holds a different layout")
        if init_word(words, H_NSLOTS, self.nslots) != self.nslots:
            raise ValueError("the rate-limit segment was laid out for another size")
        self.k0 = init_word(words, H_K0, random_word())
        self.k1 = init_word(words, H_K1, random_word())
        self.clock = init_word(words, H_CLOCK, time.time_ns() - time.monotonic_ns())

    def now(self) -> int:
        """The table's time: CLOCK_MONOTONIC in ns, shifted to the epoch by the segment's own offset, so
        every worker of the host reads the same clock."""
        return ops.monotonic_ns() + self.clock

    def hash(self, seed: int, key: bytes) -> int:
        """The keyed hash of ``key`` (bytes) for the limit with ``seed``."""
        return ops.keyed_hash(self.k0, self.k1, seed, key)

    def find(self, h: int, seed: int, key: bytes, now: int) -> int:
        """The first word of the slot for hash ``h`` (claimed or taken over if needed), or -1."""
        words = self.words
        tag = h if h != 0 else 1
        start = h & self.mask
        for _attempt in range(CLAIM_ATTEMPTS):
            victim = -1
            victim_tag = 0
            oldest = 0
            for i in range(PROBE):
                base = HEADER_WORDS + ((start + i) & self.mask) * SLOT_WORDS
                found = ops.atomic_load(words, base + TAG)
                if found == tag:
                    return base
                if found == 0:
                    if ops.atomic_cas(words, base + TAG, 0, tag):
                        self.claimed(base, seed, key, now)
                        return base
                    if ops.atomic_load(words, base + TAG) == tag:
                        return base
                    continue  # just claimed by another key: not a fair victim (its LAST_USE is not set yet)
                used = ops.atomic_load(words, base + LAST_USE)
                if victim < 0 or used < oldest:
                    victim = base
                    victim_tag = found
                    oldest = used
            if victim >= 0:
                state = ops.atomic_load(words, victim + STATE)
                if ops.atomic_cas(words, victim + TAG, victim_tag, tag):
                    # A fresh bucket, unless a request of the old key swapped STATE meanwhile: then its
                    # (stricter) state stays, which can only reject, never over-admit.
                    ops.atomic_cas(words, victim + STATE, state, 0)
                    self.claimed(victim, seed, key, now)
                    ops.atomic_add(words, H_EVICTIONS, 1)
                    if self.eviction_cell >= 0:
                        self.cells[self.eviction_cell] += 1
                    return victim
        return -1

    def claimed(self, base: int, seed: int, key: bytes, now: int) -> None:
        words = self.words
        ops.atomic_store(words, base + LAST_USE, now)
        ops.atomic_store(words, base + PENDING, 0)
        ops.atomic_store(words, base + LIMIT, seed)
        ops.atomic_store(words, base + GLOBAL, ops.keyed_hash(GLOBAL_K0, GLOBAL_K1, seed, key))
        ops.atomic_store(words, base + STRIKES, 0)
        ops.atomic_store(words, base + SHARE, 0)

    def pending(self, base: int) -> int:
        """Units admitted in slot ``base`` and not yet settled (for a sync loop; may be below 0 after refunds)."""
        return ops.atomic_load(self.words, base + PENDING)

    def settle(self, base: int, tag: int, units: int) -> None:
        """Takes ``units`` (read by ``pending``) off slot ``base``'s PENDING once the sync loop has them,
        unless the slot went to another key since (its claim set PENDING to 0)."""
        words = self.words
        if units != 0 and ops.atomic_load(words, base + TAG) == tag:
            ops.atomic_add(words, base + PENDING, -units)

    def set_share(self, base: int, share: int) -> None:
        """Slot ``base``'s SHARE (see the module docstring): 0 or 1 alone, at most MAX_SHARE."""
        ops.atomic_store(self.words, base + SHARE, min(max(share, 0), MAX_SHARE))

    def slot(self, base: int) -> tuple[int, ...]:
        """Slot ``base``'s words: (tag, state, last_use, pending, limit seed, global key, strikes, share)."""
        words = self.words
        return tuple(ops.atomic_load(words, base + i) for i in range(SHARE + 1))

    def slots(self) -> range:
        """The first word of every slot (a sync loop scans these for LIMIT seeds it knows)."""
        return range(HEADER_WORDS, HEADER_WORDS + self.nslots * SLOT_WORDS, SLOT_WORDS)

    def evictions(self) -> int:
        """Slots taken over on this host since the segment was made."""
        return ops.atomic_load(self.words, H_EVICTIONS)


def count_bits(limit: int) -> int:
    """Bits of a window count for ``limit`` (a window limit must be below 2^MAX_COUNT_BITS)."""
    return int(limit).bit_length()


def low_bits(count: int) -> int:
    """A mask of the ``count`` low bits (Python integers here, even compiled: no C int overflow)."""
    return (1 << count) - 1


class Limit:
    """One configured limit: ``limit`` requests per ``period`` ns (GCRA: with ``burst``) in ``table``.

    ``take`` decides for one request and leaves the numbers a response reports in ``remaining``,
    ``reset`` (ns until the bucket is full again or the window ends), ``wait`` (ns until a rejected
    request could be admitted) and ``strikes``. ``seed`` tells this limit's keys from every other's.
    """

    def __init__(self, table: Table, algorithm: int, limit: int, period: int, *, burst: int, seed: int) -> None:
        if algorithm not in (GCRA, SLIDING, FIXED):
            raise ValueError(f"unknown algorithm {algorithm}")
        if limit < 1 or period < 1 or burst < 1:
            raise ValueError("limit, period and burst must be at least 1")
        self.table = table
        self.algorithm = algorithm
        self.limit = limit
        self.period = period
        self.burst = burst
        self.seed = seed
        self.interval = max(period // limit, 1)
        self.tolerance = burst * self.interval
        self.debt_room = self.tolerance + period  # GCRA: how far other hosts' units may push TAT past a full bucket
        # windows only: the bits of a count, and the window id in the bits above two counts
        self.bits = count_bits(limit) if algorithm != GCRA else 0
        if self.bits > MAX_COUNT_BITS:
            raise ValueError(f"a window limit must be below {low_bits(MAX_COUNT_BITS) + 1}")
        self.count_mask = low_bits(self.bits)
        self.id_shift = 2 * self.bits
        self.id_mask = low_bits(63 - self.id_shift)
        self.remaining = 0
        self.reset = 0
        self.wait = 0
        self.strikes = 0
        self.slot = -1
        self.tag = 0
        self.window = 0

    @property
    def quota(self) -> int:
        """What a response reports as the limit: the burst of a GCRA bucket, else the window's limit."""
        return self.burst if self.algorithm == GCRA else self.limit

    @property
    def span(self) -> int:
        """The window a response reports (ns): the time a GCRA bucket takes to fill, else the period."""
        return self.tolerance if self.algorithm == GCRA else self.period

    def take(self, key: bytes, now: int) -> int:
        """One request with ``key`` (bytes) at ``now`` (table ns): ADMITTED, REJECTED or UNTRACKED."""
        table = self.table
        h = ops.keyed_hash(table.k0, table.k1, self.seed, key)
        base = table.find(h, self.seed, key, now)
        if base < 0:
            self.remaining = self.quota
            self.reset = 0
            return UNTRACKED
        words = table.words
        self.slot = base
        self.tag = h if h != 0 else 1
        share = ops.atomic_load(words, base + SHARE)
        extra = 0  # the units other hosts are assumed to have admitted alike since the last tick (see SHARE)
        if share > 1:
            extra = (share - 1) * max(ops.atomic_load(words, base + PENDING), 0)
        if self.algorithm == GCRA:
            admitted = self.take_gcra(words, base + STATE, now, extra)
        else:
            admitted = self.take_window(words, base + STATE, now, extra)
        ops.atomic_store(words, base + LAST_USE, now)
        if admitted:
            ops.atomic_add(words, base + PENDING, 1)
            return ADMITTED
        self.strikes = ops.atomic_add(words, base + STRIKES, 1)
        return REJECTED

    def take_gcra(self, words: memoryview, index: int, now: int, extra: int) -> bool:
        interval = self.interval
        tolerance = self.tolerance
        weighted = extra * interval
        while True:
            tat = ops.atomic_load(words, index)
            after = (tat if tat > now else now) + interval
            if after + weighted - now > tolerance:
                self.remaining = 0
                self.reset = tat - now
                self.wait = after + weighted - now - tolerance
                return False
            if ops.atomic_cas(words, index, tat, after):
                self.remaining = max(tolerance - (after + weighted - now), 0) // interval
                self.reset = after - now
                return True

    def take_window(self, words: memoryview, index: int, now: int, extra: int) -> bool:
        period = self.period
        limit = self.limit
        bits = self.bits
        mask = self.count_mask
        shift = self.id_shift
        window = now // period
        elapsed = now - window * period
        current_id = window & self.id_mask
        previous_id = (window - 1) & self.id_mask
        sliding = self.algorithm == SLIDING
        weight = (period - elapsed) / period if sliding else 0.0
        self.window = current_id
        while True:
            word = ops.atomic_load(words, index)
            stored_id = word >> shift
            if stored_id == current_id:
                previous = (word >> bits) & mask
                current = word & mask
            elif stored_id == previous_id and sliding:
                previous = word & mask
                current = 0
            else:
                previous = 0
                current = 0
            estimate = previous * weight + current + 1 + extra
            if estimate > limit:
                self.remaining = 0
                self.reset = period - elapsed
                self.wait = self.window_wait(previous, current, elapsed) if sliding else period - elapsed
                return False
            if ops.atomic_cas(words, index, word, (current_id << shift) | (previous << bits) | (current + 1)):
                self.remaining = int(limit - estimate)
                self.reset = period - elapsed
                return True

    def window_wait(self, previous: int, current: int, elapsed: int) -> int:
        """ns until a sliding window would admit one more request (no other request arriving meanwhile)."""
        period = self.period
        limit = self.limit
        if current + 1 <= limit and previous > 0:
            # later in this window, once the previous window's weight has fallen far enough
            needed = period - (limit - current - 1) * period / previous
            return max(int(-(-needed // 1.0)) - elapsed, 1)
        needed = period - (limit - 1) * period / current if current > 0 else 0.0
        return period - elapsed + max(int(-(-needed // 1.0)), 0)

    def refund(self, now: int) -> None:
        """Takes back the unit the last ``take`` admitted (another limit of the same request refused it)."""
        if self.slot < 0:
            return
        words = self.table.words
        base = self.slot
        if ops.atomic_load(words, base + TAG) != self.tag:
            return  # the slot went to another key since
        index = base + STATE
        while True:
            word = ops.atomic_load(words, index)
            if self.algorithm == GCRA:
                undone = word - self.interval
            else:
                undone = self.window_refund(word)
                if undone < 0:
                    return
            if ops.atomic_cas(words, index, word, undone):
                break
        ops.atomic_add(words, base + PENDING, -1)

    def window_refund(self, word: int) -> int:
        """The window word without the unit taken in window ``self.window``, or -1 if it is not there."""
        bits = self.bits
        mask = self.count_mask
        stored_id = word >> self.id_shift
        if stored_id == self.window and word & mask > 0:
            return word - 1
        if stored_id == ((self.window + 1) & self.id_mask) and (word >> bits) & mask > 0:
            unit = 1  # a 64-bit 1 compiled (see the .pxd), so the shift cannot overflow
            return word - (unit << bits)  # the window rolled over since: the unit is in the previous count
        return -1

    def absorb(self, base: int, units: int, now: int) -> None:
        """Counts ``units`` consumed elsewhere (other hosts) into slot ``base``, without a decision: the
        merge step of a cross-host sync loop (GCRA: TAT moves ``units`` intervals; windows: the current
        count grows, up to what its bits hold).

        GCRA's TAT may run past a full bucket (``now + tolerance``): what other hosts admitted while this
        one was admitting too is a debt the host waits out, so the fleet converges on the rate instead of
        each host admitting its own refill again (a cap at a full bucket dropped exactly those units and
        let H hosts admit about H times the rate under overload). The debt is bounded by ``debt_room``
        (one more full bucket and one period), so a miscount can delay a key, never bar it for long."""
        words = self.table.words
        index = base + STATE
        interval = self.interval
        room = self.tolerance + self.debt_room
        if self.algorithm == GCRA and units > room // interval + 1:
            units = room // interval + 1  # (so units x interval cannot overflow 63 bits)
        while True:
            word = ops.atomic_load(words, index)
            if self.algorithm == GCRA:
                merged = (word if word > now else now) + units * interval
                merged = min(merged, now + room)
            else:
                merged = self.window_absorb(word, units, now)
            if ops.atomic_cas(words, index, word, merged):
                return

    def window_absorb(self, word: int, units: int, now: int) -> int:
        bits = self.bits
        mask = self.count_mask
        window = now // self.period
        current_id = window & self.id_mask
        stored_id = word >> self.id_shift
        if stored_id == current_id:
            previous = (word >> bits) & mask
            current = word & mask
        elif stored_id == ((window - 1) & self.id_mask) and self.algorithm == SLIDING:
            previous = word & mask
            current = 0
        else:
            previous = 0
            current = 0
        # up to what the count's bits hold, past the limit: the sliding window's next estimate must see what
        # the fleet really admitted in this window (a race of hosts at its start), not the limit
        current = min(current + units, mask)
        return (current_id << self.id_shift) | (previous << bits) | current
