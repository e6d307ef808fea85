# C declarations for bucket_c.py (a link to bucket_py.py), compiled in Cython's pure-Python mode.
# The word operations, keyed hash and clock are bucket_ops.pxd's inline C (GCC __atomic builtins on the
# shared words, SipHash-1-3, clock_gettime); the table and limits become extension types with C fields.

cimport cython

ctypedef long long i64

cimport gateway._fast.bucket_ops as ops


cdef long long MAGIC
cdef Py_ssize_t HEADER_WORDS, SLOT_WORDS, PROBE, CLAIM_ATTEMPTS
cdef Py_ssize_t H_MAGIC, H_NSLOTS, H_K0, H_K1, H_CLOCK, H_EVICTIONS
cdef Py_ssize_t TAG, STATE, LAST_USE, PENDING, LIMIT, GLOBAL, STRIKES, SHARE
cdef long long MAX_SHARE
cdef int GCRA, SLIDING, FIXED, REJECTED, ADMITTED, UNTRACKED, MAX_COUNT_BITS
cdef long long GLOBAL_K0, GLOBAL_K1


cdef class Table:
    cdef readonly long long[::1] words
    cdef readonly Py_ssize_t nslots, mask
    cdef readonly long long k0, k1, clock
    cdef long long[::1] cells
    cdef Py_ssize_t eviction_cell

    cpdef long long now(self)
    cpdef long long hash(self, long long seed, bytes key)
    @cython.locals(tag=i64, start=Py_ssize_t, base=Py_ssize_t, i=Py_ssize_t, victim=Py_ssize_t,
                   victim_tag=i64, oldest=i64, found=i64, used=i64, state=i64)
    cdef Py_ssize_t find(self, long long h, long long seed, bytes key, long long now) except? -2
    cdef void claimed(self, Py_ssize_t base, long long seed, bytes key, long long now) except *
    cpdef long long pending(self, Py_ssize_t base)
    cpdef void settle(self, Py_ssize_t base, long long tag, long long units) except *
    cpdef void set_share(self, Py_ssize_t base, long long share) except *


cdef class Limit:
    cdef readonly Table table
    cdef readonly int algorithm
    cdef readonly long long limit, period, burst, seed, interval, tolerance, debt_room
    cdef readonly int bits
    cdef readonly long long count_mask, id_shift, id_mask
    cdef readonly long long remaining, reset, wait, strikes, tag, window
    cdef readonly Py_ssize_t slot

    @cython.locals(table=Table, h=i64, base=Py_ssize_t, admitted=bint, share=i64, extra=i64)
    cpdef int take(self, bytes key, long long now) except -1
    @cython.locals(interval=i64, tolerance=i64, tat=i64, after=i64, weighted=i64)
    cdef bint take_gcra(self, long long[::1] words, Py_ssize_t index, long long now, long long extra) except -1
    @cython.locals(period=i64, limit=i64, bits=int, mask=i64, shift=i64,
                   window=i64, elapsed=i64, current_id=i64, previous_id=i64,
                   sliding=bint, weight=double, word=i64, stored_id=i64, previous=i64,
                   current=i64, estimate=double)
    cdef bint take_window(self, long long[::1] words, Py_ssize_t index, long long now, long long extra) except -1
    @cython.locals(period=i64, limit=i64, needed=double)
    cdef long long window_wait(self, long long previous, long long current, long long elapsed) except? -1
    @cython.locals(words=i64[::1], base=Py_ssize_t, index=Py_ssize_t, word=i64, undone=i64)
    cpdef void refund(self, long long now) except *
    @cython.locals(bits=int, mask=i64, stored_id=i64, unit=i64)
    cdef long long window_refund(self, long long word) except? -2
    @cython.locals(words=i64[::1], index=Py_ssize_t, word=i64, merged=i64, interval=i64, room=i64)
    cpdef void absorb(self, Py_ssize_t base, long long units, long long now) except *
    @cython.locals(bits=int, mask=i64, window=i64, current_id=i64, stored_id=i64,
                   previous=i64, current=i64)
    cdef long long window_absorb(self, long long word, long long units, long long now) except? -2
