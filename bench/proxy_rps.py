"""Plain-proxy throughput: ``gateway run --upstream`` against nginx as a reverse proxy, same run.

What it measures: requests per second through one proxy worker pinned to CPU 0, with wrk (1 thread,
64 keep-alive connections) and an nginx upstream answering a small JSON body pinned to CPU 1. The
proxies measured, in alternating rounds so drift hits all alike: the gateway with its compiled modules,
the gateway on its pure-Python twins (GATEWAY_NO_EXTENSIONS=1), and nginx as a reverse proxy with one
worker and keep-alive upstream connections (the peer the targets are stated against).

Needs nginx and wrk (Debian: ``apt-get install nginx-light wrk``). Run from the repository root:

    python -m bench.proxy_rps [--seconds 10] [--rounds 2]

The full bench suite (more scenarios and peers, latency, CPU per request, memory) comes with the
performance issue; this is the figure the foundation issue reports.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NGINX_UPSTREAM = """
worker_processes 1; daemon off; pid {dir}/upstream.pid; error_log {dir}/upstream.err warn;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{port}; location / {{ default_type application/json;
    return 200 '{{"ok":true,"service":"upstream"}}'; }} }} }}
"""
NGINX_PROXY = """
worker_processes 1; daemon off; pid {dir}/proxy.pid; error_log {dir}/proxy.err warn;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  upstream backend {{ server 127.0.0.1:{upstream}; keepalive 128; }}
  server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://backend;
    proxy_http_version 1.1; proxy_set_header Connection ""; }} }} }}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def wrk(port: int, seconds: int) -> float:
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c64", f"-d{seconds}s", f"http://127.0.0.1:{port}/"],
                         capture_output=True, text=True, check=True).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    if errors:
        raise RuntimeError(f"wrk saw errors: {errors.group(0)}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]


def start(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    for tool in ("nginx", "wrk", "taskset"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing: apt-get install nginx-light wrk util-linux", file=sys.stderr)
            return 1
    work = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    upstream_port = free_port()
    (work / "upstream.conf").write_text(NGINX_UPSTREAM.format(dir=work, port=upstream_port))
    upstream = start(["taskset", "-c", "1", "nginx", "-c", str(work / "upstream.conf")])
    wait_port(upstream_port)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    results: dict[str, list[float]] = {"gateway (compiled)": [], "gateway (pure Python)": [], "nginx proxy": []}
    try:
        for _ in range(args.rounds):
            for name, values in results.items():
                port = free_port()
                if name == "nginx proxy":
                    conf = work / "proxy.conf"
                    conf.write_text(NGINX_PROXY.format(dir=work, port=port, upstream=upstream_port))
                    proc = start(["taskset", "-c", "0", "nginx", "-c", str(conf)])
                else:
                    env = dict(base_env, GATEWAY_NO_EXTENSIONS="1" if "pure" in name else "")
                    proc = start(["taskset", "-c", "0", sys.executable, "-m", "gateway", "run", "--upstream",
                                  f"http://127.0.0.1:{upstream_port}", "--port", str(port), "--admin-port",
                                  str(free_port()), "--workers", "1", "--no-access-log"], env)
                try:
                    wait_port(port)
                    wrk(port, 2)  # warm-up: connections pooled, caches hot
                    values.append(wrk(port, args.seconds))
                finally:
                    stop(proc)
    finally:
        stop(upstream)
    nginx = max(results["nginx proxy"])
    print(f"{'proxy (1 worker on CPU 0)':28} {'best req/s':>11} {'vs nginx':>9}   all rounds")
    for name, values in results.items():
        best = max(values)
        print(f"{name:28} {best:11,.0f} {best / nginx:9.2f}   {', '.join(f'{v:,.0f}' for v in values)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
