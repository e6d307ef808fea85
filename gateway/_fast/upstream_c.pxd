# The C layout of the upstream connection (upstream_py.py compiled in Cython's pure-Python mode).

import cython

from gateway._fast.writes_c cimport WriteBatch


cdef class UpstreamConnection:
    cdef public object loop, transport, parser, failure, waiter, timer, drain_waiter, listener
    cdef public WriteBatch batch
    cdef public double read_timeout, deadline, idle_since
    cdef public str timeout_message
    cdef public bint fresh_parser, closed, write_paused, idle, head_request, head_done, complete, keep_alive
    cdef public bint close_delimited, read_paused, received_any, watched
    cdef public Py_ssize_t requests, status, buffered
    cdef public list headers, body
    cdef public bytes upgrade_data

    cpdef void begin(self, bint head_request) except *
    cpdef void write(self, bytes data) except *
    cpdef tuple take_body(self)
    cpdef void pause_reading(self) except *
    cpdef void resume_reading(self) except *
    cpdef void listen(self, object listener)
    cpdef void watch(self) except *
    cdef void _arm(self, str timeout_message) except *
    cpdef void wake(self) except *
    cpdef void close(self) except *
    cpdef void abort(self) except *
    cdef void _shut(self, bint abort) except *
