"""The top-level ``ratelimit:`` section (named policies) and a route's ``ratelimit:`` key.

```yaml
ratelimit:
  trusted_hops: 0          # X-Forwarded-For entries added by proxies you run (0: the socket's peer)
  headers: x-ratelimit     # x-ratelimit (default) | draft (RateLimit-Policy, RateLimit) | both | none
  table_slots: 65536       # keys the host's shared table holds (64 bytes each; least recently used evicted)
  redis:                   # across hosts, when server.redis_url (GATEWAY_REDIS_URL) is set
    sync_interval: 20ms    # each host pushes its counts and pulls the others' this often (10-50ms)
    on_store_error: local  # local (the host's share of each limit) | open (admit) | closed (503)
    timeout: 50ms          # of each Redis call; a failure opens the breaker (no Redis call while open)
    breaker_cooldown: 1s   # how long the breaker stays open before one call tries Redis again
    prefix: "gateway:rl:"  # of every key the limiter writes
  default: [per-ip]        # policies of routes without their own ratelimit key
  policies:
    per-ip:
      key: ip              # ip | subject | route | api_key | header:NAME, or a list of them (combined)
      limits:              # every limit must admit the request (a refusal takes back the others' units)
        - {rate: 20/s, burst: 40}                           # GCRA (the default algorithm)
        - {rate: 10000/day, algorithm: sliding_window}     # or fixed_window
        - {rate: 5/m, mode: sync, name: strict}            # one atomic Redis check per request
    per-plan:
      key: [api_key, route]
      tier: {header: X-Plan, default: free}                 # the header's value picks the tier's limits
      tiers:
        free: [{rate: 10/s}]
        pro: [{rate: 100/s, burst: 200}]
routes:
  - {prefix: /api, upstream: api, ratelimit: [per-ip, per-plan]}   # or one name, or off
```

A key part the request lacks (no such header, no authenticated subject) is replaced by the client's IP,
so a client cannot escape a limit by leaving a header out. The IP is the socket's peer unless
``trusted_hops`` is set: then the entry that many places from the right of X-Forwarded-For (what the last
trusted proxy saw), so a client cannot choose its own key by sending the header.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.config import ConfigError, Node

SECTION_KEYS = frozenset({"trusted_hops", "headers", "table_slots", "default", "policies", "redis"})
REDIS_KEYS = frozenset({"sync_interval", "on_store_error", "timeout", "breaker_cooldown", "prefix"})
POLICY_KEYS = frozenset({"key", "limits", "tier", "tiers"})
LIMIT_KEYS = frozenset({"rate", "burst", "algorithm", "name", "mode"})
MODES = ("async", "sync")  # async: decided in the host's table, reconciled through Redis; sync: in Redis
STORE_ERRORS = ("local", "open", "closed")
TIER_KEYS = frozenset({"header", "default"})
ALGORITHMS = ("gcra", "sliding_window", "fixed_window")
HEADER_MODES = ("x-ratelimit", "draft", "both", "none")
KEY_KINDS = ("ip", "subject", "route", "api_key")
API_KEY_HEADER = "x-api-key"
DEFAULT_TABLE_SLOTS = 65536
MAX_TABLE_SLOTS = 1 << 24  # 1 GiB of shared memory
MAX_WINDOW_LIMIT = (1 << 20) - 1  # a window's counts share one 64-bit word with the window's id
MAX_TOLERANCE_NS = 10**18  # burst x interval: about 31 years, far inside 63 bits of nanoseconds
NAME = re.compile(r"^[A-Za-z0-9_.:-]+\Z")
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*(?:\.\d+)?)\s*([A-Za-z]+)\s*\Z")
UNITS = {
    "ms": 0.001, "s": 1, "sec": 1, "second": 1, "seconds": 1, "m": 60, "min": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hour": 3600, "hours": 3600, "d": 86400, "day": 86400, "days": 86400,
}


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """One limit: ``limit`` requests per ``period_ns``; GCRA lets ``burst`` through at once."""

    name: str
    algorithm: str
    limit: int
    period_ns: int
    burst: int
    rate: str  # as written, for messages
    policy: str = ""  # the policy it belongs to
    mode: str = "async"  # sync: one atomic Redis call per request (when Redis is configured)

    @property
    def seed(self) -> int:
        """The limit's identity in the shared table: its policy, name and parameters, so a reload that
        changes a limit starts it afresh and one that keeps it keeps its counts (and no two limits of one
        request ever share a bucket)."""
        text = f"{self.policy}|{self.name}|{self.algorithm}|{self.limit}|{self.period_ns}|{self.burst}".encode()
        return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little", signed=True)


@dataclass(frozen=True, slots=True)
class KeyPart:
    """One part of a policy's key: ``ip``, ``subject``, ``route`` or ``header`` (with its lower-case name)."""

    kind: str
    header: str | None = None

    def describe(self) -> str:
        return f"header:{self.header}" if self.kind == "header" else self.kind


@dataclass(frozen=True, slots=True)
class PolicySpec:
    """A named policy: what a request's key is made of, and its limits (per tier when tiered)."""

    name: str
    key: tuple[KeyPart, ...]
    limits: tuple[LimitSpec, ...] = ()
    tier_header: str | None = None  # set: ``tiers`` holds the limits, chosen by this header's value
    tiers: Mapping[str, tuple[LimitSpec, ...]] = field(default_factory=dict)
    default_tier: str | None = None

    def all_limits(self) -> tuple[LimitSpec, ...]:
        return self.limits + tuple(limit for limits in self.tiers.values() for limit in limits)

    def describe(self) -> str:
        """One line for ``gateway check``."""
        key = "+".join(part.describe() for part in self.key)
        if self.tier_header is None:
            return f"{self.name}: key {key}; " + ", ".join(_limit_text(limit) for limit in self.limits)
        tiers = "; ".join(f"{tier}: " + ", ".join(_limit_text(limit) for limit in limits)
                          for tier, limits in self.tiers.items())
        return f"{self.name}: key {key}; tier by {self.tier_header} (default {self.default_tier}): {tiers}"


@dataclass(frozen=True, slots=True)
class RedisSpec:
    """``ratelimit.redis``: how limits are shared across hosts (used when ``server.redis_url`` is set)."""

    sync_interval: float = 0.02  # seconds
    on_store_error: str = "local"
    timeout: float = 0.05
    breaker_cooldown: float = 1.0
    prefix: str = "gateway:rl:"


@dataclass(frozen=True, slots=True)
class RateLimitSpec:
    """The ``ratelimit:`` section."""

    policies: Mapping[str, PolicySpec] = field(default_factory=dict)
    default: tuple[str, ...] = ()
    trusted_hops: int = 0
    headers: str = "x-ratelimit"
    table_slots: int = DEFAULT_TABLE_SLOTS
    redis: RedisSpec = field(default_factory=RedisSpec)

    def all_limits(self) -> dict[int, LimitSpec]:
        """Every configured limit by seed."""
        return {limit.seed: limit for policy in self.policies.values() for limit in policy.all_limits()}


def _limit_text(limit: LimitSpec) -> str:
    burst = f" burst {limit.burst}" if limit.algorithm == "gcra" else ""
    mode = ", sync" if limit.mode == "sync" else ""
    return f"{limit.rate}{burst} ({limit.algorithm}{mode})"


def parse_ratelimit(node: Node) -> RateLimitSpec | None:
    """Reads the ``ratelimit:`` section (absent: no route is limited)."""
    if node.missing:
        return None
    node.mapping(SECTION_KEYS)
    policies: dict[str, PolicySpec] = {}
    for name, child in node.child("policies").mapping(optional=True).items():
        if not NAME.match(name):
            raise ConfigError(child.source, child.path, "expected a policy name of letters, digits and _ . : -")
        policies[name] = parse_policy(name, child)
    default_node = node.child("default")
    default = _policy_names(default_node) or ()
    for position, name in enumerate(default):
        _check_policy_name(default_node.child(position) if isinstance(default_node.value, list) else default_node,
                           name, policies)
    return RateLimitSpec(
        policies=policies,
        default=default,
        trusted_hops=node.child("trusted_hops").integer(0, minimum=0, maximum=32),
        headers=node.child("headers").choice(HEADER_MODES, "x-ratelimit"),
        table_slots=node.child("table_slots").integer(DEFAULT_TABLE_SLOTS, minimum=8, maximum=MAX_TABLE_SLOTS),
        redis=parse_redis(node.child("redis")),
    )


def parse_redis(node: Node) -> RedisSpec:
    """``ratelimit.redis`` (absent: the defaults)."""
    node.mapping(REDIS_KEYS, optional=True)
    interval = node.child("sync_interval")
    sync_interval = interval.duration(0.02)
    if not 0.001 <= sync_interval <= 10:
        interval.fail("a sync interval from 1ms to 10s (10ms to 50ms recommended)")
    timeout = node.child("timeout")
    seconds = timeout.duration(0.05)
    if seconds > 10:
        timeout.fail("a timeout of at most 10s (Redis calls should fail fast)")
    prefix = node.child("prefix").string("gateway:rl:")
    if "{" in prefix or "}" in prefix:
        node.child("prefix").fail("a prefix without { or } (the limiter adds its own hash tags)")
    return RedisSpec(
        sync_interval=sync_interval,
        on_store_error=node.child("on_store_error").choice(STORE_ERRORS, "local"),
        timeout=seconds,
        breaker_cooldown=node.child("breaker_cooldown").duration(1.0),
        prefix=prefix,
    )


def parse_policy(name: str, node: Node) -> PolicySpec:
    node.mapping(POLICY_KEYS)
    key = parse_key(node.child("key").required("a key: ip, subject, route, api_key, header:NAME or a list"))
    limits_node, tier_node, tiers_node = node.child("limits"), node.child("tier"), node.child("tiers")
    if tier_node.missing != tiers_node.missing:
        raise ConfigError(node.source, node.path, "expected both 'tier' (which header picks it) and 'tiers' "
                          "(each tier's limits), or neither")
    if tier_node.missing:
        if limits_node.missing:
            raise ConfigError(node.source, node.path, "expected 'limits' (or 'tier' and 'tiers')")
        return PolicySpec(name, key, parse_limits(limits_node, name, name))
    if not limits_node.missing:
        raise ConfigError(node.source, limits_node.path, "expected either 'limits' or 'tier' and 'tiers', not both")
    tier_node.mapping(TIER_KEYS)
    header = _header_name(tier_node.child("header").required("the header whose value picks the tier"))
    tiers: dict[str, tuple[LimitSpec, ...]] = {}
    for tier, child in tiers_node.mapping().items():
        if not tier.strip():
            raise ConfigError(child.source, child.path, "expected a tier name (the header value that picks it)")
        tiers[tier] = parse_limits(child, name, f"{name}.{tier}")
    if not tiers:
        tiers_node.fail("at least one tier")
    default_node = tier_node.child("default").required("the tier of requests whose header names no tier")
    default = default_node.string()
    if default not in tiers:
        default_node.fail(f"one of the tiers ({', '.join(tiers)})")
    return PolicySpec(name, key, tier_header=header, tiers=tiers, default_tier=default)


def parse_key(node: Node) -> tuple[KeyPart, ...]:
    entries = list(node.elements()) if isinstance(node.value, list) else [node]
    parts: list[KeyPart] = []
    for entry in entries:
        text = entry.string()
        kind, _, header = text.partition(":")
        kind = kind.strip().lower()
        if kind == "header":
            part = KeyPart("header", _header_name(Node(header.strip(), entry.source, entry.path)))
        elif kind == "api_key" and not header:
            part = KeyPart("header", API_KEY_HEADER)
        elif kind in KEY_KINDS and not header:
            part = KeyPart(kind)
        else:
            entry.fail("ip, subject, route, api_key or header:NAME")
        if part in parts:
            entry.fail("a key part the key does not already have")
        parts.append(part)
    if not parts:
        node.fail("at least one key part")
    return tuple(parts)


def parse_limits(node: Node, policy: str, prefix: str) -> tuple[LimitSpec, ...]:
    limits = tuple(parse_limit(entry, policy, f"{prefix}.{i}") for i, entry in enumerate(node.elements()))
    if not limits:
        node.fail("at least one limit, like {rate: 20/s, burst: 40}")
    names = [limit.name for limit in limits]
    for i, name in enumerate(names):
        if name in names[:i]:
            node.child(i).child("name").fail(f"a limit name no other limit of the policy has ({name!r} is taken)")
    return limits


def parse_limit(node: Node, policy: str, default_name: str) -> LimitSpec:
    node.mapping(LIMIT_KEYS)
    rate_node = node.child("rate").required("a rate like 20/s, 600/m or 10000/day")
    limit, period_ns = parse_rate(rate_node)
    algorithm = node.child("algorithm").choice(ALGORITHMS, "gcra")
    mode = node.child("mode").choice(MODES, "async")
    name_node = node.child("name")
    name = name_node.string(default_name)
    if not NAME.match(name):
        name_node.fail("a limit name of letters, digits and _ . : -")
    burst_node = node.child("burst")
    if algorithm != "gcra":
        if not burst_node.missing:
            burst_node.fail(f"no burst: it applies to the gcra algorithm only, not {algorithm}")
        if limit > MAX_WINDOW_LIMIT:
            rate_node.fail(f"at most {MAX_WINDOW_LIMIT} requests per window for {algorithm} (gcra has no cap)")
        return LimitSpec(name, algorithm, limit, period_ns, 1, rate_node.value, policy, mode)
    if limit > period_ns:
        rate_node.fail("at most one request per nanosecond")
    burst = burst_node.integer(limit, minimum=1)
    if burst * (period_ns // limit) > MAX_TOLERANCE_NS:
        burst_node.fail("a smaller burst: burst x (period / rate) must stay under about 31 years")
    return LimitSpec(name, algorithm, limit, period_ns, burst, rate_node.value, policy, mode)


def parse_rate(node: Node) -> tuple[int, int]:
    """``20/s``, ``100/30s``, ``10000/day``: (requests, period in ns)."""
    text = node.string()
    match = RATE.match(text)
    unit = UNITS.get(match.group(3).lower()) if match else None
    if match is None or unit is None:
        node.fail("a rate like 20/s, 100/30s, 600/minute or 10000/day")
    count, multiple = int(match.group(1)), float(match.group(2) or 1)
    period_ns = round(multiple * unit * 1e9)
    if count < 1 or period_ns < 1:
        node.fail("a rate of at least one request per period, with a period above zero")
    return count, period_ns


def _header_name(node: Node) -> str:
    name: str = node.string()
    if not HEADER_NAME.match(name):
        node.fail("a header name like X-Api-Key")
    return name.lower()


def _policy_names(node: Node) -> tuple[str, ...] | None:
    """A name or a list of names; None when absent; () for off (or false, or an empty list)."""
    if node.missing:
        return None
    if node.value is False or (isinstance(node.value, str) and node.value.strip().lower() == "off"):
        return ()
    if isinstance(node.value, list):
        return tuple(entry.string() for entry in node.elements())
    return (node.string(),)


def _check_policy_name(node: Node, name: str, policies: Mapping[str, PolicySpec]) -> None:
    if name not in policies:
        known = ", ".join(sorted(policies)) or "none are defined"
        node.fail(f"the name of a policy under ratelimit.policies ({known})")


def parse_route_ratelimit(node: Node) -> tuple[str, ...] | None:
    """A route's ``ratelimit:``: policy names, () for off, None when absent (the section's default)."""
    names = _policy_names(node)
    if names is not None and len(set(names)) != len(names):
        node.fail("each policy once")
    return names


def check_route_policies(routes: list[tuple[int, tuple[str, ...]]], spec: RateLimitSpec | None,
                         routes_node: Node) -> None:
    """Every route's policies exist (and a route that names any has a ``ratelimit:`` section to find them in)."""
    for index, names in routes:
        node = routes_node.child(index).child("ratelimit")
        if spec is None:
            raise ConfigError(node.source, node.path, "expected a top-level 'ratelimit:' section with policies "
                              "(the route names rate-limit policies)")
        for position, name in enumerate(names):
            _check_policy_name(node.child(position) if isinstance(node.value, list) else node, name, spec.policies)


def route_policies(route_names: tuple[str, ...] | None, spec: RateLimitSpec | None) -> tuple[PolicySpec, ...]:
    """The policies that apply to a route: its own, else the section's default."""
    if spec is None:
        return ()
    names = spec.default if route_names is None else route_names
    return tuple(spec.policies[name] for name in names)


def describe(spec: RateLimitSpec) -> list[str]:
    """``gateway check``'s lines for the section."""
    lines = [f"rate limits (trusted_hops {spec.trusted_hops}, headers {spec.headers}, "
             f"table {spec.table_slots} slots, default: {', '.join(spec.default) or 'none'}):"]
    redis = spec.redis
    lines.append(f"  across hosts through server.redis_url when set: sync every {redis.sync_interval * 1000:g}ms, "
                 f"on_store_error {redis.on_store_error}, timeout {redis.timeout * 1000:g}ms")
    lines += [f"  {policy.describe()}" for policy in spec.policies.values()]
    return lines

