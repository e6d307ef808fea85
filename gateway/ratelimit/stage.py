"""The rate-limit stage: a route's policies checked against the host's shared table, after auth.

    for each policy: its key (IP, subject, headers, route), its limits (by tier when tiered)
        each limit takes one unit from its bucket (one compare-and-swap in shared memory)
        a refusal: the units already taken for this request are given back (a rejected request counts
                   against no limit), listeners hear which limit the client exceeded, 429 with Retry-After
    all admitted: the response gets the tightest limit's numbers (X-RateLimit-* and/or RateLimit-Policy /
                  RateLimit), and the request passes on

The table's clock is read once per request. Every decision is counted per route in
``gateway_ratelimit_decisions_total{decision=allowed|rejected|fallback}`` ("fallback": admitted without a
decision, because no slot could be had for the key).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from gateway._fast.bucket import ADMITTED, REJECTED, Limit
from gateway._fast.metrics import Recorder
from gateway.errors import TooManyRequests
from gateway.exchange import Exchange, Headers, Stage
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

    @classmethod
    def of(cls, spec: LimitSpec, bucket: Limit) -> Applied:
        quota = bucket.quota
        window = max(seconds(bucket.span), 1)
        return cls(spec, bucket, b"%d" % quota, b'"%s";q=%d;w=%d' % (spec.name.encode(), quota, window))


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


class Report:
    """The response hook of an admitted request: the tightest limit's numbers as headers."""

    __slots__ = ("applied", "mode", "remaining", "reset", "taken")

    def __init__(self, mode: str, applied: Applied, remaining: int, reset: int, taken: list[Applied]) -> None:
        self.mode = mode
        self.applied = applied
        self.remaining = remaining
        self.reset = reset
        self.taken = taken

    def __call__(self, ex: Exchange, status: int, headers: Headers) -> None:
        headers.extend(limit_headers(self.mode, self.applied, self.remaining, self.reset, self.taken))


def limit_headers(mode: str, applied: Applied, remaining: int, reset_ns: int,
                  taken: list[Applied]) -> list[tuple[bytes, bytes]]:
    reset = b"%d" % seconds(reset_ns)
    found: list[tuple[bytes, bytes]] = []
    if mode in ("x-ratelimit", "both"):
        found += [(X_LIMIT, applied.quota), (X_REMAINING, b"%d" % remaining), (X_RESET, reset)]
    if mode in ("draft", "both"):
        found.append((DRAFT_POLICY, b", ".join(item.policy_item for item in taken)))
        found.append((DRAFT_STATE, b'"%s";r=%d;t=%s' % (applied.spec.name.encode(), remaining, reset)))
    return found


class RateLimitStage(Stage):
    """Checks a route's policies; see the module docstring."""

    def __init__(self, policies: tuple[Policy, ...], now: Callable[[], int], recorder: Recorder, cell: int, *,
                 headers: str, listeners: list[ExceededListener]) -> None:
        self.policies = policies
        self.now = now
        self.recorder = recorder
        self.allowed_cell, self.rejected_cell, self.fallback_cell = cell, cell + 1, cell + 2
        self.headers = headers
        self.report = headers != "none"
        self.listeners = listeners  # shared with the limiter: listeners added later are heard too
        self.warned = False

    async def __call__(self, ex: Exchange) -> None:
        self.check(ex)
        await self.next(ex)  # type: ignore[misc]

    def check(self, ex: Exchange) -> None:
        """Takes a unit from every limit, or none; raises TooManyRequests on a refusal."""
        now = self.now()
        taken: list[Applied] = []
        tightest: Applied | None = None
        remaining = reset = 0
        untracked = False
        for policy in self.policies:
            keys = policy.keys
            headers = keys.values(ex) if keys.headers else NO_HEADERS
            key = keys.make(ex, headers)
            for applied in policy.limits if policy.tier_header is None else policy.pick(headers):
                bucket = applied.bucket
                result = bucket.take(key, now)
                if result != ADMITTED:
                    if result == REJECTED:
                        self.refuse(ex, policy, applied, taken, now)
                    untracked = True  # UNTRACKED: admitted without a decision
                    continue
                taken.append(applied)
                left = bucket.remaining
                if tightest is None or left < remaining:
                    tightest, remaining, reset = applied, left, bucket.reset
        if untracked:
            self.fallback()
        else:
            self.recorder.add(self.allowed_cell, 1)
        if self.report and tightest is not None:
            ex.on_response(Report(self.headers, tightest, remaining, reset, taken))

    def refuse(self, ex: Exchange, policy: Policy, applied: Applied, taken: list[Applied], now: int) -> NoReturn:
        """Gives back this request's units, tells the listeners, answers 429."""
        for done in taken:
            done.bucket.refund(now)
        bucket = applied.bucket
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
