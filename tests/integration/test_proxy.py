"""The gateway process proxying to a real upstream (stock uvicorn) on loopback."""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import threading

import pytest

from tests.integration.conftest import free_port, raw_exchange, request

pytestmark = pytest.mark.integration


def routes_config(upstream_port: int, extra: str = "", server: str = "") -> str:
    return f"""
server:
  access_log: true
{server}
upstreams:
  api:
    targets: ["http://127.0.0.1:{upstream_port}"]
    read_timeout: 2s
routes:
  - name: user
    path: /users/{{id}}
    methods: [GET, PUT]
    upstream: api
    rewrite: /echo/user/{{id}}
  - name: admin
    path: /users/admin
    upstream: api
    rewrite: /echo/admin
  - name: files
    prefix: /files
    strip_prefix: true
    upstream: api
  - name: v1
    prefix: /v1/{{tenant}}
    rewrite: /echo/tenants/{{tenant}}
    upstream: api
  - name: internal
    prefix: /
    hosts: ["internal.example.com"]
    upstream: api
    rewrite: /echo/internal
    preserve_host: true
  - name: everything
    prefix: /
    upstream: api
{extra}
"""


def test_get_and_post_with_bodies(start_gateway, upstream_port):
    gw = start_gateway(args=["--upstream", f"http://127.0.0.1:{upstream_port}"])
    resp = gw.get("/echo/a?x=1&y=%20z")
    assert resp.status == 200
    echo = resp.json()
    assert (echo["method"], echo["path"], echo["query"]) == ("GET", "/echo/a", "x=1&y=%20z")
    body = b"hello " * 1000
    resp = request(gw.port, "POST", "/echo/post", body=body, headers={"content-type": "text/plain"})
    echo = resp.json()
    assert echo["method"] == "POST"
    assert echo["body_bytes"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    chunks = [b"x" * 1000, b"y" * 5000, b"z"]
    resp = request(gw.port, "PUT", "/echo/chunked", body=iter(chunks))
    echo = resp.json()
    assert echo["body_bytes"] == 6001
    assert echo["body_sha256"] == hashlib.sha256(b"".join(chunks)).hexdigest()
    assert ["transfer-encoding", "chunked"] in echo["headers"]


def test_forwarded_headers_request_id_and_hop_by_hop(start_gateway, upstream_port):
    gw = start_gateway(args=["--upstream", f"http://127.0.0.1:{upstream_port}"])
    resp = gw.get("/echo", headers={
        "X-Forwarded-For": "203.0.113.9", "Connection": "keep-alive, X-Hop", "X-Hop": "secret",
        "Keep-Alive": "timeout=5", "TE": "trailers", "Proxy-Authorization": "Basic Zm9vOmJhcg==",
        "X-Keep": "yes", "Host": "public.example.com:8443",
    })
    headers = dict(resp.json()["headers"])
    assert headers["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == "public.example.com:8443"
    assert headers["host"] == f"127.0.0.1:{upstream_port}"
    assert headers["x-keep"] == "yes"
    for hop in ("x-hop", "keep-alive", "te", "proxy-authorization", "connection"):
        assert hop not in headers
    generated = resp.headers["x-request-id"]
    assert len(generated) == 32
    assert headers["x-request-id"] == generated
    resp = gw.get("/echo", headers={"X-Request-ID": "abc-123"})
    assert resp.headers["x-request-id"] == "abc-123"
    assert dict(resp.json()["headers"])["x-request-id"] == "abc-123"
    assert "transfer-encoding" not in resp.headers or resp.headers["transfer-encoding"] == "chunked"


def test_routing_rewrites_hosts_404_405(start_gateway, upstream_port):
    gw = start_gateway(routes_config(upstream_port).replace("  - name: everything\n    prefix: /\n"
                                                           "    upstream: api\n", ""))
    assert gw.get("/users/42").json()["path"] == "/echo/user/42"
    assert gw.get("/users/admin").json()["path"] == "/echo/admin"
    assert gw.get("/files/echo/a/b?q=1").json()["path"] == "/echo/a/b"
    assert gw.get("/v1/acme/orders").json()["path"] == "/echo/tenants/acme/orders"
    echo = gw.get("/anything", headers={"Host": "internal.example.com"}).json()
    assert echo["path"] == "/echo/internal/anything"  # a prefix rewrite keeps the rest of the path
    assert dict(echo["headers"])["host"] == "internal.example.com"
    missing = gw.get("/nowhere")
    assert missing.status == 404
    error = missing.json()
    assert error["error"] == "route_not_found"
    assert error["status"] == 404
    assert error["request_id"] == missing.headers["x-request-id"]
    wrong = request(gw.port, "DELETE", "/users/42")
    assert wrong.status == 405
    assert wrong.headers["allow"] == "GET, HEAD, PUT"
    assert wrong.json()["error"] == "method_not_allowed"
    dots = request(gw.port, "GET", "/files/../users/7")
    assert dots.json()["path"] == "/echo/user/7"


def test_upstream_connections_are_reused(start_gateway, upstream_port):
    gw = start_gateway(args=["--upstream", f"http://127.0.0.1:{upstream_port}"])
    clients = {tuple(gw.get(f"/echo/{i}").json()["client"]) for i in range(20)}
    assert len(clients) == 1  # every request went over the same pooled upstream connection
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    seen = {tuple(request(gw.port, "GET", "/echo", conn=conn).json()["client"]) for _ in range(10)}
    conn.close()
    assert seen == clients


def test_upstream_refused_reset_and_timeout(start_gateway, upstream_port):
    closed_port = free_port()
    reset_server = socket.socket()
    reset_server.bind(("127.0.0.1", 0))
    reset_server.listen(16)
    stop = threading.Event()

    def reset_all() -> None:
        reset_server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = reset_server.accept()
            except TimeoutError:
                continue
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            conn.close()

    thread = threading.Thread(target=reset_all, daemon=True)
    thread.start()
    reset_port = reset_server.getsockname()[1]
    config = f"""
upstreams:
  slow: {{targets: ["http://127.0.0.1:{upstream_port}"], read_timeout: 300ms}}
routes:
  - {{prefix: /refused, upstream: "http://127.0.0.1:{closed_port}"}}
  - {{prefix: /reset, upstream: "http://127.0.0.1:{reset_port}"}}
  - {{prefix: /slow, upstream: slow}}
"""
    try:
        gw = start_gateway(config)
        refused = gw.get("/refused")
        assert refused.status == 502
        assert refused.json()["error"] == "upstream_unavailable"
        reset = gw.get("/reset")
        assert reset.status == 502
        timeout = gw.get("/slow?delay=3")
        assert timeout.status == 504
        assert timeout.json()["error"] == "upstream_timeout"
        assert gw.get("/slow?delay=0").status == 200  # the timed-out connection was not reused
    finally:
        stop.set()
        thread.join()
        reset_server.close()


def test_malformed_and_oversized_requests_never_reach_upstream(start_gateway, upstream_port):
    gw = start_gateway(args=["--upstream", f"http://127.0.0.1:{upstream_port}",
                             "--max-header-bytes", "4KiB", "--max-body-bytes", "1000"])
    smuggle = (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"0\r\n\r\nGET /echo/smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
    answers = {
        "smuggling": raw_exchange(gw.port, smuggle),
        "garbage": raw_exchange(gw.port, b"HELLO\r\n\r\n"),
        "no host": raw_exchange(gw.port, b"GET /echo HTTP/1.1\r\n\r\n"),
        "bad path": raw_exchange(gw.port, b"GET /a/%zz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    }
    for name, answer in answers.items():
        assert answer.startswith(b"HTTP/1.1 400 "), name
        body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        assert body["error"] == "bad_request", name
    big_header = raw_exchange(gw.port, b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8000 + b"\r\n\r\n")
    assert big_header.startswith(b"HTTP/1.1 431 ")
    big_body = request(gw.port, "POST", "/echo", body=b"x" * 2000)
    assert big_body.status == 413
    assert big_body.json()["error"] == "payload_too_large"
    chunked = request(gw.port, "POST", "/echo", body=iter([b"x" * 600, b"y" * 600]))
    assert chunked.status == 413
    paths = [entry["path"] for entry in gw.access_log()]
    assert "/echo/smuggled" not in paths


def test_access_log_lines(start_gateway, upstream_port):
    gw = start_gateway(routes_config(upstream_port))
    gw.get("/users/9")
    gw.get("/echo/q?token=secret")
    import time

    time.sleep(0.3)
    entries = gw.access_log()
    assert [e["route"] for e in entries[-2:]] == ["user", "everything"]
    last = entries[-1]
    assert last["status"] == 200
    assert last["path"] == "/echo/q"
    assert "secret" not in json.dumps(entries)
    assert last["upstream"] == f"http://127.0.0.1:{upstream_port}"


def test_upstream_breaking_mid_response_ends_the_client_connection(start_gateway, upstream_port):
    gw = start_gateway(args=["--upstream", f"http://127.0.0.1:{upstream_port}"])
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    conn.request("GET", "/break?after=5000")
    resp = conn.getresponse()
    assert resp.status == 200
    with pytest.raises(http.client.IncompleteRead):
        resp.read()  # the client sees the truncation: the response is not passed off as complete
    conn.close()
    assert gw.get("/echo/next").status == 200
    assert "failed after the response started" in gw.stderr


def test_targets_are_used_in_turn(start_gateway, upstream_port, second_upstream_port):
    gw = start_gateway(f"""
upstreams:
  pair:
    targets: ["http://127.0.0.1:{upstream_port}", "http://127.0.0.1:{second_upstream_port}"]
    balancer: round_robin
routes:
  - {{prefix: /, upstream: pair}}
""")
    ports = [gw.get("/echo").json()["server"][1] for _ in range(6)]
    assert sorted(set(ports)) == sorted({upstream_port, second_upstream_port})
    assert ports[0::2] == [ports[0]] * 3  # round-robin: every other request goes to the same target


def test_idle_upstream_connections_expire(start_gateway, upstream_port):
    gw = start_gateway(f"""
upstreams:
  api: {{targets: ["http://127.0.0.1:{upstream_port}"], keepalive_timeout: 400ms}}
routes:
  - {{prefix: /, upstream: api}}
""")
    first = gw.get("/echo").json()["client"]
    assert gw.get("/echo").json()["client"] == first
    import time

    time.sleep(1.2)  # the pool's sweeper closes the idle connection
    assert gw.get("/echo").json()["client"] != first
