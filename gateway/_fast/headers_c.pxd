# C types for the proxy's header rules (headers_py.py compiled in Cython's pure-Python mode).

import cython

cimport gateway._fast.headers_ops as ops


@cython.locals(info=object, name=bytes, value=bytes, host=str, request_id=str)
cpdef tuple request_info(list headers)

@cython.locals(end=Py_ssize_t, colon=Py_ssize_t)
cpdef str host_of(str header)

@cython.locals(fast=object, parts=list, kept=list, named=frozenset, i=Py_ssize_t, name=bytes, value=bytes,
               host=bytes, forwarded_for=bytes, length=bytes, connection=bytes, chunked=bint, framing=bytes)
cpdef tuple request_head(bytes method, bytes target, list headers, bytes client_ip, bytes scheme,
                         bytes request_id, bytes upstream_host, bint preserve_host)

@cython.locals(kept=object, out=list, connection=bytes, name=bytes, value=bytes)
cpdef list response_headers(list headers)
