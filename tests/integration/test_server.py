"""Processes: workers on SO_REUSEPORT sockets, restarts, graceful stop, reload under load, bad config."""

from __future__ import annotations

import contextlib
import http.client
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.integration.conftest import free_port, request, run_cli, wait_until

pytestmark = pytest.mark.integration


def listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # 0A = LISTEN
                inodes.add(fields[9])
    return inodes


class Load:
    """Steady keep-alive load from several threads; counts every failure."""

    def __init__(self, port: int, path: str, threads: int = 4) -> None:
        self.port = port
        self.path = path
        self.stop = threading.Event()
        self.ok = 0
        self.failures: list[str] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self.stop.is_set():
            try:
                conn.request("GET", self.path)
                resp = conn.getresponse()
                resp.read()
                with self.lock:
                    if resp.status == 200:
                        self.ok += 1
                    else:
                        self.failures.append(f"status {resp.status}")
            except (OSError, http.client.HTTPException) as exc:
                with self.lock:
                    self.failures.append(repr(exc))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.close()

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(15)


def test_two_workers_two_sockets_both_serve(start_gateway, upstream_port):
    gw = start_gateway(args=["--upstream", f"http://127.0.0.1:{upstream_port}"], workers=2)
    assert len(listening_inodes(gw.port)) == 2  # one SO_REUSEPORT socket per worker, not a shared one
    assert len({w["pid"] for w in gw.workers()}) == 2
    for i in range(60):
        assert gw.get(f"/echo/{i}").status == 200
    time.sleep(0.3)
    assert {entry["worker"] for entry in gw.access_log()} == {0, 1}


def test_killed_worker_is_restarted_while_the_other_serves(start_gateway, upstream_port):
    gw = start_gateway(args=["--upstream", f"http://127.0.0.1:{upstream_port}"], workers=2)
    before = {w["slot"]: w["pid"] for w in gw.workers()}
    import os

    os.kill(before[0], signal.SIGKILL)
    statuses = [gw.get(f"/echo/during-{i}", timeout=15).status for i in range(30)]
    assert statuses == [200] * 30
    gw.wait_ready()
    after = {w["slot"]: w["pid"] for w in gw.workers()}
    assert after[1] == before[1]
    assert after[0] != before[0]
    assert "exited unexpectedly (killed by SIGKILL)" in gw.stderr


def test_sigterm_finishes_in_flight_requests(start_gateway, upstream_port):
    gw = start_gateway(args=["--upstream", f"http://127.0.0.1:{upstream_port}"], workers=2)
    results: list[int] = []

    def slow() -> None:
        results.append(gw.get("/slow?delay=1.5", timeout=20).status)

    threads = [threading.Thread(target=slow) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    gw.signal(signal.SIGTERM)
    time.sleep(0.3)
    draining = gw.admin("/readyz")  # the admin port answers until the drain ends: not ready
    assert (draining.status, draining.json()["status"]) == (503, "draining")
    for thread in threads:
        thread.join(20)
    assert results == [200] * 4
    assert gw.proc.wait(20) == 0
    assert "draining" in gw.stderr


CONFIG_A = """
upstreams:
  api: http://127.0.0.1:{port}
routes:
  - {{name: a, prefix: /a, upstream: api, rewrite: /echo/a}}
"""
CONFIG_B = """
upstreams:
  api: http://127.0.0.1:{port}
routes:
  - {{name: a, prefix: /a, upstream: api, rewrite: /echo/a}}
  - {{name: b, prefix: /b, upstream: api, rewrite: /echo/b}}
"""


def test_sighup_reload_under_load_fails_no_request(start_gateway, upstream_port, tmp_path):
    gw = start_gateway(CONFIG_A.format(port=upstream_port), workers=2)
    config_path = next(tmp_path.glob("gateway-*.yaml"))
    assert gw.get("/b").status == 404
    old_pids = {w["pid"] for w in gw.workers()}
    with Load(gw.port, "/a/x") as load:
        time.sleep(0.5)
        config_path.write_text(CONFIG_B.format(port=upstream_port))
        gw.signal(signal.SIGHUP)
        wait_until(lambda: "reloaded" in gw.stderr, 20)
        wait_until(lambda: not (old_pids & {w["pid"] for w in gw.workers()}), 20)
        time.sleep(1.5)  # load keeps running across the old workers' drain
        config_path.write_text("routes: [")
        gw.signal(signal.SIGHUP)
        wait_until(lambda: "reload refused" in gw.stderr, 20)
        time.sleep(0.5)
    assert load.failures == []
    assert load.ok > 100
    assert gw.get("/b").status == 200
    assert "reload refused" in gw.stderr
    assert str(config_path) in gw.stderr
    assert gw.admin("/readyz").status == 200


def test_readyz_and_healthz(start_gateway, upstream_port):
    gw = start_gateway(args=["--upstream", f"http://127.0.0.1:{upstream_port}"])
    health = gw.admin("/healthz")
    assert (health.status, health.json()) == (200, {"status": "alive"})
    ready = gw.admin("/readyz").json()
    assert ready["status"] == "ready"
    assert gw.admin("/nope").status == 404
    assert request(gw.admin_port, "POST", "/readyz").status == 405


def test_bad_config_is_refused_with_the_key_path(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("""
upstreams:
  api: http://127.0.0.1:9
routes:
  - {prefix: /a, upstream: api}
  - {prefix: /b, upstream: api}
  - {prefix: /c, upstream: api}
  - {prefix: /d, upstream: missing}
""")
    for command in ("check", "run"):
        result = run_cli(command, "--config", str(path))
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1
        assert str(path) in lines[0]
        assert "routes[3].upstream" in lines[0]
        assert "expected" in lines[0]


def test_check_prints_summary_and_version(tmp_path):
    path = tmp_path / "good.yaml"
    path.write_text("upstreams: {api: 'http://${API_HOST:-127.0.0.1}:9000'}\nroutes: [{prefix: /, upstream: api}]\n")
    result = run_cli("check", "--config", str(path))
    assert result.returncode == 0
    assert "http://127.0.0.1:9000" in result.stdout
    assert "routes (1)" in result.stdout
    assert run_cli("version").stdout.startswith("gateway ")
    assert run_cli("--version").stdout.startswith("gateway ")
    env_result = run_cli("check", env={"GATEWAY_CONFIG": str(path), "API_HOST": "10.1.2.3"})
    assert "http://10.1.2.3:9000" in env_result.stdout


def test_port_in_use_exits_1_with_one_line():
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        result = run_cli("run", "--upstream", "http://127.0.0.1:9", "--port", str(port),
                         "--admin-port", str(free_port()))
    assert result.returncode == 1
    assert result.stderr.strip() == f"gateway: port {port} is already in use (0.0.0.0:{port})"


def test_second_sigterm_stops_at_once(start_gateway, upstream_port):
    gw = start_gateway(args=["--upstream", f"http://127.0.0.1:{upstream_port}", "--drain-timeout", "60s"])
    def slow() -> None:
        with contextlib.suppress(OSError, http.client.HTTPException):  # cut off by the second signal
            gw.get("/slow?delay=30", timeout=40)

    threading.Thread(target=slow, daemon=True).start()
    time.sleep(0.5)
    started = time.monotonic()
    gw.signal(signal.SIGTERM)
    time.sleep(0.5)
    gw.signal(signal.SIGTERM)
    assert gw.proc.wait(15) == 0
    assert time.monotonic() - started < 10
    assert "stopping workers now" in gw.stderr


def test_reload_keeps_listener_settings_until_restart(start_gateway, upstream_port, tmp_path):
    gw = start_gateway(CONFIG_A.format(port=upstream_port))
    old_pids = {w["pid"] for w in gw.workers()}
    config_path = next(tmp_path.glob("gateway-*.yaml"))
    config_path.write_text("server: {backlog: 100, admin_host: 127.0.0.2}\n" + CONFIG_B.format(port=upstream_port))
    gw.signal(signal.SIGHUP)
    wait_until(lambda: "reloaded" in gw.stderr, 20)
    wait_until(lambda: all(f"pid {pid} stopped" in gw.stderr for pid in old_pids), 20)
    assert "reload: backlog, admin_host changed; that takes effect at the next restart" in gw.stderr
    assert gw.admin("/readyz").status == 200  # still on the old admin address
    assert gw.get("/b").status == 200  # the routes changed, on the same port
    assert len(gw.workers()) == 1


def test_unusable_addresses_exit_1_with_one_line():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        admin = holder.getsockname()[1]
        result = run_cli("run", "--upstream", "http://127.0.0.1:9", "--port", str(free_port()),
                         "--admin-port", str(admin))
    assert result.returncode == 1
    assert result.stderr.strip() == f"gateway: admin listener: port {admin} is already in use (127.0.0.1:{admin})"
    result = run_cli("run", "--upstream", "http://127.0.0.1:9", "--host", "no-such-host.invalid",
                     "--port", str(free_port()), "--admin-port", str(free_port()))
    assert result.returncode == 1
    assert result.stderr.startswith("gateway: cannot resolve listen address 'no-such-host.invalid'")
    assert "Traceback" not in result.stderr
