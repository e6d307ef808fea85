# cython: annotation_typing=False
"""The route trie's segment operations: plain Python here, C in ``router_ops.pxd``.

``router_py.py`` calls these as ``ops.NAME(...)``; compiled, the same calls resolve (``cimport`` in
``router_c.pxd``, as ``bucket_ops`` does for the bucket table) to the inline C functions of the .pxd.

A node's literal children are in a dict by their text. Looking one up for a segment of the path means
slicing the segment out, hashing the new string (SipHash) and probing the dict: about 50 ns a segment
compiled, which was most of a lookup. The compiled build therefore looks them up in a probe table of
its own (``with_child`` builds it; its layout is in the .pxd), probed with a hash computed over the
path's characters in place and compared with the path without a slice. Here, in plain Python, slicing
and the dict are the fastest way, so this twin's table is the dict itself.
"""

from __future__ import annotations

from typing import TypeVar

N = TypeVar("N")

# Whether a tier keeps its exact routes without params in a dict by path, which ``lookup`` tries before
# walking the trie. Here that saves the walk's Python calls (about 1 us for a 4-segment path); compiled,
# the walk costs less than hashing a request's new path string, and ``router_ops.pxd`` turns it off
# (measured at 10,000 routes: 30 ns less per lookup on fresh path strings without it).
STATICS = True


def find(text: str, char: str, pos: int, n: int) -> int:
    """The index of the first ``char`` in ``text[pos:n]``, or ``n``; ``n`` is ``len(text)``."""
    index = text.find(char, pos)
    return n if index < 0 else index


def with_child(table: dict[str, N] | None, children: dict[str, N], text: str, child: N) -> dict[str, N]:
    """A node's table of literal children once ``child`` is its child ``text`` (already in ``children``).

    Compiled, the probe table gains the child (or is rebuilt larger from ``children``); here the table is
    ``children``."""
    return children


def literal_child(table: dict[str, N] | None, path: str, pos: int, end: int) -> N | None:
    """The literal child for the segment ``path[pos:end]`` in a node's ``table``, if any."""
    return None if table is None else table.get(path[pos:end])
