"""The rate-limit stage: a route's policies checked against the host's shared table, after auth.

    for each policy: its key (IP, subject, headers, route), its limits (by tier when tiered)
        each limit takes one unit from its bucket (one compare-and-swap in shared memory)
        a refusal: the units already taken for this request are given back (a rejected request counts
                   against no limit), listeners hear which limit the client exceeded, 429 with Retry-After
    all admitted: the response gets the tightest limit's numbers (X-RateLimit-* and/or RateLimit-Policy /
                  RateLimit), and the request passes on

The table's clock is read once per request. Every decision is counted per route in
``gateway_ratelimit_decisions_total{decision=allowed|rejected|fallback}`` ("fallback": admitted without a
decision, because no slot could be had for the key). A route with one policy of one table limit (no
tiers, no Redis: the common shape) is decided by ``check_one``, the same steps without the general loop's
bookkeeping.

With Redis (gateway/ratelimit/sync.py, store.py): a limit with ``mode: sync`` is decided by one Redis
script per request, after the table's limits (so a request the table refuses costs no round trip); a
refusal there gives back the units already taken, here and in Redis. While the store is unavailable
(the table's STORE_STATE word, set by the host's sync loop, or a synchronous limit's own breaker)
``on_store_error`` decides: ``local`` keeps deciding in the table (the sync loop holds each host to its
share), ``open`` admits every request but still counts it in the table (so the outage's admissions reach
Redis once it answers again and recovery admits no burst), ``closed`` answers 503 ``ratelimit_unavailable``
(not 429: the client did not exceed anything). Those decisions are also counted in
``gateway_ratelimit_degraded_decisions_total{decision=allowed|rejected}``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from gateway._fast.bucket import ADMITTED, REJECTED, Limit
from gateway._fast.metrics import Recorder
from gateway.errors import ServiceUnavailable, TooManyRequests
from gateway.exchange import Exchange, Headers, ResponseHook, Stage
from gateway.ratelimit.config import LimitSpec, PolicySpec
from gateway.ratelimit.keys import NO_HEADERS, KeyMaker

logger = logging.getLogger("gateway.ratelimit")

NS = 1_000_000_000
X_LIMIT = b"x-ratelimit-limit"
X_REMAINING = b"x-ratelimit-remaining"
X_RESET = b"x-ratelimit-reset"
DRAFT_POLICY = b"ratelimit-policy"
DRAFT_STATE = b"ratelimit"
RETRY_AFTER = b"retry-after"

# (ex, policy, limit, strikes): a client was refused by ``limit``; ``strikes`` counts the refusals of its
# key by that limit since the key got its slot (what a ban can build on: "kept exceeding").
ExceededListener = Callable[[Exchange, PolicySpec, LimitSpec, int], None]


STORE_STATE = 6  # the table's header word the sync loop sets while Redis is unavailable (sync.py)
HOSTS_WORD = 7  # and the live hosts it last counted: the share each host keeps to in fallback


class RateLimiterUnavailable(ServiceUnavailable):
    """``on_store_error: closed`` while the limiter's Redis is unavailable (503, not 429)."""

    code = "ratelimit_unavailable"
    default_message = "the rate limiter's store is unavailable; try again shortly"
    logged_once = True  # the outage is logged once per state change by the sync loop / the store's breaker


def seconds(ns: int) -> int:
    """Whole seconds, rounded up (a client told to wait must not come back early)."""
    return -(-ns // NS)


@dataclass(frozen=True, slots=True)
class Applied:
    """A configured limit bound to its bucket, with the header values that never change."""

    spec: LimitSpec
    bucket: Limit
    quota: bytes  # X-RateLimit-Limit
    policy_item: bytes  # this limit's RateLimit-Policy item
    remote: Any = None  # a RemoteLimit (gateway/ratelimit/store.py) for a ``mode: sync`` limit with Redis

    @classmethod
    def of(cls, spec: LimitSpec, bucket: Limit, remote: Any = None) -> Applied:
        quota = bucket.quota
        window = max(seconds(bucket.span), 1)
        return cls(spec, bucket, b"%d" % quota, b'"%s";q=%d;w=%d' % (spec.name.encode(), quota, window), remote)


class Deferred:
    """A request's decision waiting on Redis: the table's part is done (``taken``), ``remote`` is left."""

    __slots__ = ("now", "remaining", "remote", "reset", "taken", "tightest", "untracked")

    def __init__(self, now: int, taken: list[Applied], remote: list[tuple[Policy, Applied, bytes]], *,
                 tightest: Applied | None, remaining: int, reset: int, untracked: bool) -> None:
        self.now = now
        self.taken = taken
        self.tightest = tightest
        self.remaining = remaining
        self.reset = reset
        self.remote = remote
        self.untracked = untracked


class Policy:
    """A policy on one route: its key maker and its limits (or its tiers' limits by header value)."""

    def __init__(self, spec: PolicySpec, keys: KeyMaker, limits: dict[str, tuple[Applied, ...]]) -> None:
        self.spec = spec
        self.keys = keys
        self.limits = limits[""] if spec.tier_header is None else ()
        self.tier_header = spec.tier_header.encode("latin-1") if spec.tier_header else None
        self.tiers = {name.encode("utf-8"): applied for name, applied in limits.items() if name}
        self.default = self.tiers.get((spec.default_tier or "").encode("utf-8"), ())

    def pick(self, headers: dict[bytes, bytes]) -> tuple[Applied, ...]:
        if self.tier_header is None:
            return self.limits
        value = headers.get(self.tier_header)
        return self.tiers.get(value, self.default) if value is not None else self.default


def reporter(found: list[tuple[bytes, bytes]]) -> ResponseHook:
    """The response hook of an admitted request: adds its tightest limit's headers (``limit_headers``,
    formatted as it was admitted, from the numbers of that moment)."""

    def report(ex: Exchange, status: int, headers: Headers) -> None:
        headers.extend(found)

    return report


def limit_headers(mode: str, applied: Applied, remaining: int, reset_ns: int,
                  taken: list[Applied]) -> list[tuple[bytes, bytes]]:
    reset = b"%d" % -(-reset_ns // NS)  # seconds(reset_ns), inline: this runs on every admitted request
    if mode == "x-ratelimit":  # the default
        return [(X_LIMIT, applied.quota), (X_REMAINING, b"%d" % remaining), (X_RESET, reset)]
    found: list[tuple[bytes, bytes]] = []
    if mode == "both":
        found += [(X_LIMIT, applied.quota), (X_REMAINING, b"%d" % remaining), (X_RESET, reset)]
    if mode in ("draft", "both"):
        found.append((DRAFT_POLICY, b", ".join(item.policy_item for item in taken)))
        found.append((DRAFT_STATE, b'"%s";r=%d;t=%s' % (applied.spec.name.encode(), remaining, reset)))
    return found


class RateLimitStage(Stage):
    """Checks a route's policies; see the module docstring."""

    def __init__(self, policies: tuple[Policy, ...], now: Callable[[], int], recorder: Recorder, cell: int, *,
                 headers: str, listeners: list[ExceededListener], store_state: Any = None,
                 on_store_error: str = "local", degraded_cell: int = -1) -> None:
        self.now = now
        self.recorder = recorder
        self.allowed_cell, self.rejected_cell, self.fallback_cell = cell, cell + 1, cell + 2
        self.headers = headers
        self.report = headers != "none"
        self.listeners = listeners  # shared with the limiter: listeners added later are heard too
        self.warned = False
        self.store_state = store_state  # the table's words when a sync loop may set STORE_STATE, else None
        self.on_store_error = on_store_error
        self.degraded_allowed, self.degraded_rejected = degraded_cell, degraded_cell + 1
        self.policies = policies

    @property
    def policies(self) -> tuple[Policy, ...]:
        return self._policies

    @policies.setter
    def policies(self, policies: tuple[Policy, ...]) -> None:
        """The policies, and what follows from them: whether any limit is decided in Redis, and the
        common shape that ``check_one`` decides (one policy of one table limit, no tiers, no Redis)."""
        self._policies = policies
        # a ``mode: sync`` limit (decided in Redis, awaited) among any of the policies' limits
        self.remote = any(applied.remote is not None for policy in policies
                          for limits in (policy.limits, *policy.tiers.values()) for applied in limits)
        self.one: tuple[Policy, Applied, list[Applied]] | None = None
        if self.store_state is None and len(policies) == 1 and policies[0].tier_header is None \
                and len(policies[0].limits) == 1 and not self.remote:
            self.one = (policies[0], policies[0].limits[0], [policies[0].limits[0]])

    async def __call__(self, ex: Exchange) -> None:
        if not self.enter(ex):  # a ``mode: sync`` limit: the table's part here, then Redis, awaited
            deferred = self.check(ex)
            if deferred is not None:
                await self.check_remote(ex, deferred)
        await self.next(ex)  # type: ignore[misc]

    def enter(self, ex: Exchange) -> bool:
        """The stage without awaiting (the proxy's fast lane, gateway/proxy/lane.py): the table's limits
        decide at once (a refusal raises). False, before anything is taken, on a route with a ``mode: sync``
        limit: its Redis call is awaited in ``__call__``."""
        if self.remote:
            return False
        if self.one is None:
            self.check(ex)
        else:
            self.check_one(ex, self.one)
        return True

    def check_one(self, ex: Exchange, one: tuple[Policy, Applied, list[Applied]]) -> None:
        """``check`` for one policy of one table limit (``self.one``), without its general loop: the
        same decision, counts and response headers."""
        policy, applied, taken = one
        keys = policy.keys
        key = keys.make(ex, keys.values(ex) if keys.headers else NO_HEADERS)
        bucket = applied.bucket
        now = self.now()
        result = bucket.take(key, now)
        if result == ADMITTED:
            self.recorder.add(self.allowed_cell, 1)
            if self.report:
                ex.on_response(reporter(limit_headers(self.headers, applied, bucket.remaining, bucket.reset,
                                                      taken)))
        elif result == REJECTED:
            self.refuse(ex, policy, applied, [], now)
        else:
            self.fallback()  # UNTRACKED: admitted without a decision (and no numbers to report)

    def check(self, ex: Exchange) -> Deferred | None:
        """Takes a unit from every limit, or none; raises TooManyRequests on a refusal. Returns what is
        left to decide in Redis (``mode: sync`` limits), if anything."""
        now = self.now()
        degraded = self.store_state is not None and self.store_state[STORE_STATE] != 0
        if degraded and self.on_store_error == "closed":
            self.unavailable()
        admit_all = degraded and self.on_store_error == "open"
        taken: list[Applied] = []
        tightest: Applied | None = None
        remaining = reset = 0
        untracked = False
        remote: list[tuple[Policy, Applied, bytes]] = []
        for policy in self.policies:
            keys = policy.keys
            headers = keys.values(ex) if keys.headers else NO_HEADERS
            key = keys.make(ex, headers)
            for applied in policy.limits if policy.tier_header is None else policy.pick(headers):
                if applied.remote is not None and not degraded:
                    remote.append((policy, applied, key))
                    continue
                bucket = applied.bucket
                result = bucket.take(key, now)
                if result != ADMITTED:
                    if result == REJECTED and admit_all:
                        continue  # on_store_error: open (counted in the table all the same)
                    if result == REJECTED:
                        if degraded:
                            self.recorder.add(self.degraded_rejected, 1)
                        self.refuse(ex, policy, applied, taken, now)
                    untracked = True  # UNTRACKED: admitted without a decision
                    continue
                taken.append(applied)
                left = bucket.remaining
                if degraded:
                    left = self.share(bucket, now, left)
                if tightest is None or left < remaining:
                    tightest, remaining, reset = applied, left, bucket.reset
        if remote:
            return Deferred(now, taken, remote, tightest=tightest, remaining=remaining, reset=reset,
                            untracked=untracked)
        if degraded:
            self.recorder.add(self.degraded_allowed, 1)
        self.admitted(ex, taken, untracked=untracked, tightest=tightest, remaining=remaining, reset=reset)
        return None

    def admitted(self, ex: Exchange, taken: list[Applied], *, untracked: bool, tightest: Applied | None,
                 remaining: int, reset: int) -> None:
        if untracked:
            self.fallback()
        else:
            self.recorder.add(self.allowed_cell, 1)
        if self.report and tightest is not None:
            ex.on_response(reporter(limit_headers(self.headers, tightest, remaining, reset, taken)))

    def share(self, bucket: Limit, now: int, left: int) -> int:
        """``on_store_error: local`` while Redis is unavailable: the unit just admitted counts once per live
        host, so this host keeps to its share of the limit (limit / hosts); the units left, likewise."""
        hosts = self.store_state[HOSTS_WORD] if self.store_state is not None else 1
        if hosts <= 1 or self.on_store_error != "local":
            return left
        bucket.absorb(bucket.slot, hosts - 1, now)
        return left // hosts

    def unavailable(self) -> NoReturn:
        """``on_store_error: closed`` while the store is unavailable: 503."""
        self.recorder.add(self.degraded_rejected, 1)
        self.recorder.add(self.rejected_cell, 1)
        raise RateLimiterUnavailable(headers=((RETRY_AFTER, b"1"),))

    async def check_remote(self, ex: Exchange, deferred: Deferred) -> None:
        """The ``mode: sync`` limits, one Redis script each; Redis unavailable: ``on_store_error``."""
        now = deferred.now
        taken = deferred.taken
        done: list[tuple[Applied, bytes]] = []
        tightest, remaining, reset = deferred.tightest, deferred.remaining, deferred.reset
        degraded = False
        for policy, applied, key in deferred.remote:
            remote = applied.remote
            result = await remote.take(key, now)
            if result is None:  # Redis unavailable
                degraded = True
                if self.on_store_error == "closed":
                    await self.give_back(done, now)
                    for unit in taken:
                        unit.bucket.refund(now)
                    self.unavailable()
                local = applied.bucket.take(key, now)  # counted here, pushed to Redis once it answers
                if local == REJECTED and self.on_store_error == "local":
                    self.recorder.add(self.degraded_rejected, 1)
                    await self.give_back(done, now)
                    self.refuse(ex, policy, applied, taken, now)
                if local == ADMITTED:
                    taken.append(applied)
                    left = self.share(applied.bucket, now, applied.bucket.remaining)
                    if tightest is None or left < remaining:
                        tightest, remaining, reset = applied, left, applied.bucket.reset
                continue
            if not result:
                await self.give_back(done, now)
                self.refuse(ex, policy, applied, taken, now, decided=remote)
            done.append((applied, key))
            if tightest is None or remote.remaining < remaining:
                tightest, remaining, reset = applied, remote.remaining, remote.reset
        if degraded:
            self.recorder.add(self.degraded_allowed, 1)
        self.admitted(ex, [*taken, *(a for a, _ in done)], untracked=deferred.untracked, tightest=tightest,
                      remaining=remaining, reset=reset)

    async def give_back(self, done: list[tuple[Applied, bytes]], now: int) -> None:
        for applied, key in done:
            await applied.remote.refund(key, now)

    def refuse(self, ex: Exchange, policy: Policy, applied: Applied, taken: list[Applied], now: int, *,
               decided: Any = None) -> NoReturn:
        """Gives back this request's units, tells the listeners, answers 429."""
        for done in taken:
            done.bucket.refund(now)
        bucket = decided if decided is not None else applied.bucket
        wait, reset, strikes = bucket.wait, bucket.reset, bucket.strikes
        self.recorder.add(self.rejected_cell, 1)
        for listener in self.listeners:
            listener(ex, policy.spec, applied.spec, strikes)
        headers = [(RETRY_AFTER, b"%d" % max(seconds(wait), 1))]
        if self.report:
            headers += limit_headers(self.headers, applied, 0, reset, [*taken, applied])
        raise TooManyRequests(f"rate limit {applied.spec.name} ({applied.spec.rate}) exceeded; "
                              f"retry in {max(seconds(wait), 1)}s", headers=tuple(headers))

    def fallback(self) -> None:
        self.recorder.add(self.fallback_cell, 1)
        if not self.warned:
            self.warned = True
            logger.warning("rate limiting admitted a request it could not track: the shared table is full and "
                           "too contended to evict (raise ratelimit.table_slots)")
