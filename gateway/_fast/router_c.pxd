# C declarations for router_c.py (a link to router_py.py), compiled in Cython's pure-Python mode.
# The trie's classes become extension types with C fields, and the lookup path becomes C functions
# with typed locals, so walking a node is pointer reads, not attribute lookups. The literal children are
# found with router_ops.pxd's inline C (a probe table read with the path's characters in place).

cimport cython

cimport gateway._fast.router_ops as ops


cdef class Route:
    cdef readonly object target
    cdef readonly str pattern
    cdef readonly bint exact
    cdef readonly frozenset methods
    cdef readonly tuple hosts
    cdef readonly list slots
    cdef readonly Py_ssize_t walk
    cdef readonly Py_ssize_t first
    cdef readonly Py_ssize_t skip
    cdef readonly tuple fixed


cdef class Node:
    cdef public dict literal
    cdef public list table
    cdef public Node param
    cdef public Route exact_any
    cdef public dict exact_methods
    cdef public Route prefix_any
    cdef public dict prefix_methods


cdef class Tier:
    cdef public Node root
    cdef public dict statics


cdef class Router:
    cdef Tier _any
    cdef dict _hosts
    cdef dict _wildcards
    cdef Py_ssize_t _wild_min
    cdef Py_ssize_t _wild_max
    cdef Py_ssize_t _count

    @cython.locals(n=Py_ssize_t, route=Route, tier=Tier)
    cpdef tuple lookup(self, str host, str method, str path)

    @cython.locals(size=Py_ssize_t, dot=Py_ssize_t, route=Route, tier=Tier)
    cdef Route _find_wildcards(self, str host, str path, Py_ssize_t n, str method)


@cython.locals(node=Node, route=Route)
cdef Route _find(Tier tier, str path, Py_ssize_t n, str method)

cdef Route _pick(Route any_route, dict by_method, str method)

@cython.locals(pos=Py_ssize_t, end=Py_ssize_t, child=Node, param=Node, prefix=bint, route=Route)
cdef Route _search(Node node, str path, Py_ssize_t start, Py_ssize_t n, str method)

@cython.locals(params=dict, slots=list, start=Py_ssize_t, end=Py_ssize_t, i=Py_ssize_t, name=object)
cdef tuple _result(Route route, str path, Py_ssize_t n)
