"""Plain-proxy throughput: the gateway (compiled and pure Python) against nginx, the gateway app on stock
uvicorn and FastAPI + httpx, in the same run.

What it measures: scenario 1 of the bench suite (``python -m bench --scenario plain``): requests per
second, p50/p99 latency, CPU µs per request and peak RSS of one proxy worker pinned to CPU 0, with wrk
(1 thread, 64 keep-alive connections) and an nginx upstream pinned to CPU 1, proxies alternating over
rounds. It is kept as the short name for that scenario; it prints the table and writes no result files.

How to run, from the repository root:

    python -m bench.proxy_rps [--seconds 8] [--rounds 3]
"""

from __future__ import annotations

import sys

from bench.suite import main

if __name__ == "__main__":
    sys.exit(main(["--scenario", "plain", "--no-save", *sys.argv[1:]]))
