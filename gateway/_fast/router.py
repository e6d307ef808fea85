"""The route trie (see ``router_py``): the compiled build when present, else the pure-Python twin."""

from typing import TYPE_CHECKING

from gateway._fast import kind, load

_impl = load("router")

if TYPE_CHECKING:  # both builds share router_py's API; type-check against it
    from gateway._fast.router_py import ALL_METHODS, Router
else:
    Router = _impl.Router
    ALL_METHODS = _impl.ALL_METHODS

IMPLEMENTATION = kind(_impl)

__all__ = ["ALL_METHODS", "IMPLEMENTATION", "Router"]
