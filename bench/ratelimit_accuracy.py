"""Rate-limit accuracy: over-admission and false rejects of real gateways, on one host or on several
sharing one Redis.

What it measures, one host (the default): one ``gateway run`` (``--workers``, default 2: the workers
share one table, so this is the cross-worker exactness the shared memory is for) in front of the bench's
built-in upstream. A client offers a hot key 0.9x, 3x and 10x its limit, constant (evenly spaced) and
bursty (a clump every 100 ms), over keep-alive connections, next to many cold keys far below theirs
(``--cold`` keys at 1 request a second each). Keys are an ``X-Client`` header; each run uses fresh key
names, so runs do not share buckets; a warm-up second on every route comes first. Three policies are
measured: GCRA (``--limit``/s, burst ``--burst``), the sliding window (``--limit`` a second), and a quota
(GCRA at one an hour with a burst of ``limit x seconds``: whatever the timing, exactly the burst may
pass, so its error is the cross-worker exactness alone, free of clock skew).

Several hosts (``--hosts H``, e.g. 4): H gateway instances, each with ``--workers`` workers and its own
shared memory, all given one Redis (a private ``redis-server`` the bench starts on a free port,
``--redis-url``, or with ``--cluster`` a private 3-node Redis Cluster), sync interval
``--sync-interval`` (default 10 ms). The client spreads each key's requests round-robin over the H
gateways (what an L4 balancer does), so the hot key's limit is only held if the hosts reconcile. The
same runs as on one host, plus the same two algorithms with ``mode: sync`` (one atomic Redis check per
request: never over). Then, with the private single server (not ``--no-outage``), the Redis outage: for
each ``on_store_error`` (local, open, closed) a fresh fleet is offered 3x a GCRA limit while the bench
kills Redis (SIGKILL) after a third of the run and starts it again (empty) after two thirds; the table
gives what the fleet admitted per second before, during and after the outage, in the first second after
the restart (a burst there would mean the outage's admissions were forgotten), and the statuses
answered during the outage.

For each run (hot key): offered, admitted, and
- error: admitted against an exact, single-threaded reference of the same algorithm fed the same
  arrivals (the client's send times on the gateway's clock), as a share of what the reference admits:
  above 0 is over-admission, below 0 refusals the reference would not make. This is what "exact across
  workers" (and, with several hosts, across hosts) means, and what the targets are about (one host:
  under 0.1%; 4 hosts at a 10 ms sync: under 2% on average; sync mode: 0% over);
- over-admission against the algorithm's allowance: GCRA admits at most ``limit x span + burst`` (span:
  first to last request sent), the sliding window about ``limit x (span + 1 s)``;
- worst window: the most admitted in any 1 s window (stepped by 50 ms) above the 1 s allowance
  (GCRA: limit + burst; sliding window: limit), as a share of it. The sliding window's estimate assumes
  the previous window's requests were spread evenly, so it may go a little over here by design;
- false rejects: requests refused that the reference admits, as a share of those offered (at 0.9x the
  reference admits everything unless the client itself clumped requests past the burst). Cold keys: every
  refusal counts.
Send times are a little earlier than the gateway's decision times (queueing, the loopback): near the
limit a request or two can land on the other side of a decision, either way.

How to run (one host: about 1.5 minutes, ``--quick``: about 25 s; 4 hosts x 2 workers with the outage:
about 2.5 minutes on a busy 2-core machine, ``--quick``: about 2 minutes, most of it starting the four
fleets)::

    python -m bench.ratelimit_accuracy [--workers 2] [--limit 100] [--burst 20] [--seconds 6] [--quick]
    python -m bench.ratelimit_accuracy --hosts 4 [--workers 2] [--sync-interval 10ms] [--no-outage]
        [--redis-url redis://... | --cluster] [--seconds 3] [--quick] [--logs DIR]

Prints Markdown tables and writes the JSON next to them with ``--out FILE``. The load generator is one
Python process: check ``offered_rate`` against the intended multiple on a busy machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import subprocess
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httptools
import uvloop

from bench import procs

LOADS = (0.9, 3.0, 10.0)
PATTERNS = ("constant", "bursty")
ALGORITHMS = ("gcra", "sliding_window", "quota")
SYNC_ALGORITHMS = ("gcra_sync", "sliding_window_sync")  # mode: sync (several hosts only)
STORE_ERRORS = ("local", "open", "closed")
CONNECTIONS = 48
TICK = 0.001
CLUMP = 0.1  # bursty: one clump of requests every 100 ms
SECOND = 1_000_000_000
WINDOW_STEP = 0.05
OUTAGE_SECONDS = 9.0  # Redis killed after a third, started again after two thirds
OUTAGE_LOAD = 3.0


@dataclass
class Sample:
    key: str
    sent: int = 0  # perf_counter_ns: CLOCK_MONOTONIC, the gateway's clock before its epoch offset
    status: int = 0  # 0: no answer (the connection closed first)
    host: int = 0  # which gateway it was sent to


@dataclass
class Plan:
    """Requests due at offsets from the start, in order."""

    due: list[tuple[float, Sample]] = field(default_factory=list)


def schedule(hot: str, rate: float, seconds: float, pattern: str, cold: Sequence[str]) -> Plan:
    plan = Plan()
    if pattern == "constant":
        count = round(rate * seconds)
        plan.due += [(i / rate, Sample(hot)) for i in range(count)]
    else:
        per_clump = rate * CLUMP
        for clump in range(round(seconds / CLUMP)):
            plan.due += [(clump * CLUMP, Sample(hot)) for _ in range(round(per_clump * (clump + 1))
                                                                       - round(per_clump * clump))]
    rng = random.Random(len(cold))
    for key in cold:  # one a second each, at a random phase
        phase = rng.random()
        plan.due += [(phase + second, Sample(key)) for second in range(int(seconds)) if phase + second < seconds]
    plan.due.sort(key=lambda item: item[0])
    return plan


class Connection(asyncio.Protocol):
    def __init__(self, client: Client, host: int) -> None:
        self.client = client
        self.host = host
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.sample: Sample | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        assert self.sample is not None
        self.sample.status = self.parser.get_status_code()
        self.sample = None
        self.client.completed(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.sample is not None:  # unanswered: counted as failed, the connection leaves the pool
            self.sample = None
            self.client.lost()

    def send(self, sample: Sample) -> None:
        assert self.transport is not None
        self.sample = sample
        sample.sent = time.perf_counter_ns()
        self.transport.write(self.client.requests[sample.key])


class Client:
    """Sends a plan's requests when due, each key's requests round-robin over ``hosts`` gateways."""

    def __init__(self, path: str, plan: Plan, hosts: int = 1) -> None:
        self.path = path
        self.plan = plan
        self.hosts = hosts
        self.requests: dict[str, bytes] = {}
        for _, sample in plan.due:
            if sample.key not in self.requests:
                self.requests[sample.key] = b"GET %s HTTP/1.1\r\nhost: bench\r\nx-client: %s\r\n\r\n" % (
                    path.encode(), sample.key.encode())
        self.idle: list[deque[Connection]] = [deque() for _ in range(hosts)]
        self.queues: list[deque[Sample]] = [deque() for _ in range(hosts)]
        self.turns: dict[str, int] = {}
        self.next = 0
        self.done = 0
        self.finished = asyncio.Event()

    def tick(self, elapsed: float) -> None:
        due = self.plan.due
        while self.next < len(due) and due[self.next][0] <= elapsed:
            sample = due[self.next][1]
            self.next += 1
            sample.host = host = self.turns.get(sample.key, 0)
            self.turns[sample.key] = (host + 1) % self.hosts
            if self.idle[host]:
                self.idle[host].popleft().send(sample)
            else:
                self.queues[host].append(sample)

    def completed(self, conn: Connection) -> None:
        self.count()
        if self.queues[conn.host]:
            conn.send(self.queues[conn.host].popleft())
        else:
            self.idle[conn.host].append(conn)

    def lost(self) -> None:
        self.count()

    def count(self) -> None:
        self.done += 1
        if self.done == len(self.plan.due):
            self.finished.set()


Event = tuple[float, Callable[[], None]]  # at this offset (s), run this (in a thread: it may block)


async def offer(ports: int | Sequence[int], path: str, plan: Plan, events: Sequence[Event] = ()) -> None:
    """Sends ``plan`` to the gateway(s) on ``ports``; runs each event's function at its offset."""
    ports = [ports] if isinstance(ports, int) else list(ports)
    loop = asyncio.get_running_loop()
    client = Client(path, plan, len(ports))
    for host, port in enumerate(ports):
        for _ in range(max(CONNECTIONS // len(ports), 8)):
            _, conn = await loop.create_connection(lambda host=host: Connection(client, host), "127.0.0.1", port)
            client.idle[host].append(conn)
    pending = sorted(events, key=lambda event: event[0])
    running: list[asyncio.Future[None]] = []
    started = time.perf_counter()
    while client.next < len(plan.due):
        elapsed = time.perf_counter() - started
        while pending and pending[0][0] <= elapsed:
            running.append(asyncio.ensure_future(asyncio.to_thread(pending.pop(0)[1])))
        client.tick(elapsed)
        await asyncio.sleep(TICK)
    await asyncio.gather(*running)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(client.finished.wait(), 10.0)
    for conns in client.idle:
        for conn in conns:
            if conn.transport is not None:
                conn.transport.close()


def worst_window(times: Sequence[float], width: float = 1.0) -> int:
    """The most of ``times`` (sorted) in any window of ``width`` starting on a WINDOW_STEP grid."""
    if not times:
        return 0
    best, start, first = 0, times[0], 0
    last = 0
    while start <= times[-1]:
        while first < len(times) and times[first] < start:
            first += 1
        while last < len(times) and times[last] < start + width:
            last += 1
        best = max(best, last - first)
        start += WINDOW_STEP
    return best


def reference(times: Sequence[int], algorithm: str, limit: int, burst: int, offset: int) -> list[bool]:
    """What an exact, single-threaded limiter decides for arrivals at ``times`` (ns, sorted), with the
    gateway's arithmetic (``offset``: epoch minus CLOCK_MONOTONIC, which aligns the windows)."""
    decisions = []
    if algorithm in ("gcra", "quota"):
        interval = 3600 * SECOND if algorithm == "quota" else SECOND // limit
        tolerance, tat = burst * interval, 0
        for at in times:
            after = max(tat, at) + interval
            decisions.append(after - at <= tolerance)
            if decisions[-1]:
                tat = after
        return decisions
    counts: dict[int, int] = {}
    for at in times:
        now = at + offset
        window, elapsed = divmod(now, SECOND)
        previous, current = counts.get(window - 1, 0), counts.get(window, 0)
        admitted = previous * ((SECOND - elapsed) / SECOND) + current + 1 <= limit
        decisions.append(admitted)
        if admitted:
            counts[window] = current + 1
    return decisions


def base_algorithm(route: str) -> str:
    """The algorithm a route's limit uses (``gcra_sync``: GCRA decided in Redis)."""
    return route.removesuffix("_sync")


def analyse(samples: Sequence[Sample], algorithm: str, limit: int, burst: int, offset: int, *,
            multiple: float) -> dict[str, Any]:
    """The hot key's figures (see the module docstring)."""
    algorithm = base_algorithm(algorithm)
    answered = sorted((s for s in samples if s.status), key=lambda s: s.sent)
    expected = reference([s.sent for s in answered], algorithm, limit, burst, offset)
    admitted = [s.sent / 1e9 for s in answered if s.status == 200]
    offered = len(answered)
    span = (answered[-1].sent - answered[0].sent) / 1e9 if answered else 0.0
    if algorithm == "quota":
        allowance, window_allowance = float(burst), float(burst)
    elif algorithm == "gcra":
        allowance, window_allowance = limit * span + burst, limit + burst
    else:
        allowance, window_allowance = limit * (span + 1.0), float(limit)
    want = sum(expected)
    false_rejects = sum(1 for s, ok in zip(answered, expected, strict=True) if ok and s.status == 429)
    return {
        "offered": offered, "admitted": len(admitted), "reference": want,
        "failed": sum(1 for s in samples if s.status not in (200, 429)),
        "offered_rate": round(offered / span, 1) if span else 0.0, "allowance": round(allowance, 1),
        "error_pct": round(100 * (len(admitted) - want) / want, 3) if want else 0.0,
        "over_admission_pct": round(100 * max(0.0, len(admitted) - allowance) / allowance, 3),
        "worst_window_pct": round(100 * max(0.0, worst_window(admitted) - window_allowance) / window_allowance, 3),
        # under the limit only: at overload a request or two change sides with the send-to-decision skew
        "false_reject_pct": round(100 * false_rejects / offered, 3) if offered and multiple < 1 else None,
    }


def phases(samples: Sequence[Sample], started: int, killed: int, restarted: int, ended: int) -> dict[str, Any]:
    """An outage run's hot key, per phase (times in perf_counter ns): admitted per second before,
    during and after the outage and in the first second after the restart; statuses during it."""
    def rate(start: int, end: int) -> float:
        admitted = sum(1 for s in samples if s.status == 200 and start <= s.sent < end)
        return round(admitted * SECOND / (end - start), 1) if end > start else 0.0
    during = Counter(str(s.status or "none") for s in samples if killed <= s.sent < restarted)
    return {
        "before": rate(started, killed), "during": rate(killed, restarted), "after": rate(restarted, ended),
        "first_second_after": rate(restarted, min(restarted + SECOND, ended)),
        "statuses_during": dict(sorted(during.items())),
    }


def gateway_config(upstream_port: int, limit: int, burst: int, quota: int, *,
                   redis: dict[str, str] | None = None) -> str:
    """The bench's routes, one per policy (``redis``: the ``ratelimit.redis`` section, and sync-mode
    policies)."""
    policies = {
        "gcra": f"{{rate: {limit}/s, burst: {burst}, algorithm: gcra}}",
        "sliding_window": f"{{rate: {limit}/s, algorithm: sliding_window}}",
        "quota": f"{{rate: 1/h, burst: {quota}, algorithm: gcra}}",
    }
    section = ""
    if redis is not None:
        policies["gcra_sync"] = f"{{rate: {limit}/s, burst: {burst}, algorithm: gcra, mode: sync}}"
        policies["sliding_window_sync"] = f"{{rate: {limit}/s, algorithm: sliding_window, mode: sync}}"
        section = "  redis: {" + ", ".join(f"{key}: {value}" for key, value in redis.items()) + "}\n"
    lines = [f"    {name}: {{key: \"header:X-Client\", limits: [{limits}]}}" for name, limits in policies.items()]
    routes = [f"  - {{name: {name}, prefix: /{name}, upstream: app, ratelimit: {name}}}" for name in policies]
    return (f"server: {{access_log: false}}\nupstreams: {{app: \"http://127.0.0.1:{upstream_port}\"}}\n"
            f"ratelimit:\n{section}  policies:\n" + "\n".join(lines) + "\nroutes:\n" + "\n".join(routes) + "\n")


class Fleet:
    """``hosts`` gateways (``workers`` each, their own shared memory) on one config, one Redis."""

    def __init__(self, directory: Path, config: str, hosts: int, workers: int, redis_url: str | None, *,
                 logs: Path | None = None) -> None:
        self.name = f"{random.getrandbits(32):08x}"
        self.path = directory / f"gateway-{self.name}.yaml"
        self.path.write_text(config)
        self.logs = logs
        self.hosts, self.workers, self.redis_url = hosts, workers, redis_url
        self.ports: list[int] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Fleet:
        env = procs.clean_env(GATEWAY_REQUIRE_EXTENSIONS="1")
        if self.redis_url:
            env["GATEWAY_REDIS_URL"] = self.redis_url
        try:
            for host in range(self.hosts):
                port, admin = procs.free_port(), procs.free_port()
                log = self.logs / f"gateway-{self.name}-{host}.log" if self.logs else None
                self.procs.append(procs.start(procs.python(
                    "gateway", "run", "--config", str(self.path), "--port", str(port), "--admin-port", str(admin),
                    "--workers", str(self.workers)), None, env, log))
                self.ports.append(port)
            for port, proc in zip(self.ports, self.procs, strict=True):
                procs.wait_port(port, proc)
            time.sleep(0.5)  # every worker listening
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            procs.stop(proc)

    def warm_up(self, routes: Sequence[str], limit: int) -> None:
        """Every worker's first requests, off the record."""
        for route in routes:
            uvloop.run(offer(self.ports, f"/{route}/x", schedule("warm-up", limit, 1.0, "constant", [])))


@contextlib.contextmanager
def private_redis(directory: Path, cluster: bool = False) -> Iterator[Any]:
    """A redis-server of the bench's own on a free port, or a 3-node Cluster (tests/redis_servers.py),
    killed at the end."""
    from tests.redis_servers import RedisClusterServers, RedisServer

    with RedisClusterServers(directory) if cluster else RedisServer(directory) as server:
        yield server


def measure(fleet: Fleet, route: str, pattern: str, multiple: float, number: int, *, limit: int, burst: int,
            quota: int, seconds: float, cold: int) -> dict[str, Any]:
    """One run on a fresh hot key and fresh cold keys."""
    hot = f"hot-{number}-{random.getrandbits(24):06x}"
    cold_keys = [f"cold-{number}-{i}-{hot}" for i in range(cold)]
    plan = schedule(hot, limit * multiple, seconds, pattern, cold_keys)
    uvloop.run(offer(fleet.ports, f"/{route}/x", plan))
    samples = [s for _, s in plan.due]
    offset = time.time_ns() - time.monotonic_ns()  # the table's offset, to within the clocks' drift
    figures = analyse([s for s in samples if s.key == hot], route, limit,
                      quota if route == "quota" else burst, offset, multiple=multiple)
    cold_samples = [s for s in samples if s.key != hot]
    figures["cold_false_rejects"] = sum(1 for s in cold_samples if s.status == 429)
    figures["cold_offered"] = len(cold_samples)
    run = {"algorithm": route, "pattern": pattern, "load": multiple, **figures}
    print(f"  {route} {pattern} {multiple}x: {figures}", flush=True)
    return run


def runs(routes: Sequence[str]) -> list[tuple[str, str, float]]:
    """(route, pattern, load) of every run: the quota only at overload, constant (timing-free anyway),
    sync mode constant only (its cost is a round trip per request, the same for any pattern)."""
    return [(route, pattern, multiple) for route in routes for pattern in PATTERNS for multiple in LOADS
            if (route != "quota" or (pattern == "constant" and multiple > 1))
            and (not route.endswith("_sync") or pattern == "constant")]


def run(workers: int = 2, limit: int = 100, burst: int = 20, seconds: float = 6.0, cold: int = 200, *,
        hosts: int = 1, sync_interval: str = "10ms", redis_url: str | None = None,
        outage: bool = True, logs: Path | None = None, cluster: bool = False) -> dict[str, Any]:
    quota = round(limit * seconds)
    results: dict[str, Any] = {"hosts": hosts, "workers": workers, "limit": limit, "burst": burst,
                               "seconds": seconds, "cold_keys": cold, "runs": []}
    upstream_port = procs.free_port()
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        upstream = procs.start(procs.python("bench.upstream", "--port", str(upstream_port)), None)
        try:
            procs.wait_port(upstream_port, upstream)
            if hosts == 1 and redis_url is None:
                config = gateway_config(upstream_port, limit, burst, quota)
                with Fleet(directory, config, 1, workers, None, logs=logs) as fleet:
                    fleet.warm_up(ALGORITHMS, limit)
                    for number, (route, pattern, multiple) in enumerate(runs(ALGORITHMS)):
                        results["runs"].append(measure(fleet, route, pattern, multiple, number, limit=limit,
                                                       burst=burst, quota=quota, seconds=seconds, cold=cold))
                return results
            results["sync_interval"] = sync_interval
            with contextlib.ExitStack() as stack:
                server = None
                if redis_url is None:
                    server = stack.enter_context(private_redis(directory, cluster))
                    redis_url = server.url
                results["redis"] = "cluster" if cluster else "server" if server else "given"
                redis = {"sync_interval": sync_interval, "on_store_error": "local"}
                config = gateway_config(upstream_port, limit, burst, quota, redis=redis)
                routes = (*ALGORITHMS, *SYNC_ALGORITHMS)
                with Fleet(directory, config, hosts, workers, redis_url, logs=logs) as fleet:
                    fleet.warm_up(routes, limit)
                    for number, (route, pattern, multiple) in enumerate(runs(routes)):
                        results["runs"].append(measure(fleet, route, pattern, multiple, number, limit=limit,
                                                       burst=burst, quota=quota, seconds=seconds, cold=cold))
                if outage and server is not None and not cluster:
                    results["outage"] = [
                        outage_run(directory, server, upstream_port, hosts=hosts, workers=workers, limit=limit,
                                   burst=burst, quota=quota, redis={**redis, "on_store_error": mode}, logs=logs)
                        for mode in STORE_ERRORS]
        finally:
            procs.stop(upstream)
    return results


def outage_run(directory: Path, server: Any, upstream_port: int, *, hosts: int, workers: int, limit: int,
               burst: int, quota: int, redis: dict[str, str], logs: Path | None = None) -> dict[str, Any]:
    """A fresh fleet offered OUTAGE_LOAD x a GCRA limit while Redis is killed and started again."""
    config = gateway_config(upstream_port, limit, burst, quota, redis=redis)
    marks: dict[str, int] = {}

    def kill() -> None:
        marks["killed"] = time.perf_counter_ns()
        server.kill()

    def restart() -> None:
        server.start()
        marks["restarted"] = time.perf_counter_ns()

    with Fleet(directory, config, hosts, workers, server.url, logs=logs) as fleet:
        fleet.warm_up(["gcra"], limit)
        hot = f"outage-{redis['on_store_error']}-{random.getrandbits(24):06x}"
        plan = schedule(hot, limit * OUTAGE_LOAD, OUTAGE_SECONDS, "constant", [])
        started = time.perf_counter_ns()
        uvloop.run(offer(fleet.ports, "/gcra/x", plan,
                         [(OUTAGE_SECONDS / 3, kill), (2 * OUTAGE_SECONDS / 3, restart)]))
    samples = [s for _, s in plan.due]
    ended = max(s.sent for s in samples)
    figures = {"on_store_error": redis["on_store_error"], "limit": limit, "load": OUTAGE_LOAD,
               **phases(samples, started, marks["killed"], marks["restarted"], ended)}
    print(f"  outage, on_store_error {redis['on_store_error']}: {figures}", flush=True)
    return figures


def markdown(results: dict[str, Any]) -> str:
    hosts = results.get("hosts", 1)
    redis = "a 3-node Redis Cluster" if results.get("redis") == "cluster" else "one Redis"
    where = (f"{hosts} hosts x {results['workers']} workers, {redis}, sync every {results['sync_interval']}"
             if hosts > 1 or "sync_interval" in results else f"{results['workers']} workers")
    lines = [f"{where}, limit {results['limit']}/s (GCRA burst {results['burst']}), "
             f"{results['seconds']} s a run, {results['cold_keys']} cold keys at 1/s each", "",
             "| algorithm | pattern | load | offered/s | admitted | reference | error | over allowance "
             "| worst 1 s window | false rejects | cold refused |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results["runs"]:
        lines.append(f"| {r['algorithm']} | {r['pattern']} | {r['load']}x | {r['offered_rate']} | {r['admitted']} "
                     f"| {r['reference']} | {r['error_pct']}% | {r['over_admission_pct']}% "
                     f"| {r['worst_window_pct']}% | {fmt_pct(r['false_reject_pct'])} "
                     f"| {r['cold_false_rejects']}/{r['cold_offered']} |")
    if results.get("outage"):
        lines += ["", f"Redis killed and restarted: GCRA {results['limit']}/s offered {OUTAGE_LOAD:g}x, "
                  f"admitted per second by the whole fleet", "",
                  "| on_store_error | before | during the outage | after | first second after | "
                  "answers during the outage |", "| --- | --- | --- | --- | --- | --- |"]
        for o in results["outage"]:
            statuses = ", ".join(f"{status}: {count}" for status, count in o["statuses_during"].items())
            lines.append(f"| {o['on_store_error']} | {o['before']} | {o['during']} | {o['after']} "
                         f"| {o['first_second_after']} | {statuses} |")
    return "\n".join(lines)


def fmt_pct(value: float | None) -> str:
    return "-" if value is None else f"{value}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--hosts", type=int, default=1, help="gateway instances sharing one Redis")
    parser.add_argument("--sync-interval", default="10ms", help="ratelimit.redis.sync_interval (several hosts)")
    parser.add_argument("--redis-url", default=None, help="an existing Redis (default: a private redis-server)")
    parser.add_argument("--no-outage", action="store_true", help="several hosts: skip the Redis outage runs")
    parser.add_argument("--cluster", action="store_true",
                        help="several hosts: share a private 3-node Redis Cluster (no outage runs)")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--burst", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=None, help="a run (default: 6 on one host, 3 on several)")
    parser.add_argument("--cold", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="2 s a run")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--logs", type=Path, default=None, help="keep each gateway's log in this directory")
    args = parser.parse_args()
    seconds = 2.0 if args.quick else args.seconds or (6.0 if args.hosts == 1 else 3.0)
    results = run(args.workers, args.limit, args.burst, seconds, args.cold, hosts=args.hosts,
                  sync_interval=args.sync_interval, redis_url=args.redis_url, outage=not args.no_outage,
                  logs=args.logs, cluster=args.cluster)
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))


if __name__ == "__main__":
    main()
