"""The access log of a real gateway: lines in a file, what never appears, sampling, an unwritable path,
and rotation (rename, then SIGUSR1 to the supervisor) with requests in flight."""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import request, run_cli, wait_until

pytestmark = pytest.mark.integration

SECRET = "s3cr3t-t0ken"


def config(upstream_port: int, log: Path, server: str = "") -> str:
    return f"""
server:
  access_log_file: {log}
{server}
upstreams:
  api: http://127.0.0.1:{upstream_port}
routes:
  - name: echo
    prefix: /echo
    upstream: api
  - name: slow
    prefix: /slow
    upstream: api
  - name: status
    prefix: /status
    upstream: api
"""


def read_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of the file, each of which must be whole JSON."""
    if not path.exists():
        return []
    text = path.read_text()
    assert text == "" or text.endswith("\n"), "a line was cut"
    return [json.loads(line) for line in text.splitlines()]


def test_lines_go_to_the_file_never_with_secrets(start_gateway, upstream_port, tmp_path):
    log = tmp_path / "access.log"
    gw = start_gateway(config(upstream_port, log), workers=2)
    secret_headers = {"Authorization": f"Bearer {SECRET}", "Cookie": f"session={SECRET}",
                      "User-Agent": "integration-test/1.0"}
    for i in range(20):
        assert gw.get(f"/echo/{i}?token={SECRET}", headers=secret_headers).status == 200
    assert gw.get("/nowhere?token=" + SECRET).status == 404
    lines = wait_until(lambda: len(read_lines(log)) == 21 and read_lines(log))
    assert SECRET not in log.read_text()
    proxied = [line for line in lines if line["route"] == "echo"]
    assert sorted(line["path"] for line in proxied) == sorted(f"/echo/{i}" for i in range(20))
    for line in proxied:
        assert line["status"] == 200
        assert line["upstream"] == f"http://127.0.0.1:{upstream_port}"
        assert line["client"] == "127.0.0.1"
        assert line["user_agent"] == "integration-test/1.0"
        assert 0 < line["upstream_ms"] <= line["duration_ms"]
        assert line["subject"] is None
        assert line["time"].endswith("Z") and len(line["time"]) == len("2026-11-26T09:12:03.417Z")
    [missed] = [line for line in lines if line["route"] is None]
    assert (missed["status"], missed["path"], missed["upstream"]) == (404, "/nowhere", None)
    assert missed["upstream_ms"] is None
    assert gw.access_log() == []  # nothing on stdout
    assert log.stat().st_mode & 0o777 == 0o640


def test_sampling_keeps_the_failures(start_gateway, upstream_port, tmp_path):
    log = tmp_path / "access.log"
    gw = start_gateway(config(upstream_port, log, "  access_log_sample: 0"))
    for i in range(10):
        assert gw.get(f"/echo/{i}").status == 200
    assert gw.get("/nowhere").status == 404
    assert gw.get("/status?code=503").status == 503
    assert gw.stop() == 0  # a stopping worker writes what is left
    assert sorted(line["status"] for line in read_lines(log)) == [404, 503]


def test_an_unwritable_path_stops_the_start_with_one_line(upstream_port, tmp_path):
    bad = tmp_path / "missing" / "access.log"
    result = run_cli("run", "--upstream", f"http://127.0.0.1:{upstream_port}", "--port", "0",
                     "--access-log-file", str(bad))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("gateway: invalid configuration: flag --access-log-file: cannot create ")
    assert str(bad) in result.stderr


class Traffic:
    """Requests from several threads, a few always in flight (slow ones among them); each carries its
    own X-Request-ID so its line can be found, and the time it started is kept."""

    def __init__(self, port: int, threads: int = 4) -> None:
        self.port = port
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.started: dict[str, float] = {}  # request id -> when it was sent, for answered requests
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self.run, args=(n,), daemon=True) for n in range(threads)]

    def run(self, number: int) -> None:
        sequence = 0
        while not self.stop.is_set():
            sequence += 1
            request_id = f"t{number}-{sequence}"
            path = "/slow/x?delay=0.05" if sequence % 3 == 0 else f"/echo/{sequence}"
            sent = time.monotonic()
            try:  # a new connection each time, so that both workers get requests
                resp = request(self.port, "GET", path, headers={"X-Request-ID": request_id}, timeout=10)
            except (OSError, http.client.HTTPException) as exc:
                with self.lock:
                    self.failures.append(repr(exc))
                continue
            with self.lock:
                if resp.status == 200:
                    self.started[request_id] = sent
                else:
                    self.failures.append(f"{request_id}: status {resp.status}")

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(15)


def test_rotation_with_sigusr1_under_load(start_gateway, upstream_port, tmp_path):
    log, rotated = tmp_path / "access.log", tmp_path / "access.log.1"
    gw = start_gateway(config(upstream_port, log), workers=2)
    with Traffic(gw.port) as traffic:
        wait_until(lambda: log.exists() and log.stat().st_size > 0)
        time.sleep(0.3)
        log.rename(rotated)
        gw.signal(signal.SIGUSR1)
        rotated_at = time.monotonic()
        wait_until(lambda: log.exists() and log.stat().st_size > 0)
        time.sleep(1.0)
    assert traffic.failures == []
    assert gw.stop() == 0
    assert "Traceback" not in gw.stderr
    before, after = read_lines(rotated), read_lines(log)  # each line whole JSON
    ids_before = [line["request_id"] for line in before]
    ids_after = [line["request_id"] for line in after]
    assert before and after
    assert len(ids_before) + len(ids_after) == len(traffic.started)  # no line lost, none twice
    assert set(ids_before) | set(ids_after) == set(traffic.started)
    settled = rotated_at + 0.5  # every worker has reopened by then
    late = {rid for rid, sent in traffic.started.items() if sent > settled}
    assert late and late <= set(ids_after)
    assert {line["worker"] for line in after if line["request_id"] in late} == {0, 1}  # both reopened
