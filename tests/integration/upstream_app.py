"""The upstream the integration tests proxy to: a raw ASGI app served by stock uvicorn in its own process.

    python -m tests.integration.upstream_app PORT

Endpoints (any method unless said):
  /echo...            JSON: method, path, raw_path, query, headers, client, body length and sha256
  /download?size=N    N bytes streamed in 64 KiB chunks (chunked; &length=1 sends a content-length)
  /upload             reads the body as a stream; JSON: bytes and sha256
  /slow?delay=S       answers after S seconds
  /status?code=N      answers status N
  /drip?n=K&delay=S   K small chunks, S seconds apart
  /early-reply        answers 413 without reading the body
  /break?after=N      sends headers promising 1 MB and N bytes of it, then resets the connection
WebSocket (stock uvicorn's WebSocket protocol):
  /ws/echo            accepts (the first subprotocol offered), sends one JSON text message describing the
                      handshake (path, query, headers), then echoes every message; "close:N" closes with N
  /ws/deny            refuses the handshake (uvicorn answers 403)
"""

import asyncio
import hashlib
import json
import sys
from urllib.parse import parse_qs

import uvicorn

CHUNK = 64 * 1024
PATTERN = bytes(range(256)) * (CHUNK // 256)


def query(scope):
    return {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}


async def read_body(receive):
    digest, size = hashlib.sha256(), 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        body = message.get("body", b"")
        digest.update(body)
        size += len(body)
        if not message.get("more_body"):
            break
    return size, digest.hexdigest()


async def respond(send, status, body, headers=()):
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


async def app(scope, receive, send):  # noqa: PLR0911 - one branch per endpoint
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["type"] == "websocket":
        await websocket(scope, receive, send)
        return
    path, args = scope["path"], query(scope)
    if path.startswith("/download"):
        size = int(args.get("size", "0"))
        headers = [(b"content-type", b"application/octet-stream")]
        if args.get("length"):
            headers.append((b"content-length", str(size).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        while size > 0:
            piece = PATTERN[: min(size, CHUNK)]
            size -= len(piece)
            await send({"type": "http.response.body", "body": piece, "more_body": size > 0})
        if not args.get("size") or args.get("size") == "0":
            await send({"type": "http.response.body", "body": b""})
        return
    if path.startswith("/drip"):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(int(args.get("n", "3"))):
            await send({"type": "http.response.body", "body": b"tick %d\n" % i, "more_body": True})
            await asyncio.sleep(float(args.get("delay", "0.1")))
        await send({"type": "http.response.body", "body": b""})
        return
    if path.startswith("/break"):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"1048576")]})
        await send({"type": "http.response.body", "body": b"x" * int(args.get("after", "1000")),
                    "more_body": True})
        await asyncio.sleep(0.05)
        raise RuntimeError("the upstream breaks mid-response (on purpose)")
    if path.startswith("/early-reply"):
        await respond(send, 413, b'{"error":"too big for me"}', [(b"connection", b"close")])
        return
    if path.startswith("/slow"):
        await asyncio.sleep(float(args.get("delay", "1")))
    if path.startswith("/status"):
        await respond(send, int(args.get("code", "200")), b"{}")
        return
    size, digest = await read_body(receive)
    if path.startswith("/upload"):
        await respond(send, 200, json.dumps({"bytes": size, "sha256": digest}).encode())
        return
    body = json.dumps({
        "method": scope["method"], "path": scope["path"], "raw_path": scope["raw_path"].decode("latin-1"),
        "query": scope["query_string"].decode("latin-1"),
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
        "client": list(scope["client"]), "server": list(scope["server"]), "body_bytes": size,
        "body_sha256": digest,
    }).encode()
    await respond(send, 200, body)


async def websocket(scope, receive, send):
    await receive()  # websocket.connect
    if scope["path"].startswith("/ws/deny"):
        await send({"type": "websocket.close"})
        return
    offered = scope.get("subprotocols") or []
    await send({"type": "websocket.accept", "subprotocol": offered[0] if offered else None})
    await send({"type": "websocket.send", "text": json.dumps({
        "path": scope["path"], "query": scope["query_string"].decode("latin-1"),
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
    })})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if text is not None and text.startswith("close:"):
            await send({"type": "websocket.close", "code": int(text[6:]), "reason": "asked to"})
            return
        await send({"type": "websocket.send", "text": text, "bytes": message.get("bytes")})


if __name__ == "__main__":
    # proxy_headers=False: the client address must be the gateway's connection, not X-Forwarded-For
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", lifespan="on",
                timeout_keep_alive=30, timeout_graceful_shutdown=1, proxy_headers=False)
