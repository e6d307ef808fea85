# C versions of bucket_ops.py (see its docstring): bucket_c.pxd cimports this module as ``ops``, so the
# compiled table's ``ops.NAME(...)`` calls are these inline functions; nothing here is compiled on its own.

cimport cython

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #include <time.h>

    _Static_assert(__atomic_always_lock_free(8, 0), "64-bit atomics must be lock-free");

    static inline long long gw_load(long long *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void gw_store(long long *p, long long v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    static inline int gw_cas(long long *p, long long expected, long long desired) {
        return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    }
    static inline long long gw_add(long long *p, long long v) { return __atomic_add_fetch(p, v, __ATOMIC_ACQ_REL); }
    static inline long long gw_exchange(long long *p, long long v) { return __atomic_exchange_n(p, v, __ATOMIC_ACQ_REL); }

    static inline long long gw_monotonic_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    }

    #define GW_ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
    #define GW_SIPROUND                                                      \\
        do {                                                                 \\
            v0 += v1; v1 = GW_ROTL(v1, 13); v1 ^= v0; v0 = GW_ROTL(v0, 32); \\
            v2 += v3; v3 = GW_ROTL(v3, 16); v3 ^= v2;                        \\
            v0 += v3; v3 = GW_ROTL(v3, 21); v3 ^= v0;                        \\
            v2 += v1; v1 = GW_ROTL(v1, 17); v1 ^= v2; v2 = GW_ROTL(v2, 32); \\
        } while (0)

    static inline uint64_t gw_read64(const unsigned char *p) {
        uint64_t m;
        memcpy(&m, p, 8);
    #if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        m = __builtin_bswap64(m);
    #endif
        return m;
    }

    /* SipHash-1-3 of the 8-byte little-endian seed followed by p[0..n) (one message of n + 8 bytes). */
    static inline uint64_t gw_siphash13(uint64_t k0, uint64_t k1, uint64_t seed,
                                        const unsigned char *p, size_t n) {
        uint64_t v0 = k0 ^ 0x736f6d6570736575ULL, v1 = k1 ^ 0x646f72616e646f6dULL;
        uint64_t v2 = k0 ^ 0x6c7967656e657261ULL, v3 = k1 ^ 0x7465646279746573ULL;
        uint64_t m, b;
        size_t i, end = n - (n % 8);
        v3 ^= seed; GW_SIPROUND; v0 ^= seed;
        for (i = 0; i < end; i += 8) {
            m = gw_read64(p + i);
            v3 ^= m; GW_SIPROUND; v0 ^= m;
        }
        b = ((uint64_t)((n + 8) & 0xff)) << 56;
        for (i = 0; i < (n & 7); i++) b |= ((uint64_t)p[end + i]) << (8 * i);
        v3 ^= b; GW_SIPROUND; v0 ^= b;
        v2 ^= 0xff; GW_SIPROUND; GW_SIPROUND; GW_SIPROUND;
        return v0 ^ v1 ^ v2 ^ v3;
    }
    """
    long long gw_load(long long *p) nogil
    void gw_store(long long *p, long long v) nogil
    bint gw_cas(long long *p, long long expected, long long desired) nogil
    long long gw_add(long long *p, long long v) nogil
    long long gw_exchange(long long *p, long long v) nogil
    long long gw_monotonic_ns() nogil
    unsigned long long gw_siphash13(unsigned long long k0, unsigned long long k1, unsigned long long seed,
                                    const unsigned char *p, size_t n) nogil


# The word operations: every index comes from Table.find (a slot inside the table, checked against the
# buffer's length when the table was made) or a header constant, so the bounds checks are lifted here.

@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline long long atomic_load(long long[::1] words, Py_ssize_t index) noexcept:
    return gw_load(&words[index])

@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline void atomic_store(long long[::1] words, Py_ssize_t index, long long value) noexcept:
    gw_store(&words[index], value)

@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline bint atomic_cas(long long[::1] words, Py_ssize_t index, long long expected,
                            long long desired) noexcept:
    return gw_cas(&words[index], expected, desired)

@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline long long atomic_add(long long[::1] words, Py_ssize_t index, long long value) noexcept:
    return gw_add(&words[index], value)

@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline long long atomic_exchange(long long[::1] words, Py_ssize_t index, long long value) noexcept:
    return gw_exchange(&words[index], value)

cdef inline long long monotonic_ns() noexcept:
    return gw_monotonic_ns()

cdef inline long long keyed_hash(long long k0, long long k1, long long seed, bytes data) except? -1:
    if data is None:
        raise TypeError("a key must be bytes, not None")
    return <long long>gw_siphash13(<unsigned long long>k0, <unsigned long long>k1, <unsigned long long>seed,
                                   <const unsigned char *><char *>data, len(data))
