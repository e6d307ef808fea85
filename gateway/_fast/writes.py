"""Writes held until the loop's current events are handled (see ``writes_py``): compiled when built, else
the pure-Python twin."""

from typing import TYPE_CHECKING

from gateway._fast import kind, load

_impl = load("writes")

if TYPE_CHECKING:  # both builds share writes_py's API; type-check against it
    from gateway._fast.writes_py import HELD_MAX, SMALL, WriteBatch, batch_for
else:
    HELD_MAX, SMALL, WriteBatch, batch_for = _impl.HELD_MAX, _impl.SMALL, _impl.WriteBatch, _impl.batch_for

IMPLEMENTATION = kind(_impl)

__all__ = ["HELD_MAX", "IMPLEMENTATION", "SMALL", "WriteBatch", "batch_for"]
