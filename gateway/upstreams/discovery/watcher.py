"""What every discovery source shares: the last good answer, the source's state and its counters.

A source (dns.py, file.py, etcd.py) runs as one task per upstream and reports each refresh with ``good``
(the targets found) or ``bad`` (why nothing usable came back). A bad refresh never changes the targets:
the last good answer is kept, and an answer with no target at all counts as bad, so a source never
empties an upstream. State changes (pending -> ok, ok -> failing, failing -> ok) are logged once each;
every refresh is counted for the metrics; ``changed`` is called when the targets differ from before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from gateway.upstreams.discovery.config import Found, SourceSpec

logger = logging.getLogger("gateway.upstreams.discovery")

FAILURE_BACKOFF_CAP = 30.0  # seconds: the longest wait before trying a failing source again


class Watcher:
    """One source of one upstream; ``run`` is the source's loop (overridden per kind)."""

    def __init__(self, upstream: str, spec: SourceSpec, changed: Callable[[str], None]) -> None:
        self.upstream = upstream
        self.spec = spec
        self.changed = changed
        self.found: tuple[Found, ...] | None = None  # the last good answer (None: none yet)
        self.state = "pending"  # pending -> ok | failing
        self.error: str | None = None
        self.last_refresh: float | None = None  # wall-clock seconds of the last attempt
        self.last_success: float | None = None
        self.next_refresh: float | None = None
        self.refreshes = {"success": 0, "failure": 0}
        self.answered = asyncio.Event()  # set by the first refresh, good or bad
        self.task: asyncio.Task[None] | None = None

    @property
    def label(self) -> str:
        return f"upstream {self.upstream} ({self.spec.kind} {self.spec.describe()})"

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._main(), name=f"discovery {self.label}")

    async def _main(self) -> None:
        try:
            await self.run()
        except Exception:  # pragma: no cover - a bug in a source: say so, keep the last good answer
            logger.exception("discovery: %s stopped", self.label)
            self.bad("the source stopped after an internal error (see the log)")

    async def run(self) -> None:  # pragma: no cover - every kind overrides it
        raise NotImplementedError

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def wait_closed(self) -> None:
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    def good(self, found: tuple[Found, ...]) -> None:
        """A refresh found targets (at least one): they replace the previous answer."""
        now = time.time()
        self.last_refresh = self.last_success = now
        self.refreshes["success"] += 1
        found = tuple(sorted(set(found), key=lambda f: (f.backup, f.url)))
        if self.state != "ok":
            logger.info("discovery: %s: %d targets%s", self.label, len(found),
                        " (recovered)" if self.state == "failing" else "")
        self.state, self.error = "ok", None
        self.answered.set()
        if found != self.found:
            self.found = found
            self.changed(self.upstream)

    def bad(self, error: str) -> None:
        """A refresh failed: the last good answer stays."""
        self.last_refresh = time.time()
        self.refreshes["failure"] += 1
        if self.state != "failing":
            kept = (f"keeping the last good list of {len(self.found)} targets" if self.found
                    else "no targets found yet")
            logger.warning("discovery: %s failed: %s; %s", self.label, error, kept)
        self.state, self.error = "failing", error
        self.answered.set()

    def wait_after(self, seconds: float) -> float:
        """Notes when the next refresh is due; returns ``seconds`` for the caller's sleep."""
        self.next_refresh = time.time() + seconds
        return seconds

    def view(self) -> dict[str, Any]:
        """The source's state for ``GET /upstreams`` on the admin port."""
        return {
            "source": self.spec.kind,
            "watching": self.spec.describe(),
            "state": self.state,
            "targets": [f.url for f in self.found or () if not f.backup],
            "backup": [f.url for f in self.found or () if f.backup],
            "last_refresh": _stamp(self.last_refresh),
            "last_success": _stamp(self.last_success),
            "next_refresh": _stamp(self.next_refresh),
            "last_error": self.error,
            "refreshes": dict(self.refreshes),
        }


def _stamp(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds % 1 * 1000):03d}Z"


def backoff(failures: int, first: float, cap: float = FAILURE_BACKOFF_CAP) -> float:
    """Seconds before the next try after ``failures`` failures in a row (doubling from ``first``)."""
    return float(min(cap, first * 2 ** min(failures - 1, 20)))
