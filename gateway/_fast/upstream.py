"""The upstream HTTP/1.1 connection (see ``upstream_py``): compiled when built, else the pure twin."""

from typing import TYPE_CHECKING

from gateway._fast import kind, load

_impl = load("upstream")

if TYPE_CHECKING:  # both builds share upstream_py's API; type-check against it
    from gateway._fast.upstream_py import HIGH_WATER, UpstreamConnection
else:
    HIGH_WATER = _impl.HIGH_WATER
    UpstreamConnection = _impl.UpstreamConnection

IMPLEMENTATION = kind(_impl)

__all__ = ["HIGH_WATER", "IMPLEMENTATION", "UpstreamConnection"]
