"""Micro-benchmark of the route trie: nanoseconds per ``Router.lookup`` that finds a route.

What: for 10, 1,000 and 10,000 routes (a realistic mix of literal paths, parameters, prefixes and a few
hosts, exact and wildcard), the best-of-repeats time of one ``lookup`` over a fixed, shuffled mix of
paths that hit those routes (params extracted, prefixes consumed).
Against what: the compiled build (gateway/_fast/router_c) and its pure-Python twin (router_py) on the
same tables; the time of the bare loop over the requests is printed too, and subtracted in ``net``.
How to run: ``python3 setup.py build_ext --inplace`` then ``python3 -m bench.micro_router`` from the
repository root (``--quick`` for a fast, noisier pass). ``run()`` returns the figures for the bench suite.
"""

from __future__ import annotations

import random
import sys
import timeit
from types import ModuleType
from typing import Any

from gateway._fast import implementations

SIZES = (10, 1_000, 10_000)
SAMPLE = 256  # requests in the measured mix
GET = frozenset({"GET"})
WRITE = frozenset({"PUT", "DELETE"})


# Route kinds, cycled: (pattern, a path it serves, add() keyword arguments); "#" is the service number.
KINDS: list[tuple[str, str, dict[str, Any]]] = [
    ("/api/v1/svc#/items", "/api/v1/svc#/items", {"methods": GET}),
    ("/api/v1/svc#/items/{id}", "/api/v1/svc#/items/42", {"methods": GET}),
    ("/api/v1/svc#/items/{id}", "/api/v1/svc#/items/7", {"methods": WRITE}),
    ("/api/v2/svc#/{org}/repos/{repo}", "/api/v2/svc#/acme/repos/gw", {}),
    ("/static/app#", "/static/app#/js/main.js", {"prefix": True}),
    ("/users/#/profile", "/users/#/profile", {"hosts": ("api.example.com",)}),
    ("/t/svc#/{path}", "/t/svc#/home", {"hosts": ("*.tenant.example.com",)}),
    ("/admin/svc#", "/admin/svc#/settings", {"prefix": True, "hosts": ("admin.local",)}),
    ("/health/svc#", "/health/svc#", {}),
    ("/api/v1/svc#/items/{id}/tags/{tag}", "/api/v1/svc#/items/9/tags/x", {}),
]


def route_specs(count: int) -> list[tuple[str, str, dict[str, Any]]]:
    """``count`` routes as ``(pattern, sample path, add keyword arguments)``, services cycling."""
    specs = []
    for n in range(count):
        pattern, path, spec = KINDS[n % len(KINDS)]
        service = str(n // len(KINDS))
        specs.append((pattern.replace("#", service), path.replace("#", service), spec))
    return specs


def request_for(spec: dict[str, Any]) -> tuple[str, str]:
    """A (host, method) pair that the route added with ``spec`` serves."""
    hosts = spec.get("hosts") or ("www.example.com",)
    host = hosts[0].replace("*", "acme")
    methods = spec.get("methods") or GET
    return host, sorted(methods)[0]


def build(impl: ModuleType, count: int) -> tuple[Any, list[tuple[str, str, str]]]:
    """A router of ``count`` routes, a shuffled mix of requests hitting them, and a catch-all route."""
    router = impl.Router()
    requests = []
    for target, (pattern, path, spec) in enumerate(route_specs(count)):
        router.add(pattern, target, **spec)
        requests.append((*request_for(spec), path))
    router.add("/", "fallback", prefix=True)
    rng = random.Random(count)
    mix = [rng.choice(requests) for _ in range(SAMPLE)]
    for host, method, path in mix:
        assert router.lookup(host, method, path) is not None, (host, method, path)
    return router, mix


def time_per_request(stmt: str, names: dict[str, Any], quick: bool) -> float:
    """Best-of-repeats nanoseconds for one request of the mix."""
    number, repeat = (20, 3) if quick else (200, 7)
    best = min(timeit.Timer(stmt, globals=names).repeat(repeat=repeat, number=number))
    return best / number / SAMPLE * 1e9


def measure(impl: ModuleType, count: int, quick: bool) -> dict[str, float]:
    """ns per lookup (``raw``), of the bare loop (``loop``), and their difference (``net``)."""
    router, mix = build(impl, count)
    names = {"lookup": router.lookup, "mix": mix}
    raw = time_per_request("for h, m, p in mix: lookup(h, m, p)", names, quick)
    loop = time_per_request("for h, m, p in mix: pass", names, quick)
    return {"raw": raw, "loop": loop, "net": raw - loop}


def run(quick: bool = False) -> dict[str, dict[int, dict[str, float]]]:
    """Measure every implementation at every size; print a table and return ``{impl: {size: figures}}``."""
    results: dict[str, dict[int, dict[str, float]]] = {}
    for kind, impl in implementations("router").items():
        results[kind] = {count: measure(impl, count, quick) for count in SIZES}
    print(f"{'implementation':<15}{'routes':>8}{'ns/lookup':>12}{'loop ns':>10}{'net ns':>9}")
    for kind, by_size in results.items():
        for count, figures in by_size.items():
            print(f"{kind:<15}{count:>8,}{figures['raw']:>12.0f}{figures['loop']:>10.0f}{figures['net']:>9.0f}")
    if "compiled" not in results:
        print("(compiled router not built: python3 setup.py build_ext --inplace)")
    return results


if __name__ == "__main__":
    run(quick="--quick" in sys.argv[1:])
