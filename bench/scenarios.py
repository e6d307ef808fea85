"""The scenarios of ``python -m bench``: each starts the proxies one at a time, round-robin over several
rounds (the starting proxy rotating) so drift on a shared machine hits all alike, and returns the
figures of every round and their medians.

- throughput (plain, full, routes10k, workers): wrk on the load core, 64 connections; requests per
  second, p50/p99 latency, CPU µs per request (utime + stime of the proxy's whole process tree over the
  measured run, divided by the requests wrk completed) and peak RSS (VmHWM) of the serving process(es).
- latency: the fixed-rate client (``bench.fixed_rate``) offering half of nginx's peak rate.
- idle: resident memory per idle keep-alive client connection.
- bodies: 100 MB uploads and downloads (``bench.bodies``) through each proxy and directly.
"""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import procs, wrk
from bench.proxies import GATEWAY, NGINX, Proxy, Running, Setup, launch

Row = dict[str, Any]


@dataclass(frozen=True)
class Context:
    """Settings of one suite run."""

    work: Path
    proxy_core: int
    load_core: int
    upstream_port: int
    seconds: int
    rounds: int
    warmup: int
    body_bytes: int
    idle_connections: int


def medians(rounds: list[Row]) -> Row:
    """Per key, the median of the rounds without errors (of all rounds if none was clean); errors named.

    A round with errors (a transient failure, say) measured something else than the proxying: it stays in the
    JSON and is named in ``errors``, but does not move the medians while a clean round exists.
    """
    clean = [r for r in rounds if not r.get("errors")]
    errors = [f"round {n} of {len(rounds)}: {r['errors']}" for n, r in enumerate(rounds, 1)
              if r.get("errors")]
    summary = _medians(clean or rounds)
    summary["errors"] = "; ".join(errors) + (" (left out of the medians)" if errors and clean else "")
    return summary


def _medians(rounds: list[Row]) -> Row:
    keys = dict.fromkeys(k for r in rounds for k, v in r.items() if isinstance(v, int | float)
                         and not isinstance(v, bool))
    summary: Row = {}
    for key in keys:
        values = [r[key] for r in rounds if isinstance(r.get(key), int | float)]
        summary[key] = statistics.median(values) if values else None
    return summary


def round_robin(proxies: Sequence[Proxy], rounds: int, measure: Callable[[Proxy], Row],
                label: str) -> dict[str, dict[str, Any]]:
    """``measure`` of every proxy, ``rounds`` times, the first proxy rotating; rounds and medians."""
    figures: dict[str, list[Row]] = {p.name: [] for p in proxies}
    for n in range(rounds):
        shift = n % len(proxies)
        for proxy in [*proxies[shift:], *proxies[:shift]]:
            row = measure(proxy)
            figures[proxy.name].append(row)
            print(f"  {label} round {n + 1}/{rounds}  {proxy.name:<30} {progress(row)}", flush=True)
    return {name: {"median": medians(rows), "rounds": rows} for name, rows in figures.items()}


def progress(row: Row) -> str:
    shown = {"rps": "{:,.0f} req/s", "p99_ms": "p99 {:.2f} ms", "cpu_us_per_request": "{:.1f} CPU µs/req",
             "up_mb_s": "up {:,.0f} MB/s", "down_mb_s": "down {:,.0f} MB/s", "achieved_rate": "{:,.0f} req/s done",
             "bytes_per_connection": "{:,.0f} bytes/connection", "messages_per_s": "{:,.0f} messages/s",
             "events_per_s": "{:,.0f} events/s", "errors": "errors: {}"}
    return "  ".join(spec.format(row[k]) for k, spec in shown.items() if row.get(k))


def with_proxy(proxy: Proxy, setup: Setup, measure: Callable[[Running], Row]) -> Row:
    running = launch(proxy, setup)
    try:
        return measure(running)
    finally:
        procs.stop(running.proc)


def wrk_figures(running: Running, ctx: Context, script: Path | None) -> Row:
    """A warm-up run, then the measured wrk run with the proxy tree's CPU time and peak RSS."""
    wrk.run(running.port, ctx.warmup, ctx.load_core, script=script)  # pools filled, caches hot
    before = procs.cpu_snapshot(running.tree())
    result = wrk.run(running.port, ctx.seconds, ctx.load_core, script=script)
    cpu = procs.cpu_seconds_since(before)
    return {**result.as_dict(), "cpu_us_per_request": cpu / max(1, result.requests) * 1e6,
            "peak_rss_mib": running.peak_rss_mib()}


def throughput(ctx: Context, label: str, proxies: Sequence[Proxy], config: Path | None = None,
               paths: Sequence[str] = (), *, headers: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """wrk figures of each proxy; the gateway and its uvicorn twin run ``config`` (others proxy everything)."""
    script = wrk.write_script(ctx.work, list(paths), headers) if paths else None

    def measure(proxy: Proxy) -> Row:
        routed = config if proxy.kind in ("gateway", "uvicorn") else None
        setup = Setup(ctx.upstream_port, ctx.work, ctx.proxy_core, config=routed)
        return with_proxy(proxy, setup, lambda running: wrk_figures(running, ctx, script))

    return round_robin(proxies, ctx.rounds, measure, label)


def fixed_rate(ctx: Context, proxies: Sequence[Proxy], rate: float) -> dict[str, dict[str, Any]]:
    """p50/p99 of each proxy offered ``rate`` requests per second by ``bench.fixed_rate``."""
    def measure(running: Running) -> Row:
        wrk.run(running.port, ctx.warmup, ctx.load_core)
        argv = ["taskset", "-c", str(ctx.load_core), *procs.python(
            "bench.fixed_rate", "--port", str(running.port), "--rate", str(rate), "--seconds", str(ctx.seconds))]
        done = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=ctx.seconds + 60)
        row: Row = json.loads(done.stdout)
        row["errors"] = f"{row['connections_lost']} connections lost" if row["connections_lost"] else ""
        return row

    setup = Setup(ctx.upstream_port, ctx.work, ctx.proxy_core)
    return round_robin(proxies, ctx.rounds, lambda proxy: with_proxy(proxy, setup, measure), "latency")


def nginx_peak(ctx: Context) -> float:
    """nginx's plain-proxy req/s, when the plain scenario did not run."""
    setup = Setup(ctx.upstream_port, ctx.work, ctx.proxy_core)
    return float(with_proxy(NGINX, setup, lambda running: wrk_figures(running, ctx, None))["rps"])


def open_idle(port: int, count: int) -> list[socket.socket]:
    """``count`` keep-alive connections, each having made one GET and read its whole response."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sockets.append(sock)
            sock.sendall(b"GET /idle HTTP/1.1\r\nhost: bench\r\n\r\n")
            read_small_response(sock)
    except BaseException:
        close_all(sockets)
        raise
    return sockets


def read_small_response(sock: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response headers")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                   if line.startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response body ended")
        body += chunk


def close_all(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


def idle(ctx: Context, proxies: Sequence[Proxy]) -> dict[str, dict[str, Any]]:
    """Resident memory per idle keep-alive connection: RSS after ``idle_connections`` more, over a warm base."""
    def measure(running: Running) -> Row:
        warm = open_idle(running.port, 100)  # the first connections also fill pools and caches
        try:
            time.sleep(0.3)
            before = running.rss_kib()
            extra = open_idle(running.port, ctx.idle_connections)
            time.sleep(0.5)
            after = running.rss_kib()
            close_all(extra)
        finally:
            close_all(warm)
        return {"bytes_per_connection": (after - before) * 1024 / ctx.idle_connections,
                "rss_before_mib": before / 1024, "rss_after_mib": after / 1024}

    setup = Setup(ctx.upstream_port, ctx.work, ctx.proxy_core)
    return round_robin(proxies, ctx.rounds, lambda proxy: with_proxy(proxy, setup, measure), "idle")


DIRECT = Proxy("direct to the upstream (no proxy)", "direct")


def bodies(ctx: Context, proxies: Sequence[Proxy], upstream_port: int) -> dict[str, dict[str, Any]]:
    """MB/s of one upload and one download of ``body_bytes`` through each proxy and directly."""
    setup = Setup(upstream_port, ctx.work, ctx.proxy_core, streaming=True)

    def measure(proxy: Proxy) -> Row:
        if proxy is DIRECT:
            return {f"{d}_mb_s": transfer(ctx, upstream_port, d)["mb_per_s"] for d in ("up", "down")}
        return with_proxy(proxy, setup, lambda running: body_figures(ctx, running))

    return round_robin([DIRECT, *proxies], ctx.rounds, measure, "bodies")


def body_figures(ctx: Context, running: Running) -> Row:
    before = procs.cpu_snapshot(running.tree())
    up, down = (transfer(ctx, running.port, d) for d in ("up", "down"))
    cpu = procs.cpu_seconds_since(before)
    failed = [f"{r['direction']}: {r.get('error') or 'status ' + str(r.get('status'))}" for r in (up, down)
              if not r["ok"]]
    return {"up_mb_s": up.get("mb_per_s") if up["ok"] else None,
            "down_mb_s": down.get("mb_per_s") if down["ok"] else None,
            "cpu_ms_per_mb": cpu * 1000 / (2 * ctx.body_bytes / 1e6), "peak_rss_mib": running.peak_rss_mib(),
            "errors": "; ".join(failed)}


def transfer(ctx: Context, port: int, direction: str) -> Row:
    argv = ["taskset", "-c", str(ctx.load_core), *procs.python(
        "bench.bodies", "--port", str(port), "--size", str(ctx.body_bytes), "--direction", direction)]
    done = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=600)
    result: Row = json.loads(done.stdout)
    return result


def gateway_workers(count: int, ctx: Context) -> Proxy:
    cores = str(ctx.proxy_core) if count == 1 else f"{ctx.proxy_core},{ctx.load_core}"
    return Proxy(f"gateway, {count} worker{'s' if count > 1 else ''} (CPU {cores})", GATEWAY.kind, workers=count,
                 core=cores)
