"""Route tables for the full-path scenarios: N routes of realistic shapes and the paths wrk requests.

Routes cycle over literal paths, ``{param}`` segments (one, two, nested), method-restricted routes and
prefixes, one service number per cycle, all to one upstream. ``sample_paths`` picks (up to) 1,000 paths
that each hit a different route, shuffled with a fixed seed, so every run requests the same mix.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

# (pattern, a path it serves, extra route keys); "#" is the service number.
KINDS: list[tuple[str, str, dict[str, Any]]] = [
    ("/api/v1/svc#/items", "/api/v1/svc#/items", {"methods": ["GET", "POST"]}),
    ("/api/v1/svc#/items/{id}", "/api/v1/svc#/items/42", {"methods": ["GET"]}),
    ("/api/v1/svc#/items/{id}", "/api/v1/svc#/items/42", {"methods": ["PUT", "DELETE"]}),
    ("/api/v2/svc#/{org}/repos/{repo}", "/api/v2/svc#/acme/repos/gw", {}),
    ("/static/app#", "/static/app#/js/main.js", {"prefix": True}),
    ("/api/v1/svc#/items/{id}/tags/{tag}", "/api/v1/svc#/items/9/tags/x", {}),
    ("/health/svc#", "/health/svc#", {}),
    ("/t/svc#/{page}", "/t/svc#/home", {"methods": ["GET"]}),
]
MAX_PATHS = 1_000


def routes(count: int) -> list[tuple[dict[str, Any], str]]:
    """``count`` route entries of a config file, each with a GET path it serves."""
    entries = []
    for n in range(count):
        pattern, path, extra = KINDS[n % len(KINDS)]
        service = str(n // len(KINDS))
        entry: dict[str, Any] = {"name": f"r{n}", "upstream": "api"}
        entry["prefix" if extra.get("prefix") else "path"] = pattern.replace("#", service)
        if "methods" in extra:
            entry["methods"] = extra["methods"]
        entries.append((entry, path.replace("#", service)))
    return entries


def sample_paths(entries: list[tuple[dict[str, Any], str]]) -> list[str]:
    """Up to ``MAX_PATHS`` GET paths of distinct routes, in a fixed shuffled order."""
    served = [path for entry, path in entries if "GET" in entry.get("methods", ["GET"])]
    rng = random.Random(len(entries))
    return rng.sample(served, min(MAX_PATHS, len(served)))


def write_config(directory: Path, count: int, upstream_port: int, access_log: bool,
                 jwt: bool = False) -> tuple[Path, list[str], dict[str, str]]:
    """A gateway config with ``count`` routes (JSON, which is YAML too), the paths to request and the
    headers to send. With ``jwt`` (the full path) every route requires an RS256 token (key in a local PEM
    file) and forwards its subject, the headers carry one valid token (a client reusing its token, as they
    do), and every route is rate limited per subject: a GCRA bucket in the shared table, checked and
    updated on every request, with a limit far above what one core serves, so it never refuses and the
    figure is the check's cost, not refusals."""
    entries = routes(count)
    document: dict[str, Any] = {
        "server": {"access_log": access_log},
        "upstreams": {"api": f"http://127.0.0.1:{upstream_port}"},
        "routes": [entry for entry, _ in entries],
    }
    headers: dict[str, str] = {}
    if jwt:
        key_file, token = signing_key(directory)
        document["auth"] = {"issuers": {"bench": {
            "issuer": ISSUER, "audiences": [AUDIENCE], "algorithms": ["RS256"], "keys": [{"file": str(key_file)}],
        }}}
        for entry, _ in entries:
            entry["auth"] = {"mode": "required", "forward": {"sub": "X-User-Id"}}
        document["ratelimit"] = {"default": ["per-subject"], "policies": {"per-subject": {
            "key": "subject", "limits": [{"rate": "1000000/s", "burst": 1000000, "algorithm": "gcra"}]}}}
        headers["Authorization"] = f"Bearer {token}"
    path = directory / f"routes-{count}{'-jwt' if jwt else ''}.yaml"
    path.write_text(json.dumps(document, indent=1))
    return path, sample_paths(entries), headers


ISSUER = "https://bench.gateway.local/"
AUDIENCE = "bench"


def signing_key(directory: Path) -> tuple[Path, str]:
    """A fresh RSA key: its public half as a PEM file for the gateway, and a token it signed (1 day)."""
    import time

    import jwt as pyjwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_file = directory / "bench-jwt-public.pem"
    public_file.write_bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "bench-user", "iat": now, "exp": now + 86_400}
    return public_file, pyjwt.encode(claims, private, algorithm="RS256")
