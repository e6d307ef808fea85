"""A scriptable OAuth server on loopback for the unit tests of gateway/auth/oidc (threads of this process):
metadata documents, a token endpoint and an introspection endpoint whose answers a test sets."""

from __future__ import annotations

import base64
import http.server
import socket
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import orjson

from gateway.auth.oidc.config import ClientCredentialsSpec, IntrospectionSpec, ProviderSpec, Secret

Answer = tuple[int, bytes]


class OAuthServer:
    """``routes[path]`` answers GETs and POSTs: a (status, body) pair, or a function of the form fields
    returning one. ``requests`` lists (method, path, form, authorization) as received; ``delay`` slows
    every answer; ``close`` drops the connection instead."""

    def __init__(self) -> None:
        self.routes: dict[str, Answer | Callable[[dict[str, str]], Answer]] = {}
        self.requests: list[tuple[str, str, dict[str, str], str | None]] = []
        self.delay = 0.0
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self.handle_any({})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                self.handle_any(form)

            def handle_any(self, form: dict[str, str]) -> None:
                with server.lock:
                    server.requests.append((self.command, self.path, form, self.headers.get("Authorization")))
                    route, delay = server.routes.get(self.path), server.delay
                if delay:
                    time.sleep(delay)
                if route == "close":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                status, body = (404, b"{}") if route is None else route(form) if callable(route) else route
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def json(self, path: str, document: Any, status: int = 200) -> None:
        self.routes[path] = (status, orjson.dumps(document))

    def metadata(self, issuer: str | None = None, **extra: Any) -> dict[str, Any]:
        """Publishes an OpenID document at the issuer's well-known path (issuer: this server's URL + /idp)."""
        base = self.url + "/idp"
        document = {"issuer": issuer or base, "jwks_uri": base + "/jwks", "token_endpoint": base + "/token",
                    "introspection_endpoint": base + "/introspect", **extra}
        self.json("/idp/.well-known/openid-configuration", document)
        return document

    def posted(self, path: str) -> list[tuple[dict[str, str], str | None]]:
        with self.lock:
            return [(form, auth) for method, p, form, auth in self.requests if method == "POST" and p == path]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def provider(server: OAuthServer | None = None, **changes: Any) -> ProviderSpec:
    """A provider at the server (or nowhere), with introspection and client credentials."""
    base = server.url if server is not None else "http://127.0.0.1:9"
    fields: dict[str, Any] = {
        "name": "corp", "issuer": base + "/idp", "client_id": "gw", "client_secret": Secret("gw-secret"),
        "introspection": IntrospectionSpec(cache_ttl=60.0, max_calls_per_second=1000, max_concurrent=4),
        "client_credentials": ClientCredentialsSpec(scopes=("orders:read",), resource="https://api.test/",
                                                    audience="orders", refresh_before=10.0),
        "timeout": 2.0, "metadata_ttl": 3600.0,
    }
    fields.update(changes)
    return ProviderSpec(**fields)


def basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()
