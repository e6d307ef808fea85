"""A request's rate-limit key: the client's IP (spoof-proof), headers, the subject, the route, combined.

Built once per policy at config load (``KeyMaker``), so a request pays for one pass over its headers at
most. Keys are bytes: a lone ``ip`` key is the address itself; any other key is its parts, each tagged
with its kind (``i`` ip, ``s`` subject, ``r`` route, ``h`` header) and joined by NUL, so no value of one
part can pose as another's. A part the request lacks becomes the client's IP (tagged ``i``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from gateway.exchange import Exchange
from gateway.ratelimit.config import KeyPart

XFF = b"x-forwarded-for"
UNKNOWN_PEER = b"-"  # a connection without an address (a Unix socket): all such clients share a key
NO_HEADERS: dict[bytes, bytes] = {}


def peer_ip(ex: Exchange) -> bytes:
    """The socket's peer address (what a client cannot forge)."""
    client = ex.scope.get("client")
    return str.encode(client[0]) if client else UNKNOWN_PEER  # an address is ASCII: UTF-8's fast path


def forwarded_ip(ex: Exchange, hops: int) -> bytes:
    """The client as the last of ``hops`` trusted proxies saw it: the entry ``hops`` places from the right
    of X-Forwarded-For (all such headers in order). Entries further left were written by whoever sent the
    request and are not trusted; with fewer entries than hops the socket's peer is used."""
    entries: list[bytes] = []
    for name, value in ex.scope["headers"]:
        if name == XFF:
            entries.extend(value.split(b","))
    if len(entries) < hops:
        return peer_ip(ex)
    return entries[-hops].strip() or peer_ip(ex)


class KeyMaker:
    """Makes one policy's key for a request; ``headers`` are the (lower-case) header names it reads,
    including the tier header the policy may need (``values`` returns them all from one pass)."""

    def __init__(self, parts: Iterable[KeyPart], trusted_hops: int, route: str,
                 extra_headers: Iterable[str] = ()) -> None:
        self.parts = tuple(parts)
        self.hops = trusted_hops
        self.route = route.encode("utf-8")
        names = [part.header for part in self.parts if part.header is not None] + list(extra_headers)
        self.headers = frozenset(name.encode("latin-1") for name in names)
        only_ip = self.parts == (KeyPart("ip"),)
        # the request path calls ``make``: the common keys skip the general one's loop
        self.make: Callable[[Exchange, dict[bytes, bytes]], bytes] = self.key
        if only_ip:
            self.make = self.ip_key if trusted_hops else self.peer_key
        elif self.parts == (KeyPart("subject"),):
            self.make = self.subject_key

    def ip(self, ex: Exchange) -> bytes:
        return peer_ip(ex) if self.hops == 0 else forwarded_ip(ex, self.hops)

    def values(self, ex: Exchange) -> dict[bytes, bytes]:
        """The first value of each header this policy reads (one pass over the request's headers)."""
        found: dict[bytes, bytes] = {}
        if self.headers:
            wanted = self.headers
            for name, value in ex.scope["headers"]:
                if name in wanted and name not in found:
                    found[name] = value
        return found

    def peer_key(self, ex: Exchange, headers: dict[bytes, bytes]) -> bytes:
        return peer_ip(ex)

    def ip_key(self, ex: Exchange, headers: dict[bytes, bytes]) -> bytes:
        return forwarded_ip(ex, self.hops)

    def subject_key(self, ex: Exchange, headers: dict[bytes, bytes]) -> bytes:
        """``key`` for a lone ``subject`` part."""
        subject = ex.subject
        return b"s" + subject.encode("utf-8") if subject else b"i" + self.ip(ex)

    def key(self, ex: Exchange, headers: dict[bytes, bytes]) -> bytes:
        """Any key: its parts tagged and joined (``headers``: what ``values`` found)."""
        pieces: list[bytes] = []
        for part in self.parts:
            kind = part.kind
            if kind == "ip":
                pieces.append(b"i" + self.ip(ex))
            elif kind == "route":
                pieces.append(b"r" + self.route)
            elif kind == "subject":
                subject = ex.subject
                pieces.append(b"s" + subject.encode("utf-8") if subject else b"i" + self.ip(ex))
            else:
                value = headers.get(part.header.encode("latin-1")) if part.header else None
                pieces.append(b"h" + value if value else b"i" + self.ip(ex))
        return b"\0".join(pieces)
