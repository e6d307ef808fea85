"""The guards' host-wide tables (see ``guards_py``): the compiled build when present, else the twin.

The compiled build counts connections in the shared segment (exact across workers); the twin counts them
per process. Both keep bans in the shared segment.
"""

from typing import TYPE_CHECKING

from gateway._fast import kind, load

_impl = load("guards")

if TYPE_CHECKING:  # both builds share guards_py's API; type-check against it
    from gateway._fast.guards_py import (
        OVER_CLIENT,
        OVER_TOTAL,
        TABLE_FULL,
        UNCOUNTED,
        Tables,
        segment_size,
        slots_for,
    )
else:
    from gateway._fast.guards_py import segment_size, slots_for  # layout arithmetic: the same for both

    OVER_CLIENT, OVER_TOTAL, TABLE_FULL, UNCOUNTED = (_impl.OVER_CLIENT, _impl.OVER_TOTAL, _impl.TABLE_FULL,
                                                      _impl.UNCOUNTED)
    Tables = _impl.Tables

IMPLEMENTATION = kind(_impl)
SHARED_COUNTS = IMPLEMENTATION == "compiled"  # the twin counts connections per process

__all__ = ["IMPLEMENTATION", "OVER_CLIENT", "OVER_TOTAL", "SHARED_COUNTS", "TABLE_FULL", "UNCOUNTED", "Tables",
           "segment_size", "slots_for"]
