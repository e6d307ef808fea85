# C declarations for metrics_c.py (a link to metrics_py.py), compiled in Cython's pure-Python mode.
# The cells become a typed memoryview, so recording a request is a few indexed adds on shared memory.

cimport cython


cpdef Py_ssize_t status_class(Py_ssize_t status)


cdef class Recorder:
    cdef long long[::1] cells
    cdef double[::1] bounds
    cdef dict method_index
    cdef readonly Py_ssize_t nbounds, in_flight, requests, duration, added, bytes_in, bytes_out
    cdef readonly Py_ssize_t upstream_requests, upstream_duration, width, nmethods, other_method

    cpdef void begin(self) except *
    @cython.locals(index=Py_ssize_t)
    cpdef void request(self, Py_ssize_t route, str method, Py_ssize_t status, double duration,
                       double upstream_time, long long bytes_in, long long bytes_out) except *
    cpdef void upstream(self, Py_ssize_t target, Py_ssize_t status, double duration) except *
    @cython.locals(i=Py_ssize_t, n=Py_ssize_t)
    cpdef void observe(self, Py_ssize_t offset, double value) except *
    cpdef void add(self, Py_ssize_t offset, long long value) except *
    cpdef void set(self, Py_ssize_t offset, long long value) except *
