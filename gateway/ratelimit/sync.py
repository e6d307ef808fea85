"""Cross-host reconciliation: every sync interval, one batch of Lua calls per host to Redis, one round trip.

Who runs it: whoever owns a table. With the compiled build the host's workers share one table, and the
supervisor runs one ``HostSync`` over it (gateway/ratelimit/host.py, a host service); with the
pure-Python twin each worker has a private table and runs its own ``HostSync`` in its event loop, so it
behaves as one more host (still correct globally, only more hosts in Redis).

One tick (every ``ratelimit.redis.sync_interval``, 20 ms by default):

    scan     the PENDING word of every slot (one strided copy of those words, compared with zeros 256 at a
             time: about 0.8 ms for 65,536 slots on this machine, paid every tick, idle or not); each
             non-zero slot's units are read (Table.pending): what its workers admitted since the last
             tick. They stay in PENDING until the tick's merge is done (Table.settle subtracts them then),
             because the stage counts unsettled units SHARE times (below)
    batch    the PUSH script (gateway/ratelimit/lua.py) over every touched bucket: one script call for the
             whole batch on a single server or Sentinel (two arguments a bucket), one call per slot on a
             Cluster, pipelined (redisconn.run_script: one round trip per node, nodes concurrently). For
             each bucket the host's units are added to the global count under the host's id, and the
             reply says how many units the OTHER hosts admitted in total. Buckets this host admitted
             something in during the last second are pulled (zero units) every tick too, so a client that
             keeps coming back sees the other hosts' admissions even in a tick where it sent nothing here.
             A heartbeat rides along once a second (live hosts, for ``on_store_error: local``).
    absorb   the other hosts' units that are new since the last tick go into the local bucket
             (Limit.absorb: GCRA's TAT moves that many intervals, a window's count grows), so every
             local decision counts the whole fleet's admissions, up to one tick late.
    share    a key whose ticks brought other hosts' new units within the last second (not counting the
             first tick's catch-up: what the others took before this host saw the key is no clump) gets
             SHARE = the live hosts in its slot (1 otherwise); until the next merge, the host counts each unit it admits
             for that key SHARE times (gateway/_fast/bucket_py.py: the other hosts are assumed to admit
             alike meanwhile). Without it, a clump of one key that reaches every host within one tick is
             admitted by each host from the same view: up to hosts x what the bucket held. A key only one
             host serves keeps SHARE 1, so a client that sticks to one host is never refused for it.

GCRA in Redis: the bucket's hash holds a global TAT on Redis's clock (``t``, microseconds), advanced by
each host's pushed units (``max(t, now) + units x interval``, capped at a full bucket) and per-host unit
counters. Steady state uses the counters: others' units since the last tick are absorbed at ``now``,
which overstates the bucket by at most one tick (a unit counted a little late has decayed a little less):
a slight bias towards refusing, never towards admitting more. The TAT serves the first tick a host sees a
bucket: it takes the global occupancy (``t - now``, a duration, so no clock is compared across machines),
so a host new to a key does not start from a full bucket. Each push also carries the host's own view of
the bucket as a floor for the TAT (gcra_floor): a no-op while Redis holds every host's units, it puts a
bucket back after Redis lost it (a restart without persistence). Windows: one hash per epoch window number
(``now // period``, the same number on every host) with a total and per-host counts; the others' count
of the current window comes back each tick. Units a tick drains just after a window ends are pushed into
the new window (conservative: one tick's worth at most).

Accuracy: a host decides from what it heard at the last merge and its own unsettled units; SHARE keeps a
clump spread evenly over the hosts to about what the bucket holds, and the merge replaces the estimate
with the others' real units. What is left: uneven clumps (one host's share of a clump is larger than the
others'), and a key new to a host, which can take up to one tick's requests before the global count (and
its SHARE) arrives. Units refunded after they were read are pushed as negative units.

Cost (this 2-core machine, Redis on loopback, compiled table of 65,536 slots): a tick with 1 touched
bucket about 1.2 ms, with 100 about 6 ms, with 1,000 about 30-40 ms, nearly all of it Python (redis-py
packing and parsing, the drain loop), so about 50 us per touched bucket. The loop never delays a
request, but with more buckets touched per tick than about 300 its ticks stretch past 20 ms and the
effective sync interval (and the over-admission bound) grows with them.

When Redis fails (a batch errs or times out, or on a Cluster some of its calls fail: a node is down; the
breaker in gateway/ratelimit/store.py opens after two such batches in a row; the answered calls' replies
are still merged): the host's
units keep being drained but are kept (``unsent``) and pushed in the first batch that succeeds, so the
other hosts learn them and recovery admits no burst; a window's kept units are dropped once the window
ended. Meanwhile ``on_store_error`` applies, in the stage (gateway/ratelimit/stage.py), which reads the
table's header words STORE_STATE (set here while Redis is unavailable) and HOSTS_WORD (live hosts at the
last heartbeat, every host registering itself in a sorted set each second): ``local`` makes each unit
the host admits count ``hosts`` times in its table, i.e. each host keeps to its share, limit / hosts
(a host that was alone, or never reached Redis, keeps the whole limit); ``open`` admits all, ``closed``
answers 503. Every change of state is logged once and counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from redis.asyncio import RedisCluster
from redis.crc import key_slot

from gateway import redisconn
from gateway._fast.bucket import GCRA, Limit, Table
from gateway._fast.bucket_py import HEADER_WORDS, PENDING, SLOT_WORDS
from gateway.ratelimit.config import LimitSpec, RedisSpec
from gateway.ratelimit.lua import PUSH, bucket_key, hosts_key, window_key
from gateway.ratelimit.store import PREPARE_TIMEOUT, STORE_ERRORS, Breaker, new_host_id, redacted

logger = logging.getLogger("gateway.ratelimit")

STORE_STATE = 6  # a spare header word of the table: 0 while decisions are global, 1 in fallback
HOSTS_WORD = 7  # the other spare header word: live hosts at the last heartbeat (the stage's share in fallback)
UP, FALLBACK = 0, 1
WATCH_NS = 1_000_000_000  # a bucket is pulled each tick for this long after its last local admission
SHARE_NS = 1_000_000_000  # a key counts as shared (SHARE: the live hosts) this long after others' units came
HEARTBEAT_NS = 1_000_000_000
HOST_TTL_MS = 5000  # a host missing this long is not counted among the live hosts
CHUNK = 2048  # bytes of PENDING words compared at once (256 slots)
ZEROS = bytes(CHUNK)
PUSH_SCRIPT = redisconn.Script(PUSH)

# A stats row (one per loop, in the ``ratelimit_sync`` segment, read by the host's collector):
BATCHES, ERRORS, PUSHED, ABSORBED, STATE, HOSTS, TRANSITIONS, LATENCY_SUM, LATENCY_COUNT = range(9)
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, float("inf"))
LATENCY_CELLS = 9  # LATENCY_CELLS + i: batches that took at most LATENCY_BUCKETS[i]
ROW_WORDS = 24
ROW_STOPPED, ROW_UP, ROW_FALLBACK = 0, 1, 2  # the STATE cell


def dirty_slots(words: memoryview, nslots: int) -> list[int]:
    """The first word of every slot whose PENDING word is not 0: one strided copy of the PENDING words, then
    chunks compared with zeros (memcmp), and only the non-zero chunks looked into word by word."""
    data = words[HEADER_WORDS + PENDING:HEADER_WORDS + nslots * SLOT_WORDS:SLOT_WORDS].tobytes()
    found: list[int] = []
    for start in range(0, len(data), CHUNK):
        chunk = data[start:start + CHUNK]
        if chunk == ZEROS[:len(chunk)]:
            continue
        first = start >> 3
        found += [HEADER_WORDS + (first + i) * SLOT_WORDS
                  for i, value in enumerate(memoryview(chunk).cast("q").tolist()) if value]
    return found


class Tracked:
    """What a host remembers of a bucket between ticks."""

    __slots__ = ("active", "base", "fresh", "others", "share", "shared_at", "tag", "window")

    def __init__(self, base: int, tag: int) -> None:
        self.base = base
        self.tag = tag
        self.window = -1
        self.others = 0  # the others' units seen at the last tick (in ``window`` for windows)
        self.active = 0  # table ns of the last local admission
        self.fresh = True  # no reply seen yet
        self.shared_at = -SHARE_NS  # table ns of the last tick that brought other hosts' units
        self.share = 0  # the slot's SHARE word as this loop last set it


class Entry:
    """One bucket in one batch."""

    __slots__ = ("floor", "key", "limit", "read", "units", "window")

    def __init__(self, key: tuple[int, int], limit: Limit, units: int, window: int, *, floor: int = 0,
                 read: int = 0) -> None:
        self.key = key
        self.limit = limit
        self.units = units
        self.window = window
        self.floor = floor  # GCRA: us of occupancy this host knows of besides ``units`` (see gcra_floor)
        self.read = read  # of ``units``, those read off PENDING this tick (still there until settled)


class HostSync:
    """The sync loop of one table (see the module docstring). ``stats``: this loop's row of counters."""

    def __init__(self, buffer: Any, table: Table, limits: Mapping[int, Limit], specs: Mapping[int, LimitSpec], *,
                 spec: RedisSpec, client: redisconn.Client, stats: memoryview | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.words = memoryview(buffer).cast("q") if not isinstance(buffer, memoryview) else buffer
        self.table = table
        self.spec = spec
        self.client = client
        self.limits: Mapping[int, Limit] = limits
        self.specs: Mapping[int, LimitSpec] = specs
        self.stats = stats if stats is not None else memoryview(bytearray(ROW_WORDS * 8)).cast("q")
        self.breaker = Breaker(spec.breaker_cooldown, clock)
        self.host = new_host_id()
        self.tracked: dict[tuple[int, int], Tracked] = {}
        self.unsent: dict[tuple[int, int], list[int]] = {}  # key -> [units, window] not yet in Redis
        self.hosts = 1
        self.heartbeat_at = 0
        self.task: asyncio.Task[None] | None = None
        self.stopped = False
        self.prepared = False  # the client's first I/O done (redisconn.prepare), outside the tick's timeout
        self.stats[STATE] = ROW_UP

    def configure(self, limits: Mapping[int, Limit], specs: Mapping[int, LimitSpec], spec: RedisSpec) -> None:
        """A reload's limits (buckets of limits no longer configured are left alone)."""
        self.limits, self.specs = limits, specs
        self.spec = spec
        self.breaker.cooldown = spec.breaker_cooldown

    @property
    def degraded(self) -> bool:
        return bool(self.words[STORE_STATE] == FALLBACK)

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        self.stopped = True  # the loop ends at its next turn even if a cancellation were lost in a Redis call
        if self.task is not None:
            self.task.cancel()
            await asyncio.wait({self.task}, timeout=max(1.0, 2 * self.spec.timeout))
            self.task = None
        self.stats[STATE] = ROW_STOPPED

    def release(self) -> None:
        """Lets go of the table's memory (after ``stop``), so its segment can be unmapped: its own views,
        and the Table and Limits (which hold theirs). The loop's last frame may outlive ``stop`` a while
        (kept by the cancelled task's traceback) and holds this object, not the segment."""
        self.words.release()
        self.stats.release()
        self.limits = {}
        self.tracked.clear()
        self.unsent.clear()
        del self.table

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while not self.stopped:
                began = loop.time()
                try:
                    await self.tick()
                except Exception:  # never let the loop die: log it, count it, go on
                    logger.exception("rate-limit sync tick failed")
                    self.stats[ERRORS] += 1
                await asyncio.sleep(max(self.spec.sync_interval - (loop.time() - began), 0.001))
        except asyncio.CancelledError:  # stop(): the task ends without an exception, whose traceback would
            return  # keep the tick's frames (its batch, the Limits, the table's memory) alive after release

    # -- one tick -------------------------------------------------------------------------------------

    async def tick(self) -> None:
        now = self.table.now()
        batch, read = self.collect(now)
        try:
            await self.exchange(batch, now)
        finally:  # the units read are the batch's (or kept as unsent) now: off PENDING, after the merge
            table = self.table
            for base, tag, units in read.values():
                table.settle(base, tag, units)

    async def exchange(self, batch: list[Entry], now: int) -> None:
        """Pushes the batch and merges the replies, or keeps the units for later (Redis unavailable)."""
        if not batch and now - self.heartbeat_at < HEARTBEAT_NS:
            return
        if not self.breaker.allow():
            self.fall_back(batch, None)
            return
        began = time.perf_counter()
        try:
            if not self.prepared:
                async with asyncio.timeout(PREPARE_TIMEOUT):
                    await redisconn.prepare(self.client)
                self.prepared = True
            async with asyncio.timeout(self.spec.timeout):
                replies = await self.send(batch, now)
        except STORE_ERRORS as exc:
            self.prepared = False
            self.fall_back(batch, exc)
            return
        failed = [reply for reply in replies if isinstance(reply, Exception)]
        if failed and len(failed) == len(replies):
            self.fall_back(batch, failed[0])
            return
        self.record(time.perf_counter() - began,
                    sum(e.units for e, reply in zip(batch, replies, strict=False) if not isinstance(reply, Exception)))
        if failed:  # a Cluster node down fails its own calls only: counts as a failure all the same
            self.stats[ERRORS] += 1
            if self.breaker.failure():
                self.enter_fallback(failed[0])
        elif self.breaker.success() or self.degraded:
            self.recovered()
        # the failed calls' units wait for a batch Redis answers
        self.unsent = {entry.key: [entry.units, entry.window] for entry, reply in zip(batch, replies, strict=False)
                       if isinstance(reply, Exception) and entry.units}
        self.apply(batch, replies)

    def collect(self, now: int) -> tuple[list[Entry], dict[tuple[int, int], tuple[int, int, int]]]:
        """Reads every dirty slot's unsettled units; the batch (with the units kept from ticks Redis missed)
        and what was read, by key: (slot, tag, units), for ``Table.settle`` once the tick is done."""
        table = self.table
        read: dict[tuple[int, int], tuple[int, int, int]] = {}
        for base in dirty_slots(self.words, table.nslots):
            slot = table.slot(base)
            units, seed, glob = slot[3], slot[4], slot[5]
            if seed not in self.limits:
                table.settle(base, slot[0], units)  # a limit no longer configured
                continue
            key = (seed, glob)
            if key in read:  # (one key in two slots: only while an eviction races a claim)
                table.settle(*read[key])
            read[key] = (base, slot[0], units)
            tracked = self.tracked.get(key)
            if tracked is None or tracked.base != base or tracked.tag != slot[0]:
                tracked = self.tracked[key] = Tracked(base, slot[0])
            tracked.active = now
        batch: list[Entry] = []
        for key, tracked in list(self.tracked.items()):
            limit = self.limits.get(key[0])
            if limit is None or (now - tracked.active > WATCH_NS and key not in read and key not in self.unsent):
                del self.tracked[key]
                if tracked.share:
                    self.set_share(tracked, 0)
                continue
            window = now // limit.period if limit.algorithm != GCRA else 0
            fresh = read[key][2] if key in read else 0
            units = fresh + self.kept(key, limit, window)
            floor = gcra_floor(limit, table.slot(tracked.base), tracked.tag, units - fresh, now) \
                if limit.algorithm == GCRA else 0
            batch.append(Entry(key, limit, units, window, floor=floor, read=fresh))
        return batch, read

    def kept(self, key: tuple[int, int], limit: Limit, window: int) -> int:
        """Units kept from ticks Redis missed (a window's only while that window lasts)."""
        kept = self.unsent.get(key)
        if kept is None or (limit.algorithm != GCRA and kept[1] != window):
            return 0
        return kept[0]

    async def send(self, batch: list[Entry], now: int) -> list[Any]:
        """One pipelined batch (redisconn.run_script): one script call for the whole batch on a single
        server, one per slot on a Cluster (sent to each node concurrently). Each entry's reply, (a, b), or
        the exception of the call it was in (a Cluster node that failed on its own)."""
        prefix = self.spec.prefix
        keys: list[str] = []
        entries: list[tuple[int, int, int]] = []  # (kind number, units, floor) of each key
        kinds: dict[int, int] = {}  # limit seed (0: the heartbeat) -> kind number
        described: list[Any] = []
        for entry in batch:
            limit = entry.limit
            seed, glob = entry.key
            kind = kinds.get(seed)
            if kind is None:
                kind = kinds[seed] = len(kinds) + 1
                described += describe_kind(limit)
            keys.append(bucket_key(prefix, seed, glob) if limit.algorithm == GCRA
                        else window_key(prefix, seed, glob, entry.window))
            entries.append((kind, entry.units, entry.floor))
        beat = now - self.heartbeat_at >= HEARTBEAT_NS
        if beat:
            keys.append(hosts_key(prefix))
            entries.append((len(kinds) + 1, 0, 0))
            described += ("h", 0, 0, HOST_TTL_MS)
        head = [self.host, len(described) // 4, *described]
        groups = self.groups(keys)
        calls: list[redisconn.Call] = [
            ([keys[i] for i in group], [*head, *(value for i in group for value in entries[i])]) for group in groups]
        results = await redisconn.run_script(self.client, PUSH_SCRIPT, calls)
        replies: list[Any] = [None] * len(keys)
        for group, result in zip(groups, results, strict=True):
            for position, i in enumerate(group):
                replies[i] = result if isinstance(result, Exception) else \
                    (int(result[2 * position]), int(result[2 * position + 1]))
        if beat and not isinstance(replies[-1], Exception):
            self.heartbeat_at = now
            self.hosts = max(replies[-1][0], 1)
            self.stats[HOSTS] = self.hosts
            self.words[HOSTS_WORD] = self.hosts
        return replies

    def groups(self, keys: list[str]) -> list[list[int]]:
        """Positions of ``keys`` in script calls: all in one, or one call per slot on a Cluster."""
        if not isinstance(self.client, RedisCluster):
            return [list(range(len(keys)))] if keys else []
        slots: dict[int, list[int]] = {}
        for i, key in enumerate(keys):
            slots.setdefault(key_slot(key.encode()), []).append(i)
        return list(slots.values())

    def apply(self, batch: list[Entry], replies: list[Any]) -> None:
        """Absorbs the other hosts' new units into the local buckets."""
        table = self.table
        now = table.now()
        absorbed = 0
        for entry, reply in zip(batch, replies, strict=False):
            tracked = self.tracked.get(entry.key)
            if tracked is None or isinstance(reply, Exception):
                continue
            slot = table.slot(tracked.base)
            if slot[0] != tracked.tag or slot[4] != entry.key[0]:
                del self.tracked[entry.key]  # the slot went to another key meanwhile
                continue
            limit = entry.limit
            others = reply[0]
            if limit.algorithm == GCRA:
                occupied = reply[1] * 1000
                # slot[3] - entry.read: units admitted here since the batch was read, not in Redis yet
                units = gcra_catch_up(limit, slot[1] - (slot[3] - entry.read) * limit.interval, now, occupied) \
                    if tracked.fresh else others - tracked.others
            else:
                if now // limit.period != entry.window:
                    continue  # the window ended during the round trip: its count is of no use now
                if tracked.window != entry.window:
                    tracked.window, tracked.others = entry.window, 0
                units = others - tracked.others
            if others > tracked.others and not tracked.fresh:  # others admitting while this host does
                tracked.shared_at = now  # (not a fresh catch-up: what others took before is no clump)
            tracked.others = others
            tracked.fresh = False
            if units > 0:
                limit.absorb(tracked.base, units, now)
                absorbed += units
            # (at least 2 when others' units came: the live hosts are counted once a second only)
            share = max(self.hosts, 2) if now - tracked.shared_at < SHARE_NS else 0  # (0: alone)
            if share != tracked.share:
                self.set_share(tracked, share)
        self.stats[ABSORBED] += absorbed

    def set_share(self, tracked: Tracked, share: int) -> None:
        """The slot's SHARE word (gateway/_fast/bucket_py.py): how many hosts this key's traffic is spread
        over, so that each host counts its unsettled units that many times until the next merge."""
        if self.table.slot(tracked.base)[0] == tracked.tag:
            self.table.set_share(tracked.base, share)
        tracked.share = share

    # -- Redis unavailable ----------------------------------------------------------------------------

    def fall_back(self, batch: list[Entry], exc: BaseException | None) -> None:
        """Keeps the batch's units for the first batch Redis answers (the stage holds the host to its share
        meanwhile: it reads STORE_STATE and HOSTS)."""
        if exc is not None:
            self.stats[ERRORS] += 1
            if self.breaker.failure():
                self.enter_fallback(exc)
        self.unsent = {entry.key: [entry.units, entry.window] for entry in batch if entry.units}

    def enter_fallback(self, exc: BaseException) -> None:
        for tracked in self.tracked.values():  # the stage holds each host to its share meanwhile
            if tracked.share:
                self.set_share(tracked, 0)
        self.words[STORE_STATE] = FALLBACK
        self.stats[STATE] = ROW_FALLBACK
        self.stats[TRANSITIONS] += 1
        what = {"local": f"each host keeps to its share (1/{self.hosts}) of every limit",
                "open": "requests are admitted without a limit", "closed": "requests are refused (503)"}
        logger.warning("rate limits: Redis unavailable (%s); on_store_error %s: %s until it answers again",
                       redacted(exc), self.spec.on_store_error, what[self.spec.on_store_error])

    def recovered(self) -> None:
        kept = sum(units for units, _ in self.unsent.values())
        self.words[STORE_STATE] = UP
        self.stats[STATE] = ROW_UP
        self.stats[TRANSITIONS] += 1
        logger.warning("rate limits: Redis answers again; %d units admitted during the outage pushed, limits "
                       "are global again", kept)

    def record(self, seconds: float, units: int) -> None:
        stats = self.stats
        stats[BATCHES] += 1
        stats[PUSHED] += units
        stats[LATENCY_SUM] += int(seconds * 1e9)
        stats[LATENCY_COUNT] += 1
        for i, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                stats[LATENCY_CELLS + i] += 1
                break


def describe_kind(limit: Limit) -> tuple[Any, ...]:
    """What the PUSH script needs of a limit: what, interval_us, tolerance_us, ttl_ms (gateway/ratelimit/lua.py)."""
    if limit.algorithm == GCRA:
        room = limit.tolerance + limit.debt_room  # the global TAT carries the fleet's debt too (Limit.absorb)
        return "g", max(limit.interval // 1000, 1), room // 1000, room // 1_000_000 + 2000
    return "w", 0, 0, 2 * limit.period // 1_000_000 + 1000


def gcra_floor(limit: Limit, slot: tuple[int, ...], tag: int, units: int, now: int) -> int:
    """The occupancy (us) a host's GCRA bucket holds besides the ``units`` kept from earlier ticks and those
    not yet settled (slot[3]: read for this batch or admitted since): a floor for the global TAT. Normally
    the global TAT is above it already (it holds every host's units); after Redis lost the bucket (a
    restart without persistence, a failover that lost writes) it puts back what this host knows was used,
    so a host new to the key, or the others' fresh catch-up, does not start from an empty bucket."""
    if slot[0] != tag:
        return 0
    return max(slot[1] - now - (units + slot[3]) * limit.interval, 0) // 1000


def gcra_catch_up(limit: Limit, tat: int, now: int, occupied: int) -> int:
    """Whole units that bring a local GCRA bucket (TAT ``tat``, less the units admitted here since the
    batch was read, which Redis has not seen yet) up to the global occupancy ``occupied`` (ns), rounded to the
    nearest: the global TAT counts each host's units from the moment they reached
    Redis, a little later than they were taken, so the difference is off by a fraction of an interval
    either way (and a unit is worth an hour under a limit of 1/h)."""
    local = max(tat - now, 0)
    return max((occupied - local + limit.interval // 2) // limit.interval, 0)
