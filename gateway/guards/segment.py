"""The guards' host-wide shared segment ``guards`` (listed in gateway.server.shared.SEGMENT_FEATURES).

Its size is fixed when the supervisor starts: ``table_size`` client slots (the default when the config
has no ``guards:`` section, so a reload can turn guards on), and ``lanes_for(workers)`` lanes, enough for
every worker process that can be alive at once (a slot's worker, its replacement during a reload, and a
few more reloads in flight). The number of slots is read back from the segment's size, so a reload that
asks for another ``table_size`` keeps working on the old one until the next restart.
"""

from __future__ import annotations

import logging
import mmap
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from gateway._fast.guards import Tables, segment_size, slots_for
from gateway.guards.config import DEFAULT_TABLE_SIZE

if TYPE_CHECKING:
    from gateway.loader import GatewayConfig

logger = logging.getLogger("gateway.guards")
SEGMENT = "guards"


def lanes_for(workers: int) -> int:
    return 4 * workers + 4


def table_size(config: GatewayConfig) -> int:
    return config.guards.table_size if config.guards is not None else DEFAULT_TABLE_SIZE


def segment_sizes(config: GatewayConfig) -> dict[str, int]:
    return {SEGMENT: segment_size(table_size(config), lanes_for(config.server.workers))}


def open_tables(buffer: mmap.mmap | bytearray, workers: int) -> Tables:
    """The tables over a segment (or private memory) laid out for ``workers`` worker slots."""
    lanes = lanes_for(workers)
    return Tables(buffer, slots_for(len(buffer), lanes), lanes)


def worker_tables(config: GatewayConfig, shared: Mapping[str, mmap.mmap]) -> Tables:
    """A worker's tables: the host's segment (its lane claimed), or private memory without a supervisor."""
    wanted = table_size(config)
    buffer: mmap.mmap | bytearray | None = shared.get(SEGMENT)
    if buffer is None:
        if shared:  # pragma: no cover - the supervisor always makes it
            logger.warning("no shared guards segment: connection counts and bans are per worker")
        buffer = bytearray(segment_size(wanted, lanes_for(config.server.workers)))
    tables = open_tables(buffer, config.server.workers)
    if tables.slots != wanted:
        logger.warning("guards.table_size %d takes effect at the next restart (the tables hold %d clients)",
                       wanted, tables.slots)
    tables.claim_lane(os.getpid())
    return tables


def worker_exited(maps: Mapping[str, mmap.mmap], pid: int, config: GatewayConfig) -> None:
    """In the supervisor, once worker ``pid`` is gone: its connections no longer count."""
    buffer = maps.get(SEGMENT)
    if buffer is None:
        return
    released = open_tables(buffer, config.server.workers).repair(pid)
    if released:
        logger.info("took back %d connections worker pid %d still counted", released, pid)
