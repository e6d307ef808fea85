"""Upstreams with real processes on loopback: failover, P2C, hashing, breakers, budgets, health, backup.

The targets here are small asyncio HTTP servers (``TARGET`` below, run with ``python -c``) whose behaviour
a test flips through a file: ``ok`` (200, JSON naming the target), ``fail`` (500 to everything but the
health path), ``down`` (the health path answers 503, requests still 200); each takes ``delay`` seconds
per request.
"""

from __future__ import annotations

import collections
import http.client
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import ROOT, Gateway, free_port, port_open, wait_until

pytestmark = pytest.mark.integration

TARGET = r'''
import asyncio, json, sys
port, name, delay, mode_file = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4]

def mode():
    try:
        with open(mode_file) as f:
            return f.read().strip() or "ok"
    except OSError:
        return "ok"

async def serve(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode()
            length = 0
            for line in head.split(b"\r\n")[1:]:
                key, _, value = line.partition(b":")
                if key.strip().lower() == b"content-length":
                    length = int(value)
            if length:
                await reader.readexactly(length)
            current = mode()
            if path == "/health":
                status = 503 if current == "down" else 200
            else:
                if delay:
                    await asyncio.sleep(delay)
                status = 500 if current == "fail" else 200
            body = json.dumps({"name": name, "path": path}).encode()
            writer.write(b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                         % (status, len(body), body))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()

async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", port)
    async with server:
        await server.serve_forever()

asyncio.run(main())
'''


class Target:
    """One test target process; ``mode`` flips its behaviour."""

    def __init__(self, tmp: Path, name: str, delay: float = 0.0) -> None:
        self.name = name
        self.port = free_port()
        self.mode_file = tmp / f"{name}.mode"
        self.mode_file.write_text("ok")
        self.delay = delay
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", TARGET, str(self.port), self.name, str(self.delay),
                                      str(self.mode_file)], cwd=ROOT)
        wait_until(lambda: port_open(self.port))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def mode(self, value: str) -> None:
        self.mode_file.write_text(value)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(5)


@pytest.fixture
def targets(tmp_path: Path) -> Iterator[Callable[..., Target]]:
    made: list[Target] = []

    def make(name: str, delay: float = 0.0) -> Target:
        target = Target(tmp_path, name, delay)
        made.append(target)
        return target

    yield make
    for target in made:
        if target.proc is not None and target.proc.poll() is None:
            target.kill()


def names(gw: Gateway, count: int, headers: dict[str, str] | None = None) -> collections.Counter[str]:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    seen: collections.Counter[str] = collections.Counter()
    for _ in range(count):
        conn.request("GET", "/x", headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        seen[json.loads(body)["name"] if resp.status == 200 else str(resp.status)] += 1
    conn.close()
    return seen


def upstream_view(gw: Gateway, name: str = "api") -> dict[str, Any]:
    return dict(gw.admin("/upstreams").json()["upstreams"][name])


def target_view(gw: Gateway, target: Target) -> dict[str, Any]:
    return next(t for t in upstream_view(gw)["targets"] if t["url"] == target.url)


def config(*members: Target, policy: str = "", backup: tuple[Target, ...] = ()) -> str:
    listed = ", ".join(f'"{t.url}"' for t in members)
    extra = f"\n    backup: [{', '.join(repr(t.url) for t in backup)}]" if backup else ""
    return f"""
upstreams:
  api:
    targets: [{listed}]{extra}
{policy}
routes:
  - {{prefix: /, upstream: api}}
"""


def load(gw: Gateway, seconds: float, threads: int, results: list[int]) -> list[threading.Thread]:
    """``threads`` clients sending GETs on keep-alive connections for ``seconds``; statuses in ``results``."""
    deadline = time.monotonic() + seconds

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        while time.monotonic() < deadline:
            try:
                conn.request("GET", "/x")
                resp = conn.getresponse()
                resp.read()
                results.append(resp.status)
            except (OSError, http.client.HTTPException):
                results.append(-1)
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        conn.close()

    started = [threading.Thread(target=client) for _ in range(threads)]
    for thread in started:
        thread.start()
    return started


def test_killing_a_target_under_steady_load_fails_no_request(start_gateway, targets):
    a, b = targets("a"), targets("b")
    gw = start_gateway(config(a, b), workers=2)
    results: list[int] = []
    clients = load(gw, 3.0, 4, results)
    time.sleep(1.0)
    before = len(results)
    b.kill()
    for thread in clients:
        thread.join()
    failed = [s for s in results if s != 200]
    assert len(results) - before > 100  # load kept flowing after the kill
    assert len(failed) <= 4, collections.Counter(results)  # at most the requests in flight on b (retried: 0)
    view = target_view(gw, b)
    # passive checks ejected it, or P2C learned to avoid it (a failure counts as 1 s of latency)
    assert view["ejected"] or view["latency_ewma_ms"] > 100, view


def test_a_slow_target_gets_less_traffic_under_p2c(start_gateway, targets):
    fast, slow = targets("fast"), targets("slow", delay=0.03)
    gw = start_gateway(config(fast, slow))
    results: list[int] = []
    for thread in load(gw, 2.0, 4, results):
        thread.join()
    seen = names(gw, 200)
    assert seen["slow"] < 0.25 * 200, seen
    view = {t["url"]: t for t in upstream_view(gw)["targets"]}
    assert view[slow.url]["latency_ewma_ms"] > view[fast.url]["latency_ewma_ms"]


def test_hash_is_sticky_and_a_new_target_takes_about_its_share(start_gateway, targets, tmp_path):
    members = [targets(f"t{i}") for i in range(3)]
    policy = "    balancer: hash\n    hash_on: header:X-User"
    gw = start_gateway(config(*members, policy=policy), workers=2)

    def placement() -> dict[int, str]:
        found = {}
        for user in range(120):
            body = gw.get("/x", headers={"X-User": f"user-{user}"}).json()
            found[user] = body["name"]
        return found

    first = placement()
    assert placement() == first and len(set(first.values())) == 3
    members.append(targets("t3"))
    (tmp_path / "gateway-0.yaml").write_text(config(*members, policy=policy))
    gw.signal(signal.SIGHUP)
    wait_until(lambda: gw.admin("/readyz").json()["generation"] == 1 and gw.ready())
    wait_until(lambda: gw.stderr.count("stopped (exit code 0)") == 2)  # the previous workers are gone
    after = placement()
    moved = [user for user in first if after[user] != first[user]]
    assert all(after[user] == "t3" for user in moved)  # keys only move to the new target
    assert 0.1 < len(moved) / 120 < 0.45, len(moved)  # about 1/4


def test_breaker_opens_half_opens_and_closes(start_gateway, targets):
    a = targets("a")
    policy = ("    circuit_breaker: {error_ratio: 0.5, min_requests: 4, window: 10s, open_for: 1s, "
              "half_open_requests: 2}")
    gw = start_gateway(config(a, policy=policy))
    a.mode("fail")
    assert [gw.get("/x").status for _ in range(4)] == [500] * 4  # passed on while closed
    failing_fast = gw.get("/x")
    assert failing_fast.status == 503 and failing_fast.json()["error"] == "circuit_open"
    assert upstream_view(gw)["breaker"] == "open" and target_view(gw, a)["breaker"] == "open"
    metrics = gw.admin("/metrics").body.decode()
    assert f'gateway_upstream_breaker_open{{target="{a.url}",upstream="api"}} 1.0' in metrics
    a.mode("ok")
    time.sleep(1.1)
    assert upstream_view(gw)["breaker"] == "half_open"
    assert gw.get("/x").status == 200  # a probe
    assert upstream_view(gw)["breaker"] == "half_open"
    assert gw.get("/x").status == 200
    assert upstream_view(gw)["breaker"] == "closed" and target_view(gw, a)["breaker"] == "closed"


def test_the_retry_budget_bounds_retries(start_gateway, targets):
    a, b = targets("a"), targets("b")
    policy = ("    outlier_detection: off\n"
              "    retries: {attempts: 3, retry_on: [5xx], budget: 0.2, min_per_second: 0}")
    gw = start_gateway(config(a, b, policy=policy))
    a.mode("fail")
    b.mode("fail")
    statuses = collections.Counter(gw.get("/x").status for _ in range(100))
    assert statuses == {500: 100}
    retries = sum(t["retries"] for t in upstream_view(gw)["targets"])
    assert 10 <= retries <= 21, retries  # 20% of 100 requests (without the budget: 200)
    metrics = gw.admin("/metrics").body.decode()
    total = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                if line.startswith("gateway_upstream_requests_total{"))
    assert total == 100 + retries


def test_retries_go_to_another_target_within_the_per_try_timeout(start_gateway, targets):
    fast, slow = targets("fast"), targets("slow", delay=2.0)
    policy = "    balancer: round_robin\n    retries: {attempts: 2, try_timeout: 300ms, deadline: 1s}"
    gw = start_gateway(config(fast, slow, policy=policy))
    started = time.monotonic()
    seen = names(gw, 6)
    assert seen == {"fast": 6}  # the slow target's tries time out and are retried on the fast one
    assert time.monotonic() - started < 6 * 0.3 + 1.5


def test_active_health_checks_take_a_target_out_and_back(start_gateway, targets):
    a, b = targets("a"), targets("b")
    policy = ("    health_check: {path: /health, interval: 100ms, timeout: 500ms, healthy_threshold: 2, "
              "unhealthy_threshold: 2}")
    gw = start_gateway(config(a, b, policy=policy), workers=2)
    assert set(names(gw, 20)) == {"a", "b"}
    b.mode("down")
    wait_until(lambda: target_view(gw, b)["active_check"] == "unhealthy", timeout=5)
    assert names(gw, 30) == {"a": 30}  # every worker agrees at once
    healthy = f'gateway_upstream_target_healthy{{target="{b.url}",upstream="api"}} 0.0'
    assert healthy in gw.admin("/metrics").body.decode()
    b.mode("ok")
    wait_until(lambda: target_view(gw, b)["healthy"], timeout=5)
    wait_until(lambda: "b" in names(gw, 20), timeout=5)


def test_the_backup_group_serves_only_while_no_primary_is_healthy(start_gateway, targets):
    primary, spare = targets("primary"), targets("spare")
    policy = "    health_check: {path: /health, interval: 100ms, healthy_threshold: 1, unhealthy_threshold: 1}"
    gw = start_gateway(config(primary, policy=policy, backup=(spare,)))
    assert names(gw, 10) == {"primary": 10}
    primary.mode("down")
    wait_until(lambda: names(gw, 1) == {"spare": 1}, timeout=5)
    assert names(gw, 10) == {"spare": 10}
    assert target_view(gw, spare)["backup"]
    primary.mode("ok")
    wait_until(lambda: names(gw, 1) == {"primary": 1}, timeout=5)


def test_an_ejected_target_comes_back_after_it_recovers(start_gateway, targets):
    a, b = targets("a"), targets("b")
    policy = ("    balancer: round_robin\n    retries: off\n"
              "    outlier_detection: {consecutive_failures: 3, base_ejection: 500ms}")
    gw = start_gateway(config(a, b, policy=policy))
    b.mode("fail")
    names(gw, 10)
    view = target_view(gw, b)
    assert view["ejected"] and view["ejections"] == 1
    assert names(gw, 10) == {"a": 10}
    b.mode("ok")
    wait_until(lambda: target_view(gw, b)["healthy"], timeout=5)
    assert names(gw, 10) == {"a": 5, "b": 5}
