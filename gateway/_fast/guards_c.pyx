# cython: language_level=3
"""The connection guards' host-wide tables, compiled: every worker counts and bans in the shared segment.

Same API, layout and algorithm as the pure-Python twin ``guards_py.py`` (read it for the layout), with
what the twin cannot do: connection counts live in the shared segment and change only by atomic
instructions (a compare-and-swap on a client's one-word count, an atomic add on the host total), so a
cap holds exactly across workers and no lock exists that a crashed worker could leave held. Each worker
also adds what it counted to its own lane's column; when a worker exits, the supervisor takes its
column back out of the counts (``repair``), so a crash leaks nothing.
"""

import os

from libc.stdint cimport int32_t, int64_t
from libc.string cimport memcpy

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    _Static_assert(__atomic_always_lock_free(8, 0), "64-bit atomics must be lock-free");
    static inline int64_t gw_load(int64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void gw_store(int64_t *p, int64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    static inline int64_t gw_add(int64_t *p, int64_t d) { return __atomic_add_fetch(p, d, __ATOMIC_ACQ_REL); }
    static inline int gw_cas(int64_t *p, int64_t expected, int64_t desired) {
        return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    }
    static inline uint64_t gw_le64(const unsigned char *p) {
        uint64_t v = 0;
        for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
        return v;
    }
    #define GW_ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
    #define GW_SIPROUND do { \
        v0 += v1; v1 = GW_ROTL(v1, 13); v1 ^= v0; v0 = GW_ROTL(v0, 32); \
        v2 += v3; v3 = GW_ROTL(v3, 16); v3 ^= v2; \
        v0 += v3; v3 = GW_ROTL(v3, 21); v3 ^= v0; \
        v2 += v1; v1 = GW_ROTL(v1, 17); v1 ^= v2; v2 = GW_ROTL(v2, 32); } while (0)
    /* SipHash-2-4 of exactly 16 bytes (two blocks, then the length block) */
    static inline uint64_t gw_siphash16(uint64_t k0, uint64_t k1, const unsigned char *in) {
        uint64_t v0 = k0 ^ 0x736f6d6570736575ULL, v1 = k1 ^ 0x646f72616e646f6dULL;
        uint64_t v2 = k0 ^ 0x6c7967656e657261ULL, v3 = k1 ^ 0x7465646279746573ULL;
        uint64_t m[3] = {gw_le64(in), gw_le64(in + 8), (uint64_t)16 << 56};
        for (int i = 0; i < 3; i++) {
            v3 ^= m[i]; GW_SIPROUND; GW_SIPROUND; v0 ^= m[i];
        }
        v2 ^= 0xff;
        GW_SIPROUND; GW_SIPROUND; GW_SIPROUND; GW_SIPROUND;
        return v0 ^ v1 ^ v2 ^ v3;
    }
    /* a client's tag in the count table (39 bits, never 0) and in the ban table (63 bits, never 0) */
    #define GW_COUNT_TAG(h) ((int64_t)((((h) >> 25) & 0x7FFFFFFFFFULL) | 1))
    #define GW_BAN_TAG(h) ((int64_t)(((h) >> 1) | 1))
    """
    int64_t gw_load(int64_t *p) noexcept nogil
    void gw_store(int64_t *p, int64_t v) noexcept nogil
    int64_t gw_add(int64_t *p, int64_t d) noexcept nogil
    bint gw_cas(int64_t *p, int64_t expected, int64_t desired) noexcept nogil
    unsigned long long gw_siphash16(unsigned long long k0, unsigned long long k1,
                                    const unsigned char *data) noexcept nogil
    int64_t GW_COUNT_TAG(unsigned long long h) noexcept nogil
    int64_t GW_BAN_TAG(unsigned long long h) noexcept nogil

cdef enum:
    PROBE = 16  # slots a key may occupy, from its hash on
    HEADER = 8
    K0 = 1
    K1 = 2
    EPOCH = 3
    TOTAL = 4
    COUNT_BITS = 24
    COUNT_MASK = 0xFFFFFF
    BAN_WORDS = 8
    TAG = 0
    UNTIL = 1
    LEVEL = 2
    WINDOW = 3
    OFFENCES = 4
    SEEN = 5
    KEY = 6
    ATTEMPTS = 8  # compare-and-swap rounds before a busy probe window counts as full

cdef inline void _check_key(bytes key) except *:
    if len(key) != 16:
        raise ValueError("a client key is 16 bytes")


UNCOUNTED = -1
TABLE_FULL = -2
OVER_CLIENT = -3
OVER_TOTAL = -4


cdef inline Py_ssize_t _half_words(Py_ssize_t lanes, Py_ssize_t slots) noexcept:
    return (lanes * (slots + 1) + 1) // 2


def layout(Py_ssize_t slots, Py_ssize_t lanes):
    """Word offsets of owners, counts, columns and bans, and the size in bytes (as the twin's)."""
    owners = HEADER
    counts = owners + lanes
    columns = counts + slots
    bans = columns + _half_words(lanes, slots)
    return owners, counts, columns, bans, 8 * (bans + slots * BAN_WORDS)


cdef class Tables:
    """Both tables over ``buffer``: the shared segment (or private memory of the same layout)."""

    def __init__(self, buffer, Py_ssize_t slots, Py_ssize_t lanes):
        if slots < PROBE:
            raise ValueError(f"the guard tables need at least {PROBE} slots, got {slots}")
        owners, counts, columns, bans, size = layout(slots, lanes)
        self.buffer = buffer
        self.view = buffer
        if self.view.shape[0] < size:
            raise ValueError(f"the guard segment has {self.view.shape[0]} bytes, the layout needs {size}")
        cdef int64_t *words = <int64_t *> &self.view[0]
        self.header = words
        self.owners = words + <Py_ssize_t> owners
        self.counts = words + <Py_ssize_t> counts
        self.columns = <int32_t *> (words + <Py_ssize_t> columns)
        self.ban_table = words + <Py_ssize_t> bans
        self.slots = slots
        self.lanes = lanes
        self.lane = -1
        self.spare = bytearray(4 * (slots + 1))
        self.own = <int32_t *> <char *> self.spare
        self.secret()

    # -- hashing ------------------------------------------------------------------------------------

    def secret(self):
        """The host's hash secret, made once by whichever process needs it first (compare-and-swap)."""
        cdef int64_t *header = self.header
        if gw_load(&header[K0]) == 0:
            gw_cas(&header[K0], 0, int.from_bytes(os.urandom(8), "little", signed=True) | 1)
        if gw_load(&header[K1]) == 0:
            gw_cas(&header[K1], 0, int.from_bytes(os.urandom(8), "little", signed=True) | 1)
        return (<unsigned long long> gw_load(&header[K0]), <unsigned long long> gw_load(&header[K1]))

    cdef unsigned long long key_hash(self, const unsigned char *key) noexcept:
        return gw_siphash16(<unsigned long long> gw_load(&self.header[K0]),
                            <unsigned long long> gw_load(&self.header[K1]), key)

    def hash(self, bytes key not None):
        _check_key(key)
        return self.key_hash(key)

    def epoch(self):
        """Changes whenever a ban is imposed anywhere on the host (connections re-check then)."""
        return gw_load(&self.header[EPOCH])

    # -- connections ----------------------------------------------------------------------------------

    def claim_lane(self, long long pid):
        """Takes a free lane for process ``pid`` (its column must be zero: freed lanes are repaired)."""
        cdef Py_ssize_t lane
        for lane in range(self.lanes):
            if gw_cas(&self.owners[lane], 0, pid):
                self.lane = lane
                self.own = self.columns + lane * (self.slots + 1)
                return lane
        return -1

    def repair(self, long long pid):
        """Takes back every connection the lanes of (dead) process ``pid`` still counted; frees them.
        Returns how many connections that was."""
        cdef Py_ssize_t lane, i, slots = self.slots
        cdef int32_t *column
        cdef int32_t n
        cdef long long released = 0
        for lane in range(self.lanes):
            if gw_load(&self.owners[lane]) != pid:
                continue
            column = self.columns + lane * (slots + 1)
            for i in range(slots):
                n = column[i]
                if n:
                    gw_add(&self.counts[i], -n)
                    column[i] = 0
                    released += n
            n = column[slots]
            if n:
                gw_add(&self.header[TOTAL], -n)
                column[slots] = 0
            gw_store(&self.owners[lane], 0)
        return released

    def connections(self):
        return gw_load(&self.header[TOTAL])

    def acquire(self, bytes key not None, long long per_client, long long total):
        """Counts a new connection of ``key`` against both caps (0: no cap); see the result codes."""
        _check_key(key)
        cdef Py_ssize_t slot = UNCOUNTED
        if per_client > 0:
            slot = self.acquire_client(self.key_hash(key), min(per_client, COUNT_MASK))
            if slot == OVER_CLIENT:
                return slot
        if total > 0:
            if gw_add(&self.header[TOTAL], 1) > total:
                gw_add(&self.header[TOTAL], -1)
                if slot >= 0:
                    self.release_client(slot)
                return OVER_TOTAL
            self.own[self.slots] += 1
        return slot

    cdef Py_ssize_t acquire_client(self, unsigned long long h, long long cap) noexcept:
        cdef int64_t tag = GW_COUNT_TAG(h)
        cdef Py_ssize_t slots = self.slots
        cdef Py_ssize_t start = <Py_ssize_t> (h % <unsigned long long> slots)
        cdef Py_ssize_t i, probe, free, attempt
        cdef int64_t word
        cdef int64_t *counts = self.counts
        for attempt in range(ATTEMPTS):
            free = -1
            for probe in range(PROBE):
                i = (start + probe) % slots
                word = gw_load(&counts[i])
                while (word >> COUNT_BITS) == tag:
                    if (word & COUNT_MASK) >= cap:
                        return OVER_CLIENT
                    if gw_cas(&counts[i], word, word + 1):
                        self.own[i] += 1
                        return i
                    word = gw_load(&counts[i])  # another worker moved it: look again
                if (word & COUNT_MASK) == 0 and free < 0:
                    free = i
            if free < 0:
                return TABLE_FULL
            word = gw_load(&counts[free])
            if (word & COUNT_MASK) == 0 and gw_cas(&counts[free], word, (tag << COUNT_BITS) | 1):
                self.own[free] += 1
                return free
        return TABLE_FULL

    def release(self, Py_ssize_t slot, bint total):
        """Ends a connection ``acquire`` counted (``slot`` as it returned; ``total``: the host cap too)."""
        if 0 <= slot < self.slots:
            self.release_client(slot)
        if total:
            self.own[self.slots] -= 1
            gw_add(&self.header[TOTAL], -1)

    cdef void release_client(self, Py_ssize_t slot) noexcept:
        self.own[slot] -= 1
        gw_add(&self.counts[slot], -1)

    def count(self, bytes key not None):
        """Open connections counted for ``key`` on the host (tests and the admin view)."""
        _check_key(key)
        cdef unsigned long long h = self.key_hash(key)
        cdef int64_t tag = GW_COUNT_TAG(h)
        cdef Py_ssize_t probe, start = <Py_ssize_t> (h % <unsigned long long> self.slots)
        cdef int64_t word
        for probe in range(PROBE):
            word = gw_load(&self.counts[(start + probe) % self.slots])
            if (word >> COUNT_BITS) == tag:
                return word & COUNT_MASK
        return 0

    # -- bans -----------------------------------------------------------------------------------------

    cdef int64_t *find_ban(self, long long tag, unsigned long long h) noexcept:
        cdef Py_ssize_t probe, start = <Py_ssize_t> (h % <unsigned long long> self.slots)
        cdef int64_t *record
        for probe in range(PROBE):
            record = self.ban_table + ((start + probe) % self.slots) * BAN_WORDS
            if gw_load(&record[TAG]) == tag:
                return record
        return NULL

    cdef int64_t *claim_ban(self, long long tag, unsigned long long h, const unsigned char *key,
                            long long now) noexcept:
        cdef Py_ssize_t probe, attempt, start = <Py_ssize_t> (h % <unsigned long long> self.slots)
        cdef int64_t *record
        cdef int64_t *victim
        cdef int64_t oldest, old_tag
        for attempt in range(ATTEMPTS):
            victim = NULL
            oldest = 0
            for probe in range(PROBE):
                record = self.ban_table + ((start + probe) % self.slots) * BAN_WORDS
                if gw_load(&record[TAG]) == 0:
                    victim = record
                    break
                if gw_load(&record[UNTIL]) <= now and (victim == NULL or gw_load(&record[SEEN]) < oldest):
                    victim = record
                    oldest = gw_load(&record[SEEN])
            if victim == NULL:
                return NULL
            old_tag = gw_load(&victim[TAG])
            if not gw_cas(&victim[TAG], old_tag, tag):
                continue  # taken meanwhile: choose again
            gw_store(&victim[UNTIL], 0)
            gw_store(&victim[LEVEL], 0)
            gw_store(&victim[WINDOW], now)
            gw_store(&victim[OFFENCES], 0)
            gw_store(&victim[SEEN], now)
            memcpy(&victim[KEY], key, 16)
            return victim
        return NULL

    def banned(self, bytes key not None, long long now):
        """Nanoseconds left of ``key``'s ban (0: not banned)."""
        _check_key(key)
        cdef unsigned long long h = self.key_hash(key)
        cdef int64_t *record = self.find_ban(GW_BAN_TAG(h), h)
        if record == NULL:
            return 0
        cdef int64_t left = gw_load(&record[UNTIL]) - now
        return left if left > 0 else 0

    def offend(self, bytes key not None, long long now, long long after, long long window, long long base,
               long long maximum, long long forget):
        """Counts an offence (see the twin's ``offend``): the ban's length in ns, 0 or -1."""
        _check_key(key)
        cdef unsigned long long h = self.key_hash(key)
        cdef int64_t tag = GW_BAN_TAG(h)
        cdef int64_t *record = self.find_ban(tag, h)
        if record == NULL:
            record = self.claim_ban(tag, h, key, now)
            if record == NULL:
                return -1
        gw_store(&record[SEEN], now)
        cdef int64_t until = gw_load(&record[UNTIL])
        if until > now:
            return 0
        cdef int64_t started = gw_load(&record[WINDOW])
        if now - started >= window and gw_cas(&record[WINDOW], started, now):
            gw_store(&record[OFFENCES], 0)
        cdef int64_t offences = gw_add(&record[OFFENCES], 1)
        if offences < after or not gw_cas(&record[OFFENCES], offences, 0):
            return 0  # below the threshold, or another worker is banning this client right now
        cdef int64_t level = gw_load(&record[LEVEL])
        if level > 0 and until + forget <= now:
            level = 0
        cdef int64_t duration = base
        cdef int64_t step
        for step in range(level):
            if duration >= maximum:
                break
            duration *= 2
        duration = min(duration, maximum)
        gw_store(&record[UNTIL], now + duration)
        gw_store(&record[LEVEL], level + 1)
        gw_add(&self.header[EPOCH], 1)
        return duration

    def unban(self, bytes key not None, long long now):
        """Lifts ``key``'s ban (its level stays, so a repeat still bans longer); False if none ran."""
        _check_key(key)
        cdef unsigned long long h = self.key_hash(key)
        cdef int64_t *record = self.find_ban(GW_BAN_TAG(h), h)
        if record == NULL:
            return False
        gw_store(&record[OFFENCES], 0)
        cdef int64_t until = gw_load(&record[UNTIL])
        if until <= now:
            return False
        gw_cas(&record[UNTIL], until, now)
        return True

    def bans(self, long long now):
        """Every running ban: (key, ns left, level: 1 for a first ban)."""
        found = []
        cdef Py_ssize_t slot
        cdef int64_t *record
        cdef int64_t until
        for slot in range(self.slots):
            record = self.ban_table + slot * BAN_WORDS
            until = gw_load(&record[UNTIL])
            if gw_load(&record[TAG]) != 0 and until > now:
                found.append(((<char *> &record[KEY])[:16], until - now, gw_load(&record[LEVEL])))
        return found
