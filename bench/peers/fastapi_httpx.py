"""Peer: FastAPI + httpx, the proxy a Python team writes by default.

What it is: one catch-all FastAPI route that forwards the method, path, query, headers and body through
one shared ``httpx.AsyncClient`` (a keep-alive pool) and returns the upstream's status, headers (minus
hop-by-hop ones) and body, both bodies read whole into memory as the obvious code does; served by
uvicorn on uvloop + httptools, one process. Against: ``gateway run`` with one worker.

How to run: ``python -m bench.peers.fastapi_httpx --port 8002 --upstream http://127.0.0.1:9100``
(needs the ``bench`` extra: ``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import uvicorn
from fastapi import FastAPI, Request, Response

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "transfer-encoding", "upgrade", "host", "content-length"})
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def create_app(upstream: str) -> FastAPI:
    client = httpx.AsyncClient(base_url=upstream, timeout=60.0,
                               limits=httpx.Limits(max_connections=128, max_keepalive_connections=128))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await client.aclose()

    app = FastAPI(lifespan=lifespan)

    @app.api_route("/{path:path}", methods=METHODS)
    async def forward(request: Request, path: str) -> Response:
        headers = [(k, v) for k, v in request.headers.raw if k.decode("latin-1").lower() not in HOP_BY_HOP]
        upstream_request = client.build_request(request.method, "/" + path, params=request.url.query,
                                                headers=headers, content=await request.body())
        answer = await client.send(upstream_request)
        kept = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
        return Response(content=answer.content, status_code=answer.status_code, headers=kept)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    uvicorn.run(create_app(args.upstream), host="127.0.0.1", port=args.port, loop="uvloop", http="httptools",
                access_log=False, log_level="warning", proxy_headers=False, timeout_keep_alive=60)


if __name__ == "__main__":
    main()
