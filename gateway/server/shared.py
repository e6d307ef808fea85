"""Host-wide shared memory: named segments the supervisor makes once and every worker maps.

Features that keep state all workers of a host must agree on (rate-limit buckets, bans, connection counts
per client, breaker states) declare the segments they need with ``segment_sizes(config)`` in their own
module, listed in ``SEGMENT_FEATURES``. The supervisor creates each segment (a memfd, zero-filled) before
the first worker starts and keeps it for its whole life, so the state survives worker crashes and
reloads; every worker receives the descriptors (``--shared name=fd,...``) and maps them by name.

Sizes are fixed at start: a reload that would need a bigger segment keeps the old size (the feature
logs it). Workers coordinate inside a segment with atomic operations only (no lock a crashed worker could
hold); the pure-Python twins, which have no atomics, keep their state per process instead.
"""

from __future__ import annotations

import importlib
import mmap
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.loader import GatewayConfig

SEGMENT_FEATURES: tuple[str, ...] = ("gateway.upstreams.state", "gateway.ratelimit.runtime",
                                     "gateway.guards.segment")  # segment_sizes(config)


def segment_sizes(config: GatewayConfig) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for name in SEGMENT_FEATURES:
        sizes.update(importlib.import_module(name).segment_sizes(config))
    return sizes


def worker_exited(segments: Segments, pid: int, config: GatewayConfig) -> None:
    """After worker ``pid`` exited (crash or drain): features with ``worker_exited(maps, pid, config)``
    take back what it held in their segments (connection counts, for one)."""
    for name in SEGMENT_FEATURES:
        hook = getattr(importlib.import_module(name), "worker_exited", None)
        if hook is not None:
            hook(segments.maps, pid, config)


class Segments:
    """The supervisor's segments: name -> (fd, mapping)."""

    def __init__(self, sizes: Mapping[str, int]) -> None:
        self.fds: dict[str, int] = {}
        self.maps: dict[str, mmap.mmap] = {}
        for name, size in sizes.items():
            fd = os.memfd_create(f"gateway-{name}", os.MFD_CLOEXEC)  # pass_fds hands it to workers
            os.ftruncate(fd, max(size, 1))
            self.fds[name] = fd
            self.maps[name] = mmap.mmap(fd, max(size, 1))

    def argument(self) -> str:
        """The worker's ``--shared`` value."""
        return ",".join(f"{name}={fd}" for name, fd in self.fds.items())

    def close(self) -> None:
        for mapping in self.maps.values():
            mapping.close()
        for fd in self.fds.values():
            os.close(fd)
        self.maps.clear()
        self.fds.clear()


def attach(argument: str | None) -> dict[str, mmap.mmap]:
    """A worker's view: maps every segment named in ``--shared`` (empty without a supervisor)."""
    found: dict[str, mmap.mmap] = {}
    for item in filter(None, (argument or "").split(",")):
        name, _, fd = item.partition("=")
        descriptor = int(fd)
        found[name] = mmap.mmap(descriptor, os.fstat(descriptor).st_size)
        os.close(descriptor)
    return found
