"""DNS discovery against a real DNS server: dnsmasq on a free loopback port (Debian's dnsmasq-base),
its records changed by rewriting its hosts file and SIGHUP (A/AAAA) or by restarting it with other
records (SRV, which dnsmasq reads only at start), with a gateway under load following the changes."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import ROOT, free_port, wait_until
from tests.integration.test_server import Load
from tests.tools import require_tool

pytestmark = pytest.mark.parametrize("impl", ["python"])  # discovery runs in the supervisor: one is enough


class Dnsmasq:
    """A dnsmasq serving ``hosts`` (A/AAAA, re-read on SIGHUP) and ``records`` (--srv-host, ...)."""

    def __init__(self, program: str, tmp: Path) -> None:
        self.program = program
        self.port = free_port()
        self.hosts = tmp / "dns-hosts"
        self.hosts.write_text("")
        self.log = tmp / "dnsmasq.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *records: str) -> None:
        self.stop()
        argv = [self.program, "--no-daemon", "--conf-file=/dev/null", "--port", str(self.port),
                "--listen-address", "127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
                "--addn-hosts", str(self.hosts), "--local-ttl=1", "--pid-file=", "--log-facility=-",
                *records]
        user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
        argv.append(f"--user={user}")  # as root it would switch to nobody; stay who we are
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log)
        wait_until(lambda: self.started(offset), 10)

    def started(self, offset: int) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"dnsmasq exited: {self.log.read_text()}")
        return "started" in self.log.read_text()[offset:]

    def set_hosts(self, lines: list[str]) -> None:
        self.hosts.write_text("".join(line + "\n" for line in lines))
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[Dnsmasq]:
    sbin = Path("/usr/sbin/dnsmasq")  # not on a normal user's PATH
    server = Dnsmasq(str(sbin) if sbin.exists() else require_tool("dnsmasq", "dnsmasq-base"), tmp_path)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def upstreams_on() -> Iterator[Callable[[str, int], None]]:
    """Starts the test upstream on a given loopback address and port (several addresses, one port)."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(host: str, port: int) -> None:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "tests.integration.upstream_app:app", "--host", host, "--port",
             str(port), "--log-level", "warning"], cwd=ROOT))

    yield start
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def served_by(gw: Any, count: int = 12) -> set[tuple[str, int]]:
    """The upstream addresses that answered ``count`` requests (the echo names its own address)."""
    found = set()
    for _ in range(count):
        response = gw.get("/echo")
        assert response.status == 200, response.body
        host, port = response.json()["server"]
        found.add((host, port))
    return found


def rolled(gw: Any, change: Any) -> None:
    """Makes a change and waits until the workers for it serve (the supervisor logs each roll)."""
    before = gw.stderr.count("(discovery: ")
    change()
    wait_until(lambda: gw.stderr.count("(discovery: ") > before, 20)


def discovery(gw: Any) -> dict[str, Any]:
    upstream: dict[str, Any] = gw.admin("/upstreams").json()["upstreams"]["api"]
    return upstream


def stamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def connectable(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def test_a_records_followed_with_their_ttl_under_load(start_gateway, dnsmasq, upstreams_on):
    port = free_port()
    for host in ("127.0.0.2", "127.0.0.3"):
        upstreams_on(host, port)
    wait_until(lambda: connectable("127.0.0.2", port) and connectable("127.0.0.3", port), 20)
    dnsmasq.start()
    dnsmasq.set_hosts(["127.0.0.2 api.internal"])
    config = f"""
upstreams:
  api:
    dns: {{name: api.internal, port: {port}, nameserver: "127.0.0.1:{dnsmasq.port}", family: ipv4,
          min_refresh: 200ms, max_refresh: 10s}}
    balancer: round_robin
routes:
  - {{name: api, prefix: /, upstream: api}}
"""
    gw = start_gateway(config, workers=2)
    assert served_by(gw) == {("127.0.0.2", port)}
    source = discovery(gw)["discovery"][0]
    assert source["state"] == "ok" and source["source"] == "dns"
    assert source["watching"] == f"A api.internal:{port} @ 127.0.0.1:{dnsmasq.port}"
    # the record's TTL (1 s) sets the next resolution, within min_refresh (200ms) and max_refresh (10s)
    assert stamp(source["next_refresh"]) - stamp(source["last_refresh"]) == pytest.approx(1.0, abs=0.05)
    with Load(gw.port, "/echo") as load:
        # TTL 1s: the change is seen within about a second
        rolled(gw, lambda: dnsmasq.set_hosts(["127.0.0.2 api.internal", "127.0.0.3 api.internal"]))
        wait_until(lambda: served_by(gw) == {("127.0.0.2", port), ("127.0.0.3", port)}, 20)
        rolled(gw, lambda: dnsmasq.set_hosts(["127.0.0.3 api.internal"]))
        wait_until(lambda: served_by(gw) == {("127.0.0.3", port)}, 20)
        dnsmasq.stop()  # the DNS server goes away: the last good answer stays
        wait_until(lambda: discovery(gw)["discovery"][0]["state"] == "failing", 20)
        assert served_by(gw) == {("127.0.0.3", port)}
    assert load.failures == []
    assert load.ok > 50
    source = discovery(gw)["discovery"][0]
    assert source["targets"] == [f"http://127.0.0.3:{port}"] and source["last_error"]
    assert "keeping the last good list of 1 targets" in gw.stderr
    metrics = gw.admin("/metrics").body.decode()
    assert 'gateway_discovery_up{source="dns",upstream="api"} 0.0' in metrics
    assert 'gateway_discovery_refreshes_total{result="failure",source="dns",upstream="api"}' in metrics


def test_srv_records_give_ports_weights_and_backups(start_gateway, dnsmasq, upstream_port, second_upstream_port):
    third = free_port()  # nothing listens there: a backup target that is never needed
    dnsmasq.start("--host-record=u.internal,127.0.0.1",
                  f"--srv-host=_http._tcp.api.internal,u.internal,{upstream_port},1,10",
                  f"--srv-host=_http._tcp.api.internal,u.internal,{third},2,10")
    config = f"""
upstreams:
  api:
    dns: {{srv: _http._tcp.api.internal, nameserver: "127.0.0.1:{dnsmasq.port}", min_refresh: 200ms}}
routes:
  - {{name: api, prefix: /, upstream: api}}
"""
    gw = start_gateway(config)
    targets = {(t["url"], t["weight"], t["backup"]) for t in discovery(gw)["targets"]}
    assert targets == {(f"http://127.0.0.1:{upstream_port}", 10, False), (f"http://127.0.0.1:{third}", 1, True)}
    assert served_by(gw) == {("127.0.0.1", upstream_port)}
    with Load(gw.port, "/echo") as load:
        dnsmasq.start("--host-record=u.internal,127.0.0.1",  # SRV records change: dnsmasq restarts
                      f"--srv-host=_http._tcp.api.internal,u.internal,{upstream_port},1,10",
                      f"--srv-host=_http._tcp.api.internal,u.internal,{second_upstream_port},1,30")
        wait_until(lambda: served_by(gw) == {("127.0.0.1", upstream_port), ("127.0.0.1", second_upstream_port)},
                   20)
    assert load.failures == []
    weights = {t["url"]: t["weight"] for t in discovery(gw)["targets"]}
    assert weights == {f"http://127.0.0.1:{upstream_port}": 10, f"http://127.0.0.1:{second_upstream_port}": 30}
