"""Connection guards without sockets: CIDR lists, client keys, the ``guards:`` section, the worker's Guard
(admission, release, bans, offences, metrics), per-route body limits, the segment and the admin endpoints.

The Guard runs on the tables implementation the facade loaded (compiled when built); the tables
themselves are tested on both implementations in test_guards_tables.py, the protocol hooks in
test_guards_protocol.py.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import pytest
from prometheus_client.exposition import generate_latest

import gateway.guards
from gateway._fast.guards import IMPLEMENTATION, segment_size
from gateway.config import ConfigError, Node
from gateway.errors import BadRequest, HeadersTooLarge, PayloadTooLarge
from gateway.guards.address import client_key, describe_key, parse_address, parse_client
from gateway.guards.admin import register
from gateway.guards.body import BodyLimitStage, protocol_body_limit, route_body_limits
from gateway.guards.cidr import CidrSet
from gateway.guards.config import BanPolicy, GuardsSpec, parse_guards
from gateway.guards.errors import ClientBanned
from gateway.guards.reasons import REASONS
from gateway.guards.runtime import Guard, Ticket, build_guard
from gateway.guards.segment import SEGMENT, lanes_for, open_tables, segment_sizes, worker_exited, worker_tables
from gateway.loader import GatewayConfig, from_document
from gateway.observability.metrics import HostMetrics, Schema, WorkerMetrics
from gateway.routing.config import RouteSpec
from gateway.server.shared import Segments
from gateway.settings import ServerSettings
from tests.unit.helpers import async_test

S = 1_000_000_000


# --- CIDR lists and client keys --------------------------------------------------------------------------


def addr(text: str) -> tuple[int, int]:
    parsed = parse_address(text)
    assert parsed is not None
    return parsed


def test_cidr_sets_match_ipv4_and_ipv6_networks_and_single_addresses() -> None:
    cidrs = CidrSet(["10.0.0.0/8", "192.168.1.7", "2001:db8::/32", "::1", "172.16.0.0/12"])
    for inside in ("10.1.2.3", "10.255.255.255", "192.168.1.7", "172.31.0.1", "2001:db8:ffff::1", "::1"):
        assert cidrs.contains(*addr(inside)), inside
    for outside in ("11.0.0.1", "192.168.1.8", "172.32.0.1", "2001:db9::1", "::2", "127.0.0.1"):
        assert not cidrs.contains(*addr(outside)), outside
    assert cidrs and not CidrSet([])
    assert CidrSet(["0.0.0.0/0"]).contains(*addr("203.0.113.9"))
    assert not CidrSet(["0.0.0.0/0"]).contains(*addr("2001:db8::1"))  # families never mix


def test_ipv4_mapped_addresses_and_networks_are_ipv4() -> None:
    assert addr("::ffff:10.1.2.3") == addr("10.1.2.3")
    assert CidrSet(["::ffff:10.0.0.0/104"]).contains(*addr("10.9.9.9"))
    assert CidrSet(["10.0.0.0/8"]).contains(*addr("::ffff:10.9.9.9"))


def test_addresses_that_do_not_parse() -> None:
    assert parse_address("not an address") is None
    assert parse_address("300.1.1.1") is None
    assert parse_address("fe80::1%eth0") == addr("fe80::1")


def test_client_keys_group_ipv6_by_prefix_and_read_back() -> None:
    v4 = client_key(*addr("203.0.113.7"), 64)
    assert len(v4) == 16 and describe_key(v4, 64) == "203.0.113.7"
    one, other = client_key(*addr("2001:db8:1:2::1"), 64), client_key(*addr("2001:db8:1:2:ffff::9"), 64)
    assert one == other != client_key(*addr("2001:db8:1:3::1"), 64)
    assert describe_key(one, 64) == "2001:db8:1:2::/64"
    assert describe_key(client_key(*addr("2001:db8::5"), 128), 128) == "2001:db8::5"
    assert parse_client("2001:db8:1:2::/64", 64) == one
    assert parse_client("2001:db8:1:2::77", 64) == one
    assert parse_client(" 203.0.113.7 ", 64) == v4
    for bad in ("2001:db8:1:2::/48", "203.0.113.7/32", "nonsense", "", "2001:db8::/x"):
        assert parse_client(bad, 64) is None, bad


# --- the guards: section --------------------------------------------------------------------------------


def parse(value: Any) -> GuardsSpec | None:
    return parse_guards(Node(value, "test.yaml", "guards"))


def test_absent_section_and_defaults() -> None:
    assert parse(None) is None
    spec = parse({})
    assert spec == GuardsSpec() and not spec.screening and not spec.counting
    full = parse({"allow": ["10.0.0.1"], "deny": ["2001:db8::/32"], "max_connections_per_ip": 5,
                  "max_connections": "100", "ipv6_prefix": 56, "table_size": 1024,
                  "bans": {"after": 3, "window": "30s", "duration": "1m", "max_duration": "1h", "forget_after": "2h"}})
    assert full is not None
    assert full.allow == ("10.0.0.1/32",) and full.deny == ("2001:db8::/32",)
    assert full.bans == BanPolicy(3, 30.0, 60.0, 3600.0, 7200.0)
    assert full.screening and full.counting and full.max_connections == 100
    assert "ban after 3 offences" in full.describe()
    assert parse({"bans": {}}) == GuardsSpec(bans=BanPolicy())
    assert parse({"bans": {"duration": "2h"}}).bans.max_duration == 7200.0  # type: ignore[union-attr]


@pytest.mark.parametrize(("value", "path", "expected"), [
    ("yes", "guards", "expected a mapping"),
    ({"max_conns": 1}, "guards.max_conns", "unknown key"),
    ({"deny": ["10.0.0.1/8"]}, "guards.deny[0]", "host bits zero"),
    ({"allow": "10.0.0.0/8"}, "guards.allow", "expected a list"),
    ({"max_connections_per_ip": -1}, "guards.max_connections_per_ip", "from 0 to 16777215"),
    ({"max_connections_per_ip": 1 << 24}, "guards.max_connections_per_ip", "from 0 to 16777215"),
    ({"max_connections": "many"}, "guards.max_connections", "an integer of at least 0"),
    ({"ipv6_prefix": 0}, "guards.ipv6_prefix", "from 1 to 128"),
    ({"table_size": 10}, "guards.table_size", "from 64"),
    ({"bans": {"after": 0}}, "guards.bans.after", "at least 1"),
    ({"bans": {"when": 1}}, "guards.bans.when", "unknown key"),
    ({"bans": {"duration": "1h", "max_duration": "1m"}}, "guards.bans.max_duration", "at least the first ban"),
    ({"bans": {"window": "soon"}}, "guards.bans.window", "a duration"),
])
def test_errors_name_the_file_the_key_and_the_expectation(value: Any, path: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(value)
    assert caught.value.source == "test.yaml"
    assert caught.value.path == path
    assert expected in caught.value.message


# --- configurations, as the loader makes them -------------------------------------------------------------


def config_of(guards: Any = None, routes: list[dict[str, Any]] | None = None, **server: Any) -> GatewayConfig:
    document = {
        "source": "test.yaml",
        "server": dataclasses.asdict(ServerSettings(workers=2, **server)),
        "upstreams": {"app": "http://127.0.0.1:9"},
        "routes": routes or [{"name": "all", "prefix": "/", "upstream": "app"}],
        "guards": guards,
    }
    return from_document(document)


def test_the_loader_reads_the_section_and_check_summarises_it() -> None:
    config = config_of({"max_connections_per_ip": 3})
    assert config.guards is not None and config.guards.max_connections_per_ip == 3
    assert "guards: 0 allowed and 0 denied networks, connections per ip 3" in config.summary()
    assert config_of().guards is None


# --- the worker's guard -----------------------------------------------------------------------------------


class FakeProtocol:
    """What the guard reads and writes on a connection."""

    def __init__(self, ip: str | None = "10.0.0.1") -> None:
        self.client = (ip, 40000) if ip is not None else None
        self.guard_ticket: Any = None
        self.guard_epoch = -1


class Clock:
    def __init__(self) -> None:
        self.now = 1000 * S

    def __call__(self) -> int:
        return self.now


def guard_of(guards: dict[str, Any] | None) -> tuple[Guard, WorkerMetrics, Clock]:
    config = config_of(guards)
    metrics = WorkerMetrics(Schema.for_config(config))
    clock = Clock()
    spec = config.guards
    tables = worker_tables(config, {}) if spec is not None and spec.screening else None
    return Guard(spec, tables, metrics, clock), metrics, clock


def rejections(metrics: WorkerMetrics) -> dict[str, int]:
    offset = metrics.schema.families["gateway_guard_rejections"].offset
    counts = {reason: int(metrics.cells[offset + i]) for i, reason in enumerate(REASONS)}
    return {reason: n for reason, n in counts.items() if n}


def cell(metrics: WorkerMetrics, family: str, index: int = 0) -> int:
    return int(metrics.cells[metrics.schema.families[family].offset + index])


def status_of(answer: bytes | None) -> int:
    assert answer
    return int(answer.split(b" ", 2)[1])


def test_without_guards_nothing_is_checked_but_protocol_rejections_are_counted() -> None:
    guard, metrics, _ = guard_of(None)
    protocol = FakeProtocol()
    assert guard.admit(protocol) is None
    assert protocol.guard_ticket is None and protocol.guard_epoch == -1
    guard.rejected(protocol, HeadersTooLarge())
    guard.rejected(protocol, BadRequest())  # not a limit: not counted
    assert rejections(metrics) == {"header_size": 1}
    assert guard.offend("10.0.0.1", "rate_limit") == 0.0
    with pytest.raises(ValueError, match="tables"):
        Guard(GuardsSpec(max_connections=1), None)


def test_deny_closes_silently_and_allow_bypasses_caps_and_bans() -> None:
    guard, metrics, _ = guard_of({"deny": ["10.0.0.0/8"], "allow": ["10.0.0.9", "192.168.0.0/16"],
                                  "max_connections_per_ip": 1, "bans": {"after": 1}})
    assert guard.admit(FakeProtocol("10.0.0.9")) == b""  # the deny list is checked first
    assert rejections(metrics) == {"deny": 1}
    allowed = [FakeProtocol("192.168.4.4") for _ in range(3)]
    assert [guard.admit(p) for p in allowed] == [None] * 3
    assert all(p.guard_ticket is None for p in allowed)
    assert guard.offend("192.168.4.4", "rate_limit") == 0.0  # never banned
    assert guard.admit(FakeProtocol(None)) is None  # no address (a unix socket): nothing to check


def test_only_lists_give_no_ticket() -> None:
    guard, _, _ = guard_of({"deny": ["10.9.0.0/16"]})
    protocol = FakeProtocol("10.0.0.1")
    assert guard.admit(protocol) is None and protocol.guard_ticket is None


def test_per_ip_cap_refuses_with_429_counts_an_offence_and_releases() -> None:
    guard, metrics, _ = guard_of({"max_connections_per_ip": 2, "bans": {"after": 2, "duration": "30s"}})
    first, second, third = FakeProtocol(), FakeProtocol(), FakeProtocol()
    assert guard.admit(first) is None and guard.admit(second) is None
    assert isinstance(first.guard_ticket, Ticket) and first.guard_epoch >= 0
    answer = guard.admit(third)
    assert status_of(answer) == 429 and b'"too_many_connections"' in answer  # type: ignore[operator]
    assert b"retry-after: 1\r\n" in answer and b"connection: close\r\n" in answer  # type: ignore[operator]
    guard.release(first)
    assert first.guard_ticket is None
    guard.release(first)  # twice is harmless
    assert guard.admit(FakeProtocol()) is None
    assert status_of(guard.admit(FakeProtocol())) == 429  # second offence: banned now
    assert rejections(metrics) == {"ip_connections": 2}
    assert cell(metrics, "gateway_guard_bans") == 1
    answer = guard.admit(FakeProtocol())
    assert status_of(answer) == 403 and b'"client_banned"' in answer  # type: ignore[operator]
    assert b"retry-after: 30\r\n" in answer  # type: ignore[operator]
    assert guard.admit(FakeProtocol("10.0.0.2")) is None  # others are not affected


def test_host_cap_refuses_with_503_and_is_no_offence() -> None:
    guard, metrics, _ = guard_of({"max_connections": 1, "bans": {"after": 1}})
    held = FakeProtocol("10.0.0.1")
    assert guard.admit(held) is None
    assert status_of(guard.admit(FakeProtocol("10.0.0.2"))) == 503
    assert status_of(guard.admit(FakeProtocol("10.0.0.2"))) == 503
    assert rejections(metrics) == {"total_connections": 2}
    assert cell(metrics, "gateway_guard_bans") == 0
    guard.release(held)
    assert guard.admit(FakeProtocol("10.0.0.2")) is None


def test_a_full_count_table_admits_uncounted_and_says_so() -> None:
    guard, metrics, _ = guard_of({"max_connections_per_ip": 1, "table_size": 64})
    admitted = [FakeProtocol(f"10.0.{n // 250}.{n % 250}") for n in range(200)]
    assert all(guard.admit(p) is None for p in admitted)
    assert cell(metrics, "gateway_guard_table_full", 0) >= 200 - 64


def test_a_connection_sees_a_ban_imposed_after_it_was_admitted() -> None:
    guard, metrics, clock = guard_of({"bans": {"after": 2, "duration": "10s"}})
    early, other = FakeProtocol("10.0.0.1"), FakeProtocol("10.0.0.2")
    assert guard.admit(early) is None and guard.admit(other) is None
    assert guard.check(early) is None  # nothing changed: one read
    guard.rejected(early, PayloadTooLarge())
    assert gateway.guards.current() is not guard  # not installed: the module hook reports elsewhere
    assert guard.offend("10.0.0.1", "rate_limit") == 10.0
    refusal = guard.check(early)
    assert isinstance(refusal, ClientBanned) and refusal.status == 403
    assert guard.check(other) is None  # the epoch moved, but this client is not banned
    assert guard.check(other) is None
    guard.rejected(early, refusal)
    assert rejections(metrics) == {"body_size": 1, "banned": 1}
    clock.now += 11 * S
    assert guard.admit(FakeProtocol("10.0.0.1")) is None  # the ban expired by itself


def test_offences_reported_by_other_features_and_stages() -> None:
    guard, metrics, _ = guard_of({"bans": {"after": 3}})
    assert guard.offend("not an ip", "rate_limit") == 0.0
    assert guard.offend("2001:db8::1", "rate_limit") == 0.0
    guard.rejected_request("2001:db8::2", "body_size")  # the same /64 as the offender above
    assert guard.offend("2001:db8::3", "rate_limit") == 60.0
    guard.rejected_request(None, "body_size")
    assert rejections(metrics) == {"body_size": 2}


def test_the_module_hook_reports_to_the_installed_guard() -> None:
    config = config_of({"bans": {"after": 1}})
    previous = gateway.guards.current()
    try:
        guard = build_guard(config, {}, None)
        assert gateway.guards.current() is guard
        assert gateway.guards.offend("10.1.1.1") == 60.0
        gateway.guards.install(None)
        assert gateway.guards.offend("10.1.1.1") == 0.0
    finally:
        gateway.guards.install(previous)
    assert build_guard(config_of(None), {}, None).tables is None


def test_a_full_ban_table_is_counted() -> None:
    guard, metrics, _ = guard_of({"bans": {"after": 1}, "table_size": 64})
    for n in range(300):
        guard.offend(f"10.0.{n // 250}.{n % 250}", "rate_limit")
    assert cell(metrics, "gateway_guard_table_full", 1) > 0


# --- per-route body limits --------------------------------------------------------------------------------


def route(name: str, limit: int | None = None) -> RouteSpec:
    return RouteSpec(name, "/" + name, True, "app", max_body_bytes=limit)


def test_route_limits_below_the_server_get_a_stage_the_rest_the_protocol() -> None:
    routes = [route("a"), route("small", 100)]
    assert protocol_body_limit(1000, routes) == 1000
    assert [r.max_body_bytes for r in route_body_limits(1000, routes)] == [None, 100]


def test_a_route_above_the_server_raises_the_protocols_limit_and_the_others_keep_the_server() -> None:
    routes = [route("a"), route("big", 5000), route("small", 100)]
    assert protocol_body_limit(1000, routes) == 5000
    resolved = route_body_limits(1000, routes)
    assert [r.max_body_bytes for r in resolved] == [1000, 5000, 100]
    assert protocol_body_limit(1000, resolved) == 5000
    assert protocol_body_limit(1000, [route("any", 0)]) == 0  # 0: no limit, the largest
    assert [r.max_body_bytes for r in route_body_limits(0, [route("a"), route("b", 10)])] == [None, 10]


def test_the_loader_resolves_route_limits() -> None:
    config = config_of(routes=[{"name": "up", "prefix": "/up", "upstream": "app", "max_body_bytes": "10MiB"},
                               {"name": "rest", "prefix": "/", "upstream": "app"}], max_body_bytes=1024)
    assert [r.max_body_bytes for r in config.routes] == [10 * 1024**2, 1024]
    with pytest.raises(ConfigError, match=r"routes\[0\].max_body_bytes"):
        config_of(routes=[{"prefix": "/", "upstream": "app", "max_body_bytes": "lots"}])


@async_test
async def test_the_stage_passes_a_foreign_receive_through() -> None:
    passed: list[str] = []

    class Last(BodyLimitStage):
        async def __call__(self, ex: Any) -> None:
            passed.append("next")

    async def foreign_receive() -> None:  # not the gateway's protocol: nothing to enforce here
        return None

    stage = BodyLimitStage(100)
    stage.next = Last(0)
    await stage(type("Ex", (), {"receive": foreign_receive, "scope": {"client": None}})())  # type: ignore[arg-type]
    assert passed == ["next"]


# --- the segment and the supervisor's side ----------------------------------------------------------------


def test_segment_sizes_follow_the_table_size_and_the_workers() -> None:
    sizes = segment_sizes(config_of({"table_size": 128}))
    assert sizes == {SEGMENT: segment_size(128, lanes_for(2))}
    assert segment_sizes(config_of())[SEGMENT] > sizes[SEGMENT]  # the default table when unconfigured


def test_a_reload_cannot_resize_the_segment() -> None:
    config = config_of({"table_size": 128, "max_connections": 5})
    small = bytearray(segment_sizes(config_of({"table_size": 64}))[SEGMENT])
    assert worker_tables(config, {SEGMENT: small}).slots == 64  # type: ignore[dict-item]


def test_worker_exit_takes_back_its_connections() -> None:
    config = config_of({"max_connections_per_ip": 5, "max_connections": 10, "table_size": 64})
    segments = Segments(segment_sizes(config))
    try:
        worker = worker_tables(config, segments.maps)
        key = client_key(*addr("10.0.0.1"), 64)
        worker.acquire(key, 5, 10)
        worker_exited(segments.maps, 4242, config)  # someone else: nothing of ours
        worker_exited({}, 4242, config)
        host = open_tables(segments.maps[SEGMENT], 2)
        assert host.connections() == (1 if IMPLEMENTATION == "compiled" else 0)
        worker_exited(segments.maps, __import__("os").getpid(), config)
        assert host.connections() == 0 and host.count(key) == 0
    finally:
        del worker, host
        segments.close()


async def call(app: Any, method: str, path: str, query: bytes = b"") -> tuple[int, dict[bytes, bytes], bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http", "method": method, "path": path, "query_string": query, "headers": []}, receive, send)
    return sent[0]["status"], dict(sent[0]["headers"]), sent[1]["body"]


class FakeSupervisor:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.segments: Segments | None = None
        self.metrics = HostMetrics("test")

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        return True, {}


@async_test
async def test_admin_lists_and_lifts_bans_and_exposes_the_gauge() -> None:
    from gateway.admin.app import AdminApp

    config = config_of({"bans": {"after": 1, "duration": "30s"}, "max_connections": 9, "table_size": 64})
    supervisor = FakeSupervisor(config)
    admin = AdminApp(supervisor)  # type: ignore[arg-type]
    register(admin, config)
    register(admin, config)  # a reload registers again: one gauge still
    status, _, body = await call(admin, "GET", "/guards/bans")
    assert status == 200 and orjson.loads(body) == {"bans": []}  # no segment yet
    supervisor.segments = Segments(segment_sizes(config))
    try:
        worker = Guard(config.guards, worker_tables(config, supervisor.segments.maps))
        worker.offend("10.0.0.7", "rate_limit")
        worker.offend("2001:db8:1:2::5", "rate_limit")
        status, _, body = await call(admin, "GET", "/guards/bans")
        bans = orjson.loads(body)["bans"]
        assert status == 200 and {b["client"] for b in bans} == {"10.0.0.7", "2001:db8:1:2::/64"}
        assert all(b["level"] == 1 and 29 < b["seconds_left"] <= 30 and b["until"].endswith("Z") for b in bans)
        exposition = generate_latest(supervisor.metrics.registry).decode()
        assert "gateway_bans_active 2.0" in exposition
        assert ("gateway_guard_connections 0.0" in exposition) == (IMPLEMENTATION == "compiled")
        assert exposition.count("# TYPE gateway_bans_active gauge") == 1
        assert (await call(admin, "DELETE", "/guards/bans", b"client=10.0.0.7"))[0] == 200
        status, _, body = await call(admin, "DELETE", "/guards/bans", b"client=10.0.0.7")
        assert status == 404 and orjson.loads(body)["error"] == "not_found"
        status, _, body = await call(admin, "DELETE", "/guards/bans", b"client=2001:db8:1:2::/64")
        assert status == 200 and orjson.loads(body) == {"unbanned": "2001:db8:1:2::/64"}
        status, _, body = await call(admin, "DELETE", "/guards/bans", b"")
        assert status == 400 and b"?client=" in body
        assert orjson.loads((await call(admin, "GET", "/guards/bans"))[2]) == {"bans": []}
    finally:
        del worker
        supervisor.segments.close()
