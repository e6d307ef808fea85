"""The ``guards:`` section: connection caps, bans, allow and deny lists (see the README's "Connection
guards"). The protocol's own limits (header size and count, header timeout, body rate and size) are
server settings, since they apply to every connection whether or not this section exists.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from gateway.config import Node

GUARDS_KEYS = frozenset({"allow", "deny", "max_connections_per_ip", "max_connections", "ipv6_prefix", "table_size",
                         "bans"})
BAN_KEYS = frozenset({"after", "window", "duration", "max_duration", "forget_after"})
DEFAULT_TABLE_SIZE = 16384
MAX_TABLE_SIZE = 1 << 22
MAX_PER_IP = (1 << 24) - 1  # a count slot holds 24 bits


@dataclass(frozen=True, slots=True)
class BanPolicy:
    """``after`` offences within ``window`` seconds ban a client for ``duration``; each further ban
    doubles it up to ``max_duration``; ``forget_after`` seconds after a ban ends, the next one is a
    first ban again."""

    after: int = 10
    window: float = 60.0
    duration: float = 60.0
    max_duration: float = 3600.0
    forget_after: float = 86400.0


@dataclass(frozen=True, slots=True)
class GuardsSpec:
    """The guards' configuration; the defaults guard nothing (no lists, caps or bans)."""

    allow: tuple[str, ...] = ()  # normalised CIDRs: these clients bypass caps and bans
    deny: tuple[str, ...] = ()  # these clients are disconnected at once
    max_connections_per_ip: int = 0  # 0: no cap
    max_connections: int = 0  # on the host, all workers together; 0: no cap
    ipv6_prefix: int = 64  # IPv6 clients are counted and banned per network of this length
    table_size: int = DEFAULT_TABLE_SIZE  # client slots in the shared tables (fixed at start)
    bans: BanPolicy | None = None  # None: no bans

    @property
    def counting(self) -> bool:
        return self.max_connections_per_ip > 0 or self.max_connections > 0

    @property
    def screening(self) -> bool:
        """Whether a connection needs any check at all when it is made."""
        return bool(self.allow or self.deny or self.counting or self.bans is not None)

    def describe(self) -> str:
        parts = [f"{len(self.allow)} allowed and {len(self.deny)} denied networks",
                 f"connections per ip {self.max_connections_per_ip or 'unlimited'}",
                 f"on the host {self.max_connections or 'unlimited'}"]
        if self.bans is not None:
            b = self.bans
            parts.append(f"ban after {b.after} offences in {b.window:g}s for {b.duration:g}s "
                         f"(doubling up to {b.max_duration:g}s)")
        return ", ".join(parts)


def parse_guards(node: Node) -> GuardsSpec | None:
    """The ``guards:`` section, or None when absent."""
    if node.missing:
        return None
    node.mapping(GUARDS_KEYS)
    return GuardsSpec(
        allow=parse_networks(node.child("allow")),
        deny=parse_networks(node.child("deny")),
        max_connections_per_ip=node.child("max_connections_per_ip").integer(0, minimum=0, maximum=MAX_PER_IP),
        max_connections=node.child("max_connections").integer(0, minimum=0),
        ipv6_prefix=node.child("ipv6_prefix").integer(64, minimum=1, maximum=128),
        table_size=node.child("table_size").integer(DEFAULT_TABLE_SIZE, minimum=64, maximum=MAX_TABLE_SIZE),
        bans=parse_bans(node.child("bans")),
    )


def parse_networks(node: Node) -> tuple[str, ...]:
    networks = []
    for entry in node.elements(optional=True):
        text = entry.string()
        try:
            networks.append(str(ipaddress.ip_network(text.strip())))
        except ValueError:
            entry.fail("an address or a CIDR network like 10.0.0.0/8 or 2001:db8::/32 (host bits zero)")
    return tuple(networks)


def parse_bans(node: Node) -> BanPolicy | None:
    if node.missing:
        return None
    node.mapping(BAN_KEYS)
    defaults = BanPolicy()
    duration = node.child("duration").duration(defaults.duration)
    max_node = node.child("max_duration")
    maximum = max_node.duration(max(defaults.max_duration, duration))
    if maximum < duration:
        max_node.fail(f"a duration of at least the first ban's ({duration:g}s)")
    return BanPolicy(
        after=node.child("after").integer(defaults.after, minimum=1),
        window=node.child("window").duration(defaults.window),
        duration=duration,
        max_duration=maximum,
        forget_after=node.child("forget_after").duration(defaults.forget_after),
    )
