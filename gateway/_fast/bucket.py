"""Rate-limit buckets (see ``bucket_py``): the compiled build when present, else the pure-Python twin.

The twin's word operations are not atomic across processes, so a table made with it must stay private to
one process (``SHARED_SAFE`` says whether the loaded build may share a table between workers).
"""

from typing import TYPE_CHECKING

from gateway._fast import bucket_py, kind, load

_impl = load("bucket")

if TYPE_CHECKING:  # both builds share bucket_py's API; type-check against it
    from gateway._fast.bucket_py import Limit, Table
else:
    Limit = _impl.Limit
    Table = _impl.Table

# Constants come from the twin: compiled, they are C values the module does not export.
ADMITTED = bucket_py.ADMITTED
FIXED = bucket_py.FIXED
GCRA = bucket_py.GCRA
MAX_COUNT_BITS = bucket_py.MAX_COUNT_BITS
MAX_SHARE = bucket_py.MAX_SHARE
PROBE = bucket_py.PROBE
REJECTED = bucket_py.REJECTED
SLIDING = bucket_py.SLIDING
UNTRACKED = bucket_py.UNTRACKED
slot_count = bucket_py.slot_count
table_bytes = bucket_py.table_bytes

IMPLEMENTATION = kind(_impl)
SHARED_SAFE = IMPLEMENTATION == "compiled"

__all__ = ["ADMITTED", "FIXED", "GCRA", "IMPLEMENTATION", "MAX_COUNT_BITS", "MAX_SHARE", "PROBE", "REJECTED",
           "SHARED_SAFE", "SLIDING", "UNTRACKED", "Limit", "Table", "slot_count", "table_bytes"]
