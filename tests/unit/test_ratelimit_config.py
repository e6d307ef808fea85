"""The ``ratelimit:`` section and a route's ``ratelimit:`` key: what they mean, and every mistake named with
its file, key path and what was expected."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, Node
from gateway.loader import GatewayConfig, from_document, load
from gateway.ratelimit.config import (
    API_KEY_HEADER,
    KeyPart,
    LimitSpec,
    parse_rate,
    parse_ratelimit,
    route_policies,
)
from gateway.ratelimit.runtime import SEGMENT, SYNC_SEGMENT, segment_sizes

ROOT = Path(__file__).resolve().parents[2]
SEC = 1_000_000_000


def config(ratelimit: Any, routes: list[dict[str, Any]] | None = None) -> GatewayConfig:
    return from_document({
        "source": "gw.yaml", "server": {}, "upstreams": {"app": "http://127.0.0.1:9001"},
        "routes": routes or [{"name": "all", "prefix": "/", "upstream": "app"}], "ratelimit": ratelimit,
    })


def error(ratelimit: Any, routes: list[dict[str, Any]] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        config(ratelimit, routes)
    return str(info.value)


FULL = {
    "trusted_hops": 1,
    "headers": "both",
    "table_slots": 1000,
    "default": "per-ip",
    "policies": {
        "per-ip": {"key": "ip", "limits": [{"rate": "20/s", "burst": 40},
                                           {"rate": "10000/day", "algorithm": "sliding_window", "name": "daily"}]},
        "per-plan": {"key": ["api_key", "route", "header:X-Tenant", "subject"],
                     "tier": {"header": "X-Plan", "default": "free"},
                     "tiers": {"free": [{"rate": "10/s"}], "pro": [{"rate": "100/30s", "algorithm": "fixed_window"}]}},
    },
}


def test_a_full_section() -> None:
    spec = config(FULL).ratelimit
    assert spec is not None
    assert (spec.trusted_hops, spec.headers, spec.table_slots, spec.default) == (1, "both", 1000, ("per-ip",))
    per_ip = spec.policies["per-ip"]
    assert per_ip.key == (KeyPart("ip"),)
    assert per_ip.limits == (LimitSpec("per-ip.0", "gcra", 20, SEC, 40, "20/s", "per-ip"),
                             LimitSpec("daily", "sliding_window", 10_000, 86_400 * SEC, 1, "10000/day", "per-ip"))
    plan = spec.policies["per-plan"]
    assert plan.key == (KeyPart("header", API_KEY_HEADER), KeyPart("route"), KeyPart("header", "x-tenant"),
                        KeyPart("subject"))
    assert (plan.tier_header, plan.default_tier, list(plan.tiers)) == ("x-plan", "free", ["free", "pro"])
    assert plan.tiers["free"] == (LimitSpec("per-plan.free.0", "gcra", 10, SEC, 10, "10/s", "per-plan"),)
    assert plan.tiers["pro"][0].period_ns == 30 * SEC and plan.limits == ()
    assert len(plan.all_limits()) == 2


def test_defaults_and_absence() -> None:
    spec = config({"policies": {"p": {"key": "ip", "limits": [{"rate": "5/m"}]}}}).ratelimit
    assert spec is not None
    assert (spec.trusted_hops, spec.headers, spec.table_slots, spec.default) == (0, "x-ratelimit", 65536, ())
    assert config(None).ratelimit is None
    assert segment_sizes(config(None))[SEGMENT] == 64 + 65536 * 64  # made anyway: a reload may add limits
    assert segment_sizes(config(FULL))[SEGMENT] == 64 + 1024 * 64
    assert segment_sizes(config(FULL))[SYNC_SEGMENT] == (1 + config(FULL).server.workers) * 24 * 8  # a row a loop


@pytest.mark.parametrize(("text", "count", "period"), [
    ("20/s", 20, SEC), ("100/30s", 100, 30 * SEC), ("600/minute", 600, 60 * SEC), ("10000/day", 10_000, 86_400 * SEC),
    ("5/1.5m", 5, 90 * SEC), ("1/ms", 1, 1_000_000), (" 7 / 2 hours ", 7, 7200 * SEC), ("3/D", 3, 86_400 * SEC),
])
def test_rates(text: str, count: int, period: int) -> None:
    assert parse_rate(Node(text, "gw.yaml", "rate")) == (count, period)


def test_route_keys_pick_policies() -> None:
    cfg = config(FULL, [
        {"name": "default", "prefix": "/", "upstream": "app"},
        {"name": "off", "prefix": "/off", "upstream": "app", "ratelimit": "off"},
        {"name": "false", "prefix": "/false", "upstream": "app", "ratelimit": False},
        {"name": "empty", "prefix": "/empty", "upstream": "app", "ratelimit": []},
        {"name": "one", "prefix": "/one", "upstream": "app", "ratelimit": "per-plan"},
        {"name": "two", "prefix": "/two", "upstream": "app", "ratelimit": ["per-plan", "per-ip"]},
    ])
    spec = cfg.ratelimit
    found = {route.name: [p.name for p in route_policies(route.ratelimit, spec)] for route in cfg.routes}
    assert found == {"default": ["per-ip"], "off": [], "false": [], "empty": [], "one": ["per-plan"],
                     "two": ["per-plan", "per-ip"]}
    assert route_policies(("x",), None) == ()


def test_seeds_follow_the_parameters() -> None:
    limit = LimitSpec("a", "gcra", 10, SEC, 10, "10/s")
    assert limit.seed == LimitSpec("a", "gcra", 10, SEC, 10, "10 / s").seed  # how it was written: no matter
    assert limit.seed != LimitSpec("a", "gcra", 10, SEC, 11, "10/s").seed
    assert limit.seed != LimitSpec("b", "gcra", 10, SEC, 10, "10/s").seed
    assert limit.seed != LimitSpec("a", "gcra", 10, SEC, 10, "10/s", "another-policy").seed


def test_gateway_check_summary() -> None:
    summary = config(FULL).summary()
    assert "rate limits (trusted_hops 1, headers both, table 1000 slots, default: per-ip):" in summary
    assert "  per-ip: key ip; 20/s burst 40 (gcra), 10000/day (sliding_window)" in summary
    assert ("  per-plan: key header:x-api-key+route+header:x-tenant+subject; tier by x-plan (default free): "
            "free: 10/s burst 10 (gcra); pro: 100/30s (fixed_window)") in summary


def test_the_example_loads() -> None:
    cfg = load({}, {"config": str(ROOT / "examples" / "ratelimit.yaml")})
    spec = cfg.ratelimit
    assert spec is not None and spec.default == ("per-ip",) and spec.trusted_hops == 0
    [limit] = spec.policies["per-ip"].limits
    assert (limit.algorithm, limit.limit, limit.period_ns, limit.burst) == ("gcra", 10, SEC, 100)
    assert [p.name for p in route_policies(cfg.routes[0].ratelimit, spec)] == ["per-ip"]
    assert cfg.upstreams["app"].targets[0].url == "http://127.0.0.1:9001"


def policy(**fields: Any) -> dict[str, Any]:
    return {"policies": {"p": {"key": "ip", **fields}}}


@pytest.mark.parametrize(("section", "message"), [
    ({"nope": 1}, "ratelimit.nope: unknown key"),
    ("yes", "ratelimit: expected a mapping"),
    ({"policies": {"bad name": {}}}, "ratelimit.policies.bad name: expected a policy name"),
    ({"policies": {"p": {"limits": [{"rate": "1/s"}]}}}, "ratelimit.policies.p.key: expected a key"),
    (policy(limits=[{"rate": "1/s"}], extra=1), "ratelimit.policies.p.extra: unknown key"),
    (policy(), "ratelimit.policies.p: expected 'limits' (or 'tier' and 'tiers')"),
    (policy(limits=[]), "ratelimit.policies.p.limits: expected at least one limit"),
    (policy(limits=[{"rate": "1/s"}, {"rate": "2/s", "name": "p.0"}]),
     "ratelimit.policies.p.limits[1].name: expected a limit name no other limit of the policy has"),
    (policy(limits=[{"rate": "1/s", "name": "a b"}]), "ratelimit.policies.p.limits[0].name: expected a limit name"),
    (policy(limits=[{"burst": 3}]), "ratelimit.policies.p.limits[0].rate: expected a rate like 20/s"),
    (policy(limits=[{"rate": "ten/s"}]), "ratelimit.policies.p.limits[0].rate: expected a rate like 20/s"),
    (policy(limits=[{"rate": "0/s"}]), "limits[0].rate: expected a rate of at least one request per period"),
    (policy(limits=[{"rate": "10/0s"}]), "limits[0].rate: expected a rate of at least one request per period"),
    (policy(limits=[{"rate": "2000000/ms"}]), "limits[0].rate: expected at most one request per nanosecond"),
    (policy(limits=[{"rate": "1/s", "algorithm": "leaky"}]),
     "limits[0].algorithm: expected one of gcra, sliding_window, fixed_window"),
    (policy(limits=[{"rate": "1/s", "algorithm": "fixed_window", "burst": 5}]),
     "limits[0].burst: expected no burst: it applies to the gcra algorithm only, not fixed_window"),
    (policy(limits=[{"rate": "2000000/day", "algorithm": "sliding_window"}]),
     "limits[0].rate: expected at most 1048575 requests per window for sliding_window"),
    (policy(limits=[{"rate": "1/day", "burst": 10**9}]), "limits[0].burst: expected a smaller burst"),
    (policy(limits=[{"rate": "1/s", "burst": 0}]), "limits[0].burst: expected an integer of at least 1"),
    ({"policies": {"p": {"key": "cookie", "limits": [{"rate": "1/s"}]}}},
     "ratelimit.policies.p.key: expected ip, subject, route, api_key or header:NAME"),
    ({"policies": {"p": {"key": ["ip", "ip"], "limits": [{"rate": "1/s"}]}}},
     "ratelimit.policies.p.key[1]: expected a key part the key does not already have"),
    ({"policies": {"p": {"key": [], "limits": [{"rate": "1/s"}]}}}, "ratelimit.policies.p.key: expected at least one"),
    ({"policies": {"p": {"key": "header:Bad Name", "limits": [{"rate": "1/s"}]}}},
     "ratelimit.policies.p.key: expected a header name like X-Api-Key"),
    ({"policies": {"p": {"key": "ip:x", "limits": [{"rate": "1/s"}]}}}, "ratelimit.policies.p.key: expected ip"),
    (policy(tier={"header": "X-Plan", "default": "a"}), "ratelimit.policies.p: expected both 'tier'"),
    (policy(limits=[{"rate": "1/s"}], tier={"header": "X-Plan", "default": "a"}, tiers={"a": [{"rate": "1/s"}]}),
     "ratelimit.policies.p.limits: expected either 'limits' or 'tier' and 'tiers', not both"),
    (policy(tier={"default": "a"}, tiers={"a": [{"rate": "1/s"}]}),
     "ratelimit.policies.p.tier.header: expected the header whose value picks the tier"),
    (policy(tier={"header": "X-Plan"}, tiers={"a": [{"rate": "1/s"}]}),
     "ratelimit.policies.p.tier.default: expected the tier of requests whose header names no tier"),
    (policy(tier={"header": "X-Plan", "default": "b"}, tiers={"a": [{"rate": "1/s"}]}),
     "ratelimit.policies.p.tier.default: expected one of the tiers (a)"),
    (policy(tier={"header": "X-Plan", "default": "b"}, tiers={}),
     "ratelimit.policies.p.tiers: expected at least one tier"),
    (policy(tier={"header": "X-Plan", "default": "a", "claim": "x"}, tiers={"a": [{"rate": "1/s"}]}),
     "ratelimit.policies.p.tier.claim: unknown key"),
    (policy(tier={"header": "X-Plan", "default": ""}, tiers={"": [{"rate": "1/s"}]}),
     "ratelimit.policies.p.tiers.: expected a tier name"),
    ({"default": "nope", "policies": {}}, "ratelimit.default: expected the name of a policy under ratelimit.policies"),
    ({"default": ["nope"], "policies": {}}, "ratelimit.default[0]: expected the name of a policy"),
    ({"trusted_hops": -1}, "ratelimit.trusted_hops: expected an integer from 0 to 32"),
    ({"headers": "all"}, "ratelimit.headers: expected one of x-ratelimit, draft, both, none"),
    ({"table_slots": 4}, "ratelimit.table_slots: expected an integer from 8 to 16777216"),
])
def test_mistakes_are_named(section: Any, message: str) -> None:
    text = error(section)
    assert text.startswith("gw.yaml: ") and message in text, text


def test_route_mistakes_are_named() -> None:
    section = {"policies": {"p": {"key": "ip", "limits": [{"rate": "1/s"}]}}}
    assert "routes[0].ratelimit: expected the name of a policy under ratelimit.policies (p), got 'q'" in error(
        section, [{"prefix": "/", "upstream": "app", "ratelimit": "q"}])
    assert "routes[0].ratelimit[1]: expected the name of a policy" in error(
        section, [{"prefix": "/", "upstream": "app", "ratelimit": ["p", "q"]}])
    assert "routes[0].ratelimit: expected each policy once" in error(
        section, [{"prefix": "/", "upstream": "app", "ratelimit": ["p", "p"]}])
    assert "routes[0].ratelimit: expected a top-level 'ratelimit:' section with policies" in error(
        None, [{"prefix": "/", "upstream": "app", "ratelimit": "p"}])
    assert config(None, [{"prefix": "/", "upstream": "app", "ratelimit": "off"}]).ratelimit is None


def test_parse_ratelimit_of_nothing() -> None:
    assert parse_ratelimit(Node(None, "gw.yaml", "ratelimit")) is None
