"""The connection guards' host-wide tables: open connections per client and bans (pure-Python twin).

The compiled build (``guards_c.pyx``) keeps both tables in the supervisor's shared segment ``guards`` and
updates them with atomic instructions, so every worker of a host counts and bans the same clients. This
twin has no atomic instructions, so it keeps **connection counts per process** (a private table: with W
workers a host admits up to W times a cap) while its bans live in the shared segment like the compiled
ones (a lost update there costs at most one offence or one ban level, never a leaked count).

Layout of the segment, in 8-byte words unless said otherwise (``slots`` S and ``lanes`` L fixed at start)::

    header   8 words   [0, K0, K1, EPOCH, TOTAL, 0, 0, 0]   K0/K1: the hash secret, set by the first
                                                             user; EPOCH: +1 per ban; TOTAL: open
                                                             connections counted on the host
    owners   L words   pid of the worker process writing each lane (0: free)
    counts   S words   per client: tag (39 bits) << 24 | open connections (24 bits); 0: empty
    columns  L x (S + 1) int32, padded to a word: what each lane added to each count (entry S: to
             TOTAL), so the supervisor can take back a dead worker's connections (``repair``); a worker
             killed between a count's compare-and-swap and its column write (a few instructions) leaves
             that one connection counted
    bans     S x 8 words [TAG, UNTIL, LEVEL, WINDOW, OFFENCES, SEEN, KEY (16 bytes)]

Clients are keys of 16 bytes (an IPv6 address or prefix, IPv4 as ``::ffff:a.b.c.d``) hashed with
SipHash-2-4 under a secret made on first use, so nobody outside can aim many keys at one probe window.
A key lives in one of PROBE slots from its hash. A count slot whose count falls to 0 may be taken by
another key; a ban slot is reused least recently seen first, never while its ban runs. Times are
CLOCK_MONOTONIC nanoseconds (one clock for every process of a host), passed in by the caller.
"""

from __future__ import annotations

import os

from gateway._fast.bucket_ops import siphash

PROBE = 16  # slots a key may occupy, from its hash on
HEADER = 8
K0, K1, EPOCH, TOTAL = 1, 2, 3, 4
COUNT_BITS = 24
COUNT_MASK = (1 << COUNT_BITS) - 1  # the most connections one client can hold open
TAG_MASK = (1 << 39) - 1
BAN_WORDS = 8
TAG, UNTIL, LEVEL, WINDOW, OFFENCES, SEEN, KEY = range(7)
# acquire() results below 0 (0 and up: the client's slot in the count table)
UNCOUNTED = -1  # admitted; no per-client cap to count against
TABLE_FULL = -2  # admitted uncounted: no free slot in the client's probe window
OVER_CLIENT = -3  # refused: the client is at its cap
OVER_TOTAL = -4  # refused: the host is at its cap
M64 = (1 << 64) - 1


def layout(slots: int, lanes: int) -> tuple[int, int, int, int, int]:
    """Word offsets of owners, counts, columns and bans, and the size in bytes, for S and L."""
    owners = HEADER
    counts = owners + lanes
    columns = counts + slots
    bans = columns + (lanes * (slots + 1) + 1) // 2
    size = 8 * (bans + slots * BAN_WORDS)
    return owners, counts, columns, bans, size


def segment_size(slots: int, lanes: int) -> int:
    return layout(slots, lanes)[4]


def slots_for(size: int, lanes: int) -> int:
    """The most slots a segment of ``size`` bytes holds with ``lanes`` lanes (0 if too small)."""
    slots = max(0, (size // 8 - HEADER - lanes) * 2 // (18 + lanes))
    while slots > 0 and segment_size(slots, lanes) > size:
        slots -= 1
    return slots


def siphash24(k0: int, k1: int, data: bytes) -> int:
    """SipHash-2-4 of ``data`` under the key (k0, k1): the same function the compiled build runs (one
    SipHash in pure Python, bucket_ops's, with the 2-4 rounds)."""
    return siphash(k0 & M64, k1 & M64, data, 2, 4)


class Tables:
    """Both tables over ``buffer`` (the shared segment, or private memory of the same layout)."""

    def __init__(self, buffer: bytearray | memoryview | object, slots: int, lanes: int) -> None:
        if slots < PROBE:
            raise ValueError(f"the guard tables need at least {PROBE} slots, got {slots}")
        _, _, _, bans, size = layout(slots, lanes)
        words = memoryview(buffer).cast("B").cast("q")  # type: ignore[arg-type]
        if len(words) * 8 < size:
            raise ValueError(f"the guard segment has {len(words) * 8} bytes, the layout needs {size}")
        self.slots = slots
        self.lanes = lanes
        self.lane = -1  # counts are private here: no lane to repair
        self.words = words
        self.bans_at = bans
        # connection counts per process: the header's TOTAL and the counts, in private memory
        self.private = memoryview(bytearray(8 * (HEADER + slots))).cast("q")
        self.counts_at = HEADER
        self.secret()

    # -- hashing ------------------------------------------------------------------------------------

    def secret(self) -> tuple[int, int]:
        """The host's hash secret, made by the first user (a race here costs only a moment's misses)."""
        words = self.words
        if not words[K0] or not words[K1]:
            k0, k1 = (int.from_bytes(os.urandom(8), "little", signed=True) | 1 for _ in range(2))
            if not words[K0]:
                words[K0] = k0
            if not words[K1]:
                words[K1] = k1
        return words[K0] & M64, words[K1] & M64

    def hash(self, key: bytes) -> int:
        if len(key) != 16:
            raise ValueError("a client key is 16 bytes")
        k0, k1 = self.secret()
        return siphash24(k0, k1, key)

    def epoch(self) -> int:
        """Changes whenever a ban is imposed anywhere on the host (connections re-check then)."""
        return int(self.words[EPOCH])

    # -- connections ----------------------------------------------------------------------------------

    def claim_lane(self, pid: int) -> int:
        return -1

    def repair(self, pid: int) -> int:
        """Takes back the connections a dead worker counted; nothing here (counts are per process)."""
        return 0

    def connections(self) -> int:
        return int(self.private[TOTAL])

    def acquire(self, key: bytes, per_client: int, total: int) -> int:
        """Counts a new connection of ``key`` against both caps (0: no cap); see the result codes."""
        slot = UNCOUNTED
        if per_client > 0:
            slot = self.acquire_client(self.hash(key), min(per_client, COUNT_MASK))
            if slot == OVER_CLIENT:
                return slot
        if total > 0:
            if self.private[TOTAL] >= total:
                if slot >= 0:
                    self.release_client(slot)
                return OVER_TOTAL
            self.private[TOTAL] += 1
        return slot

    def acquire_client(self, h: int, cap: int) -> int:
        counts, at, slots = self.private, self.counts_at, self.slots
        tag = ((h >> 25) & TAG_MASK) | 1
        start = h % slots
        free = -1
        for probe in range(PROBE):
            i = (start + probe) % slots
            word = counts[at + i]
            if word >> COUNT_BITS == tag:
                if word & COUNT_MASK >= cap:
                    return OVER_CLIENT
                counts[at + i] = word + 1
                return i
            if word & COUNT_MASK == 0 and free < 0:
                free = i
        if free < 0:
            return TABLE_FULL
        counts[at + free] = (tag << COUNT_BITS) | 1
        return free

    def release(self, slot: int, total: bool) -> None:
        """Ends a connection ``acquire`` counted (``slot`` as it returned; ``total``: the host cap too)."""
        if slot >= 0:
            self.release_client(slot)
        if total:
            self.private[TOTAL] -= 1

    def release_client(self, slot: int) -> None:
        self.private[self.counts_at + slot] -= 1

    def count(self, key: bytes) -> int:
        """Open connections counted for ``key`` (tests and the admin view)."""
        h = self.hash(key)
        tag = ((h >> 25) & TAG_MASK) | 1
        for probe in range(PROBE):
            word = self.private[self.counts_at + (h % self.slots + probe) % self.slots]
            if word >> COUNT_BITS == tag:
                return int(word & COUNT_MASK)
        return 0

    # -- bans -----------------------------------------------------------------------------------------

    def find_ban(self, tag: int, h: int) -> int:
        """Word offset of ``tag``'s ban record, or -1."""
        words, base, slots = self.words, self.bans_at, self.slots
        start = h % slots
        for probe in range(PROBE):
            at = base + ((start + probe) % slots) * BAN_WORDS
            if words[at + TAG] == tag:
                return at
        return -1

    def claim_ban(self, tag: int, h: int, key: bytes, now: int) -> int:
        """A record for a new key: an empty slot, else the least recently seen one not banned now."""
        words, base, slots = self.words, self.bans_at, self.slots
        start = h % slots
        victim, oldest = -1, 0
        for probe in range(PROBE):
            at = base + ((start + probe) % slots) * BAN_WORDS
            if words[at + TAG] == 0:
                victim = at
                break
            if words[at + UNTIL] <= now and (victim < 0 or words[at + SEEN] < oldest):
                victim, oldest = at, words[at + SEEN]
        if victim < 0:
            return -1
        words[victim + TAG] = tag
        words[victim + UNTIL] = 0
        words[victim + LEVEL] = 0
        words[victim + WINDOW] = now
        words[victim + OFFENCES] = 0
        words[victim + SEEN] = now
        words[victim + KEY] = int.from_bytes(key[:8], "little", signed=True)
        words[victim + KEY + 1] = int.from_bytes(key[8:], "little", signed=True)
        return victim

    def ban_tag(self, key: bytes) -> tuple[int, int]:
        h = self.hash(key)
        return (h >> 1) | 1, h

    def banned(self, key: bytes, now: int) -> int:
        """Nanoseconds left of ``key``'s ban (0: not banned)."""
        tag, h = self.ban_tag(key)
        at = self.find_ban(tag, h)
        if at < 0:
            return 0
        left = self.words[at + UNTIL] - now
        return int(left) if left > 0 else 0

    def offend(self, key: bytes, now: int, after: int, window: int, base: int, maximum: int,  # noqa: PLR0917
               forget: int) -> int:
        """Counts an offence; the ``after``-th within ``window`` ns bans the client. Returns the ban's
        length in ns (0: no ban now, -1: no slot to record it). The first ban lasts ``base``, each
        further one twice the last up to ``maximum``; ``forget`` ns after a ban ends, that is forgotten."""
        tag, h = self.ban_tag(key)
        at = self.find_ban(tag, h)
        if at < 0:
            at = self.claim_ban(tag, h, key, now)
            if at < 0:
                return -1
        words = self.words
        words[at + SEEN] = now
        until = words[at + UNTIL]
        if until > now:
            return 0  # already banned
        if now - words[at + WINDOW] >= window:
            words[at + WINDOW] = now
            words[at + OFFENCES] = 0
        offences = words[at + OFFENCES] + 1
        words[at + OFFENCES] = offences
        if offences < after:
            return 0
        words[at + OFFENCES] = 0
        level = words[at + LEVEL]
        if level > 0 and until + forget <= now:
            level = 0
        duration = ban_duration(level, base, maximum)
        words[at + UNTIL] = now + duration
        words[at + LEVEL] = level + 1
        words[EPOCH] += 1
        return duration

    def unban(self, key: bytes, now: int) -> bool:
        """Lifts ``key``'s ban (its level stays, so a repeat still bans longer); False if none ran."""
        tag, h = self.ban_tag(key)
        at = self.find_ban(tag, h)
        if at < 0:
            return False
        words = self.words
        until = words[at + UNTIL]
        words[at + OFFENCES] = 0
        if until <= now:
            return False
        words[at + UNTIL] = now
        return True

    def bans(self, now: int) -> list[tuple[bytes, int, int]]:
        """Every running ban: (key, ns left, level: 1 for a first ban)."""
        found = []
        words = self.words
        for slot in range(self.slots):
            at = self.bans_at + slot * BAN_WORDS
            if words[at + TAG] and words[at + UNTIL] > now:
                key = (words[at + KEY] & M64).to_bytes(8, "little") + (words[at + KEY + 1] & M64).to_bytes(8, "little")
                found.append((key, int(words[at + UNTIL] - now), int(words[at + LEVEL])))
        return found


def ban_duration(level: int, base: int, maximum: int) -> int:
    """``base`` doubled ``level`` times, at most ``maximum``."""
    duration = base
    for _ in range(level):
        if duration >= maximum:
            break
        duration *= 2
    return min(duration, maximum)
