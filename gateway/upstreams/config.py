"""The ``upstreams:`` section: named upstreams with their targets, timeouts and pool limits."""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.config import ConfigError, Node
from gateway.proxy.target import Target, parse_target

UPSTREAM_NAME = re.compile(r"^[A-Za-z0-9_.-]+\Z")
UPSTREAM_KEYS = frozenset(
    {"targets", "connect_timeout", "read_timeout", "keepalive", "keepalive_timeout"}
)


@dataclass(frozen=True, slots=True)
class UpstreamSpec:
    """One upstream. Timeouts in seconds; ``keepalive`` is idle pooled connections per worker."""

    name: str
    targets: tuple[Target, ...]
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    keepalive: int = 128
    keepalive_timeout: float = 60.0


def parse_upstream(name: str, node: Node) -> UpstreamSpec:
    """Reads one entry of ``upstreams:``; targets are URLs or ``{url: URL}`` mappings."""
    if isinstance(node.value, str):  # shorthand: `name: http://host:port`
        return UpstreamSpec(name, (parse_target(node),))
    node.mapping(UPSTREAM_KEYS)
    targets_node = node.child("targets").required("a list of target URLs")
    targets = tuple(_parse_target_entry(t) for t in targets_node.elements())
    if not targets:
        targets_node.fail("at least one target URL")
    bases = {t.base_path for t in targets}
    if len(bases) > 1:
        targets_node.fail("targets that share one base path")
    return UpstreamSpec(
        name=name,
        targets=targets,
        connect_timeout=node.child("connect_timeout").duration(5.0),
        read_timeout=node.child("read_timeout").duration(60.0),
        keepalive=node.child("keepalive").integer(128, minimum=0),
        keepalive_timeout=node.child("keepalive_timeout").duration(60.0),
    )


def _parse_target_entry(node: Node) -> Target:
    if isinstance(node.value, dict):
        node.mapping(frozenset({"url"}))
        return parse_target(node.child("url").required())
    return parse_target(node)


def parse_upstreams(node: Node) -> dict[str, UpstreamSpec]:
    node.mapping(optional=True)
    upstreams = {}
    for name, entry in node.items():
        if not UPSTREAM_NAME.match(name):
            raise ConfigError(node.source, entry.path, "expected an upstream name of letters, digits, - _ .")
        upstreams[name] = parse_upstream(name, entry.required())
    return upstreams
