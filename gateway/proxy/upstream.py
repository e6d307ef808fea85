"""The proxy's upstream connection: compiled when built (see ``gateway/_fast/upstream_py.py``)."""

from gateway._fast.upstream import HIGH_WATER, UpstreamConnection
from gateway.errors import UpstreamError, UpstreamTimeout

__all__ = ["HIGH_WATER", "UpstreamConnection", "UpstreamError", "UpstreamTimeout"]
