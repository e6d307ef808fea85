"""Peer: the gateway's own ASGI app on stock uvicorn (its httptools protocol), one process.

What it shows: what the gateway's own HTTP/1.1 protocol (``gateway._fast.protocol``) buys over uvicorn's
stock one, the app, routing and upstream client being the same. Against: ``gateway run`` with one worker.

How to run: ``python -m bench.peers.uvicorn_gateway --port 8001 --upstream http://127.0.0.1:9100`` or
``--config gateway.yaml`` (routes, upstreams and the access log setting are taken from the file).
"""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn

from gateway.app import Gateway
from gateway.loader import load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--upstream", help="quick mode: every path to this URL (access log off)")
    source.add_argument("--config", help="a gateway YAML config file")
    args = parser.parse_args()
    flags: dict[str, Any] = {"config": args.config} if args.config else {"upstream": args.upstream,
                                                                         "access_log": False}
    app = Gateway(load(environ={}, flags=flags))
    # keep-alive timeout as the gateway's default (60 s) rather than uvicorn's 5 s, for the idle-connection check
    uvicorn.run(app, host="127.0.0.1", port=args.port, loop="uvloop", http="httptools", lifespan="on",
                access_log=False, log_level="warning", proxy_headers=False, timeout_keep_alive=60)


if __name__ == "__main__":
    main()
