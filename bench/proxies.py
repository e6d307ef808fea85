"""The proxies the suite measures and how to start each one: the gateway (compiled, or on its pure-Python
twins), nginx as a reverse proxy (one worker, keep-alive upstream pool), the gateway's app on stock
uvicorn, and FastAPI + httpx. Every one serves on 127.0.0.1, pinned to the proxy core.

``launch`` returns a ``Running`` proxy: its port, the process tree whose CPU time is charged to it, and the
serving processes whose peak resident memory is reported.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import procs

NGINX_UPSTREAM = """
worker_processes 1; daemon off; pid {dir}/upstream.pid; error_log {dir}/upstream.err warn;
events {{ worker_connections 16384; }}
http {{ access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{port} backlog=4096; location / {{ default_type application/json;
    return 200 '{{"ok":true,"service":"upstream"}}'; }} }} }}
"""
NGINX_PROXY = """
worker_processes 1; daemon off; pid {dir}/proxy-{port}.pid; error_log {dir}/proxy.err warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 16384; }}
http {{ access_log off; keepalive_requests 1000000; keepalive_timeout 300s;
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy;{http_extra}
  upstream backend {{ server 127.0.0.1:{upstream}; keepalive 128; }}
  server {{ listen 127.0.0.1:{port} backlog=4096; location / {{ proxy_pass http://backend;
    proxy_http_version 1.1; proxy_set_header Connection {connection};{streaming} }} }} }}
"""
# Streaming both ways, as the gateway does: without these nginx would spool 100 MB bodies to disk; the
# buffers of 256 KiB (defaults 16 KiB and one page) spare nginx tiny reads and writes.
NGINX_STREAMING = (" client_max_body_size 0; proxy_request_buffering off; proxy_buffering off;"
                   " client_body_buffer_size 256k; proxy_buffer_size 256k; proxy_buffers 4 256k;"
                   " proxy_busy_buffers_size 512k;")
# WebSocket and SSE (scenario streams), as nginx's documentation has it: the client's Upgrade passed on and
# Connection "upgrade" for an upgrade request only (other requests keep the keep-alive pool), responses
# relayed as they arrive, and no 60 s cut of a quiet stream.
NGINX_REALTIME_MAP = ' map $http_upgrade $connection_upgrade { default upgrade; "" ""; }'
NGINX_REALTIME = " proxy_set_header Upgrade $http_upgrade; proxy_buffering off; proxy_read_timeout 1h;"


@dataclass(frozen=True)
class Proxy:
    """A proxy to measure: ``kind`` is gateway, nginx, uvicorn or fastapi."""

    name: str
    kind: str
    pure_python: bool = False
    workers: int = 1
    core: str = ""  # taskset list; "" means the suite's proxy core

    @property
    def is_gateway(self) -> bool:
        return self.kind == "gateway"


GATEWAY = Proxy("gateway", "gateway")
GATEWAY_PURE = Proxy("gateway (pure Python)", "gateway", pure_python=True)
NGINX = Proxy("nginx", "nginx")
UVICORN = Proxy("gateway app on stock uvicorn", "uvicorn")
FASTAPI = Proxy("FastAPI + httpx", "fastapi")


@dataclass
class Setup:
    """What a proxy is started against: the upstream, an optional gateway config, where to put files."""

    upstream_port: int
    work: Path
    core: int
    config: Path | None = None  # gateway YAML (routes); None: quick mode --upstream
    streaming: bool = False  # nginx configured to stream bodies (scenario bodies)
    realtime: bool = False  # nginx configured for WebSocket upgrades and SSE (scenario streams)


@dataclass
class Running:
    proxy: Proxy
    proc: subprocess.Popen[bytes]
    port: int
    serving: list[int] = field(default_factory=list)

    def tree(self) -> list[int]:
        return procs.tree(self.proc.pid)

    def peak_rss_mib(self) -> float:
        return sum(procs.status_kib(pid, "VmHWM") for pid in self.serving) / 1024

    def rss_kib(self) -> int:
        return sum(procs.status_kib(pid, "VmRSS") for pid in self.serving)


def launch(proxy: Proxy, setup: Setup) -> Running:
    """Starts ``proxy`` and waits until it serves; the caller stops it with ``procs.stop(running.proc)``."""
    port = procs.free_port()
    starter = {"gateway": _gateway, "nginx": _nginx, "uvicorn": _uvicorn, "fastapi": _fastapi}[proxy.kind]
    return starter(proxy, setup, port)


def _upstream_url(setup: Setup) -> str:
    return f"http://127.0.0.1:{setup.upstream_port}"


def _gateway(proxy: Proxy, setup: Setup, port: int) -> Running:
    admin = procs.free_port()
    source = ["--config", str(setup.config)] if setup.config else ["--upstream", _upstream_url(setup),
                                                                   "--no-access-log"]
    argv = procs.python("gateway", "run", *source, "--host", "127.0.0.1", "--port", str(port),
                        "--admin-port", str(admin), "--workers", str(proxy.workers))
    env = procs.clean_env(GATEWAY_NO_EXTENSIONS="1") if proxy.pure_python else procs.clean_env()
    proc = procs.start(argv, proxy.core or setup.core, env, setup.work / "gateway.log")
    try:
        return Running(proxy, proc, port, ready_workers(admin, proc))
    except BaseException:
        procs.stop(proc)
        raise


def ready_workers(admin_port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> list[int]:
    """Polls the admin port's /readyz until it answers 200; the worker pids it lists."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the gateway exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=2) as answer:
                return [int(w["pid"]) for w in json.load(answer)["workers"]]
        except OSError:  # refused while starting, or 503 until every worker serves
            time.sleep(0.05)
    raise RuntimeError(f"the gateway was not ready after {timeout:.0f} s")


def _nginx(proxy: Proxy, setup: Setup, port: int) -> Running:
    conf = setup.work / f"proxy-{port}.conf"
    streaming = (NGINX_STREAMING if setup.streaming else "") + (NGINX_REALTIME if setup.realtime else "")
    conf.write_text(NGINX_PROXY.format(
        dir=setup.work, port=port, upstream=setup.upstream_port, streaming=streaming,
        http_extra=NGINX_REALTIME_MAP if setup.realtime else "",
        connection="$connection_upgrade" if setup.realtime else '""'))
    proc = procs.start(["nginx", "-e", str(setup.work / "proxy.err"), "-c", str(conf)], proxy.core or setup.core)
    return _serving_when_listening(proxy, proc, port, lambda: procs.children(proc.pid))


def _uvicorn(proxy: Proxy, setup: Setup, port: int) -> Running:
    source = ["--config", str(setup.config)] if setup.config else ["--upstream", _upstream_url(setup)]
    argv = procs.python("bench.peers.uvicorn_gateway", "--port", str(port), *source)
    proc = procs.start(argv, proxy.core or setup.core, log=setup.work / "uvicorn.log")
    return _serving_when_listening(proxy, proc, port, lambda: [proc.pid])


def _fastapi(proxy: Proxy, setup: Setup, port: int) -> Running:
    argv = procs.python("bench.peers.fastapi_httpx", "--port", str(port), "--upstream", _upstream_url(setup))
    proc = procs.start(argv, proxy.core or setup.core, log=setup.work / "fastapi.log")
    return _serving_when_listening(proxy, proc, port, lambda: [proc.pid])


def _serving_when_listening(proxy: Proxy, proc: subprocess.Popen[bytes], port: int,
                            serving: Callable[[], list[int]]) -> Running:
    try:
        procs.wait_port(port, proc)
        return Running(proxy, proc, port, list(serving()))
    except BaseException:
        procs.stop(proc)
        raise


def start_upstream(work: Path, core: int, builtin: bool) -> tuple[subprocess.Popen[bytes], int]:
    """The upstream, pinned to the load core: nginx answering a small JSON body, or the built-in one."""
    port = procs.free_port()
    if builtin:
        proc = procs.start(procs.python("bench.upstream", "--port", str(port)), core, log=work / "upstream.log")
    else:
        conf = work / "upstream.conf"
        conf.write_text(NGINX_UPSTREAM.format(dir=work, port=port))
        proc = procs.start(["nginx", "-e", str(work / "upstream.err"), "-c", str(conf)], core)
    try:
        procs.wait_port(port, proc)
    except BaseException:
        procs.stop(proc)
        raise
    return proc, port
