"""Upstream target addresses: ``http://HOST:PORT[/base/path]``."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from gateway.config import Node


@dataclass(frozen=True, slots=True)
class Target:
    """One upstream address. ``base_path`` (no trailing slash) is prepended to forwarded paths."""

    host: str
    port: int
    base_path: str = ""
    url: str = field(init=False, compare=False)  # str(target), made once: logs name it per request

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", f"http://{self.authority}{self.base_path}")

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == 80 else f"{host}:{self.port}"

    def __str__(self) -> str:
        return self.url


def parse_target(node: Node) -> Target:
    """Reads ``http://HOST[:PORT][/path]`` from a config value; anything else is a ConfigError."""
    text = node.string()
    expected = "an upstream URL like http://127.0.0.1:9000"
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        node.fail(expected)
    if parts.scheme == "https":
        node.fail(expected + " (https upstreams are not supported yet)")
    if parts.scheme != "http" or not parts.hostname or parts.query or parts.fragment or port == 0:
        node.fail(expected)
    if parts.username is not None or parts.password is not None:
        node.fail(expected + " without credentials")
    base = parts.path.rstrip("/")
    if base and not base.startswith("/"):  # pragma: no cover - urlsplit always yields a leading /
        node.fail(expected)
    return Target(parts.hostname, port or 80, base)
