"""A worker's connection guards: what the HTTP protocol calls when a connection opens, on each request
head while bans run, when it answers a limit error, and when a connection closes.

Order at ``connection_made`` (``admit``), cheapest and most decisive first:

1. deny list: the connection is closed at once, nothing written (a denied network learns nothing);
2. allow list: the client skips everything below;
3. a running ban: 403 ``client_banned`` with ``Retry-After``, then close;
4. connection caps, per client and per host: 429 (the client's own cap) or 503 (the host's), with
   ``Retry-After: 1``, then close.

A refused connection is answered before its request is read and closed at once, without the lingering
close a normal error gets: a client over its cap must not be able to hold a socket open by refusing to
stop sending (the answer is one write; a client that already sent its request may see a reset instead,
which on Linux still delivers the answer first). Nothing of a refused connection reaches the app.

Offences (a per-client cap hit, 408, 413, 431, and whatever other features report through
``gateway.guards.offend``) count towards a ban; the ban, the counts and the ban epoch live in the host's
shared segment (``gateway._fast.guards``), so all workers agree. A connection admitted before its client
was banned sees the ban at its next request: ``check`` compares the host's ban epoch with the one the
connection last saw (one read), and looks the client up only when a ban was imposed meanwhile.

Without a ``guards:`` section the protocol still calls ``admit`` (which returns at once) and ``rejected``
(which counts the protocol's 408/413/431 in the metrics); nothing runs per request.
"""

from __future__ import annotations

import logging
import mmap
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from gateway._fast.guards import OVER_CLIENT, OVER_TOTAL, TABLE_FULL, UNCOUNTED, Tables
from gateway._fast.protocol import error_response, new_request_id
from gateway.errors import GatewayError
from gateway.guards import install
from gateway.guards.address import client_key, describe_key, parse_address
from gateway.guards.cidr import CidrSet
from gateway.guards.config import GuardsSpec
from gateway.guards.errors import ClientBanned, ServerBusy, TooManyConnections
from gateway.guards.reasons import CODE_REASONS, OFFENCES, REASON_INDEX, TABLES
from gateway.guards.segment import worker_tables

if TYPE_CHECKING:
    from gateway.loader import GatewayConfig
    from gateway.observability.metrics import WorkerMetrics

logger = logging.getLogger("gateway.guards")
NS = 1_000_000_000


class Ticket:
    """What ``admit`` recorded for a connection: its client's key and what was counted."""

    __slots__ = ("ip", "key", "slot", "total")

    def __init__(self, ip: str, key: bytes, slot: int, total: bool) -> None:
        self.ip = ip
        self.key = key
        self.slot = slot  # the client's count slot, or a negative code: not counted per client
        self.total = total  # counted against the host's cap


class Guard:
    """The guards of one worker (``spec`` None: guard nothing, only count the protocol's rejections)."""

    def __init__(self, spec: GuardsSpec | None, tables: Tables | None, metrics: WorkerMetrics | None = None,
                 clock: Callable[[], int] = time.monotonic_ns) -> None:
        spec = spec or GuardsSpec()
        self.spec = spec
        self.screening = spec.screening
        if self.screening and tables is None:
            raise ValueError("guards that screen connections need their tables")
        self.tables: Tables = tables  # type: ignore[assignment]  # only used while screening
        self.deny = CidrSet(spec.deny) if spec.deny else None
        self.allow = CidrSet(spec.allow) if spec.allow else None
        self.per_ip = spec.max_connections_per_ip
        self.total = spec.max_connections
        self.counting = spec.counting
        self.bans = spec.bans
        self.tracking = self.counting or self.bans is not None  # a connection gets a ticket
        self.ipv6_prefix = spec.ipv6_prefix
        self.clock = clock
        self.recorder = None
        self.rejections = self.bans_cell = self.full_cell = 0
        if metrics is not None:
            families = metrics.schema.families
            self.recorder = metrics.recorder
            self.rejections = families["gateway_guard_rejections"].offset
            self.bans_cell = families["gateway_guard_bans"].offset
            self.full_cell = families["gateway_guard_table_full"].offset

    # -- the protocol's hooks -------------------------------------------------------------------------

    def admit(self, protocol: Any) -> bytes | None:  # noqa: PLR0911 - each guard decides in turn
        """At ``connection_made``: None to serve the connection, else what to write before closing it
        (``b""``: nothing). Sets ``protocol.guard_ticket`` (and ``guard_epoch`` while bans run)."""
        if not self.screening or protocol.client is None:
            return None
        ip = protocol.client[0]
        address = parse_address(ip)
        if address is None:  # pragma: no cover - the kernel gives numeric peers
            return None
        value, bits = address
        if self.deny is not None and self.deny.contains(value, bits):
            self.count("deny")
            return b""
        if self.allow is not None and self.allow.contains(value, bits):
            return None
        if not self.tracking:
            return None
        key = client_key(value, bits, self.ipv6_prefix)
        tables = self.tables
        if self.bans is not None:
            left = tables.banned(key, self.clock())
            if left > 0:
                self.count("banned")
                return answer(ClientBanned(left / NS))
            protocol.guard_epoch = tables.epoch()
        slot = UNCOUNTED
        if self.counting:
            slot = tables.acquire(key, self.per_ip, self.total)
            if slot == OVER_CLIENT:
                self.count("ip_connections")
                self.offence(key, ip, "ip_connections")
                return answer(TooManyConnections())
            if slot == OVER_TOTAL:
                self.count("total_connections")
                return answer(ServerBusy())
            if slot == TABLE_FULL:
                self.table_full("connections")
        protocol.guard_ticket = Ticket(ip, key, slot, self.total > 0)
        return None

    def release(self, protocol: Any) -> None:
        """At ``connection_lost`` of a connection ``admit`` gave a ticket: uncount it."""
        ticket: Ticket | None = protocol.guard_ticket
        protocol.guard_ticket = None
        if ticket is not None and (ticket.slot >= 0 or ticket.total):
            self.tables.release(ticket.slot, ticket.total)

    def check(self, protocol: Any) -> GatewayError | None:
        """Per request head while bans run: the refusal if the client was banned since it connected."""
        epoch = self.tables.epoch()
        if epoch == protocol.guard_epoch:
            return None
        protocol.guard_epoch = epoch
        left = self.tables.banned(protocol.guard_ticket.key, self.clock())
        return ClientBanned(left / NS) if left > 0 else None

    def rejected(self, protocol: Any, exc: GatewayError) -> None:
        """The protocol answered ``exc`` (and closes): count it; a limit error is an offence."""
        reason = CODE_REASONS.get(exc.code)
        if reason is None:
            return
        self.count(reason)
        ticket: Ticket | None = protocol.guard_ticket
        if reason in OFFENCES and ticket is not None:
            self.offence(ticket.key, ticket.ip, reason)

    # -- what other stages and features call ----------------------------------------------------------

    def rejected_request(self, client_ip: str | None, reason: str) -> None:
        """A stage turned a request away for ``reason`` (one of REASONS): count it, and the offence."""
        self.count(reason)
        if reason in OFFENCES and client_ip is not None:
            self.offend(client_ip, reason)

    def offend(self, client_ip: str, reason: str) -> float:
        """An offence by ``client_ip`` (see gateway.guards.offend): seconds of the ban it started, or 0."""
        if self.bans is None:
            return 0.0
        address = parse_address(client_ip)
        if address is None:
            return 0.0
        value, bits = address
        if self.allow is not None and self.allow.contains(value, bits):
            return 0.0
        return self.offence(client_key(value, bits, self.ipv6_prefix), client_ip, reason)

    def offence(self, key: bytes, ip: str, reason: str) -> float:
        bans = self.bans
        if bans is None:
            return 0.0
        duration = self.tables.offend(key, self.clock(), bans.after, int(bans.window * NS), int(bans.duration * NS),
                                      int(bans.max_duration * NS), int(bans.forget_after * NS))
        if duration < 0:
            self.table_full("bans")
            return 0.0
        if duration == 0:
            return 0.0
        if self.recorder is not None:
            self.recorder.add(self.bans_cell, 1)
        logger.warning("banned %s for %gs after repeated offences (the last: %s)",
                       describe_key(key, self.ipv6_prefix), duration / NS, reason)
        return duration / NS

    # -- metrics --------------------------------------------------------------------------------------

    def count(self, reason: str) -> None:
        if self.recorder is not None:
            self.recorder.add(self.rejections + REASON_INDEX[reason], 1)

    def table_full(self, table: str) -> None:
        if self.recorder is not None:
            self.recorder.add(self.full_cell + TABLES.index(table), 1)


def answer(exc: GatewayError) -> bytes:
    """The whole response refusing a connection (``connection: close``)."""
    return error_response(exc, new_request_id(), keep_alive=False)


def build_guard(config: GatewayConfig, shared: Mapping[str, mmap.mmap], metrics: WorkerMetrics | None) -> Guard:
    """The worker's guard (installed for ``gateway.guards.offend``), on the host's tables when needed."""
    spec = config.guards
    tables = worker_tables(config, shared) if spec is not None and spec.screening else None
    guard = Guard(spec, tables, metrics)
    install(guard)
    return guard
