# The fields of guards_c.pyx's Tables (the layout is described in guards_py.py, its pure-Python twin):
# raw pointers into the shared segment, so every check is a few loads and one compare-and-swap.

from libc.stdint cimport int32_t, int64_t


cdef class Tables:
    cdef object buffer
    cdef unsigned char[::1] view
    cdef int64_t *header
    cdef int64_t *owners
    cdef int64_t *counts
    cdef int32_t *columns
    cdef int32_t *own  # this process's column: its lane's, or private memory without a lane
    cdef int64_t *ban_table
    cdef bytearray spare  # the private column when no lane is claimed
    cdef readonly Py_ssize_t slots, lanes, lane

    cdef unsigned long long key_hash(self, const unsigned char *key) noexcept
    cdef Py_ssize_t acquire_client(self, unsigned long long h, long long cap) noexcept
    cdef void release_client(self, Py_ssize_t slot) noexcept
    cdef int64_t *find_ban(self, long long tag, unsigned long long h) noexcept
    cdef int64_t *claim_ban(self, long long tag, unsigned long long h, const unsigned char *key,
                            long long now) noexcept
