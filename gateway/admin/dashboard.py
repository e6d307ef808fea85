"""The live dashboard (``GET /dashboard`` on the admin port): one self-contained HTML page.

The page (``dashboard.html``, shipped as package data) fetches ``/metrics`` every second and works out
rates and percentiles in the browser from the change between two scrapes, so the admin listener serves
only a static document and the page shows exactly what Prometheus would scrape. Its one inline script
and one inline style are allowed by their SHA-256 hashes in a strict Content-Security-Policy, worked out
once from the file: nothing else may run or load, and the page may connect only to its own origin.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from importlib import resources

CONTENT_TYPE = b"text/html; charset=utf-8"
_INLINE = re.compile(rb"<(script|style)>(.*?)</\1>", re.DOTALL)

Headers = tuple[tuple[bytes, bytes], ...]


@functools.cache
def page() -> tuple[bytes, Headers]:
    """The page and its security headers, read from the package on first use."""
    html = resources.files(__package__).joinpath("dashboard.html").read_bytes()
    # browsers hash inline code after turning CRLF into LF, so the file is served that way too
    html = html.replace(b"\r\n", b"\n")
    return html, security_headers(html)


def security_headers(html: bytes) -> Headers:
    """CSP allowing only the page's own inline script and style (by hash) and fetches to its origin."""
    hashes: dict[bytes, list[bytes]] = {b"script": [], b"style": []}
    for kind, code in _INLINE.findall(html):
        hashes[kind].append(b"'sha256-" + base64.b64encode(hashlib.sha256(code).digest()) + b"'")
    policy = b"; ".join((
        b"default-src 'none'",
        b"script-src " + (b" ".join(hashes[b"script"]) or b"'none'"),
        b"style-src " + (b" ".join(hashes[b"style"]) or b"'none'"),
        b"connect-src 'self'",
        b"img-src data:",  # the empty favicon, so the browser asks for no /favicon.ico
        b"base-uri 'none'",
        b"form-action 'none'",
        b"frame-ancestors 'none'",
    ))
    return (
        (b"content-security-policy", policy),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
    )
