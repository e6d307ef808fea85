"""An awaitable that is already complete: ``await DONE`` is None without suspending.

Functions on the hot path that usually have nothing to wait for (writing a response, checking for body
bytes already received) return it instead of being coroutine functions, which spares a coroutine object
and its frame per call; when they must wait, they return a future instead.
"""

from __future__ import annotations

from typing import Any


class Done:
    __slots__ = ()

    def __await__(self) -> Any:
        return EMPTY


EMPTY = iter(())  # an exhausted iterator stays exhausted: one serves every await of DONE
DONE = Done()
