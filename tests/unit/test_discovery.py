"""Discovery: the source keys' config, the composition of found targets, the watchers' shared state,
the file source (on real files) and the etcd source's message handling."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, Node
from gateway.upstreams.config import parse_upstream, parse_upstreams
from gateway.upstreams.discovery.config import (
    DnsSpec,
    EtcdSpec,
    FileSpec,
    Found,
    parse_entry,
    parse_list,
    parse_sources,
)
from gateway.upstreams.discovery.etcd import EtcdError, EtcdWatcher, _decode, _value, messages, prefix_end
from gateway.upstreams.discovery.file import FileWatcher
from gateway.upstreams.discovery.layer import DiscoveryLayer, DiscoveryMetrics, sources_of
from gateway.upstreams.discovery.watcher import Watcher, _stamp, backoff
from gateway.upstreams.upstream import NoTarget, Upstream
from tests.unit.helpers import async_test


def sources(value: Any, source: str = "test.yaml") -> tuple[Any, ...]:
    return parse_sources("api", Node(value, source, "upstreams.api"))


def fails(value: Any, message: str, source: str = "test.yaml") -> None:
    with pytest.raises(ConfigError) as error:
        sources(value, source)
    assert message in str(error.value)


# -- config -------------------------------------------------------------------------------------------


def test_dns_a_and_srv_sources() -> None:
    (spec,) = sources({"dns": {"name": "API.internal.", "port": 8080, "nameserver": "127.0.0.1:5353",
                               "min_refresh": "500ms", "max_refresh": "1m", "family": "ipv6", "timeout": 1}})
    assert spec == DnsSpec(name="api.internal", port=8080, nameservers=(("127.0.0.1", 5353),), family="ipv6",
                           min_refresh=0.5, max_refresh=60.0, timeout=1.0)
    assert spec.describe() == "AAAA api.internal:8080 @ 127.0.0.1:5353"
    (srv,) = sources({"dns": {"srv": "_http._tcp.api.internal", "nameserver": ["[::1]:53", "10.0.0.1"]}})
    assert srv.srv == "_http._tcp.api.internal" and srv.port == 0
    assert srv.nameservers == (("::1", 53), ("10.0.0.1", 53))
    assert srv.describe() == "SRV _http._tcp.api.internal @ ::1:53,10.0.0.1:53"
    (system,) = sources({"dns": {"name": "api", "port": 80}})
    assert system.describe() == "A/AAAA api:80 @ system resolver" and system.nameservers == ()


@pytest.mark.parametrize(("dns", "message"), [
    ({"port": 80}, "either name (A/AAAA records, with port) or srv"),
    ({"name": "a", "srv": "b", "port": 80}, "either name"),
    ({"srv": "_http._tcp.a", "port": 80}, "no port with srv"),
    ({"name": "api.internal"}, "upstreams.api.dns.port: expected the targets' port"),
    ({"name": "bad name!", "port": 80}, "a DNS name such as"),
    ({"name": "a", "port": 80, "nameserver": "dns.example:53"}, "a nameserver IP address"),
    ({"name": "a", "port": 80, "nameserver": "127.0.0.1:53/x"}, "a nameserver IP address"),
    ({"name": "a", "port": 80, "nameserver": "127.0.0.1:99999"}, "a nameserver IP address"),
    ({"name": "a", "port": 80, "nameserver": []}, "a nameserver address"),
    ({"name": "a", "port": 80, "min_refresh": "10s", "max_refresh": "5s"}, "at least min_refresh (10s)"),
    ({"name": "a", "port": 80, "family": "ipx"}, "one of both, ipv4, ipv6"),
    ({"name": "a", "port": 80, "ttl": 5}, "upstreams.api.dns.ttl: unknown key"),
])
def test_dns_source_errors_name_the_key(dns: Any, message: str) -> None:
    fails({"dns": dns}, message)


def test_file_source_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("")
    (spec,) = sources({"file": "targets.yaml"}, str(config))
    assert spec == FileSpec(str(tmp_path / "targets.yaml")) and spec.describe() == spec.path
    (spec,) = sources({"file": {"path": "/etc/targets.json", "interval": "5s"}}, str(config))
    assert spec == FileSpec("/etc/targets.json", 5.0)
    (spec,) = sources({"file": "targets.yaml"}, "admin API")  # no file to start from: as written
    assert spec.path == "targets.yaml"
    fails({"file": {"interval": "1s"}}, "upstreams.api.file.path: expected the path of a YAML or JSON list")


def test_etcd_source() -> None:
    (spec,) = sources({"etcd": {"endpoints": "http://127.0.0.1:2379"}})
    assert spec == EtcdSpec(("http://127.0.0.1:2379",), "/gateway/upstreams/api/targets/")
    assert spec.describe() == "/gateway/upstreams/api/targets/ @ http://127.0.0.1:2379"
    (spec,) = sources({"etcd": {"endpoints": ["http://[::1]:2379", "http://10.0.0.2:2379/"], "prefix": "/x/",
                                "timeout": "500ms"}})
    assert spec == EtcdSpec(("http://[::1]:2379", "http://10.0.0.2:2379"), "/x/", 0.5)
    fails({"etcd": {}}, "upstreams.api.etcd.endpoints: expected etcd client URLs")
    fails({"etcd": {"endpoints": []}}, "at least one etcd client URL")
    fails({"etcd": {"endpoints": "http://127.0.0.1:2379/v3"}}, "without a path")


def test_an_upstream_with_a_source_may_start_without_targets() -> None:
    spec = parse_upstream("api", Node({"file": "/t.yaml"}, "test.yaml", "upstreams.api"))
    assert spec.targets == () and not spec.plain and spec.sources == (FileSpec("/t.yaml"),)
    up = Upstream(spec)  # no target yet: every request is a 503 until the source answers
    assert up.base_path == ""
    with pytest.raises(NoTarget):
        up.choose(None, [])
    one = parse_upstream("api", Node({"file": "/t.yaml", "targets": ["http://a:1"]}, "test.yaml", "upstreams.api"))
    assert one.plain and one.sources
    with pytest.raises(ConfigError, match=r"upstreams\.api\.targets: expected a list of target URLs"):
        parse_upstreams(Node({"api": {"balancer": "random"}}, "test.yaml", "upstreams"))
    with pytest.raises(ConfigError, match="at least one target URL"):
        parse_upstreams(Node({"api": {"targets": []}}, "test.yaml", "upstreams"))


def test_found_entries() -> None:
    node = Node([" http://a:1", {"url": "http://b:80/", "weight": 5}], "file.yaml")
    assert [parse_entry(e) for e in node.elements()] == [Found("http://a:1"), Found("http://b", 5)]
    assert Found("http://a:1").entry() == "http://a:1"
    assert Found("http://a:1", 5).entry() == {"url": "http://a:1", "weight": 5}
    assert Found("http://a:1", 5, backup=True).entry() == "http://a:1"
    assert parse_list({"targets": ["http://a:1"]}, "f") == (Found("http://a:1"),)
    with pytest.raises(ConfigError, match="at least one target"):
        parse_list([], "f")
    with pytest.raises(ConfigError, match=r"f: \[1\]: expected an upstream URL"):
        parse_list(["http://a:1", "ftp://b"], "f")
    with pytest.raises(ConfigError, match="expected a list"):
        parse_list("http://a:1", "f")


# -- the watchers' shared state ------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.changes: list[str] = []

    def __call__(self, upstream: str) -> None:
        self.changes.append(upstream)


@async_test
async def test_a_watcher_keeps_its_last_good_answer_and_logs_state_changes_once(caplog: Any) -> None:
    caplog.set_level(logging.INFO, "gateway.upstreams.discovery")
    changed = Recorder()
    watcher = Watcher("api", FileSpec("/t"), changed)
    assert watcher.view()["state"] == "pending" and watcher.view()["last_refresh"] is None
    watcher.bad("nothing yet")
    assert "no targets found yet" in caplog.text
    watcher.good((Found("http://b:1"), Found("http://a:1"), Found("http://c:1", backup=True)))
    watcher.good((Found("http://a:1"), Found("http://b:1"), Found("http://c:1", backup=True)))  # same set
    assert changed.changes == ["api"] and watcher.answered.is_set()
    watcher.bad("gone")
    watcher.bad("still gone")
    assert caplog.text.count("keeping the last good list of 3 targets") == 1
    view = watcher.view()
    assert view["targets"] == ["http://a:1", "http://b:1"] and view["backup"] == ["http://c:1"]
    assert view["state"] == "failing" and view["last_error"] == "still gone"
    assert view["refreshes"] == {"success": 2, "failure": 3}
    watcher.good((Found("http://a:1"),))
    assert "(recovered)" in caplog.text and changed.changes == ["api", "api"]
    assert _stamp(0.5) == "1970-01-01T00:00:00.500Z"
    assert [backoff(n, 1.0, 5.0) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 5.0]
    assert backoff(10_000, 0.25) == 30.0
    watcher.close()  # never started: nothing to cancel
    await watcher.wait_closed()


@async_test
async def test_the_file_source_reads_a_changed_file_and_keeps_the_last_good_list(tmp_path: Path) -> None:
    path = tmp_path / "targets.yaml"
    watcher = FileWatcher("api", FileSpec(str(path), 0.01), Recorder())
    watcher.poll()
    assert watcher.state == "failing" and "cannot read" in (watcher.error or "")
    path.write_text('["http://a:1"]')
    watcher.poll()
    assert watcher.found == (Found("http://a:1"),) and watcher.refreshes["success"] == 1
    watcher.poll()  # unchanged: not even read
    assert watcher.refreshes["success"] == 1
    os.utime(path, ns=(1, 1))  # touched, same content: read, nothing new
    watcher.poll()
    assert watcher.refreshes["success"] == 1
    path.write_text("[unclosed")
    watcher.poll()
    assert "not valid YAML or JSON" in (watcher.error or "") and watcher.found == (Found("http://a:1"),)
    path.write_text("- http://a:1\n- ftp://b:2\n")
    watcher.poll()
    assert "[1]: expected an upstream URL" in (watcher.error or "")
    path.write_text("- http://a:1\n- {url: http://b:2, weight: 2}\n")
    watcher.start()
    await asyncio.wait_for(_until(lambda: watcher.found is not None and len(watcher.found) == 2), 5)
    watcher.close()
    await watcher.wait_closed()
    assert watcher.next_refresh is not None


async def _until(predicate: Any) -> None:
    while not predicate():
        await asyncio.sleep(0.01)


# -- etcd messages -------------------------------------------------------------------------------------


def test_prefix_end_and_values() -> None:
    assert prefix_end(b"/a/") == b"/a0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff") == b"\x00"
    assert _value(b' {"url": "http://a:1", "weight": 2} ') == {"url": "http://a:1", "weight": 2}
    assert _value(b'"http://a:1"') == "http://a:1"
    assert _value(b"http://a:1\n") == "http://a:1"
    assert _value(b"{not json") == "{not json"


def test_messages_takes_whole_json_objects_and_leaves_a_partial_one() -> None:
    buffer = bytearray(b'{"a": 1}\n{"b": "\xc3\xa9"}\n{"c": ')
    assert messages(buffer) == [{"a": 1}, {"b": "\u00e9"}]
    assert buffer == bytearray(b'{"c": ')
    buffer += b"3}"
    assert messages(buffer) == [{"c": 3}] and buffer == bytearray()
    with pytest.raises(EtcdError, match="not JSON"):
        _decode(b"<html>", "http://e")
    with pytest.raises(EtcdError, match="sent"):
        _decode(b"[1]", "http://e")


def _kv(key: str, value: str | None = None) -> dict[str, str]:
    kv = {"key": base64.b64encode(key.encode()).decode()}
    if value is not None:
        kv["value"] = base64.b64encode(value.encode()).decode()
    return kv


def test_watch_events_change_the_targets() -> None:
    changed = Recorder()
    watcher = EtcdWatcher("api", EtcdSpec(("http://e:2379",), "/t/"), changed)
    watcher.kvs = {}
    watcher.on_message({"result": {"header": {"revision": "5"}, "created": True}})
    assert watcher.revision == 5 and watcher.state == "pending"
    watcher.on_message({"result": {"header": {"revision": "6"}, "events": [
        {"kv": _kv("/t/a", "http://a:1")}, {"kv": _kv("/t/b", json.dumps({"url": "http://b:1", "weight": 4}))},
        {"kv": _kv("/t/c", "nonsense")}]}})
    assert watcher.found == (Found("http://a:1"), Found("http://b:1", 4)) and watcher.revision == 6
    assert watcher.state == "ok" and "etcd /t/c" in (watcher.error or "")
    watcher.on_message({"result": {"header": {"revision": "7"}, "events": [
        {"type": "DELETE", "kv": _kv("/t/a")}, {"type": "DELETE", "kv": _kv("/t/b")}]}})
    assert watcher.state == "failing" and "no targets under /t/" in (watcher.error or "")
    assert watcher.found == (Found("http://a:1"), Found("http://b:1", 4))  # the last good list stays
    with pytest.raises(EtcdError, match="cancelled \\(compacted\\)"):
        watcher.on_message({"result": {"compact_revision": "3"}})
    with pytest.raises(EtcdError, match="cancelled \\(gone\\)"):
        watcher.on_message({"result": {"canceled": True, "cancel_reason": "gone"}})
    with pytest.raises(EtcdError, match="the watch failed"):
        watcher.on_message({"error": {"grpc_code": 14}})


# -- the layer -----------------------------------------------------------------------------------------


class FakeSupervisor:
    """What the layer uses of the supervisor: the base document, the running config, reconfigure."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.base = self.config = type("Config", (), {"document": document})()
        self.layers: list[Any] = []
        self.state = "serving"
        self.calls: list[str] = []
        self.outcomes: list[Any] = []
        self.metrics = None

    async def reconfigure(self, reason: str) -> bool:
        self.calls.append(reason)
        outcome = self.outcomes.pop(0) if self.outcomes else True
        if isinstance(outcome, Exception):
            raise outcome
        return bool(outcome)


def document(upstreams: dict[str, Any], source: str = "test.yaml") -> dict[str, Any]:
    return {"source": source, "upstreams": upstreams, "routes": []}


def test_sources_of_skips_upstreams_without_or_with_invalid_sources() -> None:
    found = sources_of(document({"a": "http://a:1", "b": {"targets": ["http://b:1"]}, "c": {"file": "/c"},
                                 "d": {"dns": {"name": "x"}}}))  # d: no port, the loader says so
    assert found == {"c": (FileSpec("/c"),)}
    assert sources_of({"upstreams": None}) == {}


@async_test
async def test_apply_composes_static_then_found_targets(tmp_path: Path) -> None:
    from prometheus_client.registry import CollectorRegistry

    from gateway.upstreams.discovery.layer import layer as make_layer

    path = tmp_path / "t.yaml"
    path.write_text(json.dumps(["http://a:1", {"url": "http://c:3", "weight": 2}]))
    base = document({"api": {"targets": ["http://a:1/", "http://b:2"], "file": str(path)},
                     "other": {"targets": ["http://o:1"]}})
    supervisor = FakeSupervisor(base)
    supervisor.metrics = type("Metrics", (), {"registry": CollectorRegistry()})()
    layer = make_layer(supervisor, None)  # type: ignore[arg-type]
    supervisor.layers = [layer]
    await layer.start()
    composed = layer.apply(base)
    assert composed["upstreams"]["api"]["targets"] == ["http://a:1/", "http://b:2", {"url": "http://c:3", "weight": 2}]
    assert composed["upstreams"]["other"] is base["upstreams"]["other"]
    assert base["upstreams"]["api"]["targets"] == ["http://a:1/", "http://b:2"]  # not modified
    assert layer.apply(document({"x": {"targets": ["http://x:1"]}})) == document({"x": {"targets": ["http://x:1"]}})
    assert list(layer.watchers) == [("api", FileSpec(str(path)))]  # still what the running config uses
    watcher = layer.watchers[("api", FileSpec(str(path)))]
    watcher.good((Found("http://s:1", 3, backup=True), Found("http://c:3", 2)))
    assert layer.apply(base)["upstreams"]["api"]["backup"] == ["http://s:1"]
    assert layer.snapshot()["api"][0]["source"] == "file"
    invalid = layer.apply(document({"api": {"targets": ["ftp://x"], "file": str(path)}}))  # the loader says so
    assert invalid["upstreams"]["api"]["targets"][0] == "ftp://x"
    assert supervisor.metrics.registry.get_sample_value("gateway_discovery_up", {"upstream": "api",
                                                                                 "source": "file"}) == 1
    metrics = {m.name: m.samples for m in DiscoveryMetrics(layer).collect()}
    assert metrics["gateway_discovery_targets"][0].value == 2
    assert metrics["gateway_discovery_up"][0].value == 1
    supervisor.config = type("Config", (), {"document": document({})})()
    layer.apply(document({}))  # neither composed nor running: the source stops
    assert layer.watchers == {}
    layer.close()
    assert supervisor.metrics.registry.get_sample_value("gateway_discovery_up", {"upstream": "api",
                                                                                 "source": "file"}) is None


@async_test
async def test_start_waits_for_first_answers_only_so_long(monkeypatch: Any) -> None:
    from gateway.upstreams.discovery import layer as module

    monkeypatch.setattr(module, "FIRST_ANSWER_CAP", 0.05)
    supervisor = FakeSupervisor(document({"api": {"etcd": {"endpoints": "http://192.0.2.1:2379"}}}))
    layer = DiscoveryLayer(supervisor)
    await layer.start()  # etcd at a black-holed address: the gateway starts without its answer
    assert layer.snapshot()["api"][0]["state"] in ("pending", "failing")
    layer.close()


@async_test
async def test_changes_become_one_reconfigure_at_a_time_and_failures_are_handled(caplog: Any,
                                                                                  monkeypatch: Any) -> None:
    from gateway.server.supervisor import ReconfigureError
    from gateway.upstreams.discovery import layer as module

    monkeypatch.setattr(module, "RETRY_DELAY", 0.1)

    supervisor = FakeSupervisor(document({}))
    layer = DiscoveryLayer(supervisor)
    await layer.start()
    layer.on_change("b")
    layer.on_change("a")
    await _until(lambda: supervisor.calls)
    assert supervisor.calls == ["discovery: a, b"] and layer.applied["success"] == 1
    supervisor.outcomes = [ConfigError("test.yaml", "upstreams.a.targets", "expected distinct URLs")]
    layer.on_change("a")
    await _until(lambda: layer.rejected)
    assert "expected distinct URLs" in caplog.text and layer.applied["failure"] == 1
    supervisor.state = "starting"  # the first workers are not serving yet: try again shortly, no error
    supervisor.outcomes = [ReconfigureError("discovery: the gateway is starting"), False]
    layer.on_change("a")
    await asyncio.wait_for(_until(lambda: len(supervisor.calls) == 4), 5)
    assert layer.rejected is None and layer.applied["failure"] == 1
    supervisor.state = "serving"
    supervisor.outcomes = [ReconfigureError("discovery: the new workers did not start")]
    layer.on_change("a")
    await _until(lambda: layer.applied["failure"] == 2)
    assert "the new workers did not start; trying again in 0.1s" in caplog.text
    supervisor.state = "draining"  # stopping: the applier ends quietly
    supervisor.outcomes = [ReconfigureError("discovery: the gateway is draining")]
    layer.dirty.set()
    assert layer.applier is not None
    await asyncio.wait_for(layer.applier, 10)
    assert layer.applied["failure"] == 2
    layer.close()


# -- the etcd client, against a scripted HTTP server on loopback -----------------------------------------


class ScriptedEtcd:
    """Answers the JSON gateway's range and watch the way etcd does (watch: a chunked stream of JSON
    lines, each ``push``ed by the test); ``mode`` breaks it: "404", "garbage", "close"."""

    def __init__(self) -> None:
        self.kvs: list[dict[str, str]] = []
        self.revision = 1
        self.mode = ""
        self.watches: list[asyncio.StreamWriter] = []
        self.server: asyncio.AbstractServer | None = None
        self.url = ""

    async def start(self) -> None:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(
            b"content-length")))
        await reader.readexactly(length)
        path = head.split(b" ")[1]
        if self.mode == "404":
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found")
        elif self.mode == "garbage":
            writer.write(b"HTTP/1.1 abc\r\n\r\n")
        elif self.mode == "close":
            pass
        elif path == b"/v3/kv/range":
            body = json.dumps({"header": {"revision": str(self.revision)}, "kvs": self.kvs}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            self.watches.append(writer)
            self.push({"result": {"header": {"revision": str(self.revision)}, "created": True}})
            return
        await writer.drain()
        writer.close()

    def push(self, message: dict[str, Any]) -> None:
        line = json.dumps(message).encode() + b"\n"
        for half in (line[:7], line[7:]):  # a message split across chunks
            self.watches[-1].write(b"%x\r\n%s\r\n" % (len(half), half))

    def end_watch(self) -> None:
        self.watches[-1].write(b"0\r\n\r\n")
        self.watches[-1].close()

    def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.watches:
            writer.close()


@async_test
async def test_the_etcd_source_ranges_watches_and_reconnects() -> None:
    from gateway.upstreams.discovery import etcd as module

    scripted = ScriptedEtcd()
    await scripted.start()
    scripted.kvs = [_kv("/t/a", "http://a:1")]
    closed = f"http://127.0.0.1:{_closed_port()}"
    watcher = EtcdWatcher("api", EtcdSpec((closed, scripted.url), "/t/", 1.0), Recorder())
    watcher.start()  # the first endpoint refuses: the second one answers
    await asyncio.wait_for(_until(lambda: watcher.state == "ok" and len(scripted.watches) == 1), 10)
    assert watcher.found == (Found("http://a:1"),) and watcher.refreshes["failure"] == 1
    scripted.push({"result": {"header": {"revision": "3"}, "events": [{"kv": _kv("/t/b", "http://b:1")}]}})
    await asyncio.wait_for(_until(lambda: watcher.found is not None and len(watcher.found) == 2), 10)
    scripted.kvs = [_kv("/t/c", "http://c:1")]
    scripted.end_watch()  # the stream ends: read again, watch again
    await asyncio.wait_for(_until(lambda: watcher.found == (Found("http://c:1"),)), 10)
    assert "the watch ended" in (watcher.error or "") or watcher.refreshes["failure"] >= 2
    watcher.close()
    await watcher.wait_closed()
    for mode, message in (("404", "answered HTTP 404"), ("garbage", "a malformed HTTP response"),
                          ("close", "the connection closed")):
        scripted.mode = mode
        with pytest.raises(module.EtcdError, match=message):
            await module.call(scripted.url, "/v3/kv/range", {}, 1.0)
    scripted.close()


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@async_test
async def test_the_admin_endpoint_lists_each_upstreams_sources(tmp_path: Path) -> None:
    from gateway.upstreams.admin import with_discovery

    path = tmp_path / "t.yaml"
    path.write_text('["http://a:1"]')

    class AdminLayer:  # an earlier layer adds the discovered upstream: its source starts with the others
        def apply(self, document: dict[str, Any]) -> dict[str, Any]:
            return {**document, "upstreams": {"api": {"file": str(path)}}}

    supervisor = FakeSupervisor(document({}))
    layer = DiscoveryLayer(supervisor)
    supervisor.layers = [AdminLayer(), layer]
    await layer.start()
    snapshot = with_discovery({"api": {"targets": []}, "static": {"targets": []}}, supervisor)
    assert snapshot["api"]["discovery"][0]["targets"] == ["http://a:1"] and "discovery" not in snapshot["static"]
    assert with_discovery({}, object()) == {}
    layer.close()
