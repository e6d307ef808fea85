"""The metrics contract and PromQL helpers the deploy tests share.

``CONTRACT`` lists every metric the gateway serves at ``GET /metrics`` (or reserves for later features),
with its type and labels: the one list the dashboard, the alert rules and the real-Prometheus test are
checked against. Expressions are parsed by ``promtool`` (the real PromQL parser); ``metric_names`` then
pulls the metric names out of an expression that is already known to parse.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping
from pathlib import Path

import yaml

from tests.tools import require_tool

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"

# name -> (type, labels). Counters by their sample name (with _total), histograms by their base name.
CONTRACT: dict[str, tuple[str, tuple[str, ...]]] = {
    # recorded by workers, summed over workers
    "gateway_requests_total": ("counter", ("route", "method", "status_class")),
    "gateway_request_duration_seconds": ("histogram", ("route",)),
    "gateway_added_latency_seconds": ("histogram", ("route",)),
    "gateway_request_body_bytes_total": ("counter", ("route",)),
    "gateway_response_body_bytes_total": ("counter", ("route",)),
    "gateway_requests_in_flight": ("gauge", ()),
    "gateway_connections_open": ("gauge", ()),
    "gateway_upstream_requests_total": ("counter", ("upstream", "target", "status_class")),
    "gateway_upstream_duration_seconds": ("histogram", ("upstream", "target")),
    "gateway_upstream_connections_idle": ("gauge", ("upstream", "target")),
    "gateway_upstream_connections_opened_total": ("counter", ("upstream", "target")),
    "gateway_upstream_connections_reused_total": ("counter", ("upstream", "target")),
    "gateway_access_log_dropped_total": ("counter", ()),
    "gateway_ratelimit_evictions_total": ("counter", ()),
    "gateway_guard_bans_total": ("counter", ()),
    # recorded by the supervisor
    "gateway_workers": ("gauge", ()),
    "gateway_workers_ready": ("gauge", ()),
    "gateway_worker_restarts_total": ("counter", ()),
    "gateway_config_reloads_total": ("counter", ("result",)),
    "gateway_config_generation": ("gauge", ()),
    "gateway_build_info": ("gauge", ("version",)),
    # read by the supervisor from the shared upstream segment (gateway/upstreams/host.py)
    "gateway_upstream_target_healthy": ("gauge", ("upstream", "target")),
    "gateway_upstream_breaker_open": ("gauge", ("upstream", "target")),
    "gateway_upstream_outstanding_requests": ("gauge", ("upstream", "target")),
    "gateway_upstream_ejections_total": ("counter", ("upstream", "target")),
    "gateway_upstream_retries_total": ("counter", ("upstream", "target")),
    "gateway_upstream_breaker_opens_total": ("counter", ("upstream", "target")),
    # read by the supervisor from the guards' shared segment (gateway/guards/admin.py)
    "gateway_bans_active": ("gauge", ()),
    "gateway_guard_connections": ("gauge", ()),
}
# reserved for later features: not emitted yet, dashboards and alerts may use them already
RESERVED: dict[str, tuple[str, tuple[str, ...]]] = {
    # emitted once the feature is configured and has counted something (labelled counters start absent)
    "gateway_ratelimit_decisions_total": ("counter", ("route", "decision")),
    "gateway_guard_rejections_total": ("counter", ("reason",)),
    "gateway_guard_table_full_total": ("counter", ("table",)),
    "gateway_auth_failures_total": ("counter", ("route", "reason")),
    # service discovery, once an upstream has a source (gateway/upstreams/discovery/layer.py)
    "gateway_discovery_targets": ("gauge", ("upstream", "source")),
    "gateway_discovery_up": ("gauge", ("upstream", "source")),
    "gateway_discovery_refreshes_total": ("counter", ("upstream", "source", "result")),
    "gateway_discovery_last_success_timestamp_seconds": ("gauge", ("upstream", "source")),
    # later features
    "gateway_redis_up": ("gauge", ()),
}
TARGET_LABELS = ("job", "instance")  # added by Prometheus to every scraped series


def sample_labels(metrics: Mapping[str, tuple[str, tuple[str, ...]]]) -> dict[str, frozenset[str]]:
    """Every sample name those metrics expose (histograms: _bucket, _sum, _count) -> its label names."""
    samples: dict[str, frozenset[str]] = {}
    for name, (kind, labels) in metrics.items():
        names = frozenset((*labels, *TARGET_LABELS))
        if kind == "histogram":
            samples[name + "_bucket"] = names | {"le"}
            samples[name + "_sum"] = samples[name + "_count"] = names
        else:
            samples[name] = names
    return samples


SAMPLES = sample_labels({**CONTRACT, **RESERVED})

# Grafana's built-in interval variables, replaced by a duration so promtool can parse the expression.
GRAFANA_INTERVALS = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_TOKENS = re.compile(r"\$\w+|[0-9][0-9a-zA-Z_.]*|[a-zA-Z_:][a-zA-Z0-9_:]*(?=\s*(\()?)")
_KEYWORDS = frozenset({"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
                       "offset", "bool", "inf", "nan", "atan2", "start", "end"})
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (functions, keywords, labels, numbers and durations left out)."""
    text = _STRINGS.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _TOKENS.finditer(text):
        token = match.group(0)
        is_call = match.group(1) is not None
        if token[0] in "$0123456789" or is_call or token.lower() in _KEYWORDS:
            continue
        names.add(token)
    return names


def selector_labels(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names matched) for every ``name{...}`` selector in the expression."""
    return [(m.group(1), set(_MATCHER.findall(_STRINGS.sub('""', m.group(2)))))
            for m in _SELECTOR.finditer(expr)]


def unknown_references(expr: str, extra_names: frozenset[str] = frozenset()) -> list[str]:
    """Problems with the metric names and label matchers of an expression, against the contract."""
    problems = [f"unknown metric {name}" for name in sorted(metric_names(expr) - SAMPLES.keys() - extra_names)]
    for name, labels in selector_labels(expr):
        if name in SAMPLES and labels - SAMPLES[name]:
            problems.append(f"{name} has no label {sorted(labels - SAMPLES[name])}")
    return problems


def promtool_check_rules(path: Path) -> subprocess.CompletedProcess[str]:
    """``promtool check rules PATH``: parses every expression with Prometheus's own PromQL parser."""
    promtool = require_tool("promtool", "prometheus")
    return subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True,
                          timeout=60, check=False)


def check_expressions_parse(exprs: Mapping[str, str], tmp: Path) -> subprocess.CompletedProcess[str]:
    """Runs promtool over the expressions as recording rules, one group per expression named by its
    place (so promtool's error names the panel), Grafana's interval variables replaced by durations."""
    groups = []
    for i, (where, expr) in enumerate(exprs.items()):
        parsable = expr
        for variable, duration in GRAFANA_INTERVALS.items():
            parsable = parsable.replace(variable, duration)
        groups.append({"name": where, "rules": [{"record": f"check:expression_{i}", "expr": parsable}]})
    path = tmp / "expressions.rules.yml"
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return promtool_check_rules(path)
