"""OAuth/OIDC bearer APIs in a real ``gateway run`` against both real providers (tests/oidc/providers.py):
panva's oidc-provider (JWT access tokens for its resource, opaque ones otherwise) and django-oauth-toolkit
(opaque tokens). Discovery (OpenID and RFC 8414 merged), JWT verification through the discovered jwks_uri,
introspection of opaque tokens (cache, revocation seen after the TTL, bounded calls), scopes per method
and claim rules (403 insufficient_scope), tokens of another issuer or audience refused, client credentials
relayed upstream and renewed before expiry, a provider that is down delaying nobody else, the admin
listing, and a key rotation at the provider during traffic.

The OAuth code is pure Python and never touches gateway/_fast: these run with the compiled build only
(``impl`` overridden below); both builds run every other integration test.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import jwt
import pytest

from tests.integration.conftest import Gateway, free_port, impl_env, wait_until
from tests.oidc.providers import RESOURCE, Provider

pytestmark = pytest.mark.integration


@pytest.fixture
def impl() -> str:
    return "compiled"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def echoed(response: Any) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name, value in response.json()["headers"]:
        found.setdefault(name, []).append(value)
    return found


def provider_yaml(name: str, provider: Provider, client: str = "machine", extra: str = "") -> str:
    secret = provider.clients[client].client_secret
    return f"""
    {name}:
      issuer: {provider.issuer}
      client_id: {client}
      client_secret: "{secret}"
      timeout: 3s
{extra}"""


def config(upstream_port: int, panva: Provider, dot: Provider, down_port: int) -> str:
    return f"""
server:
  access_log: false
auth:
  providers:
{provider_yaml("panva", panva, extra=f'''      audiences: [{RESOURCE}]
      introspection: {{cache_ttl: 30s, max_calls_per_second: 50, max_concurrent: 4}}
      client_credentials: {{scopes: [orders:read], resource: {RESOURCE}, refresh_before: 298s}}''')}
{provider_yaml("dot", dot, extra='''      introspection: {cache_ttl: 1s, max_calls_per_second: 3, max_concurrent: 2}
      client_credentials: {scopes: [orders:read]}''')}
    down:
      issuer: http://127.0.0.1:{down_port}/idp
      client_id: gw
      client_secret: never-sent-anywhere
      timeout: 1s
      introspection: true
upstreams:
  app: http://127.0.0.1:{upstream_port}
routes:
  - prefix: /p/
    strip_prefix: true
    upstream: app
    auth:
      provider: panva
      scopes: [orders:read]
      methods: {{POST: [orders:read, orders:write]}}
      forward: {{client_id: X-Client-Id}}
  - prefix: /rules/
    strip_prefix: true
    upstream: app
    auth:
      provider: panva
      rules: ["client_id == other"]
  - prefix: /d/
    strip_prefix: true
    upstream: app
    auth:
      provider: dot
      scopes: orders:read
      forward: {{client_id: X-Client-Id}}
  - prefix: /down/
    strip_prefix: true
    upstream: app
    auth: {{provider: down}}
  - prefix: /relay-p/
    strip_prefix: true
    upstream: app
    auth: {{mode: optional, provider: panva, relay: client_credentials}}
  - prefix: /relay-d/
    strip_prefix: true
    upstream: app
    auth: {{mode: optional, provider: dot, relay: client_credentials}}
"""


@pytest.fixture(scope="module")
def oidc_gateway(tmp_path_factory: pytest.TempPathFactory, upstream_port: int, panva_provider: Provider,
                 dot_provider: Provider) -> Iterator[Gateway]:
    """One gateway for the tests that only send requests (a start costs seconds on a busy machine)."""
    tmp = tmp_path_factory.mktemp("oidc-gateway")
    path = tmp / "gateway.yaml"
    path.write_text(config(upstream_port, panva_provider, dot_provider, free_port()))
    gw = Gateway(tmp, ["--config", str(path), "--workers", "1"], impl_env("compiled"), free_port(), free_port())
    try:
        gw.wait_ready()
        yield gw
    finally:
        gw.stop()


def test_jwt_and_opaque_tokens_scopes_and_issuers(oidc_gateway: Gateway, panva_provider: Provider,
                                                  dot_provider: Provider) -> None:
    gw = oidc_gateway
    read_jwt = panva_provider.client_credentials(scope="orders:read", resource=RESOURCE)["access_token"]
    assert read_jwt.count(".") == 2
    ok = gw.get("/p/echo", headers=bearer(read_jwt))
    assert ok.status == 200, (ok.body, [line for line in gw.stderr.splitlines() if "HTTP Request" not in line])
    seen = echoed(ok)
    assert seen["x-client-id"] == ["machine"]
    assert "authorization" not in seen

    # POST needs orders:write too: 403 naming the scopes the method needs (RFC 6750 section 3)
    denied = oidc_request(gw, "POST", "/p/echo", read_jwt)
    assert denied.status == 403
    assert denied.json()["error"] == "insufficient_scope"
    challenge = denied.headers["WWW-Authenticate"]
    assert 'error="insufficient_scope"' in challenge and 'scope="orders:read orders:write"' in challenge
    write_jwt = panva_provider.client_credentials(scope="orders:read orders:write", resource=RESOURCE)["access_token"]
    assert oidc_request(gw, "POST", "/p/echo", write_jwt).status == 200

    # claim rules: the token's client_id must be "other"
    ruled = gw.get("/rules/echo", headers=bearer(read_jwt))
    assert ruled.status == 403 and ruled.json()["error"] == "insufficient_scope"
    other_jwt = panva_provider.client_credentials("other", scope="orders:read", resource=RESOURCE)["access_token"]
    assert gw.get("/rules/echo", headers=bearer(other_jwt)).status == 200

    # an opaque panva token: introspected at panva
    opaque = panva_provider.client_credentials(scope="orders:read")["access_token"]
    assert opaque.count(".") != 2
    assert gw.get("/p/echo", headers=bearer(opaque)).status == 200
    junk = gw.get("/p/echo", headers=bearer("not-a-token-at-all"))
    assert junk.status == 401 and junk.json()["message"] == "token inactive"

    # django-oauth-toolkit: opaque tokens, introspection endpoint found through its RFC 8414 metadata
    dot_token = dot_provider.client_credentials(scope="orders:read")["access_token"]
    passed = gw.get("/d/echo", headers=bearer(dot_token))
    assert passed.status == 200, passed.body
    assert echoed(passed)["x-client-id"] == ["machine"]
    no_scope = dot_provider.client_credentials(scope="orders:write")["access_token"]
    assert gw.get("/d/echo", headers=bearer(no_scope)).status == 403

    # a token of an issuer the route does not take: panva's JWT on dot's route, dot's token on panva's
    wrong = gw.get("/d/echo", headers=bearer(read_jwt))
    assert wrong.status == 401 and wrong.json()["message"] == "token issuer not accepted on this route"
    assert gw.get("/p/echo", headers=bearer(dot_token)).status == 401  # panva does not know it: inactive

    # revoked at the provider: refused once the cached answer (cache_ttl 1s) is gone
    dot_provider.revoke(dot_token, client="machine")
    wait_until(lambda: gw.get("/d/echo", headers=bearer(dot_token)).status == 401, timeout=10)
    assert gw.get("/d/echo", headers=bearer(dot_token)).json()["message"] == "token inactive"


def oidc_request(gw: Gateway, method: str, path: str, token: str) -> Any:
    from tests.integration.conftest import request

    return request(gw.port, method, path, b"{}", headers={**bearer(token), "Content-Type": "application/json"})


def test_introspection_calls_are_bounded(oidc_gateway: Gateway, dot_provider: Provider) -> None:
    """dot allows 3 introspections a second: a burst of unknown tokens gets 503 + Retry-After for the rest,
    and a cached token is never limited."""
    gw = oidc_gateway
    token = dot_provider.client_credentials(scope="orders:read")["access_token"]
    wait_until(lambda: gw.get("/d/echo", headers=bearer(token)).status == 200, timeout=10)
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda i: gw.get("/d/echo", headers=bearer(f"random-{i}-{time.time()}")), range(12)))
    elapsed = time.monotonic() - started
    codes = sorted(response.status for response in statuses)
    assert 503 in codes, codes
    assert codes.count(401) <= 3 + 3 * elapsed + 1, (codes, elapsed)  # the burst, then 3 a second
    busy = next(response for response in statuses if response.status == 503)
    assert busy.headers["Retry-After"] == "1"
    assert gw.get("/d/echo", headers=bearer(token)).status == 200  # cached (cache_ttl 1s) or within the rate


def test_a_provider_that_is_down_delays_only_its_routes(oidc_gateway: Gateway, panva_provider: Provider) -> None:
    gw = oidc_gateway
    token = panva_provider.client_credentials(scope="orders:read", resource=RESOURCE)["access_token"]
    started = time.monotonic()
    for _ in range(5):
        assert gw.get("/p/echo", headers=bearer(token)).status == 200
    assert time.monotonic() - started < 5
    down = gw.get("/down/echo", headers=bearer("opaque-token"))
    assert down.status == 503 and down.json()["error"] == "service_unavailable"
    started = time.monotonic()
    assert gw.get("/down/echo", headers=bearer("opaque-token")).status == 503
    assert time.monotonic() - started < 2.5  # known down: refused without waiting on the provider again
    listing = gw.admin("/auth/providers").json()["providers"]
    assert set(listing) == {"panva", "dot", "down"}
    wait_until(lambda: gw.admin("/auth/providers").json()["providers"]["dot"]["keys"] >= 1, timeout=15)
    listing = gw.admin("/auth/providers").json()["providers"]
    for name in ("panva", "dot"):
        assert listing[name]["reachable"] is True and listing[name]["last_error"] is None
        assert listing[name]["keys"] >= 1 and listing[name]["keys_age_seconds"] >= 0
    assert listing["dot"]["metadata_url"].endswith("/o/.well-known/openid-configuration")
    assert listing["down"]["reachable"] is False and listing["down"]["last_error"]
    text = gw.admin("/auth/providers").body.decode()
    for client in ("machine",):
        assert panva_provider.clients[client].client_secret not in text
    assert "never-sent-anywhere" not in text


def test_client_credentials_relayed_and_renewed(oidc_gateway: Gateway, panva_provider: Provider,
                                                dot_provider: Provider) -> None:
    gw = oidc_gateway
    own = panva_provider.client_credentials("other", scope="orders:read", resource=RESOURCE)["access_token"]
    first = echoed(gw.get("/relay-p/echo", headers=bearer(own)))["authorization"]  # the client's token replaced
    assert len(first) == 1 and first[0].startswith("Bearer ")
    relayed = first[0].removeprefix("Bearer ")
    keys = jwt.PyJWKClient(panva_provider.endpoint("jwks_uri"))
    claims = jwt.decode(relayed, keys.get_signing_key_from_jwt(relayed).key, algorithms=["RS256"],
                        audience=RESOURCE, issuer=panva_provider.issuer)
    assert claims["client_id"] == "machine" and claims["scope"] == "orders:read"
    # renewed 298s before its 300s expiry: a newer token within a few seconds, the old one meanwhile
    wait_until(lambda: echoed(gw.get("/relay-p/echo"))["authorization"][0] != first[0], timeout=15)
    dot_relayed = echoed(gw.get("/relay-d/echo"))["authorization"][0].removeprefix("Bearer ")
    assert dot_provider.introspect(dot_relayed)["active"] is True
    assert echoed(gw.get("/relay-d/echo"))["authorization"][0] == f"Bearer {dot_relayed}"  # cached


def test_a_token_for_another_audience_is_refused(start_gateway: Callable[..., Gateway], upstream_port: int,
                                                 panva_provider: Provider) -> None:
    """Without audiences the provider's tokens must be for the gateway's own client id: a JWT whose aud is
    the resource (another party) is refused."""
    gw = start_gateway(f"""
server: {{access_log: false}}
auth:
  providers:
{provider_yaml("panva", panva_provider)}
upstreams: {{app: "http://127.0.0.1:{upstream_port}"}}
routes:
  - {{prefix: /p/, upstream: app, auth: {{provider: panva}}}}
""")
    token = panva_provider.client_credentials(scope="orders:read", resource=RESOURCE)["access_token"]
    refused = gw.get("/p/echo", headers=bearer(token))
    assert refused.status == 401 and refused.json()["message"] == "wrong audience"


def test_key_rotation_at_the_provider_during_traffic(start_gateway: Callable[..., Gateway], upstream_port: int,
                                                     start_oidc_provider: Callable[..., Provider]) -> None:
    provider = start_oidc_provider("oidc-provider")
    gw = start_gateway(f"""
server: {{access_log: false}}
auth:
  providers:
{provider_yaml("panva", provider, extra=f"      audiences: [{RESOURCE}]")}
upstreams: {{app: "http://127.0.0.1:{upstream_port}"}}
routes:
  - {{prefix: /p/, upstream: app, auth: {{provider: panva}}}}
""", workers=2)
    old = provider.client_credentials(scope="orders:read", resource=RESOURCE)["access_token"]
    assert gw.get("/p/echo", headers=bearer(old)).status == 200
    failures: list[int] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            status = gw.get("/p/echo", headers=bearer(old)).status
            if status != 200:
                failures.append(status)

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        new_key = provider.rotate_keys()
        new = provider.client_credentials(scope="orders:read", resource=RESOURCE)["access_token"]
        assert jwt.get_unverified_header(new)["kid"] == new_key.kid
        for _ in range(4):  # every worker meets the new kid and fetches the keys once
            assert gw.get("/p/echo", headers=bearer(new)).status == 200
    finally:
        stop.set()
        worker.join(10)
    assert failures == []  # tokens signed with the old key kept passing
