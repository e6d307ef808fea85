"""An upstream's discovery sources in the config file: ``dns:``, ``file:`` and ``etcd:`` beside (or instead
of) ``targets:``.

Each source is a frozen spec read at load, so ``gateway check`` rejects a bad one like any other key;
the supervisor's discovery layer (gateway.upstreams.discovery.layer) runs them. The entries a source
finds (a file's list, an etcd value) are read by ``parse_entry``, the same rules as ``targets:``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.config import ConfigError, Node
from gateway.proxy.target import parse_target

SOURCE_KEYS = ("dns", "file", "etcd")
FAMILIES = ("both", "ipv4", "ipv6")
_HOSTNAME = re.compile(r"^(?=.{1,253}\.?\Z)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)"
                       r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)*\.?\Z")


@dataclass(frozen=True, slots=True)
class Found:
    """A target a source found: its URL, balancing weight, and whether it is a backup target."""

    url: str
    weight: int = 1
    backup: bool = False

    def entry(self) -> str | dict[str, Any]:
        """The target in the configuration's own form (``targets:`` / ``backup:`` entries)."""
        return self.url if self.weight == 1 or self.backup else {"url": self.url, "weight": self.weight}


@dataclass(frozen=True, slots=True)
class DnsSpec:
    """A/AAAA records of ``name`` (targets ``http://ADDRESS:port``) or SRV records of ``srv`` (host, port
    and weight from each record; the lowest priority are the targets, higher ones backup targets).
    Re-resolved when the answer's TTL runs out, kept within ``min_refresh`` and ``max_refresh``."""

    name: str = ""
    srv: str = ""
    port: int = 0
    nameservers: tuple[tuple[str, int], ...] = ()  # empty: the system's (/etc/resolv.conf)
    family: str = "both"
    min_refresh: float = 1.0
    max_refresh: float = 300.0
    timeout: float = 2.0

    kind = "dns"

    def describe(self) -> str:
        what = f"SRV {self.srv}" if self.srv else f"{self.family_records()} {self.name}:{self.port}"
        servers = ",".join(f"{h}:{p}" for h, p in self.nameservers) or "system resolver"
        return f"{what} @ {servers}"

    def family_records(self) -> str:
        return {"both": "A/AAAA", "ipv4": "A", "ipv6": "AAAA"}[self.family]


@dataclass(frozen=True, slots=True)
class FileSpec:
    """A YAML or JSON list of targets in ``path``, read again when its modification time, size or
    content changes (checked every ``interval``)."""

    path: str
    interval: float = 1.0

    kind = "file"

    def describe(self) -> str:
        return self.path


@dataclass(frozen=True, slots=True)
class EtcdSpec:
    """Targets under ``prefix`` in etcd (one key per target, value a URL or ``{"url", "weight"}``), read
    with the v3 JSON gateway and watched for changes."""

    endpoints: tuple[str, ...]
    prefix: str
    timeout: float = 2.0

    kind = "etcd"

    def describe(self) -> str:
        return f"{self.prefix} @ {','.join(self.endpoints)}"


SourceSpec = DnsSpec | FileSpec | EtcdSpec


def parse_sources(name: str, node: Node) -> tuple[SourceSpec, ...]:
    """The discovery sources of upstream ``name`` (``node`` is its mapping)."""
    sources: list[SourceSpec] = []
    if not node.child("dns").missing:
        sources.append(parse_dns(node.child("dns")))
    if not node.child("file").missing:
        sources.append(parse_file(node.child("file")))
    if not node.child("etcd").missing:
        sources.append(parse_etcd(name, node.child("etcd")))
    return tuple(sources)


def parse_dns(node: Node) -> DnsSpec:
    node.mapping(frozenset({"name", "srv", "port", "nameserver", "family", "min_refresh", "max_refresh",
                            "timeout"}))
    name_node, srv_node, port_node = node.child("name"), node.child("srv"), node.child("port")
    if name_node.missing == srv_node.missing:
        node.fail("either name (A/AAAA records, with port) or srv (SRV records)")
    if not srv_node.missing:
        srv = _hostname(srv_node)
        if not port_node.missing:
            port_node.fail("no port with srv (each SRV record names its port)")
        name, port = "", 0
    else:
        name, srv = _hostname(name_node), ""
        port = port_node.required("the targets' port").integer(minimum=1, maximum=65535)
    min_refresh = node.child("min_refresh").duration(1.0)
    max_node = node.child("max_refresh")
    max_refresh = max_node.duration(300.0)
    if max_refresh < min_refresh:
        max_node.fail(f"a duration of at least min_refresh ({min_refresh:g}s)")
    return DnsSpec(
        name=name, srv=srv, port=port, nameservers=_nameservers(node.child("nameserver")),
        family=node.child("family").choice(FAMILIES, "both"),
        min_refresh=min_refresh, max_refresh=max_refresh, timeout=node.child("timeout").duration(2.0),
    )


def _hostname(node: Node) -> str:
    text: str = node.string()
    if not _HOSTNAME.match(text):
        node.fail("a DNS name such as api.internal or _http._tcp.api.internal")
    return text.rstrip(".").lower()


def _nameservers(node: Node) -> tuple[tuple[str, int], ...]:
    """``HOST[:PORT]`` or ``[V6]:PORT``, one or a list (default port 53)."""
    if node.missing:
        return ()
    entries = list(node.elements()) if isinstance(node.value, list) else [node]
    if not entries:
        node.fail("a nameserver address such as 127.0.0.1:5353")
    return tuple(_nameserver(entry) for entry in entries)


def _nameserver(node: Node) -> tuple[str, int]:
    text: str = node.string()
    expected = "a nameserver IP address with an optional port, such as 127.0.0.1:5353 or [::1]:53"
    try:
        parts = urlsplit("//" + text)
        host, port = parts.hostname or "", parts.port or 53
        ipaddress.ip_address(host)
    except ValueError:
        node.fail(expected)
    if parts.path or parts.username is not None:
        node.fail(expected)
    return host, port


def parse_file(node: Node) -> FileSpec:
    if isinstance(node.value, str):
        return FileSpec(_relative(node, node.string()))
    node.mapping(frozenset({"path", "interval"}))
    path_node = node.child("path").required("the path of a YAML or JSON list of targets")
    return FileSpec(_relative(path_node, path_node.string()), node.child("interval").duration(1.0))


def _relative(node: Node, path: str) -> str:
    """A relative path is relative to the config file's folder (kept as is without a file)."""
    source = Path(node.source)
    if Path(path).is_absolute() or not source.is_file():  # a source that is no file: no folder to start from
        return path
    return str(source.parent / path)


def parse_etcd(name: str, node: Node) -> EtcdSpec:
    node.mapping(frozenset({"endpoints", "prefix", "timeout"}))
    endpoints_node = node.child("endpoints").required("etcd client URLs such as http://127.0.0.1:2379")
    items = list(endpoints_node.elements()) if isinstance(endpoints_node.value, list) else [endpoints_node]
    if not items:
        endpoints_node.fail("at least one etcd client URL")
    endpoints = tuple(_endpoint(item) for item in items)
    prefix_node = node.child("prefix")
    prefix: str = prefix_node.string(f"/gateway/upstreams/{name}/targets/")
    return EtcdSpec(endpoints, prefix, node.child("timeout").duration(2.0))


def _endpoint(node: Node) -> str:
    target = parse_target(node)  # http://HOST:PORT, no https yet (as for upstream targets)
    if target.base_path:
        node.fail("an etcd client URL without a path, such as http://127.0.0.1:2379")
    return f"http://{target.host}:{target.port}" if ":" not in target.host else f"http://[{target.host}]:{target.port}"


def parse_entry(node: Node, *, backup: bool = False) -> Found:
    """One found target: ``http://HOST:PORT`` or ``{url: ..., weight: N}`` (raises ConfigError)."""
    if isinstance(node.value, dict):
        node.mapping(frozenset({"url", "weight"}))
        url = parse_target(node.child("url").required()).url
        return Found(url, node.child("weight").integer(1, minimum=1, maximum=1000), backup)
    return Found(parse_target(node).url, 1, backup)


def parse_list(value: Any, source: str) -> tuple[Found, ...]:
    """A list of targets (a file's content); raises ConfigError naming the entry."""
    node = Node(value, source, "")
    if isinstance(value, dict) and "targets" in value:  # also accept {targets: [...]}
        node.mapping(frozenset({"targets"}))
        node = node.child("targets")
    found = tuple(parse_entry(entry) for entry in node.elements())
    if not found:
        raise ConfigError(source, node.path, "expected at least one target (an empty list is ignored: the "
                          "last good list is kept)")
    return found
