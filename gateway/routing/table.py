"""The route table: host/method/path matching for the configured routes, on the compiled trie."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from gateway._fast.headers import host_of
from gateway._fast.router import Router
from gateway.config import ConfigError
from gateway.errors import MethodNotAllowed, RouteNotFound
from gateway.routing.config import RouteSpec

T = TypeVar("T")
__all__ = ["RouteTable", "host_of"]


class RouteTable(Generic[T]):
    """Maps (host, method, path) to what was registered for the most specific matching route."""

    def __init__(self, entries: Sequence[tuple[RouteSpec, T]], source: str, section: str = "routes") -> None:
        self._router = Router()
        for index, (spec, target) in enumerate(entries):
            try:
                self._router.add(spec.pattern, target, prefix=spec.prefix, methods=spec.methods,
                                 hosts=spec.hosts)
            except ValueError as exc:
                key = "prefix" if spec.prefix else "path"
                raise ConfigError(source, f"{section}[{index}].{key}", f"expected a valid route: {exc}") from None
        # (host, method, path) -> (target, params, prefix length), or None where ``match`` raises: the
        # compiled router's own method, for a caller that wants no Python frame around it (the request path)
        self.lookup: Callable[[str, str, str], tuple[T, dict[str, str] | None, int] | None] = \
            self._router.lookup  # type: ignore[assignment]  # the trie stores T values as objects

    def __len__(self) -> int:
        return len(self._router)

    def match(self, host: str, method: str, path: str) -> tuple[T, dict[str, str] | None, int]:
        """The target, path parameters and matched prefix length; raises 404 or 405 errors."""
        found = self._router.lookup(host, method, path)
        if found is not None:
            return found  # type: ignore[return-value]  # the trie stores T values as objects
        allowed = self._router.allowed_methods(host, path)
        if allowed:
            raise MethodNotAllowed(allowed)
        raise RouteNotFound()
