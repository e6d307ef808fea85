"""A configured upstream at run time: its targets' pools and the choice of target per request."""

from __future__ import annotations

from gateway.proxy.pool import Pool
from gateway.upstreams.config import UpstreamSpec


class Upstream:
    """Targets of one upstream, chosen round-robin (balancing algorithms come with the upstreams issue)."""

    def __init__(self, spec: UpstreamSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.base_path = spec.targets[0].base_path
        self.pools = tuple(
            Pool(target, connect_timeout=spec.connect_timeout, read_timeout=spec.read_timeout,
                 keepalive=spec.keepalive, keepalive_timeout=spec.keepalive_timeout)
            for target in spec.targets
        )
        self._next = 0

    def pick(self) -> Pool:
        pools = self.pools
        if len(pools) == 1:
            return pools[0]
        index = self._next
        self._next = (index + 1) % len(pools)
        return pools[index]

    def sweep(self, now: float) -> None:
        for pool in self.pools:
            pool.sweep(now)

    def close(self) -> None:
        for pool in self.pools:
            pool.close()
