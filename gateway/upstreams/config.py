"""The ``upstreams:`` section: named upstreams with their targets, balancing, health and retry policies.

Every policy is a frozen dataclass read once at load; the request path only reads their fields. An
upstream with one target and no policy written in the file is "plain": the proxy stage takes its
original path for it, so the single-target default pays nothing for balancing, breakers or retries.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from gateway.config import ConfigError, Node
from gateway.proxy.target import Target, parse_target
from gateway.upstreams.discovery.config import SOURCE_KEYS, SourceSpec, parse_sources

UPSTREAM_NAME = re.compile(r"^[A-Za-z0-9_.-]+\Z")
UPSTREAM_KEYS = frozenset({
    "targets", "connect_timeout", "read_timeout", "keepalive", "keepalive_timeout", "balancer", "hash_on",
    "health_check", "outlier_detection", "circuit_breaker", "retries", "backup", "slow_start", "websocket_idle_timeout",
    *SOURCE_KEYS,  # discovery: dns, file, etcd (gateway.upstreams.discovery)
})
BALANCERS = ("round_robin", "least_request", "p2c_ewma", "hash", "random")
RETRY_CONDITIONS = ("error", "timeout", "5xx")
DEFAULT_RETRY_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
DEFAULT_RETRY_ON = frozenset({"error", "timeout"})


@dataclass(frozen=True, slots=True)
class WeightedTarget:
    """A target with its balancing weight (1 to 1000)."""

    target: Target
    weight: int = 1


@dataclass(frozen=True, slots=True)
class HealthCheckSpec:
    """Active HTTP probes, run once per host by the supervisor (gateway.upstreams.health)."""

    path: str = "/"
    expected: frozenset[int] = frozenset({200})
    interval: float = 5.0
    timeout: float = 2.0
    healthy_threshold: int = 2  # consecutive passes that bring an unhealthy target back
    unhealthy_threshold: int = 3  # consecutive failures that take a target out


@dataclass(frozen=True, slots=True)
class OutlierSpec:
    """Passive checks: ``consecutive`` failures (5xx or no response) eject a target for ``base_ejection``
    times the number of ejections in a row (at most ``max_ejection``); ``max_ejected`` is the largest
    share of targets out at once, so passive checks never empty an upstream."""

    consecutive: int = 5
    base_ejection: float = 5.0
    max_ejection: float = 60.0
    max_ejected: float = 0.5


@dataclass(frozen=True, slots=True)
class BreakerSpec:
    """Circuit breaker over a rolling window, per target and per upstream.

    Opens when, over the last ``window`` seconds with at least ``min_requests``, the failure ratio reaches
    ``error_ratio`` or the ratio of requests slower than ``slow_call`` reaches ``slow_ratio``; stays open
    ``open_for`` seconds (fail fast or fail over), then lets ``half_open_requests`` probes through: all of
    them succeeding closes it, one failing opens it again."""

    error_ratio: float = 0.5
    slow_call: float | None = None
    slow_ratio: float = 0.5
    window: float = 10.0
    min_requests: int = 20
    open_for: float = 5.0
    half_open_requests: int = 3


@dataclass(frozen=True, slots=True)
class RetrySpec:
    """Retries on another target: ``attempts`` tries in all, each within ``try_timeout`` (None: the
    pool's timeouts) and all within ``deadline``; ``budget`` bounds retries to that fraction of requests
    (plus ``min_per_second``) in each worker."""

    attempts: int = 2
    on: frozenset[str] = DEFAULT_RETRY_ON
    methods: frozenset[str] = DEFAULT_RETRY_METHODS
    try_timeout: float | None = None
    deadline: float | None = None
    budget: float = 0.2
    min_per_second: float = 5.0


@dataclass(frozen=True, slots=True)
class UpstreamSpec:
    """One upstream. Timeouts in seconds; ``keepalive`` is idle pooled connections per worker."""

    name: str
    targets: tuple[Target, ...]
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    keepalive: int = 128
    keepalive_timeout: float = 60.0
    websocket_idle_timeout: float = 600.0  # a WebSocket tunnel with no byte either way for this long ends
    weights: tuple[int, ...] = ()  # per target (empty: all 1)
    balancer: str = "p2c_ewma"
    hash_on: tuple[str, str] = ("client_ip", "")  # (kind, name): header/cookie name, or client_ip/path
    health_check: HealthCheckSpec | None = None
    outlier: OutlierSpec | None = None
    breaker: BreakerSpec | None = None
    retries: RetrySpec | None = None
    backup: tuple[Target, ...] = ()
    slow_start: float = 0.0
    plain: bool = field(default=True)  # one target, no policy: the proxy's original, cheapest path
    sources: tuple[SourceSpec, ...] = ()  # discovery: targets found are composed into ``targets``

    @property
    def all_targets(self) -> tuple[Target, ...]:
        """Primary targets, then backup targets (the order of shared records and metrics)."""
        return self.targets + self.backup

    def weight(self, index: int) -> int:
        return self.weights[index] if index < len(self.weights) else 1


def parse_upstream(name: str, node: Node) -> UpstreamSpec:
    """Reads one entry of ``upstreams:``; targets are URLs or ``{url: URL, weight: N}`` mappings."""
    if isinstance(node.value, str):  # shorthand: `name: http://host:port`
        return UpstreamSpec(name, (parse_target(node),))
    node.mapping(UPSTREAM_KEYS)
    sources = parse_sources(name, node)  # with a source, targets may be empty until it answers (503)
    targets_node = node.child("targets")
    if not sources:
        targets_node.required("a list of target URLs")  # or a discovery source: dns, file, etcd
    weighted = tuple(_parse_target_entry(t) for t in targets_node.elements(optional=True))
    if not weighted and not sources:
        targets_node.fail("at least one target URL")
    backup_node = node.child("backup")
    backup = tuple(_parse_target_entry(t).target for t in backup_node.elements(optional=True))
    targets = tuple(w.target for w in weighted)
    if len({t.base_path for t in targets + backup}) > 1:
        targets_node.fail("targets that share one base path (backup targets too)")
    if len(set(targets + backup)) != len(targets + backup):
        targets_node.fail("distinct target URLs (a target is listed twice)")
    several = len(targets) + len(backup) > 1
    balancer = node.child("balancer").choice(BALANCERS, "p2c_ewma")
    outlier_node = node.child("outlier_detection")
    retries_node = node.child("retries")
    policies = ("balancer", "hash_on", "health_check", "outlier_detection", "circuit_breaker", "retries",
                "backup", "slow_start")
    return UpstreamSpec(
        name=name,
        targets=targets,
        connect_timeout=node.child("connect_timeout").duration(5.0),
        read_timeout=node.child("read_timeout").duration(60.0),
        keepalive=node.child("keepalive").integer(128, minimum=0),
        keepalive_timeout=node.child("keepalive_timeout").duration(60.0),
        websocket_idle_timeout=node.child("websocket_idle_timeout").duration(600.0),
        weights=tuple(w.weight for w in weighted) if any(w.weight != 1 for w in weighted) else (),
        balancer=balancer,
        hash_on=_parse_hash_on(node.child("hash_on"), balancer),
        health_check=_parse_health(node.child("health_check")),
        # passive checks and retries are on by default where there is another target to turn to
        outlier=_parse_outlier(outlier_node, default_on=several),
        breaker=_parse_breaker(node.child("circuit_breaker")),
        retries=_parse_retries(retries_node, default_on=several),
        backup=backup,
        slow_start=node.child("slow_start").duration(0.0, positive=False),
        plain=len(targets) == 1 and not several and not any(key in node.value for key in policies),
        sources=sources,
    )


def _parse_target_entry(node: Node) -> WeightedTarget:
    if isinstance(node.value, dict):
        node.mapping(frozenset({"url", "weight"}))
        return WeightedTarget(parse_target(node.child("url").required()),
                              node.child("weight").integer(1, minimum=1, maximum=1000))
    return WeightedTarget(parse_target(node))


def _parse_hash_on(node: Node, balancer: str) -> tuple[str, str]:
    """``client_ip``, ``path``, ``header:NAME`` or ``cookie:NAME`` (only with ``balancer: hash``)."""
    if node.missing:
        return ("client_ip", "")
    if balancer != "hash":
        node.fail("no hash_on unless balancer is hash")
    text = node.string()
    kind, _, name = text.partition(":")
    if kind in ("client_ip", "path") and not name:
        return (kind, "")
    if kind in ("header", "cookie") and name.strip():
        return (kind, name.strip().lower() if kind == "header" else name.strip())
    node.fail("client_ip, path, header:NAME or cookie:NAME")


def _off(node: Node) -> bool:
    return node.value is False or (isinstance(node.value, str) and node.value.lower() in ("off", "false"))


def _parse_health(node: Node) -> HealthCheckSpec | None:
    if node.missing or _off(node):
        return None
    node.mapping(frozenset({"path", "expected_status", "interval", "timeout", "healthy_threshold",
                            "unhealthy_threshold"}))
    path = node.child("path").string("/")
    if not path.startswith("/") or any(c in path for c in " \r\n"):
        node.child("path").fail("an absolute path such as /healthz")
    status_node = node.child("expected_status")
    statuses = status_node.value if isinstance(status_node.value, list) else [status_node.value or 200]
    expected = frozenset(Node(s, node.source, status_node.path).integer(minimum=100, maximum=599)
                         for s in statuses)
    return HealthCheckSpec(
        path=path, expected=expected,
        interval=node.child("interval").duration(5.0), timeout=node.child("timeout").duration(2.0),
        healthy_threshold=node.child("healthy_threshold").integer(2, minimum=1, maximum=100),
        unhealthy_threshold=node.child("unhealthy_threshold").integer(3, minimum=1, maximum=100),
    )


def _ratio(node: Node, default: float) -> float:
    if node.missing:
        return default
    if isinstance(node.value, (int, float)) and not isinstance(node.value, bool) and 0 < node.value <= 1:
        return float(node.value)
    node.fail("a ratio greater than 0 and at most 1, such as 0.5")


def _parse_outlier(node: Node, default_on: bool) -> OutlierSpec | None:
    if _off(node) or (node.missing and not default_on):
        return None
    if node.missing or node.value is True:
        return OutlierSpec()
    node.mapping(frozenset({"consecutive_failures", "base_ejection", "max_ejection", "max_ejected"}))
    return OutlierSpec(
        consecutive=node.child("consecutive_failures").integer(5, minimum=1, maximum=1000),
        base_ejection=node.child("base_ejection").duration(5.0),
        max_ejection=node.child("max_ejection").duration(60.0),
        max_ejected=_ratio(node.child("max_ejected"), 0.5),
    )


def _parse_breaker(node: Node) -> BreakerSpec | None:
    if node.missing or _off(node):
        return None
    if node.value is True:
        return BreakerSpec()
    node.mapping(frozenset({"error_ratio", "slow_call", "slow_ratio", "window", "min_requests", "open_for",
                            "half_open_requests"}))
    slow = node.child("slow_call")
    return BreakerSpec(
        error_ratio=_ratio(node.child("error_ratio"), 0.5),
        slow_call=None if slow.missing else slow.duration(),
        slow_ratio=_ratio(node.child("slow_ratio"), 0.5),
        window=node.child("window").duration(10.0),
        min_requests=node.child("min_requests").integer(20, minimum=1),
        open_for=node.child("open_for").duration(5.0),
        half_open_requests=node.child("half_open_requests").integer(3, minimum=1, maximum=1000),
    )


def _parse_retries(node: Node, default_on: bool) -> RetrySpec | None:
    if _off(node) or (node.missing and not default_on):
        return None
    if node.missing or node.value is True:
        return RetrySpec()
    # "retry_on", not "on": YAML 1.1 reads a bare `on` key as the boolean true
    node.mapping(frozenset({"attempts", "retry_on", "methods", "try_timeout", "deadline", "budget",
                            "min_per_second"}))
    on_node = node.child("retry_on")
    on = frozenset(v.choice(RETRY_CONDITIONS)
                   for v in on_node.elements(optional=True)) if not on_node.missing else DEFAULT_RETRY_ON
    methods_node = node.child("methods")
    methods = DEFAULT_RETRY_METHODS if methods_node.missing else frozenset(
        m.string().upper() for m in methods_node.elements())
    deadline, try_timeout = node.child("deadline"), node.child("try_timeout")
    return RetrySpec(
        attempts=node.child("attempts").integer(2, minimum=1, maximum=10),
        on=on, methods=methods,
        try_timeout=None if try_timeout.missing else try_timeout.duration(),
        deadline=None if deadline.missing else deadline.duration(),
        budget=_ratio(node.child("budget"), 0.2),
        min_per_second=float(node.child("min_per_second").integer(5, minimum=0)),
    )


def parse_upstreams(node: Node) -> dict[str, UpstreamSpec]:
    node.mapping(optional=True)
    upstreams = {}
    for name, entry in node.items():
        if not UPSTREAM_NAME.match(name):
            raise ConfigError(node.source, entry.path, "expected an upstream name of letters, digits, - _ .")
        upstreams[name] = parse_upstream(name, entry.required())
    return upstreams
