"""Login at the edge (gateway/auth/oidc/login.py) in real ``gateway run`` processes against real providers
(panva's oidc-provider and django-oauth-toolkit, tests/oidc/providers.py), driven by a scripted browser
that follows redirects and fills in the provider's login form.

Covered: the whole flow with PKCE S256 (both providers, both implementations, host-local store and Redis),
401 JSON for non-browser clients, refresh at the edge, RP-initiated logout, and the security cases:
state mismatch, replayed callback, a callback in another browser, the code useless without the
gateway's verifier, open redirects through the return URL, cookies that carry no readable token, and a
login after the provider rotated its signing keys.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from tests.integration.conftest import Gateway, free_port, impl_env, wait_until
from tests.oidc.browser import Browser, forms, query
from tests.oidc.providers import DOT, PANVA, USER, Client, Provider
from tests.unit.test_auth_support import drop_keys, require_redis

pytestmark = pytest.mark.integration
COOKIE = "gw_session"
XHR = {"accept": "application/json", "x-requested-with": "XMLHttpRequest"}


class LoginGateway:
    def __init__(self, gateway: Gateway, provider: Provider, client: Client, state_dir: Path) -> None:
        self.gateway = gateway
        self.provider = provider
        self.client = client
        self.state_dir = state_dir
        self.base = f"http://127.0.0.1:{gateway.port}"

    def url(self, path: str) -> str:
        return self.base + path


@pytest.fixture
def login_gateway(tmp_path: Path, upstream_port: int) -> Iterator[Callable[..., LoginGateway]]:
    """``login_gateway(provider, impl="python", store="local", refresh_before="60s", workers=1)``: a gateway
    on a port chosen first, so the provider can register its exact redirect URI."""
    started: list[Gateway] = []
    prefixes: list[tuple[str, str]] = []

    def start(provider: Provider, impl: str = "python", store: str = "local", refresh_before: str = "60s",
              workers: int = 1) -> LoginGateway:
        port, admin_port = free_port(), free_port()
        base = f"http://127.0.0.1:{port}"
        client = provider.register_client([base + "/oauth2/callback"], [base + "/bye"])
        state_dir = tmp_path / f"state-{len(started)}"
        env = impl_env(impl)
        auth_extra = f"  state_dir: {state_dir}\n"
        if store == "redis":
            url = require_redis()
            prefix = f"test:oidc:{uuid.uuid4().hex[:12]}:"
            prefixes.append((url, prefix))
            env["GATEWAY_REDIS_URL"] = url
            auth_extra += f'  redis_prefix: "{prefix}"\n'
        config = f"""
server:
  access_log: false
auth:
{auth_extra}  providers:
    idp:
      issuer: {provider.issuer}
      client_id: {client.client_id}
      client_secret: {client.client_secret}
      scopes: [openid, profile, email]
      timeout: 5s
  login:
    redirect_base: {base}
    cookie: {{name: {COOKIE}, secure: false}}
    allowed_return: [/app/]
    post_logout_redirect: /bye
    refresh_before: {refresh_before}
upstreams:
  app: http://127.0.0.1:{upstream_port}
routes:
  - prefix: /app
    upstream: app
    auth: {{provider: idp, login: true, forward: {{sub: X-User-Id, email: X-User-Email}}}}
"""
        path = tmp_path / f"gateway-{len(started)}.yaml"
        path.write_text(config)
        gateway = Gateway(tmp_path, ["--config", str(path), "--workers", str(workers)], env, port, admin_port)
        started.append(gateway)
        gateway.wait_ready()
        return LoginGateway(gateway, provider, client, state_dir)

    yield start
    for gateway in started:
        gateway.stop()
    for url, prefix in prefixes:
        drop_keys(url, prefix)


def echo(response: httpx.Response) -> dict[str, Any]:
    """The test upstream's echo, its headers as a dict."""
    assert response.status_code == 200, (response.status_code, response.text[:500])
    seen = dict(response.json())
    seen["headers"] = {name: value for name, value in seen["headers"]}
    return seen


def bearer(response: httpx.Response) -> str:
    """The access token the upstream got."""
    return str(echo(response)["headers"]["authorization"]).removeprefix("Bearer ")


def log_in(gw: LoginGateway, browser: Browser, page: str = "/app/page?x=1") -> httpx.Response:
    """From a protected page through the provider's login form back to the page."""
    final = browser.login(gw.url(page))
    assert str(final.url) == gw.url(page), (final.status_code, final.text[:500], gw.gateway.stderr[-3000:])
    return final


def hops(browser: Browser) -> list[str]:
    return [str(response.url) for response in browser.history]


@pytest.mark.parametrize("impl", ["compiled", "python"])
def test_login_flow(login_gateway: Callable[..., LoginGateway], oidc_provider: Provider, impl: str) -> None:
    gw = login_gateway(oidc_provider, impl=impl)
    with Browser() as browser:
        first = browser.get(gw.url("/app/page?x=1"))
        assert first.status_code == 302
        assert first.headers["location"] == "/oauth2/login?return=%2Fapp%2Fpage%3Fx%3D1"
        final = log_in(gw, browser)
        headers = echo(final)["headers"]
        assert headers["x-user-id"] == USER
        assert headers["x-user-email"] == f"{USER}@example.test"
        assert headers["authorization"].startswith("Bearer ")  # the user's access token for the upstream
        assert COOKIE not in headers.get("cookie", "")  # the session cookie is not passed upstream
        # the authorization request: code flow, PKCE S256, the exact redirect URI, state and nonce
        authorize = next(url for url in hops(browser) if url.startswith(oidc_provider.endpoint(
            "authorization_endpoint")))
        params = query(authorize)
        assert params["response_type"] == "code"
        assert params["code_challenge_method"] == "S256"
        assert len(params["code_challenge"]) == 43
        assert params["redirect_uri"] == gw.url("/oauth2/callback")
        assert params["client_id"] == gw.client.client_id
        assert len(params["state"]) >= 32 and len(params["nonce"]) >= 32
        assert "openid" in params["scope"].split()
        # the session cookie: HttpOnly, SameSite, random; no token readable in it
        set_cookies = [r.headers.get_list("set-cookie") for r in browser.history if r.url.path == "/oauth2/callback"]
        session_cookie = next(c for c in set_cookies[0] if c.startswith(COOKIE + "="))
        assert "HttpOnly" in session_cookie and "SameSite=Lax" in session_cookie and "Path=/" in session_cookie
        value = session_cookie.split(";")[0].split("=", 1)[1]
        assert len(value) == 43 and "." not in value
        # later requests ride on the session; an XHR without it gets 401 JSON
        assert echo(browser.get(gw.url("/app/again")))["path"] == "/app/again"
    answer = httpx.get(gw.url("/app/page"), headers=XHR)
    assert answer.status_code == 401
    assert answer.json()["status"] == 401
    assert "location" not in answer.headers
    assert httpx.post(gw.url("/app/page"), headers={"accept": "text/html"}).status_code == 401


def test_login_with_redis_store(login_gateway: Callable[..., LoginGateway], panva_provider: Provider) -> None:
    gw = login_gateway(panva_provider, store="redis", workers=2)
    with Browser() as browser:
        log_in(gw, browser)
        for _ in range(6):  # any worker finds the session
            assert echo(browser.get(gw.url("/app/x")))["path"] == "/app/x"


def test_the_session_store_holds_no_usable_token(login_gateway: Callable[..., LoginGateway],
                                                 dot_provider: Provider) -> None:
    gw = login_gateway(dot_provider, workers=2)  # the workers share the host's SQLite store
    with Browser() as browser:
        token = bearer(log_in(gw, browser))
        for _ in range(6):
            assert bearer(browser.get(gw.url("/app/y"))) == token
    with sqlite3.connect(gw.state_dir / "oidc-login.sqlite3") as db:
        stored = b"".join(bytes(row[0] or b"") for row in db.execute("SELECT data FROM oidc_entries"))
    assert stored
    assert token.encode() not in stored
    assert b"refresh_token" not in stored and b"id_token" not in stored
    for cookie in browser.client.cookies.jar:
        assert token not in (cookie.value or "")


@pytest.mark.parametrize("kind", [PANVA, DOT])
def test_refresh_at_the_edge(login_gateway: Callable[..., LoginGateway],
                             start_oidc_provider: Callable[..., Provider], kind: str) -> None:
    provider = start_oidc_provider(kind, access_ttl=30)
    gw = login_gateway(provider, refresh_before="29s")  # due one second after each refresh
    with Browser() as browser:
        first = bearer(log_in(gw, browser))
        time.sleep(1.2)
        second = bearer(browser.get(gw.url("/app/later")))
        assert second != first  # refreshed before it expired
        assert provider.introspect(second)["active"] is True
        time.sleep(1.2)
        third = bearer(browser.get(gw.url("/app/later")))
        assert third not in (first, second)  # the rotated refresh token was stored and used


def test_refresh_refused_ends_the_session(login_gateway: Callable[..., LoginGateway],
                                          start_oidc_provider: Callable[..., Provider]) -> None:
    provider = start_oidc_provider(PANVA, access_ttl=30)
    gw = login_gateway(provider, refresh_before="29s")
    with Browser() as browser:
        log_in(gw, browser)
        provider.restart()  # in memory: the refresh token is gone
        time.sleep(1.2)
        again = browser.get(gw.url("/app/page"))
        assert again.status_code == 302  # log in again
        assert f"{COOKIE}=;" in again.headers.get("set-cookie", "")


@pytest.mark.parametrize("kind", [PANVA, DOT])
def test_logout(login_gateway: Callable[..., LoginGateway], kind: str, request: pytest.FixtureRequest) -> None:
    provider: Provider = request.getfixturevalue("panva_provider" if kind == PANVA else "dot_provider")
    gw = login_gateway(provider)
    with Browser() as browser:
        log_in(gw, browser)
        cookie = browser.client.cookies.get(COOKIE)
        out = browser.get(gw.url("/oauth2/logout"))
        assert out.status_code == 302
        assert f"{COOKIE}=;" in out.headers["set-cookie"] and "Max-Age=0" in out.headers["set-cookie"]
        location = out.headers["location"]
        assert location.startswith(provider.endpoint("end_session_endpoint"))
        params = query(location)
        assert params["post_logout_redirect_uri"] == gw.url("/bye")
        assert params["client_id"] == gw.client.client_id
        assert params["id_token_hint"].count(".") == 2
        # the provider ends its session and sends the browser back
        page = browser.follow(out, stop=gw.url("/bye"))
        if not page.is_redirect:  # oidc-provider asks to confirm
            page = browser.follow(browser.submit_form(page, logout="yes"), stop=gw.url("/bye"))
        assert page.is_redirect and page.headers["location"].startswith(gw.url("/bye"))
        # the old cookie is dead here; a new login asks for the password again
        assert httpx.get(gw.url("/app/x"), cookies={COOKIE: cookie or ""}, headers=XHR).status_code == 401
        again = browser.follow(browser.get(gw.url("/app/x")))
        assert any(form.has_password() for form in forms(again.text))


def start_login(gw: LoginGateway, browser: Browser, return_to: str = "/app/") -> str:
    """Runs a login up to the provider's redirect to the callback (not followed); the callback URL."""
    hop = browser.login(gw.url("/oauth2/login?" + urlencode({"return": return_to})), stop=gw.url("/oauth2/callback"))
    assert hop.is_redirect, hop.text[:300]
    return str(hop.headers["location"])


def test_state_mismatch_and_replayed_callback(login_gateway: Callable[..., LoginGateway],
                                              panva_provider: Provider) -> None:
    gw = login_gateway(panva_provider)
    with Browser() as browser:
        callback = start_login(gw, browser)
        params = query(callback)
        forged = browser.get(gw.url("/oauth2/callback?" + urlencode({**params, "state": "x" * 43})))
        assert forged.status_code == 400
        assert forged.json()["error"] == "invalid_login_request"
        done = browser.get(callback)
        assert done.status_code == 302 and done.headers["location"] == "/app/"
        replay = browser.get(callback)
        assert replay.status_code == 400  # the state was used
        assert "already used" in replay.json()["message"]
    metrics = gw.gateway.admin("/metrics").body.decode()
    counted = [line for line in metrics.splitlines()
               if line.startswith("gateway_auth_failures_total{") and 'reason="login"' in line]
    assert counted and float(counted[0].rsplit(" ", 1)[1]) == 2.0, counted
    assert 'route="oidc:callback"' in counted[0]


def test_callback_in_another_browser(login_gateway: Callable[..., LoginGateway], panva_provider: Provider) -> None:
    gw = login_gateway(panva_provider)
    with Browser() as victim:
        callback = start_login(gw, victim)
    with Browser() as attacker:
        answer = attacker.get(callback)
        assert answer.status_code == 400
        assert "another browser" in answer.json()["message"]
        assert COOKIE not in answer.headers.get("set-cookie", "")


def test_code_is_useless_without_the_gateways_verifier(login_gateway: Callable[..., LoginGateway],
                                                        oidc_provider: Provider) -> None:
    gw = login_gateway(oidc_provider)
    with Browser() as browser:
        callback = start_login(gw, browser)
    code = query(callback)["code"]
    for extra in ({}, {"code_verifier": "a" * 64}):
        stolen = oidc_provider.token(gw.client, grant_type="authorization_code", code=code,
                                     redirect_uri=gw.url("/oauth2/callback"), **extra)
        assert stolen.status_code == 400
        assert stolen.json()["error"] in ("invalid_grant", "invalid_request")


def test_no_open_redirect(login_gateway: Callable[..., LoginGateway], panva_provider: Provider) -> None:
    gw = login_gateway(panva_provider)
    for target in ("https://evil.example/", "//evil.example/app/", "/\\evil.example", "/app/../admin",
                   "/app/%2e%2e/admin", "/app/%2F%2Fevil", "/other", "javascript:alert(1)", "/app/\t/x", ""):
        with Browser() as browser:
            callback = start_login(gw, browser, return_to=target)
            done = browser.get(callback)
            assert done.status_code == 302
            assert done.headers["location"] == "/app/", target
    with Browser() as browser:  # a local path under allowed_return is followed, query and all
        done = browser.get(start_login(gw, browser, return_to="/app/orders?id=7"))
        assert done.headers["location"] == "/app/orders?id=7"


def test_login_after_key_rotation(login_gateway: Callable[..., LoginGateway],
                                  start_oidc_provider: Callable[..., Provider]) -> None:
    provider = start_oidc_provider(PANVA)
    gw = login_gateway(provider)
    with Browser() as browser:
        log_in(gw, browser)
    new = provider.rotate_keys()  # ID tokens are signed with a key the gateway has not seen yet
    with Browser() as browser:
        assert echo(log_in(gw, browser))["headers"]["x-user-id"] == USER
    assert provider.jwks()["keys"][0]["kid"] == new.kid


def test_key_rotation_during_traffic(login_gateway: Callable[..., LoginGateway],
                                     start_oidc_provider: Callable[..., Provider]) -> None:
    """Browsing goes on while django-oauth-toolkit restarts with a new signing key: refreshes fail while it
    is down (the access token still serves), then bring ID tokens signed with the new key (the gateway
    fetches the new JWKS on the unknown kid). No request fails."""
    provider = start_oidc_provider(DOT, access_ttl=30)
    gw = login_gateway(provider, refresh_before="29s")  # every request after the first second refreshes
    statuses: list[int] = []
    tokens: list[str] = []
    stop = threading.Event()
    with Browser() as browser:
        tokens.append(bearer(log_in(gw, browser)))
        cookies = dict(browser.client.cookies.items())

        def traffic() -> None:
            with httpx.Client(cookies=cookies, headers={"accept": "text/html"}, timeout=20) as client:
                while not stop.is_set():
                    answer = client.get(gw.url("/app/traffic"))
                    statuses.append(answer.status_code)
                    if answer.status_code == 200:
                        tokens.append(bearer(answer))
                    time.sleep(0.1)

        worker = threading.Thread(target=traffic)
        worker.start()
        try:
            time.sleep(1.5)
            new = provider.rotate_keys()
            before = len(tokens)
            wait_until(lambda: len(set(tokens[before:])) >= 2, timeout=30)  # refreshed after the rotation
        finally:
            stop.set()
            worker.join(30)
    assert statuses and set(statuses) == {200}, statuses
    assert provider.jwks()["keys"][0]["kid"] == new.kid
    assert "unknown signing key" not in gw.gateway.stderr
