"""Active health checks, run once per host by the supervisor, written into the shared records.

Each checked target gets one task: every ``interval`` it sends ``GET path`` (HTTP/1.1, Connection:
close) and reads the status line within ``timeout``. ``unhealthy_threshold`` failures in a row mark the
target unhealthy in its shared record (every worker stops choosing it at once); ``healthy_threshold``
passes in a row mark it healthy again and start its slow start. A target is never left out by a check
that stopped: a reload or stop that ends the checks marks their targets healthy again (passive checks
and breakers still guard them); a target still checked after a reload keeps its verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from gateway.proxy.target import Target
from gateway.upstreams.config import HealthCheckSpec, UpstreamSpec
from gateway.upstreams.state import HEALTH, RETURNED_AT, Table, key_of

logger = logging.getLogger("gateway.upstreams")


async def probe(target: Target, spec: HealthCheckSpec) -> bool:
    """One check: True when the target answers ``spec.path`` with an expected status in time."""
    path = target.base_path + spec.path
    request = (f"GET {path} HTTP/1.1\r\nHost: {target.authority}\r\nUser-Agent: gateway-health-check\r\n"
               f"Connection: close\r\n\r\n").encode("latin-1")
    writer = None
    try:
        async with asyncio.timeout(spec.timeout):
            reader, writer = await asyncio.open_connection(target.host, target.port)
            writer.write(request)
            line = await reader.readline()
    except (OSError, TimeoutError, ValueError):
        return False
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), spec.timeout)
    parts = line.split()
    return len(parts) >= 2 and parts[1].isdigit() and int(parts[1]) in spec.expected


class Checker:
    """The probe loop of one target."""

    def __init__(self, upstream: str, target: Target, spec: HealthCheckSpec, table: Table) -> None:
        self.upstream = upstream
        self.target = target
        self.spec = spec
        self.table = table
        self.base = table.find(key_of(upstream, target.url))
        self.passes = 0
        self.failures = 0

    @property
    def healthy(self) -> bool:
        return not self.table.cells[self.base + HEALTH]

    def note(self, passed: bool) -> None:
        """Counts a result; crosses a threshold into the shared record."""
        cells, spec = self.table.cells, self.spec
        if passed:
            self.passes, self.failures = self.passes + 1, 0
            if not self.healthy and self.passes >= spec.healthy_threshold:
                cells[self.base + RETURNED_AT] = time.monotonic_ns()
                cells[self.base + HEALTH] = 0
                logger.info("upstream %s target %s is healthy again", self.upstream, self.target)
        else:
            self.failures, self.passes = self.failures + 1, 0
            if self.healthy and self.failures >= spec.unhealthy_threshold:
                cells[self.base + HEALTH] = 1
                logger.warning("upstream %s target %s failed %d health checks: taken out", self.upstream,
                               self.target, self.failures)

    async def run(self) -> None:
        while True:
            self.note(await probe(self.target, self.spec))
            await asyncio.sleep(self.spec.interval)

    def reset(self) -> None:
        self.table.cells[self.base + HEALTH] = 0


class HealthChecks:
    """Every checker of a configuration; ``start`` replaces the previous set."""

    def __init__(self) -> None:
        self.checkers: list[Checker] = []
        self.tasks: list[asyncio.Task[None]] = []

    def start(self, upstreams: list[UpstreamSpec], table: Table) -> None:
        """Checks ``upstreams``' targets from now on. A target checked before and still checked keeps its
        verdict (a reload does not bring an unhealthy target back); one no longer checked is healthy."""
        previous = {(c.upstream, c.target.url): c for c in self.checkers}
        for task in self.tasks:
            task.cancel()
        self.checkers = []
        for spec in upstreams:
            if spec.health_check is None:
                continue
            for target in spec.all_targets:
                checker = Checker(spec.name, target, spec.health_check, table)
                old = previous.pop((spec.name, target.url), None)
                if old is not None:
                    checker.passes, checker.failures = old.passes, old.failures
                if checker.base >= 0:
                    self.checkers.append(checker)
        for checker in previous.values():
            checker.reset()
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(checker.run()) for checker in self.checkers]

    def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for checker in self.checkers:
            with contextlib.suppress(ValueError):  # the segment may be unmapped already
                checker.reset()
        self.tasks, self.checkers = [], []
