"""Client addresses as the guards see them: an integer and a width, and the 16-byte key of a client.

IPv4 clients (also as IPv4-mapped IPv6, ``::ffff:a.b.c.d``, from a dual-stack listener) are keyed by
their address; IPv6 clients by their ``/ipv6_prefix`` network (default /64), since one IPv6 user commonly
holds a whole /64 and could otherwise open as many "clients" as it likes.
"""

from __future__ import annotations

import ipaddress
import socket

MAPPED = 0xFFFF << 32  # ::ffff:0:0/96, the IPv4-mapped range


def parse_address(text: str) -> tuple[int, int] | None:
    """``(value, bits)`` of an address string (bits 32 for IPv4 and IPv4-mapped, 128 for IPv6), or None."""
    try:
        if ":" not in text:
            return int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big"), 32
        value = int.from_bytes(socket.inet_pton(socket.AF_INET6, text.partition("%")[0]), "big")
    except (OSError, ValueError):
        return None
    if value >> 32 == 0xFFFF:
        return value & 0xFFFFFFFF, 32
    return value, 128


def client_key(value: int, bits: int, ipv6_prefix: int) -> bytes:
    """The 16 bytes a client is counted and banned under."""
    if bits == 32:
        return (MAPPED | value).to_bytes(16, "big")
    shift = 128 - ipv6_prefix
    return ((value >> shift) << shift).to_bytes(16, "big")


def describe_key(key: bytes, ipv6_prefix: int) -> str:
    """A key as people write it: ``203.0.113.7`` or ``2001:db8:1:2::/64``."""
    value = int.from_bytes(key, "big")
    if value >> 32 == 0xFFFF:
        return str(ipaddress.IPv4Address(value & 0xFFFFFFFF))
    address = str(ipaddress.IPv6Address(value))
    return address if ipv6_prefix == 128 else f"{address}/{ipv6_prefix}"


def parse_client(text: str, ipv6_prefix: int) -> bytes | None:
    """The key of a client written as an address or, for IPv6, a network (``2001:db8::/64``); None if
    it is neither."""
    address, _, length = text.strip().partition("/")
    parsed = parse_address(address)
    if parsed is None:
        return None
    if length and (not length.isdigit() or parsed[1] != 128 or int(length) != ipv6_prefix):
        return None  # a network is only a client when it is exactly the configured IPv6 prefix
    return client_key(parsed[0], parsed[1], ipv6_prefix)
