# cython: annotation_typing=False
"""The bucket table's word operations, keyed hash and clock: plain Python here, C in ``bucket_ops.pxd``.

``bucket_py.py`` calls these as ``ops.NAME(...)``; compiled, the same calls resolve (``cimport`` in
``bucket_c.pxd``, as numpy's ``import``/``cimport`` pairs do) to the inline C functions of the .pxd: GCC
``__atomic`` builtins on the shared words, C SipHash-1-3 and ``clock_gettime``. Here a compare-and-swap is
a read then a write, atomic only because one process runs one event-loop thread: the pure-Python twin's
tables are private to a process for that reason.
"""

from __future__ import annotations

import time
from hashlib import blake2b

MASK64 = 0xFFFF_FFFF_FFFF_FFFF


def atomic_load(words: memoryview, index: int) -> int:
    return words[index]


def atomic_store(words: memoryview, index: int, value: int) -> None:
    words[index] = value


def atomic_cas(words: memoryview, index: int, expected: int, desired: int) -> bool:
    """Sets ``words[index]`` to ``desired`` if it holds ``expected``; whether it did."""
    if words[index] != expected:
        return False
    words[index] = desired
    return True


def atomic_add(words: memoryview, index: int, value: int) -> int:
    """Adds ``value``; the new value."""
    total: int = words[index] + value
    words[index] = total
    return total


def atomic_exchange(words: memoryview, index: int, value: int) -> int:
    """Sets ``words[index]`` to ``value``; the old value."""
    old: int = words[index]
    words[index] = value
    return old


def monotonic_ns() -> int:
    return time.monotonic_ns()


def keyed_hash(k0: int, k1: int, seed: int, data: bytes) -> int:
    """A 64-bit hash of ``seed`` (8 bytes, little-endian) then ``data`` under the key (k0, k1), signed.

    Compiled, this is SipHash-1-3 (``siphash`` below is its reference). Here it is keyed BLAKE2b from
    hashlib, because SipHash in Python costs about 20 us a call; a twin's table is private to its process,
    so the two hashes never index the same table."""
    key = ((k0 & MASK64) | (k1 & MASK64) << 64).to_bytes(16, "little")
    digest = blake2b((seed & MASK64).to_bytes(8, "little") + data, digest_size=8, key=key).digest()
    return int.from_bytes(digest, "little", signed=True)


def siphash(k0: int, k1: int, data: bytes, crounds: int = 1, drounds: int = 3) -> int:
    """SipHash-c-d of ``data`` (bytes) under the 128-bit key (k0, k1); unsigned 64-bit. The reference the
    compiled ``keyed_hash`` is tested against (SipHash-1-3 of the seed's 8 bytes, then the data)."""
    v0 = k0 ^ 0x736F6D6570736575
    v1 = k1 ^ 0x646F72616E646F6D
    v2 = k0 ^ 0x6C7967656E657261
    v3 = k1 ^ 0x7465646279746573
    length = len(data)
    end = length - length % 8
    blocks = [int.from_bytes(data[i:i + 8], "little") for i in range(0, end, 8)]
    blocks.append(((length & 0xFF) << 56) | int.from_bytes(data[end:], "little"))
    for m in blocks:
        v3 ^= m
        for _ in range(crounds):
            v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
        v0 ^= m
    v2 ^= 0xFF
    for _ in range(drounds):
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


def _rotl(x: int, bits: int) -> int:
    return ((x << bits) | (x >> (64 - bits))) & MASK64


def _sipround(v0: int, v1: int, v2: int, v3: int) -> tuple[int, int, int, int]:
    v0 = (v0 + v1) & MASK64
    v1 = _rotl(v1, 13) ^ v0
    v0 = _rotl(v0, 32)
    v2 = (v2 + v3) & MASK64
    v3 = _rotl(v3, 16) ^ v2
    v0 = (v0 + v3) & MASK64
    v3 = _rotl(v3, 21) ^ v0
    v2 = (v2 + v1) & MASK64
    v1 = _rotl(v1, 17) ^ v2
    v2 = _rotl(v2, 32)
    return v0, v1, v2, v3
