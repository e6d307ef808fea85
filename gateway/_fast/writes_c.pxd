# The C layout of the write batch (writes_py.py compiled in Cython's pure-Python mode).

cdef class WriteBatch:
    cdef public object loop
    cdef public list transports, chunks
    cdef public Py_ssize_t held
    cdef public bint scheduled

    cpdef void write(self, object transport, bytes data) except *
    cpdef void flush_soon(self) except *
    cpdef void flush(self) except *
