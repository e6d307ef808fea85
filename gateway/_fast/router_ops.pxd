# C versions of router_ops.py (see its docstring): router_c.pxd cimports this module as ``ops``, so the
# compiled trie's ``ops.NAME(...)`` calls are these inline functions; nothing here is compiled on its own.
#
# A probe table holds a node's literal children in open addressing with linear probing, in one list:
#     [text 0, child 0, text 1, child 1, ..., text cap-1, child cap-1]
# where ``cap`` is a power of two and an unused slot has text None. A literal's first slot to try comes
# from FNV-1a over its code points, so a segment of a path starts where the literal it equals does,
# whatever the two strings' kinds (widths). The table is at most half full: a probe meets an unused slot
# after about 1.5 slots on average, comparing each slot's text (length first) with the segment in place.
# Only an equal text is a hit, and the probe lengths depend on the configured literals, not on requests.
# (Keeping the hashes in an array beside the slots, to skip a slot without reading its text, measured a
# little slower: one more array to read on every probe, where the text read is needed on a hit anyway.)

from cpython.object cimport PyObject
from libc.stdint cimport uint64_t

cdef extern from *:
    """
    #include <stdint.h>

    /* FNV-1a, 64 bits, over the code points of s[pos:end]. */
    static inline uint64_t gw_segment_hash(PyObject *s, Py_ssize_t pos, Py_ssize_t end) {
        int kind = PyUnicode_KIND(s);
        const void *data = PyUnicode_DATA(s);
        uint64_t h = 14695981039346656037ULL;
        if (kind == PyUnicode_1BYTE_KIND) {
            const Py_UCS1 *chars = (const Py_UCS1 *)data;
            for (; pos < end; pos++) h = (h ^ chars[pos]) * 1099511628211ULL;
        } else {
            for (; pos < end; pos++) h = (h ^ PyUnicode_READ(kind, data, pos)) * 1099511628211ULL;
        }
        return h;
    }

    /* Whether the str text equals path[pos:end]. */
    static inline int gw_segment_equals(PyObject *text, PyObject *path, Py_ssize_t pos, Py_ssize_t end) {
        Py_ssize_t size = end - pos, i;
        int text_kind, path_kind;
        const void *text_data, *path_data;
        if (PyUnicode_GET_LENGTH(text) != size) return 0;
        text_kind = PyUnicode_KIND(text), path_kind = PyUnicode_KIND(path);
        text_data = PyUnicode_DATA(text), path_data = PyUnicode_DATA(path);
        if (text_kind == PyUnicode_1BYTE_KIND && path_kind == PyUnicode_1BYTE_KIND) {  /* short: no memcmp */
            const Py_UCS1 *a = (const Py_UCS1 *)text_data, *b = (const Py_UCS1 *)path_data + pos;
            for (i = 0; i < size; i++) if (a[i] != b[i]) return 0;
            return 1;
        }
        for (i = 0; i < size; i++)
            if (PyUnicode_READ(text_kind, text_data, i) != PyUnicode_READ(path_kind, path_data, pos + i)) return 0;
        return 1;
    }

    /* The index of the first ch in s[pos:n], or n; n is the length of s. */
    static inline Py_ssize_t gw_find(PyObject *s, Py_UCS4 ch, Py_ssize_t pos, Py_ssize_t n) {
        int kind = PyUnicode_KIND(s);
        const void *data = PyUnicode_DATA(s);
        if (kind == PyUnicode_1BYTE_KIND) {  /* segments and host labels are short: a loop beats memchr */
            const Py_UCS1 *chars = (const Py_UCS1 *)data;
            for (; pos < n; pos++) if (chars[pos] == ch) return pos;
            return n;
        }
        for (; pos < n; pos++) if (PyUnicode_READ(kind, data, pos) == ch) return pos;
        return n;
    }

    /* The child for path[pos:end] in a probe table (borrowed), or NULL when there is none. */
    static inline PyObject *gw_probe(PyObject *table, PyObject *path, Py_ssize_t pos, Py_ssize_t end) {
        PyObject **slots = ((PyListObject *)table)->ob_item, *text;
        size_t mask = (size_t)(PyList_GET_SIZE(table) / 2) - 1;
        size_t i = (size_t)gw_segment_hash(path, pos, end) & mask;
        for (; (text = slots[2 * i]) != Py_None; i = (i + 1) & mask)
            if (gw_segment_equals(text, path, pos, end)) return slots[2 * i + 1];
        return NULL;
    }
    """
    Py_ssize_t find "gw_find"(str text, Py_UCS4 char, Py_ssize_t pos, Py_ssize_t n) noexcept
    uint64_t gw_segment_hash(str s, Py_ssize_t pos, Py_ssize_t end) noexcept
    PyObject *gw_probe(list table, str path, Py_ssize_t pos, Py_ssize_t end) noexcept


# The statics dict is for the pure-Python twin only (see STATICS in router_ops.py).
cdef enum:
    STATICS = 0


cdef inline list with_child(list table, dict children, str text, object child):
    if table is None or 4 * len(children) > len(table):  # would be over half full (len is 2 * cap): grow
        return _table_of(children)
    _put(table, text, child)
    return table


cdef inline object literal_child(list table, str path, Py_ssize_t pos, Py_ssize_t end):
    if table is None:
        return None
    cdef PyObject *child = gw_probe(table, path, pos, end)
    return None if child is NULL else <object>child


cdef inline list _table_of(dict children):
    """A probe table of ``children``, at most a quarter full."""
    cdef Py_ssize_t cap = 4
    while cap < 4 * len(children):
        cap *= 2
    cdef list table = [None] * (2 * cap)
    for text, child in children.items():
        _put(table, text, child)
    return table


cdef inline void _put(list table, str text, object child):
    """Place ``child`` in the first unused slot from its text's."""
    cdef size_t mask = <size_t>(len(table) // 2 - 1)
    cdef size_t i = <size_t>gw_segment_hash(text, 0, len(text)) & mask
    while table[2 * i] is not None:
        i = (i + 1) & mask
    table[2 * i] = text
    table[2 * i + 1] = child
