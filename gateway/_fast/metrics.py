"""Per-worker metric recording (see ``metrics_py``): the compiled build when present, else the twin."""

from typing import TYPE_CHECKING

from gateway._fast import kind, load

_impl = load("metrics")

if TYPE_CHECKING:  # both builds share metrics_py's API; type-check against it
    from gateway._fast.metrics_py import (
        BUCKETS,
        HISTOGRAM_WIDTH,
        METHODS,
        STATUS_CLASSES,
        UPSTREAM_CLASSES,
        Recorder,
    )
else:
    BUCKETS = _impl.BUCKETS
    HISTOGRAM_WIDTH = _impl.HISTOGRAM_WIDTH
    METHODS = _impl.METHODS
    STATUS_CLASSES = _impl.STATUS_CLASSES
    UPSTREAM_CLASSES = _impl.UPSTREAM_CLASSES
    Recorder = _impl.Recorder

IMPLEMENTATION = kind(_impl)

__all__ = ["BUCKETS", "HISTOGRAM_WIDTH", "IMPLEMENTATION", "METHODS", "STATUS_CLASSES", "UPSTREAM_CLASSES",
           "Recorder"]
