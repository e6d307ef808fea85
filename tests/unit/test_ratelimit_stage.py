"""gateway/ratelimit/stage.py and runtime.py: keys (spoof-proof IPs, headers, subject, route, tiers), several
limits per request with refunds, the response headers, the 429, listeners and metrics; without sockets.

The stage runs on the loaded bucket implementation (compiled when built) with an injected clock."""

from __future__ import annotations

import asyncio
import logging
import mmap
from typing import Any

import orjson
import pytest

from gateway._fast import bucket
from gateway.app import Gateway
from gateway.errors import TooManyRequests
from gateway.exchange import Exchange, Headers, Stage
from gateway.loader import GatewayConfig, from_document
from gateway.observability.metrics import Schema, WorkerMetrics
from gateway.ratelimit import runtime
from gateway.ratelimit.keys import KeyMaker, forwarded_ip, peer_ip
from gateway.ratelimit.runtime import RateLimiter
from gateway.ratelimit.stage import Applied, Policy, RateLimitStage, limit_headers, reporter, seconds

SEC = 1_000_000_000
T0 = 1_700_000_000 * SEC


def document(ratelimit: dict[str, Any], routes: list[dict[str, Any]] | None = None) -> GatewayConfig:
    return from_document({
        "source": "test", "server": {"access_log": False}, "upstreams": {"api": "http://127.0.0.1:9"},
        "routes": routes or [{"name": "r", "prefix": "/", "upstream": "api"}], "ratelimit": ratelimit,
    })


def section(limits: list[dict[str, Any]], key: Any = "ip", **options: Any) -> dict[str, Any]:
    return {"default": ["p"], "policies": {"p": {"key": key, "limits": limits}}, **options}


class Upstream(Stage):
    """Stands in for the proxy: answers 200 through the response hooks, records what they added."""

    def __init__(self) -> None:
        self.headers: Headers = []

    async def __call__(self, ex: Exchange) -> None:
        self.headers = []
        await ex.start_response(200, self.headers)


async def noop_send(message: Any) -> None:
    return None


ENTER: list[bool] = [False]


@pytest.fixture(autouse=True, params=["call", "enter"])
def stage_entry(request: pytest.FixtureRequest) -> Any:
    """Each test runs the stage awaited and through ``enter`` (the fast lane), which must decide alike."""
    ENTER[0] = request.param == "enter"
    yield
    ENTER[0] = False


class Harness:
    """One route's rate-limit stage with a fixed clock."""

    def __init__(self, config: GatewayConfig, route: int = 0, segment: mmap.mmap | None = None) -> None:
        assert config.ratelimit is not None
        self.metrics = WorkerMetrics(Schema.for_config(config))
        self.limiter = RateLimiter(config.ratelimit, self.metrics, segment, workers=1)
        stage = self.limiter.stage(config.routes[route])
        assert stage is not None
        self.stage = stage
        self.upstream = stage.next = Upstream()
        self.now = T0
        stage.now = lambda: self.now
        family = self.metrics.schema.families["gateway_ratelimit_decisions"]
        self.cells = {decision: family.cell(route, i) for i, decision in enumerate(("allowed", "rejected", "fallback"))}

    def call(self, headers: list[tuple[bytes, bytes]] | None = None, client: str = "10.0.0.1",
             subject: str | None = None) -> dict[bytes, bytes]:
        """The response's headers (admitted); raises TooManyRequests when refused."""
        scope = {"headers": headers or [], "client": (client, 4000)}
        ex = Exchange(scope, None, noop_send, 0.0)  # type: ignore[arg-type]
        ex.subject = subject
        if ENTER[0] and self.stage.enter(ex):  # the fast lane's way: decided at once, then the next stage
            asyncio.run(self.upstream(ex))
        else:
            asyncio.run(self.stage(ex))
        return {name: value for name, value in self.upstream.headers if name != b"x-request-id"}

    def refused(self, **kwargs: Any) -> TooManyRequests:
        with pytest.raises(TooManyRequests) as info:
            self.call(**kwargs)
        return info.value

    def count(self, decision: str) -> int:
        return int(self.metrics.cells[self.cells[decision]])


def test_admitted_requests_get_the_tightest_limits_numbers() -> None:
    h = Harness(document(section([{"rate": "2/s", "burst": 2}])))
    first = h.call()
    assert (first[b"x-ratelimit-limit"], first[b"x-ratelimit-remaining"], first[b"x-ratelimit-reset"]) == \
        (b"2", b"1", b"1")
    assert h.call()[b"x-ratelimit-remaining"] == b"0"
    refused = h.refused()
    assert refused.status == 429 and refused.code == "rate_limited"
    assert dict(refused.headers) == {b"retry-after": b"1", b"x-ratelimit-limit": b"2",
                                     b"x-ratelimit-remaining": b"0", b"x-ratelimit-reset": b"1"}
    assert "rate limit p.0 (2/s) exceeded" in refused.message
    assert h.call(client="10.0.0.2")[b"x-ratelimit-remaining"] == b"1"  # another client, another bucket
    h.now += SEC // 2
    assert h.call()[b"x-ratelimit-remaining"] == b"0"
    assert (h.count("allowed"), h.count("rejected"), h.count("fallback")) == (4, 1, 0)


def test_a_spoofed_forwarded_for_does_not_change_the_key() -> None:
    h = Harness(document(section([{"rate": "1/m", "burst": 1}])))
    h.call(headers=[(b"x-forwarded-for", b"1.1.1.1")])
    for spoof in (b"2.2.2.2", b"3.3.3.3, 4.4.4.4", b"10.0.0.1"):
        h.refused(headers=[(b"x-forwarded-for", spoof)])
    h.refused()


def test_trusted_hops_take_the_entry_the_last_proxy_wrote() -> None:
    h = Harness(document(section([{"rate": "1/m", "burst": 1}], trusted_hops=1)))
    h.call(headers=[(b"x-forwarded-for", b"spoofed, 7.7.7.7")], client="10.9.9.9")  # key: 7.7.7.7
    h.refused(headers=[(b"x-forwarded-for", b"another-spoof, 7.7.7.7")], client="10.9.9.8")
    h.call(headers=[(b"x-forwarded-for", b"7.7.7.7"), (b"x-forwarded-for", b"8.8.8.8")])  # two headers: 8.8.8.8
    h.call()  # no header: the peer, 10.0.0.1
    h.refused(headers=[(b"x-forwarded-for", b" ")])  # nothing usable: the peer again


def exchange(headers: list[tuple[bytes, bytes]], client: tuple[str, int] | None = ("10.0.0.1", 1)) -> Exchange:
    return Exchange({"headers": headers, "client": client}, None, None, 0.0)  # type: ignore[arg-type]


def test_forwarded_ip_counts_hops_from_the_right() -> None:
    ex = exchange([(b"x-forwarded-for", b"a, b"), (b"x-forwarded-for", b"c")])
    assert [forwarded_ip(ex, hops) for hops in (1, 2, 3, 4)] == [b"c", b"b", b"a", b"10.0.0.1"]
    assert peer_ip(exchange([], None)) == b"-"


def test_key_parts_are_tagged_and_missing_parts_become_the_ip() -> None:
    from gateway.ratelimit.config import KeyPart

    maker = KeyMaker([KeyPart("ip"), KeyPart("header", "x-api-key"), KeyPart("subject"), KeyPart("route")], 0, "r1")
    ex = exchange([(b"x-api-key", b"secret"), (b"x-api-key", b"second")])
    ex.subject = "alice"
    assert maker.key(ex, maker.values(ex)) == b"i10.0.0.1\0hsecret\0salice\0rr1"
    bare = exchange([])
    assert maker.key(bare, maker.values(bare)) == b"i10.0.0.1\0i10.0.0.1\0i10.0.0.1\0rr1"
    assert KeyMaker([KeyPart("ip")], 0, "r").make(bare, {}) == b"10.0.0.1"  # a lone IP: the address itself
    assert KeyMaker([KeyPart("ip")], 2, "r").make(bare, {}) == b"10.0.0.1"
    assert maker.make(ex, maker.values(ex)) == maker.key(ex, maker.values(ex))


def test_a_lone_subject_key() -> None:
    from gateway.ratelimit.config import KeyPart

    maker = KeyMaker([KeyPart("subject")], 0, "r")
    ex = exchange([])
    assert maker.make(ex, {}) == b"i10.0.0.1"  # anonymous: the IP
    ex.subject = "alice"
    assert maker.make(ex, {}) == maker.key(ex, {}) == b"salice"


@pytest.mark.parametrize("mode", ["x-ratelimit", "draft", "both"])
def test_limit_headers_round_the_reset_up(mode: str) -> None:
    h = Harness(document(section([{"rate": "10/s", "burst": 20}])))
    applied = h.stage.policies[0].limits[0]
    for remaining, reset in ((0, 0), (19, 1), (5, SEC), (7, SEC + 1), (3, 59 * SEC + 7)):
        found = dict(limit_headers(mode, applied, remaining, reset, [applied]))
        state = b'"p.0";r=%d;t=%d' % (remaining, seconds(reset))
        assert found.get(b"x-ratelimit-reset", b"%d" % seconds(reset)) == b"%d" % seconds(reset)
        assert found.get(b"ratelimit", state) == state
        assert (b"x-ratelimit-limit" in found) == (mode != "draft")
        assert (b"ratelimit-policy" in found) == (mode != "x-ratelimit")


def test_the_report_hook_adds_the_headers_it_was_given() -> None:
    found = [(b"x-ratelimit-limit", b"20"), (b"x-ratelimit-remaining", b"19"), (b"x-ratelimit-reset", b"1")]
    headers: Headers = [(b"server", b"up")]
    reporter(found)(exchange([]), 200, headers)
    assert headers == [(b"server", b"up"), *found]


def test_keys_by_subject_api_key_and_route() -> None:
    routes = [{"name": "a", "prefix": "/a", "upstream": "api"}, {"name": "b", "prefix": "/b", "upstream": "api"}]
    cfg = document({"default": ["sub", "key"], "policies": {
        "sub": {"key": "subject", "limits": [{"rate": "1/m", "burst": 1}]},
        "key": {"key": ["api_key", "route"], "limits": [{"rate": "2/m", "burst": 2}]},
    }}, routes)
    a, b = Harness(cfg, 0), Harness(cfg, 1)
    b.limiter = a.limiter
    a.call(subject="alice", client="1.1.1.1")
    a.refused(subject="alice", client="2.2.2.2")  # the subject, wherever it comes from
    a.call(subject="bob")
    a.call()  # anonymous: keyed by the IP 10.0.0.1 instead
    a.refused()
    key = [(b"x-api-key", b"k1")]
    a.call(subject="carol", headers=key)
    a.call(subject="dave", headers=key)
    assert a.refused(subject="erin", headers=key).message.startswith("rate limit key.0")


def test_several_limits_all_or_nothing() -> None:
    """20/s burst 40 AND 10 a minute: when one refuses, the other gets its unit back."""
    h = Harness(document(section([{"rate": "20/s", "burst": 40, "name": "fast"},
                                  {"rate": "2/m", "algorithm": "fixed_window", "name": "slow"}])))
    assert h.call()[b"x-ratelimit-limit"] == b"2"  # the tightest: 1 left of 2, against 39 of 40
    assert h.call()[b"x-ratelimit-remaining"] == b"0"
    for _ in range(5):
        assert "slow" in h.refused().message
    fast = h.limiter.bucket(h.limiter.spec.policies["p"].limits[0])
    assert fast.take(b"10.0.0.1", T0) == bucket.ADMITTED
    assert fast.remaining == 37  # two admitted requests and this take, not the five refused ones


def test_tiers_by_header() -> None:
    cfg = document({"default": ["plan"], "policies": {"plan": {
        "key": "ip", "tier": {"header": "X-Plan", "default": "free"},
        "tiers": {"free": [{"rate": "1/m", "burst": 1}], "pro": [{"rate": "3/m", "burst": 3}]},
    }}})
    h = Harness(cfg)
    plan = [(b"x-plan", b"pro")]
    assert h.call(headers=plan)[b"x-ratelimit-limit"] == b"3"
    assert h.call(headers=[(b"x-plan", b"gold")])[b"x-ratelimit-limit"] == b"1"  # unknown: the default
    h.refused()
    assert h.call(headers=plan)[b"x-ratelimit-remaining"] == b"1"


def test_draft_and_no_headers() -> None:
    limits = [{"rate": "10/s", "burst": 20, "name": "burst"}, {"rate": "100/m", "algorithm": "sliding_window"}]
    draft = Harness(document(section(limits, headers="draft"))).call()
    assert draft == {b"ratelimit-policy": b'"burst";q=20;w=2, "p.1";q=100;w=60',
                     b"ratelimit": b'"burst";r=19;t=1'}
    both = Harness(document(section(limits, headers="both"))).call()
    assert set(both) == {b"x-ratelimit-limit", b"x-ratelimit-remaining", b"x-ratelimit-reset", b"ratelimit-policy",
                         b"ratelimit"}
    h = Harness(document(section([{"rate": "1/m", "burst": 1}], headers="none")))
    assert h.call() == {}
    assert dict(h.refused().headers) == {b"retry-after": b"60"}
    h2 = Harness(document(section([{"rate": "1/m", "burst": 1}], headers="draft")))
    h2.call()
    assert dict(h2.refused().headers)[b"ratelimit"] == b'"p.0";r=0;t=60'


def test_listeners_hear_every_refusal_with_strikes() -> None:
    h = Harness(document(section([{"rate": "1/m", "burst": 1}])))
    heard: list[tuple[str, str, int, Any]] = []
    h.limiter.on_exceeded(lambda ex, policy, limit, strikes: heard.append((policy.name, limit.name, strikes,
                                                                           ex.scope["client"][0])))
    h.call()
    for _ in range(3):
        h.refused()
    h.refused(client="10.0.0.1")
    h.call(client="10.0.0.5")
    assert heard == [("p", "p.0", 1, "10.0.0.1"), ("p", "p.0", 2, "10.0.0.1"), ("p", "p.0", 3, "10.0.0.1"),
                     ("p", "p.0", 4, "10.0.0.1")]


class Untracked:
    """A bucket that can never track its key (what a full, contended table comes to)."""

    quota, span, remaining, reset = 5, SEC, 5, 0

    def take(self, key: bytes, now: int) -> int:
        return bucket.UNTRACKED


def test_untracked_requests_are_admitted_and_counted_as_fallback(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(document(section([{"rate": "1/m", "burst": 1}])))
    spec = h.limiter.spec.policies["p"]
    applied = Applied.of(spec.limits[0], Untracked())  # type: ignore[arg-type]
    h.stage.policies = (Policy(spec, h.stage.policies[0].keys, {"": (applied,)}),)
    with caplog.at_level(logging.WARNING, "gateway.ratelimit"):
        assert h.call() == {}
        assert h.call() == {}
    assert h.count("fallback") == 2 and h.count("allowed") == 0
    assert [r.message for r in caplog.records].count(
        "rate limiting admitted a request it could not track: the shared table is full and too contended to "
        "evict (raise ratelimit.table_slots)") == 1


def test_routes_without_policies_have_no_stage() -> None:
    cfg = document({"policies": {"p": {"key": "ip", "limits": [{"rate": "1/s"}]}}},
                   [{"name": "a", "prefix": "/a", "upstream": "api"},
                    {"name": "b", "prefix": "/b", "upstream": "api", "ratelimit": "p"}])
    assert cfg.ratelimit is not None
    limiter = RateLimiter(cfg.ratelimit, WorkerMetrics(Schema.for_config(cfg)), workers=1)
    assert limiter.stage(cfg.routes[0]) is None
    assert isinstance(limiter.stage(cfg.routes[1]), RateLimitStage)
    spec = cfg.ratelimit.policies["p"].limits[0]
    assert limiter.bucket(spec) is limiter.bucket(spec)  # one bucket per limit, however many routes use it
    assert runtime.make_limiter(None, limiter.metrics, {}, 1) is None


def test_workers_share_a_segment(caplog: pytest.LogCaptureFixture) -> None:
    """Two limiters over one segment: what two workers of a host do (compiled); the twin keeps its own."""
    cfg = document(section([{"rate": "1/m", "burst": 3}], table_slots=64))
    segment = mmap.mmap(-1, bucket.table_bytes(256))  # bigger than configured: the segment's size wins
    with caplog.at_level(logging.INFO, "gateway.ratelimit"):
        one, two = Harness(cfg, segment=segment), Harness(cfg, segment=segment)
    if bucket.SHARED_SAFE:
        assert one.limiter.shared and one.limiter.table.nslots == 256
        assert "keeps its 256 slots until the gateway restarts (64 configured)" in caplog.text
        one.call(), two.call(), one.call()
        two.refused()
    else:  # the twin's private tables: each "worker" its own
        assert not one.limiter.shared
        one.call(), two.call(), one.call(), two.call(), one.call()
        one.refused()


def test_the_python_twin_warns_when_limits_are_per_worker(caplog: pytest.LogCaptureFixture,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = document(section([{"rate": "1/m"}]))
    assert cfg.ratelimit is not None
    monkeypatch.setattr(runtime, "SHARED_SAFE", False)
    with caplog.at_level(logging.WARNING, "gateway.ratelimit"):
        limiter = RateLimiter(cfg.ratelimit, WorkerMetrics(Schema.for_config(cfg)), mmap.mmap(-1, 4096), workers=2)
    assert not limiter.shared
    assert "rate limits are counted per worker, not per host: the compiled bucket module is not built" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, "gateway.ratelimit"):
        RateLimiter(cfg.ratelimit, WorkerMetrics(Schema.for_config(cfg)), None, workers=1)
    assert caplog.text == ""


def call(app: Gateway, path: str) -> tuple[int, dict[bytes, bytes], Any]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "raw_path": path.encode(), "path": path, "query_string": b"",
             "headers": [(b"host", b"api.test")], "client": ("127.0.0.1", 5), "scheme": "http"}
    asyncio.run(app.http(scope, receive, send))
    start, body = sent
    return start["status"], dict(start["headers"]), orjson.loads(body["body"]) if body["body"] else None


def test_the_app_answers_429_with_a_json_error_and_retry_after() -> None:
    app = Gateway(document(section([{"rate": "1/h", "burst": 1}]),
                           [{"name": "limited", "prefix": "/", "upstream": "api"},
                            {"name": "free", "prefix": "/free", "upstream": "api", "ratelimit": "off"}]))
    assert app.ratelimit is not None
    status, headers, _ = call(app, "/x")  # admitted; the upstream (port 9) refuses: 502 with the headers
    assert status == 502 and headers[b"x-ratelimit-remaining"] == b"0"
    status, headers, body = call(app, "/x")
    assert status == 429
    assert body["error"] == "rate_limited" and body["status"] == 429 and body["request_id"]
    assert 3599 <= int(headers[b"retry-after"]) <= 3600 and headers[b"content-type"] == b"application/json"
    status, headers, _ = call(app, "/free/x")
    assert status == 502 and b"x-ratelimit-limit" not in headers
    app.close()
