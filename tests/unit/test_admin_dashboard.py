"""GET /dashboard on the admin app: one self-contained page, served with a strict CSP.

The page's behaviour (polling /metrics, rates, percentiles) is tested in headless Chromium by
tests/integration/test_dashboard.py; here: the answer's headers, and that the HTML names no other origin.
"""

from __future__ import annotations

import base64
import hashlib
import re
from html.parser import HTMLParser
from typing import Any

import pytest

from gateway.admin import dashboard
from gateway.admin.app import AdminApp
from tests.unit.helpers import async_test


class NoSupervisor:
    """The dashboard needs nothing from the supervisor; any use of it fails the test."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the dashboard used supervisor.{name}")


async def call(method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": []}
    await AdminApp(NoSupervisor())(scope, receive, send)  # type: ignore[arg-type]
    start, body = messages
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, body["body"]


def csp(headers: dict[str, str]) -> dict[str, list[str]]:
    directives = (d.split() for d in headers["content-security-policy"].split(";"))
    return {d[0]: d[1:] for d in directives}


def sha256(code: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(code.encode()).digest()).decode() + "'"


@async_test
async def test_dashboard_is_html_with_strict_security_headers() -> None:
    status, headers, body = await call("GET", "/dashboard")
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert int(headers["content-length"]) == len(body)
    assert headers["cache-control"] == "no-store"
    assert headers["x-content-type-options"] == "nosniff"
    policy = csp(headers)
    assert policy["default-src"] == ["'none'"]
    assert policy["connect-src"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"]
    html = body.decode()
    # the inline script and style are allowed by hash, not by 'unsafe-inline'
    [script] = re.findall(r"<script>(.*?)</script>", html, re.DOTALL)
    [style] = re.findall(r"<style>(.*?)</style>", html, re.DOTALL)
    assert policy["script-src"] == [sha256(script)]
    assert policy["style-src"] == [sha256(style)]
    for element in ('id="rps"', 'id="p99"', 'id="error-ratio"', 'id="workers"', 'id="upstreams"'):
        assert element in html


@async_test
async def test_head_answers_like_get() -> None:
    assert (await call("HEAD", "/dashboard"))[:2] == (await call("GET", "/dashboard"))[:2]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
@async_test
async def test_other_methods_are_refused(method: str) -> None:
    status, headers, _ = await call(method, "/dashboard")
    assert status == 405
    assert headers["allow"] == "GET, HEAD"


def test_a_page_without_inline_code_allows_none() -> None:
    policy = csp({k.decode(): v.decode() for k, v in dashboard.security_headers(b"<p>hi</p>")})
    assert policy["script-src"] == policy["style-src"] == ["'none'"]


class References(HTMLParser):
    """Every URL-valued attribute in a page."""

    ATTRIBUTES = frozenset({"src", "href", "action", "srcset", "poster", "data", "formaction", "xlink:href"})

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value or "" for name, value in attrs if name in self.ATTRIBUTES]


def test_the_page_loads_nothing_from_anywhere() -> None:
    html, _ = dashboard.page()
    text = html.decode()
    parser = References()
    parser.feed(text)
    assert parser.urls == ["data:,"]  # the empty favicon; nothing else is referenced
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/|@import|url\(", text, re.IGNORECASE)
    # the script fetches only /metrics, relative to the page
    assert re.findall(r"fetch\(([^,)]*)", text) == ['"metrics"']
