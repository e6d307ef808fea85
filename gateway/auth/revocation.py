"""Revoked access tokens (by ``jti``) and ended sessions (by ``sid``), as every worker sees them.

Revocations are written to the store (Redis, or the host's SQLite database) by the admin API, by logout
and by refresh-token reuse detection. Each worker keeps the live ones in memory and polls the store every
``interval`` (0.5 s): a revocation reaches every worker of every host within about half a second, and the
check on the request path (``revoked``, on every request with a token, cached or not) is a dict look-up
with no I/O. Entries are forgotten once the tokens they refuse have expired anyway.

When the store cannot be read, the last known revocations stay in force; the failure is logged once
when it starts and once when it ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from gateway.auth.store import JTI, SID, Revoked, Store, StoreError
from gateway.auth.verify import Verified

logger = logging.getLogger("gateway.auth")
POLL_INTERVAL = 0.5
PRUNE_EVERY = 60.0


class RevocationList:
    """A ``Revocation`` (gateway/auth/verify.py) kept current from the store; see the module docstring."""

    def __init__(self, store: Store, local_issuer: str | None, interval: float = POLL_INTERVAL,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.local_issuer = local_issuer  # sid claims count only in the gateway's own tokens
        self.interval = interval
        self.clock = clock
        self.jtis: dict[str, float] = {}
        self.sids: dict[str, float] = {}
        self.marker: object = None
        self.task: asyncio.Task[None] | None = None
        self.failing = False
        self.pruned = clock()

    def revoked(self, token: Verified) -> bool:
        """The request-path check: a dict look-up or two."""
        claims = token.claims
        if self.jtis:
            jti = claims.get("jti")
            if isinstance(jti, str) and jti in self.jtis:
                return True
        if self.sids and token.issuer == self.local_issuer:
            sid = claims.get("sid")
            if isinstance(sid, str) and sid in self.sids:
                return True
        return False

    def session_ended(self, sid: str) -> bool:
        return sid in self.sids

    def add(self, entry: Revoked) -> None:
        """Takes effect in this worker at once (the store tells the others)."""
        if entry.kind == JTI:
            self.jtis[entry.value] = entry.until
        elif entry.kind == SID:
            self.sids[entry.value] = entry.until

    async def poll(self) -> None:
        now = self.clock()
        marker, entries, replace = await self.store.revocations(self.marker, now)
        if replace:
            self.jtis, self.sids = {}, {}
        for entry in entries:
            self.add(entry)
        self.marker = marker
        if now - self.pruned >= PRUNE_EVERY:
            self.pruned = now
            self.jtis = {k: until for k, until in self.jtis.items() if until > now}
            self.sids = {k: until for k, until in self.sids.items() if until > now}

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._keep())

    async def _keep(self) -> None:
        while True:
            try:
                await self.poll()
            except StoreError as exc:
                if not self.failing:
                    logger.warning("auth: cannot read revocations (%s); the %d known stay in force", exc,
                                   len(self.jtis) + len(self.sids))
                self.failing = True
            else:
                if self.failing:
                    logger.warning("auth: revocations read again")
                self.failing = False
            await asyncio.sleep(self.interval)

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None
