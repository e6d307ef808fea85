"""Allow and deny lists: sets of IPv4 and IPv6 networks, matched in a few set lookups.

Networks are grouped by prefix length; a lookup shifts the address right by each length's host bits
and looks the rest up in that length's set, so its cost grows with the number of distinct prefix
lengths (a handful in practice), not with the number of networks.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def normalize(network: Network) -> Network:
    """An IPv4-mapped IPv6 network (``::ffff:10.0.0.0/104``) as the IPv4 network it means."""
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


class CidrSet:
    """Networks from CIDR strings (``10.0.0.0/8``, ``2001:db8::/32``, or a single address)."""

    __slots__ = ("v4", "v6")

    def __init__(self, networks: Iterable[str]) -> None:
        groups: dict[int, dict[int, set[int]]] = {32: {}, 128: {}}
        for text in networks:
            network = normalize(ipaddress.ip_network(text))
            shift = network.max_prefixlen - network.prefixlen
            groups[network.max_prefixlen].setdefault(shift, set()).add(int(network.network_address) >> shift)
        # longest prefixes first: the most specific networks are usually the many single addresses
        self.v4 = tuple((shift, frozenset(nets)) for shift, nets in sorted(groups[32].items()))
        self.v6 = tuple((shift, frozenset(nets)) for shift, nets in sorted(groups[128].items()))

    def contains(self, value: int, bits: int) -> bool:
        """Whether the address ``value`` (``bits`` 32 or 128, see gateway.guards.address) is listed."""
        for shift, networks in self.v4 if bits == 32 else self.v6:  # noqa: SIM110 - no generator per connection
            if value >> shift in networks:
                return True
        return False

    def __bool__(self) -> bool:
        return bool(self.v4 or self.v6)
