"""Balancers: which of an upstream's available targets takes the next request.

Every balancer gets the candidates (targets that are healthy, not ejected, whose breaker lets a request
through, not yet tried for this request) and answers one of them. Weights are the configured weight
times the slow-start factor (``Member.factor``), so a target that just came back ramps up everywhere.

- ``round_robin``: nginx's smooth weighted round-robin (each pick adds every candidate's weight to its
  running score, takes the highest and subtracts the total from it: weights 5,1,1 give a a b a c a a,
  never a burst of five a's).
- ``least_request``: fewest outstanding requests (host-wide, from the shared segment) per unit of weight.
- ``p2c_ewma``: two random candidates, the one with the lower latency EWMA x (outstanding + 1) / weight
  wins (power of two choices: near-best choice at the cost of two looks, no herding on one target).
- ``hash``: a ring of virtual nodes (``VNODES`` per unit of weight) hashed from the target URLs; a
  request's key (header, cookie, client IP or path) maps to the next node clockwise, skipping
  unavailable targets. A target joining or leaving moves only the keys of its own arcs: about 1/N.
- ``random``: weighted random.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from gateway.exchange import Exchange
    from gateway.upstreams.upstream import Member

VNODES = 160


class Balancer(Protocol):
    def choose(self, candidates: Sequence[Member], ex: Exchange | None) -> Member: ...


class RoundRobin:
    """Smooth weighted round-robin (nginx's ``ngx_http_upstream_get_peer``)."""

    def choose(self, candidates: Sequence[Member], ex: Exchange | None) -> Member:
        total = 0.0
        best = candidates[0]
        for member in candidates:
            weight = member.weight * member.factor()
            member.current += weight
            total += weight
            if member.current > best.current:
                best = member
        best.current -= total
        return best


class LeastRequest:
    """Fewest host-wide outstanding requests per unit of weight; ties go round the list."""

    def __init__(self) -> None:
        self.turn = 0

    def choose(self, candidates: Sequence[Member], ex: Exchange | None) -> Member:
        count = len(candidates)
        self.turn = start = (self.turn + 1) % count
        best = candidates[start]
        best_load = (best.outstanding() + 1) / (best.weight * best.factor())
        for step in range(1, count):
            member = candidates[(start + step) % count]
            load = (member.outstanding() + 1) / (member.weight * member.factor())
            if load < best_load:
                best, best_load = member, load
        return best


class PowerOfTwo:
    """Power of two choices on latency EWMA x (outstanding + 1) / weight."""

    def __init__(self, rng: Callable[[], float] = random.random) -> None:
        self.random = rng

    def choose(self, candidates: Sequence[Member], ex: Exchange | None) -> Member:
        count = len(candidates)
        if count == 1:
            return candidates[0]
        first = int(self.random() * count)
        second = int(self.random() * (count - 1))
        if second >= first:
            second += 1  # two distinct candidates
        a, b = candidates[first], candidates[second]
        now = a.upstream.now
        return a if a.cost(now) <= b.cost(now) else b


class Random:
    """Weighted random."""

    def __init__(self, rng: Callable[[], float] = random.random) -> None:
        self.random = rng

    def choose(self, candidates: Sequence[Member], ex: Exchange | None) -> Member:
        weights = [m.weight * m.factor() for m in candidates]
        point = self.random() * sum(weights)
        for member, weight in zip(candidates, weights, strict=True):
            point -= weight
            if point < 0:
                return member
        return candidates[-1]


def hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


class Ring:
    """A consistent-hash ring over target names: ``VNODES`` points per unit of weight."""

    def __init__(self, names: Sequence[str], weights: Sequence[int], vnodes: int = VNODES) -> None:
        points = sorted(
            (hash64(f"{name}#{i}".encode()), index)
            for index, (name, weight) in enumerate(zip(names, weights, strict=True))
            for i in range(vnodes * weight)
        )
        self.hashes = [h for h, _ in points]
        self.owners = [index for _, index in points]

    def lookup(self, key: bytes, usable: Callable[[int], bool] | None = None) -> int:
        """The owner of the first point at or after ``key``'s hash that is ``usable`` (-1: none)."""
        hashes, owners = self.hashes, self.owners
        if not hashes:
            return -1
        start = bisect.bisect_left(hashes, hash64(key))
        count = len(hashes)
        for step in range(count):
            owner = owners[(start + step) % count]
            if usable is None or usable(owner):
                return owner
        return -1


class Hash:
    """Consistent hashing on a request key; unavailable targets are skipped clockwise."""

    def __init__(self, members: Sequence[Member], on: tuple[str, str], fallback: Balancer) -> None:
        self.members = list(members)
        self.ring = Ring([m.pool.target.url for m in members], [m.weight for m in members])
        self.kind, self.name = on
        self.name_bytes = self.name.encode("latin-1")
        self.fallback = fallback

    def choose(self, candidates: Sequence[Member], ex: Exchange | None) -> Member:
        key = self.key(ex) if ex is not None else None
        if key is None:
            return self.fallback.choose(candidates, ex)
        allowed = {id(m) for m in candidates}
        members = self.members
        owner = self.ring.lookup(key, lambda index: id(members[index]) in allowed)
        return members[owner] if owner >= 0 else self.fallback.choose(candidates, ex)

    def key(self, ex: Exchange) -> bytes | None:
        """The request's hash key, or None when it has none (no such header or cookie)."""
        scope = ex.scope
        if self.kind == "client_ip":
            client = scope.get("client")
            return client[0].encode("latin-1") if client else None
        if self.kind == "path":
            return ex.path.encode("latin-1")
        for name, value in scope["headers"]:
            if self.kind == "header" and name == self.name_bytes:
                return bytes(value)
            if self.kind == "cookie" and name == b"cookie":
                found = cookie_value(value, self.name_bytes)
                if found is not None:
                    return found
        return None


def cookie_value(header: bytes, name: bytes) -> bytes | None:
    for part in header.split(b";"):
        key, sep, value = part.strip().partition(b"=")
        if sep and key == name:
            return value
    return None


def make_balancer(kind: str, members: Sequence[Member], hash_on: tuple[str, str]) -> Balancer:
    if kind == "round_robin":
        return RoundRobin()
    if kind == "least_request":
        return LeastRequest()
    if kind == "random":
        return Random()
    if kind == "hash":
        return Hash(members, hash_on, PowerOfTwo())
    return PowerOfTwo()
