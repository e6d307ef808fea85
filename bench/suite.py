"""``python -m bench``: the gateway's benchmark suite, every scenario against its peers in one run.

What it measures (one proxy worker pinned to CPU 0; wrk, the other clients and the upstream on CPU 1;
proxies alternating round-robin over several rounds; medians of the rounds):

1. plain: every path proxied to one upstream (req/s, p50/p99, CPU µs per request, peak RSS).
2. full: 1,000 routes with parameters, access log on, request ids generated, a JWT verified (cached) and
   a rate limit per subject checked on every request, metrics on.
3. routes10k: the same with 10,000 routes.
4. bodies: 100 MB uploads and downloads streamed through each proxy, MB/s.
5. streams: WebSocket echo (64 connections in ping-pong: messages/s, round trip, CPU µs per message) and
   SSE (500 streams of 40 events/s: events/s delivered, delivery latency, CPU µs per event) against the
   built-in upstream (``bench/streams.py``); nginx and, for SSE, the stock-uvicorn app as peers.
plus latency (p99 at a fixed rate of half nginx's peak, and of half the gateway's own peak when scenario 1
ran), idle (memory per idle keep-alive connection),
workers (1 against 2 workers; not a valid scaling figure on 2 cores) and every ``bench/micro_*.py``
micro-benchmark (compiled against pure Python).
Against what: nginx as a reverse proxy (one worker, keep-alive upstream pool), the gateway's own app on
stock uvicorn, and FastAPI + httpx; the gateway on its pure-Python twins in scenario 1.

How to run: ``python -m bench`` (about 13 minutes), ``python -m bench --quick`` (under 2 minutes), one
scenario with ``--scenario NAME`` (repeatable); ``--seconds``, ``--rounds``, ``--out DIR``. Writes
``bench/results/<date>.json``, ``.md`` and ``.png`` and prints the Markdown with the target lines.
Needs wrk (installed with apt-get when missing and allowed), nginx (optional: apt-get install
nginx-light) and the ``bench`` extra (``pip install -e '.[bench]'``) for the FastAPI peer and the chart.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import os
import pkgutil
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

import bench
from bench import procs, report, routes, scenarios, streams, targets, wrk
from bench.proxies import FASTAPI, GATEWAY, GATEWAY_PURE, NGINX, UVICORN, Proxy, start_upstream
from bench.scenarios import Context

SCENARIOS = ("plain", "latency", "full", "routes10k", "workers", "idle", "bodies", "streams", "micro")
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Plan:
    """What to run and how long: from the command line, ``--quick`` changing the defaults."""

    quick: bool
    seconds: int
    rounds: int
    warmup: int
    body_bytes: int
    idle_connections: int
    scenarios: tuple[str, ...]
    install: bool
    out: Path
    save: bool


@dataclass
class Run:
    """One suite run in progress: its plan and context, what is available, the results so far."""

    plan: Plan
    ctx: Context
    have_nginx: bool
    have_fastapi: bool
    results: dict[str, Any]
    nginx_rps: float | None = None
    gateway_rps: float | None = None  # the gateway's plain-proxy peak, when scenario 1 ran
    builtin_upstream: streams.Upstream | None = None
    skipped: list[str] = field(default_factory=list)


def parse(argv: list[str] | None) -> Plan:
    parser = argparse.ArgumentParser(prog="python -m bench", description="The gateway's benchmark suite.")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 short round, 10 MB bodies (< 2 min)")
    parser.add_argument("--scenario", action="append", choices=SCENARIOS, help="run only this (repeatable)")
    parser.add_argument("--seconds", type=int, help="seconds of each measured run (default 8, quick 2)")
    parser.add_argument("--rounds", type=int, help="rounds over the proxies (default 3, quick 1)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where result files go (bench/results)")
    parser.add_argument("--no-save", action="store_true", help="print only, write no result files")
    parser.add_argument("--no-install", action="store_true", help="never apt-get install wrk")
    args = parser.parse_args(argv)
    quick = args.quick
    chosen = set(args.scenario or SCENARIOS)
    return Plan(quick=quick, seconds=args.seconds or (2 if quick else 8), rounds=args.rounds or (1 if quick else 3),
                warmup=1 if quick else 2, body_bytes=(10 if quick else 100) * 1_000_000,
                idle_connections=500 if quick else 2000, scenarios=tuple(s for s in SCENARIOS if s in chosen),
                install=not args.no_install, out=args.out, save=not args.no_save)


def main(argv: list[str] | None = None) -> int:
    plan = parse(argv)
    fatal = missing_tools(plan)
    if fatal:
        print(f"bench: {fatal}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, interrupt)
    raise_file_limit()
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    try:
        run = prepare(plan, work)
        for name in plan.scenarios:
            print(f"== {name}", flush=True)
            run_one(run, name)
    except KeyboardInterrupt:
        print("bench: interrupted; every process it started is stopped", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    run.results["wall_seconds"] = time.monotonic() - started
    finish(run)
    return 0


def run_one(run: Run, name: str) -> None:
    """Runs one scenario; a failure is reported as its skip reason and the suite goes on."""
    try:
        RUNNERS[name](run)
    except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as exc:
        print(f"  {name} failed: {exc}", file=sys.stderr, flush=True)
        run.results["scenarios"][name] = {"title": name, "skipped": f"failed: {exc}"}
        run.skipped.append(f"{name}: failed: {exc}")


def interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def missing_tools(plan: Plan) -> str | None:
    """Why the suite cannot run at all, or None; wrk is installed when missing and allowed."""
    if shutil.which("taskset") is None:
        return "taskset is missing (apt-get install util-linux): processes could not be pinned to cores"
    throughput_needed = set(plan.scenarios) - {"micro", "streams", "bodies", "idle"}
    return wrk.ensure_installed(plan.install) if throughput_needed else None


def raise_file_limit() -> None:
    """Idle connections, wrk and the proxies need file descriptors: the soft limit up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def prepare(plan: Plan, work: Path) -> Run:
    """Starts the upstream (nginx, else the built-in one) and gathers what the run needs to know."""
    proxy_core, load_core = procs.cores()
    have_nginx = shutil.which("nginx") is not None
    have_fastapi = all(importlib.util.find_spec(m) is not None for m in ("fastapi", "httpx"))
    upstream, upstream_port = start_upstream(work, load_core, builtin=not have_nginx)
    ctx = Context(work=work, proxy_core=proxy_core, load_core=load_core, upstream_port=upstream_port,
                  seconds=plan.seconds, rounds=plan.rounds, warmup=plan.warmup, body_bytes=plan.body_bytes,
                  idle_connections=plan.idle_connections)
    run = Run(plan, ctx, have_nginx, have_fastapi, new_results(plan, ctx, have_nginx))
    if not have_nginx:  # the built-in upstream serves the body and streams scenarios as well
        run.builtin_upstream = streams.Upstream(upstream_port, upstream.pid)
        run.skipped.append("nginx is not installed (apt-get install -y nginx-light): the built-in upstream "
                           "serves instead, and the nginx peer and every target against nginx are skipped")
    if not have_fastapi:
        run.skipped.append("fastapi/httpx are not installed (pip install -e '.[bench]'): no FastAPI + httpx peer")
    return run


def new_results(plan: Plan, ctx: Context, have_nginx: bool) -> dict[str, Any]:
    return {
        "date": datetime.date.today().isoformat(),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "quick": plan.quick,
        "machine": machine(),
        "settings": {"seconds": plan.seconds, "rounds": plan.rounds, "warmup_seconds": plan.warmup,
                     "wrk": "1 thread, 64 connections", "body_bytes": plan.body_bytes,
                     "idle_connections": plan.idle_connections, "proxy_core": ctx.proxy_core,
                     "load_core": ctx.load_core},
        "upstream": "nginx" if have_nginx else "built-in (bench.upstream)",
        "scenarios": {},
        "micro": {},
    }


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False,
                            cwd=Path(bench.__file__).parent).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "kernel": platform.release(), "commit": commit}


def peers(run: Run, fastapi: bool = True) -> list[Proxy]:
    found = [NGINX] if run.have_nginx else []
    found.append(UVICORN)
    if fastapi and run.have_fastapi:
        found.append(FASTAPI)
    return found


def add(run: Run, key: str, **scenario: Any) -> None:
    scenario.setdefault("subject", GATEWAY.name)
    run.results["scenarios"][key] = scenario


def run_plain(run: Run) -> None:
    rows = scenarios.throughput(run.ctx, "plain", [GATEWAY, GATEWAY_PURE, *peers(run)])
    if NGINX.name in rows:
        run.nginx_rps = rows[NGINX.name]["median"]["rps"]
    run.gateway_rps = rows[GATEWAY.name]["median"]["rps"]
    add(run, "plain", title="1. Plain proxy", short="plain", kind="throughput", rows=rows, note=(
        "Every path proxied to one upstream (`gateway run --upstream`, access log off), small JSON response, "
        "wrk with 1 thread and 64 keep-alive connections. The gateway also runs on its pure-Python twins "
        "(GATEWAY_NO_EXTENSIONS=1)."))


def run_routes(run: Run, key: str, count: int, title: str, jwt: bool = False) -> None:
    config, paths, headers = routes.write_config(run.ctx.work, count, run.ctx.upstream_port, access_log=True,
                                                 jwt=jwt)
    fastapi = not run.plan.quick
    if run.plan.quick and run.have_fastapi:
        run.skipped.append(f"{key}: FastAPI + httpx left out in --quick (it proxies every path as in scenario 1)")
    rows = scenarios.throughput(run.ctx, key, [GATEWAY, *peers(run, fastapi)], config, paths, headers=headers)
    add(run, key, title=title, short=key, kind="throughput", rows=rows, note=(
        f"{count:,} routes (literal paths, `{{param}}` segments, method-restricted routes, prefixes), wrk cycling "
        f"over {len(paths):,} paths of distinct routes; access log on (to /dev/null) and a request id generated "
        "for every request; metrics always on. " + (
            "Every route requires an RS256 JWT (pyjwt; key from a PEM file) and forwards its subject as "
            "X-User-Id; wrk sends one valid token, so the verified-token cache answers after the first. Every "
            "route is rate limited per subject (GCRA in the shared table, 1,000,000/s: checked and counted on "
            "every request, never refusing; X-RateLimit-* headers on every response). "
            if jwt else "") + "The gateway app on stock uvicorn "
        "runs the same config; nginx and FastAPI + httpx proxy every path (plain), as the reference."))


def run_full(run: Run) -> None:
    run_routes(run, "full", 1_000, "2. Full path: 1,000 routes, JWT, rate limit, metrics", jwt=True)


def run_routes10k(run: Run) -> None:
    run_routes(run, "routes10k", 10_000, "3. 10,000 routes")


def run_latency(run: Run) -> None:
    title = "Latency at a fixed rate (half of nginx's peak)"
    if not run.have_nginx:
        add(run, "latency", title=title, skipped="needs nginx: the rate is half of nginx's peak")
        return
    if run.nginx_rps is None:
        run.nginx_rps = scenarios.nginx_peak(run.ctx)
    rate = round(run.nginx_rps / 2)
    rows = scenarios.fixed_rate(run.ctx, [GATEWAY, NGINX], rate)
    add(run, "latency", title=title, kind="latency", rows=rows, rate=rate, note=(
        f"`bench.fixed_rate` offers {rate:,} req/s (half of nginx's median peak in this run) over 64 keep-alive "
        "connections for the run's duration; latency counts from when a request fell due (wrk2-style, "
        "coordinated omission corrected to within its 1 ms timer), so a proxy that falls behind is charged for "
        "the queueing. Why not wrk: it has no rate control."))
    if run.gateway_rps is None:
        return
    # the same at half of the gateway's own peak: its tail when it is not near saturation, which tells
    # queueing (a lower peak) apart from a slow tail
    own = round(run.gateway_rps / 2)
    rows = scenarios.fixed_rate(run.ctx, [GATEWAY, NGINX], own)
    add(run, "latency_own", title="Latency at a fixed rate (half of the gateway's peak)", kind="latency", rows=rows,
        rate=own, note=(
            f"As above at {own:,} req/s, half of the gateway's own median peak in scenario 1: the same load "
            "relative to its capacity as the row above puts on nginx. Information only; the target is the "
            "row above."))


def run_workers(run: Run) -> None:
    one, two = scenarios.gateway_workers(1, run.ctx), scenarios.gateway_workers(2, run.ctx)
    rows = scenarios.throughput(run.ctx, "workers", [one, two])
    add(run, "workers", title="Workers: 1 against 2 (NOT a valid scaling measurement)", kind="workers",
        rows=rows, subject=None, order=(one.name, two.name), note=(
            "This machine has 2 cores: the second worker shares its core with wrk and the upstream, so this "
            "only shows that a second worker runs; see the workers target line for what one worker's "
            "figure implies."))


def run_idle(run: Run) -> None:
    rows = scenarios.idle(run.ctx, [GATEWAY, *(p for p in peers(run, fastapi=False))])
    add(run, "idle", title="Memory per idle keep-alive client connection", kind="idle", rows=rows,
        connections=run.ctx.idle_connections, note=(
            f"Resident memory (VmRSS) of the serving process(es) after {run.ctx.idle_connections:,} more "
            "keep-alive connections, each having made one request and now idle, over a base of 100 such "
            "connections; the difference divided by their number. Kernel socket buffers are not in RSS."))


def builtin_upstream(run: Run) -> streams.Upstream:
    """The built-in upstream (``bench.upstream``) on the load core, started when first needed."""
    if run.builtin_upstream is None:
        proc, port = start_upstream(run.ctx.work, run.ctx.load_core, builtin=True)
        run.builtin_upstream = streams.Upstream(port, proc.pid)
    return run.builtin_upstream


def run_bodies(run: Run) -> None:
    size = f"{run.ctx.body_bytes / 1e6:,.0f} MB"
    rows = scenarios.bodies(run.ctx, [GATEWAY, *peers(run)], builtin_upstream(run).port)
    add(run, "bodies", title=f"4. {size} bodies streamed both ways", kind="bodies", rows=rows, note=(
        f"One upload (POST, Content-Length) and one download (GET) of {size} per proxy and round, each on a fresh "
        "connection, from a Python client on the load core, against the built-in upstream (`bench.upstream`). "
        "nginx streams (`client_max_body_size 0; proxy_request_buffering off; proxy_buffering off`, 256 KiB "
        "buffers); FastAPI + httpx reads whole bodies into memory, as the obvious code does. CPU is the proxy's, "
        "per MB moved."))


def run_streams(run: Run) -> None:
    upstream = builtin_upstream(run)
    nginx = [NGINX] if run.have_nginx else []
    rows = streams.websocket(run.ctx, [GATEWAY, *nginx], upstream)
    add(run, "websocket", title="5a. WebSocket echo", short="websocket", kind="websocket", rows=rows, note=(
        f"{streams.WS_CONNECTIONS} WebSocket connections through each proxy to the built-in upstream's echo "
        f"server, each keeping one {streams.WS_BYTES}-byte message in flight (ping-pong) for the run's duration; "
        "the round trip is the client's, from write to echo. The gateway tunnels bytes after the upstream's 101 "
        "(`gateway.realtime.tunnel`); nginx with `proxy_set_header Upgrade $http_upgrade` and `Connection "
        "\"upgrade\"`. The gateway app on stock uvicorn cannot tunnel: uvicorn takes the upgrade itself and hands "
        "the app a `websocket` scope, which the app does not serve, so the handshake gets a 500 and that peer "
        "is not in this table. In this closed loop messages/s also depends on how the scheduler interleaves the "
        "client and the upstream on their shared core; CPU µs per message is the proxy's own cost. "
        f"{load_note(rows)}"))
    rows = streams.sse(run.ctx, [GATEWAY, *peers(run, fastapi=False)], upstream)
    add(run, "sse", title="5b. SSE streams", short="sse", kind="sse", rows=rows, note=(
        f"{streams.SSE_STREAMS} `text/event-stream` responses (chunked, one 100-byte event per chunk) of "
        f"{streams.SSE_RATE} events/s each, {streams.SSE_STREAMS * streams.SSE_RATE:,} events/s offered in all, "
        "from the built-in upstream through each proxy; latency runs from the upstream's write (a timestamp in "
        "the event) to the client's read. nginx with `proxy_buffering off`; FastAPI + httpx reads whole bodies "
        "and would never deliver an endless stream, so it is left out. The gateway app on stock uvicorn does not "
        "notice its client leaving (uvicorn drops an app's writes after a disconnect) and would relay on, so the "
        f"upstream's streams are ended after each run (`GET /events/end`). {load_note(rows)}"))


def load_note(rows: dict[str, dict[str, Any]]) -> str:
    """What the load core did: the client's and the upstream's shares of it, over the proxies."""
    def span(key: str) -> str:
        shares = [r["median"].get(key) for r in rows.values() if report.is_number(r["median"].get(key))]
        return f"{min(shares):.0%}-{max(shares):.0%}" if shares else "-"

    return (f"The client (one uvloop process) used {span('client_cpu_share')} of the load core and the upstream "
            f"{span('upstream_cpu_share')}; where the two add up to nearly all of it, the load core, not the "
            "proxy, set the pace and the proxy's figure is a lower bound.")


def micro_modules() -> dict[str, ModuleType]:
    """Every ``bench/micro_*.py`` that has ``run(quick)``, by name without the prefix."""
    found = {}
    for info in sorted(pkgutil.iter_modules(bench.__path__), key=lambda i: i.name):
        if info.name.startswith("micro_"):
            module = importlib.import_module(f"bench.{info.name}")
            if callable(getattr(module, "run", None)):
                found[info.name.removeprefix("micro_")] = module
    return found


def run_micro(run: Run) -> None:
    """Each micro-benchmark in this process, pinned to the proxy core while it runs."""
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {run.ctx.proxy_core})
    try:
        for name, module in micro_modules().items():
            print(f"  micro_{name}", flush=True)
            run.results["micro"][name] = module.run(quick=run.plan.quick)
    finally:
        os.sched_setaffinity(0, affinity)


RUNNERS = {"plain": run_plain, "latency": run_latency, "full": run_full, "routes10k": run_routes10k,
           "workers": run_workers, "idle": run_idle, "bodies": run_bodies, "streams": run_streams,
           "micro": run_micro}


def finish(run: Run) -> None:
    """Targets, result files, and the Markdown printed."""
    results = run.results
    if run.plan.quick:
        run.skipped.append("--quick: 1 round of 2 s per proxy, 10 MB bodies, 500 idle connections, quick micro "
                           "passes: a smoke run, not figures to quote")
    results["targets"] = targets.evaluate(results)
    results["skipped"] = run.skipped
    if not run.plan.save:
        print(report.render(results))
        return
    run.plan.out.mkdir(parents=True, exist_ok=True)
    stem = report.result_stem(run.plan.out, results["date"])
    why_not = report.chart(results, stem.with_suffix(".png"))
    if why_not:
        run.skipped.append(why_not)
    print(report.write(results, stem))
    written = [str(stem.with_suffix(ext)) for ext in (".json", ".md", ".png") if stem.with_suffix(ext).exists()]
    print("written: " + ", ".join(written))
