"""Fixtures that start real processes on loopback: the test upstream (stock uvicorn) and the gateway.

Every gateway started here runs as ``python -m gateway run`` in its own process group, on free ports,
with the implementation chosen by the ``impl`` fixture: ``compiled`` (extensions required) or ``python``
(GATEWAY_NO_EXTENSIONS=1), so the same integration tests cover both.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.oidc.providers import (  # noqa: F401 (fixtures)
    dot_provider,
    oidc_provider,
    panva_provider,
    start_oidc_provider,
)
from tests.redis_servers import redis_cluster, redis_sentinel, redis_server  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        time.sleep(interval)


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Response:
    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


def request(port: int, method: str, path: str, body: Any = None, *, headers: dict[str, str] | None = None,
            timeout: float = 30.0, conn: http.client.HTTPConnection | None = None) -> Response:
    """One request with the standard library's client (a fresh connection unless one is given)."""
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        encode_chunked = body is not None and not isinstance(body, (bytes, str))
        conn.request(method, path, body=body, headers=headers or {}, encode_chunked=encode_chunked)
        resp = conn.getresponse()
        return Response(resp.status, resp.headers, resp.read())
    finally:
        if own:
            conn.close()


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Sends raw bytes, returns everything the server sent until it closed (or timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        return b"".join(chunks)


def run_upstream() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.integration.upstream_app", str(port)], cwd=ROOT)
    try:
        wait_until(lambda: port_open(port))
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="session")
def upstream_port() -> Iterator[int]:
    """The test upstream (tests/integration/upstream_app.py on stock uvicorn)."""
    yield from run_upstream()


@pytest.fixture(scope="session")
def second_upstream_port() -> Iterator[int]:
    """Another instance of the test upstream, for upstreams with several targets."""
    yield from run_upstream()


@pytest.fixture(params=["compiled", "python"])
def impl(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def impl_env(impl: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    if impl == "python":
        env["GATEWAY_NO_EXTENSIONS"] = "1"
    else:
        env["GATEWAY_REQUIRE_EXTENSIONS"] = "1"
    return env


class Gateway:
    """A running ``gateway run`` process."""

    def __init__(self, tmp: Path, args: list[str], env: dict[str, str], port: int, admin_port: int) -> None:
        self.port = port
        self.admin_port = admin_port
        self.stdout_path = tmp / f"gateway-{port}.out"
        self.stderr_path = tmp / f"gateway-{port}.err"
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "run", "--port", str(port), "--admin-port",
                 str(admin_port), *args],
                cwd=ROOT, env=env, stdout=out, stderr=err, start_new_session=True,
            )

    def get(self, path: str, **kwargs: Any) -> Response:
        return request(self.port, "GET", path, **kwargs)

    def admin(self, path: str) -> Response:
        return request(self.admin_port, "GET", path, timeout=5)

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"gateway exited with {self.proc.returncode}:\n{self.stderr}")
        try:
            return self.admin("/readyz").status == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float = 20.0) -> None:
        wait_until(self.ready, timeout)

    def workers(self) -> list[dict[str, Any]]:
        return list(self.admin("/readyz").json()["workers"])

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def access_log(self) -> list[dict[str, Any]]:
        lines = self.stdout_path.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # any worker left behind
        return int(self.proc.returncode)


@pytest.fixture
def start_gateway(tmp_path: Path, impl: str) -> Iterator[Callable[..., Gateway]]:
    """Starts gateways: ``start_gateway(config_text=None, args=[...], env={...}, workers=1)``."""
    started: list[Gateway] = []

    def start(config: str | None = None, args: list[str] | None = None, env: dict[str, str] | None = None,
              workers: int = 1, wait: bool = True) -> Gateway:
        argv = list(args or [])
        if config is not None:
            path = tmp_path / f"gateway-{len(started)}.yaml"
            path.write_text(config)
            argv += ["--config", str(path)]
        argv += ["--workers", str(workers)]
        for attempt in range(3):
            gw = Gateway(tmp_path, argv, {**impl_env(impl), **(env or {})}, free_port(), free_port())
            started.append(gw)
            if not wait:
                break
            try:
                gw.wait_ready()
                break
            except AssertionError:
                # a free port taken by another process between free_port() and the gateway's bind (tests
                # of other checkouts on the same machine): new ports; anything else is the test's failure
                if attempt == 2 or gw.proc.poll() is None or "is already in use" not in gw.stderr:
                    raise
        return gw

    yield start
    for gw in started:
        gw.stop()


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**impl_env("python"), **(env or {})}, timeout=timeout, check=False)
