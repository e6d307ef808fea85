# The C layout of the HTTP/1.1 protocol (protocol_py.py compiled in Cython's pure-Python mode): the
# connection and the request cycle become extension types, so their fields are struct members and the
# per-request bookkeeping is C-level reads and writes instead of dictionary lookups.

import cython

from gateway._fast.writes_c cimport WriteBatch


cdef class RequestCycle:
    cdef public HttpProtocol protocol
    cdef public dict scope
    cdef public bint keep_alive, expect_100, more_body, disconnected, response_started, response_complete
    cdef public bint head_request, no_body, chunked
    cdef public list body
    cdef public Py_ssize_t body_size, sent_length, body_limit, request_length
    cdef public object waiter, expected_length, task
    cdef public bytes head

    cpdef void wake(self)
    cpdef bint limit_body(self, Py_ssize_t limit)
    @cython.locals(head=list)
    cpdef void _start(self, int status, object headers) except *
    cpdef object _send_body(self, bytes body, bint more_body)


cdef class HttpProtocol:
    cdef public object app, lane, limits, state, loop, scheme, transport, parser, client, server
    cdef public WriteBatch batch
    cdef public bint closed, write_paused, read_paused, head_pending, shutting_down, upgraded, lingering
    cdef public bint expect_100, rate_due, rate_excused
    cdef public object guard, guard_ticket
    cdef public long long guard_epoch
    cdef public Py_ssize_t rate_mark
    cdef public object drain_waiters, pipeline, timer, timer_action, error
    cdef public Py_ssize_t buffered, head_bytes, content_length, head_size, hosts
    cdef public RequestCycle active, parsing
    cdef public double timer_at, timer_deadline
    cdef public bytes url, transfer_encoding, tunnel_early
    cdef public list headers

    cpdef void write(self, bytes data) except *
    cpdef void arm_timer(self, double delay, object action) except *
    cpdef void cancel_timer(self)
    cpdef void drop_timer(self) except *
    cpdef void body_consumed(self, Py_ssize_t size) except *
    cpdef void resume_reading(self) except *
    cpdef void pause_reading(self) except *
    cpdef void serve(self, RequestCycle cycle) except *
    cpdef void start(self, RequestCycle cycle, object app=*) except *
    cpdef void response_complete(self, RequestCycle cycle) except *
