"""Upstream state all workers of a host agree on, in the host-wide shared segment ``upstreams``.

Layout (signed 64-bit cells)::

    header   [MAGIC, capacity, rows, 0 ...]                       HEADER cells
    owners   [pid of the worker writing row r]                    rows cells
    records  capacity x RECORD cells, one per (upstream, target) and one per upstream (target "")

    record   [key, HEALTH, EJECTED_UNTIL, EJECTIONS, RETURNED_AT, BREAKER, BREAKER_UNTIL, PROBES,
              PROBES_OK, EJECTIONS_TOTAL, BREAKER_OPENS, then per row: OUTSTANDING, EWMA_US, RETRIES]

Who writes what, so no cell needs a lock or an atomic instruction:
- keys (the directory) are written only by the supervisor, before the workers of a configuration start,
  so a worker finds its records by key and never inserts; a reload adds the new keys and keeps the old
  ones, so state (health, ejections, breakers, outstanding counts) carries across reloads and crashes;
- HEALTH is written only by the supervisor's active checker;
- the per-row cells are written only by the worker that owns the row; readers sum the rows. A worker
  claims row ``slot``, ``slot + workers`` or ``slot + 2*workers`` (the first whose owner is gone), so the
  old and new worker of a slot never share a row during a reload; when a worker exits, the supervisor
  zeroes its row's in-flight counts (``worker_exited``), so a crash leaves nothing outstanding;
- ejection and breaker cells are written by whichever worker decides; two workers deciding at once
  write nearly the same values (last write wins), which is harmless for timestamps and states.

Times are CLOCK_MONOTONIC nanoseconds, one clock for every process of the host. Without a supervisor
(tests, benchmarks) the same layout lives in private memory.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import time
from collections.abc import Iterable, Mapping

from gateway.upstreams.config import UpstreamSpec

SEGMENT = "upstreams"
MAGIC = 0x5550535452454D31  # "UPSTREM1"
HEADER = 8
(HEALTH, EJECTED_UNTIL, EJECTIONS, RETURNED_AT, BREAKER, BREAKER_UNTIL, PROBES, PROBES_OK,
 EJECTIONS_TOTAL, BREAKER_OPENS) = range(1, 11)
SHARED_FIELDS = 11
OUTSTANDING, EWMA_US, RETRIES = range(3)
ROW_FIELDS = 3
ROWS_PER_SLOT = 3
CLOSED, OPEN, HALF_OPEN = 0, 1, 2
BREAKER_STATES = ("closed", "open", "half_open")
MIN_CAPACITY = 256


def key_of(upstream: str, target: str = "") -> int:
    """The record key of a target (or of the upstream itself with ``target`` empty): 63 bits, never 0."""
    digest = hashlib.blake2b(f"{upstream}\0{target}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "little") >> 1) or 1


def config_keys(upstreams: Iterable[UpstreamSpec]) -> list[int]:
    keys = []
    for spec in upstreams:
        keys.append(key_of(spec.name))
        keys.extend(key_of(spec.name, target.url) for target in spec.all_targets)
    return keys


def segment_size(targets: int, workers: int) -> int:
    """Bytes for a host with ``targets`` records (x4 headroom for reloads) and ``workers`` slots."""
    rows = workers * ROWS_PER_SLOT
    capacity = max(MIN_CAPACITY, 4 * targets)
    return 8 * (HEADER + rows + capacity * (SHARED_FIELDS + ROW_FIELDS * rows))


def now_ns() -> int:
    return time.monotonic_ns()


class Table:
    """A view of the segment (or of private memory laid out the same way)."""

    def __init__(self, buffer: mmap.mmap | bytearray, workers: int) -> None:
        self.buffer = buffer
        self.cells = memoryview(buffer).cast("q")
        cells = self.cells
        if cells[0] != MAGIC:  # a fresh segment: the supervisor (or a private table) lays it out
            rows = workers * ROWS_PER_SLOT
            record = SHARED_FIELDS + ROW_FIELDS * rows
            cells[1] = (len(cells) - HEADER - rows) // record
            cells[2] = rows
            cells[0] = MAGIC
        self.capacity = cells[1]
        self.rows = cells[2]
        self.workers = self.rows // ROWS_PER_SLOT
        self.record_size = SHARED_FIELDS + ROW_FIELDS * self.rows
        self.first = HEADER + self.rows
        self.row = -1  # the row this process writes (claim_row), -1: none (the supervisor)

    @classmethod
    def private(cls, upstreams: Iterable[UpstreamSpec]) -> Table:
        """A table in this process's memory with every record present (no supervisor)."""
        specs = list(upstreams)
        table = cls(bytearray(segment_size(sum(len(s.all_targets) + 1 for s in specs), 1)), 1)
        table.ensure(config_keys(specs))
        table.claim_row(0)
        return table

    # -- the directory (supervisor side) ------------------------------------------------------------

    def ensure(self, keys: Iterable[int]) -> int:
        """Adds records for ``keys`` not present yet; returns how many did not fit (logged by the caller)."""
        missing = 0
        for key in keys:
            if self.find(key) < 0 and self.insert(key) < 0:
                missing += 1
        return missing

    def insert(self, key: int) -> int:
        cells = self.cells
        for index in self.probe(key):
            base = self.first + index * self.record_size
            if cells[base] == 0:
                cells[base] = key
                return base
        return -1

    def probe(self, key: int) -> Iterable[int]:
        """Open addressing, linear probing over the record slots."""
        start = key % self.capacity
        for step in range(self.capacity):
            yield (start + step) % self.capacity

    def find(self, key: int) -> int:
        """The first cell of ``key``'s record, or -1."""
        cells = self.cells
        for index in self.probe(key):
            base = self.first + index * self.record_size
            found = cells[base]
            if found == key:
                return base
            if found == 0:
                return -1
        return -1

    # -- rows (worker side) -------------------------------------------------------------------------

    def claim_row(self, slot: int) -> int:
        """Takes the first row of ``slot`` whose owner is gone, zeroes its gauges, and keeps it."""
        cells = self.cells
        me = os.getpid()
        candidates = [slot % self.workers + i * self.workers for i in range(ROWS_PER_SLOT)]
        chosen = candidates[-1]
        for row in candidates:
            if not _alive(cells[HEADER + row]) or cells[HEADER + row] == me:
                chosen = row
                break
        cells[HEADER + chosen] = me
        self.row = chosen
        for index in range(self.capacity):  # a dead worker's outstanding requests are not outstanding
            base = self.first + index * self.record_size
            if cells[base]:
                cells[base + SHARED_FIELDS + chosen * ROW_FIELDS + OUTSTANDING] = 0
        return chosen

    def row_cell(self, base: int, field: int) -> int:
        """This process's cell ``field`` of the record at ``base``."""
        return base + SHARED_FIELDS + self.row * ROW_FIELDS + field

    def row_values(self, base: int, field: int) -> list[int]:
        cells = self.cells
        start = base + SHARED_FIELDS + field
        return [cells[start + r * ROW_FIELDS] for r in range(self.rows)]

    def outstanding(self, base: int) -> int:
        cells = self.cells
        start = base + SHARED_FIELDS + OUTSTANDING
        total = 0
        for r in range(self.rows):
            total += cells[start + r * ROW_FIELDS]
        return total

    def close(self) -> None:
        self.cells.release()


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - someone else's process reusing the pid
        return True
    return True


def segment_sizes(config: object) -> dict[str, int]:
    """The shared segment this feature needs (gateway.server.shared.SEGMENT_FEATURES)."""
    specs = list(config.all_upstreams().values())  # type: ignore[attr-defined]
    targets = sum(len(s.all_targets) + 1 for s in specs)
    return {SEGMENT: segment_size(targets, config.server.workers)}  # type: ignore[attr-defined]


def worker_exited(maps: Mapping[str, mmap.mmap], pid: int, config: object) -> None:
    """A worker exited (gateway.server.shared): its requests are no longer in flight anywhere, so its row's
    outstanding counts go to zero at once and the row is free (its EWMA and retry counts stay)."""
    segment = maps.get(SEGMENT)
    if segment is None:
        return
    table = Table(segment, 1)
    try:
        cells = table.cells
        for row in range(table.rows):
            if cells[HEADER + row] == pid:
                table.row = row
                for index in range(table.capacity):
                    base = table.first + index * table.record_size
                    if cells[base]:
                        cells[table.row_cell(base, OUTSTANDING)] = 0
                cells[HEADER + row] = 0
    finally:
        table.close()
