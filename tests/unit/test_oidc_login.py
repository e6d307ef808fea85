"""Login at the edge (gateway/auth/oidc/login.py, login_store.py): the pure parts (return URLs, PKCE, the
token box, browser detection, query parsing), both session stores (SQLite and a real Redis), and the flow
through the app in-process (no gateway sockets) against the real oidc-provider (tests/oidc/providers.py):
nonce replay, provider errors, issuer mix-up (RFC 9207), a bad code, an unreachable provider, refresh
by two workers at once, and logout."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest

from gateway.app import Gateway
from gateway.auth.oidc import login as login_module
from gateway.auth.oidc.login import (
    EdgeLogin,
    TokenBox,
    digest,
    is_browser,
    login_routes,
    query_params,
    s256,
    safe_return,
)
from gateway.auth.oidc.login_store import LocalLoginStore, LoginStore, RedisLoginStore
from gateway.auth.store import StoreError
from gateway.exchange import Exchange
from gateway.loader import from_document
from tests.oidc import providers
from tests.oidc.browser import Browser, query
from tests.oidc.providers import USER, Client, Provider
from tests.unit.helpers import async_test
from tests.unit.test_auth_support import Answer, call, drop_keys, require_redis

panva_provider = providers.panva_provider  # the session's provider (a fixture)
BASE = "http://127.0.0.1:9"
CALLBACK = BASE + "/oauth2/callback"
HTML = [(b"accept", b"text/html")]


# --- the pure parts ---------------------------------------------------------------------------------------


def test_s256_is_rfc7636s_example() -> None:
    assert s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk") == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


@pytest.mark.parametrize(("value", "expected"), [
    ("/app/x?y=1", "/app/x?y=1"), ("/app/", "/app/"), ("/api/", "/api/"),
    (None, "/app/"), ("", "/app/"), ("app/x", "/app/"), ("https://evil.example/app/", "/app/"),
    ("//evil.example/app/", "/app/"), ("/\\evil.example", "/app/"), ("/app/../admin", "/app/"),
    ("/app/..", "/app/"), ("/app/./x", "/app/"), ("/app/%2e%2e/admin", "/app/"), ("/app/%2F/x", "/app/"),
    ("/app/%5cx", "/app/"), ("/app/x y", "/app/"), ("/app/\r\nx", "/app/"), ("/other", "/app/"),
    ("/application", "/app/"), ("/app/\u00e9", "/app/"),
])
def test_safe_return(value: str | None, expected: str) -> None:
    assert safe_return(value, ("/app/", "/api/")) == expected


def exchange(method: str = "GET", headers: list[tuple[bytes, bytes]] | None = None, query: bytes = b"") -> Exchange:
    scope = {"type": "http", "method": method, "path": "/x", "raw_path": b"/x", "query_string": query,
             "headers": headers or []}

    async def nothing(*_: Any) -> Any:
        return None

    return Exchange(scope, nothing, nothing, 0.0)


@pytest.mark.parametrize(("method", "headers", "expected"), [
    ("GET", [(b"accept", b"text/html,application/xhtml+xml")], True),
    ("HEAD", [(b"accept", b"text/html")], True),
    ("GET", [(b"accept", b"text/html"), (b"sec-fetch-mode", b"navigate")], True),
    ("GET", [(b"accept", b"application/json")], False),
    ("GET", [], False),
    ("POST", [(b"accept", b"text/html")], False),
    ("GET", [(b"accept", b"text/html"), (b"x-requested-with", b"XMLHttpRequest")], False),
    ("GET", [(b"accept", b"text/html"), (b"sec-fetch-mode", b"cors")], False),
])
def test_is_browser(method: str, headers: list[tuple[bytes, bytes]], expected: bool) -> None:
    assert is_browser(exchange(method, headers)) is expected


def test_query_params() -> None:
    assert query_params(exchange(query=b"a=1&b=&c=%20")) == {"a": "1", "b": "", "c": " "}
    for bad, message in ((b"a=1&a=2", "more than once"), (b"a=%ff", "UTF-8"), (b"a=" + b"x" * 9000, "too long")):
        with pytest.raises(login_module.LoginRequestError, match=message):
            query_params(exchange(query=bad))


def test_token_box() -> None:
    secret, sid = b"s" * 43, "a" * 32
    sealed = TokenBox.seal(secret, sid, {"access_token": "at", "refresh_token": "rt"})
    assert "at" not in sealed and "rt" not in sealed
    assert TokenBox.open(secret, sid, sealed) == {"access_token": "at", "refresh_token": "rt"}
    assert TokenBox.open(b"t" * 43, sid, sealed) is None  # another cookie
    assert TokenBox.open(secret, "b" * 32, sealed) is None  # another session
    assert TokenBox.open(secret, sid, "not base64!") is None
    assert TokenBox.open(secret, sid, "") is None


def test_login_routes() -> None:
    from gateway.auth.oidc.config import LoginSpec

    routes = login_routes(LoginSpec(provider="idp", redirect_base=BASE, login_path="/in", callback_path="/cb",
                                    logout_path="/out"))
    assert [(spec.name, spec.pattern, sorted(spec.methods or ())) for spec, _ in routes] == [
        ("oidc:login", "/in", ["GET", "HEAD"]), ("oidc:callback", "/cb", ["GET"]),
        ("oidc:logout", "/out", ["GET", "POST"])]


# --- the stores ---------------------------------------------------------------------------------------------


@asynccontextmanager
async def opened(kind: str, tmp: Path) -> AsyncIterator[LoginStore]:
    if kind == "local":
        store: LoginStore = LocalLoginStore(str(tmp / "state"))
        try:
            yield store
        finally:
            await store.close()
        return
    url = require_redis()
    prefix = f"test:oidc:{uuid.uuid4().hex[:12]}:"
    store = RedisLoginStore(url, prefix)
    try:
        yield store
    finally:
        await store.close()
        drop_keys(url, prefix)


@pytest.mark.parametrize("kind", ["local", "redis"])
@async_test
async def test_store(kind: str, tmp_path: Path) -> None:
    async with opened(kind, tmp_path) as store:
        await store.put_pending("p1", {"n": "x"}, 60)
        assert await store.take_pending("p1") == {"n": "x"}
        assert await store.take_pending("p1") is None  # single use
        await store.put_pending("p2", {"n": "y"}, 0.05)
        await asyncio.sleep(0.15)
        assert await store.take_pending("p2") is None  # expired
        assert await store.use_nonce("n1", 60) is True
        assert await store.use_nonce("n1", 60) is False
        assert await store.use_nonce("n2", 0.05) is True
        await asyncio.sleep(0.15)
        assert await store.use_nonce("n2", 60) is True  # the earlier use has expired
        assert await store.session("s1") is None
        await store.put_session("s1", {"u": "alice"}, 60)
        assert await store.session("s1") == (0, {"u": "alice"})
        assert await store.replace_session("s1", 0, {"u": "alice", "k": 1}, 60) is True
        assert await store.replace_session("s1", 0, {"u": "mallory"}, 60) is False  # stale version
        assert await store.session("s1") == (1, {"u": "alice", "k": 1})
        assert await store.replace_session("s9", 0, {}, 60) is False
        assert await store.lock("s1", 60) is True
        assert await store.lock("s1", 60) is False
        await store.unlock("s1")
        assert await store.lock("s1", 60) is True
        await store.delete_session("s1")
        assert await store.session("s1") is None


@async_test
async def test_store_failures_are_store_errors(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    local = LocalLoginStore(str(blocked / "state"))
    with pytest.raises(StoreError, match="login state"):
        await local.session("s")
    await local.close()
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "oidc-login.sqlite3").write_bytes(b"not a database" * 100)
    corrupt = LocalLoginStore(str(tmp_path / "corrupt"))
    with pytest.raises(StoreError, match="login database"):
        await corrupt.session("s")
    await corrupt.close()
    redis_store = RedisLoginStore("redis://127.0.0.1:1/0", "x:")
    with pytest.raises(StoreError, match="Redis"):
        await redis_store.session("s")
    await redis_store.close()


@async_test
async def test_local_store_purges_expired_entries(tmp_path: Path) -> None:
    clock = [1000.0]
    store = LocalLoginStore(str(tmp_path), clock=lambda: clock[0])
    await store.put_session("old", {}, 1)
    clock[0] += 1000
    await store.put_session("new", {}, 60)  # the next use after PURGE_EVERY purges
    store.purged = 0.0
    assert await store.session("new") == (0, {})
    assert store.conn is not None
    assert store.conn.execute("SELECT count(*) FROM oidc_entries").fetchone()[0] == 1
    await store.close()


# --- through the app, against oidc-provider -----------------------------------------------------------------


def document(tmp: Path, provider: Provider, client: Client, **login: Any) -> dict[str, Any]:
    return {
        "source": str(tmp / "gateway.yaml"), "server": {"access_log": False},
        "auth": {
            "state_dir": str(tmp / "state"),
            "providers": {"idp": {"issuer": provider.issuer, "client_id": client.client_id,
                                  "client_secret": client.client_secret, "scopes": ["openid", "email"],
                                  "timeout": "3s"}},
            "login": {"redirect_base": BASE, "cookie": {"name": "gw", "secure": False}, "allowed_return": ["/app/"],
                      **login},
        },
        "upstreams": {"api": "http://127.0.0.1:9"},
        "routes": [{"prefix": "/app", "upstream": "api", "auth": {"provider": "idp", "login": True}}],
    }


@asynccontextmanager
async def running(doc: dict[str, Any]) -> AsyncIterator[Gateway]:
    app = Gateway(from_document(doc))
    assert app.auth is not None and app.auth.login is not None
    app.auth.start()
    try:
        yield app
    finally:
        app.close()
        if app.auth.login_closing is not None:
            await app.auth.login_closing


def cookie_of(answer: Answer, name: str) -> bytes:
    for key, value in answer.headers:
        if key == b"set-cookie" and value.startswith(name.encode() + b"="):
            return value.split(b";")[0]
    raise AssertionError(f"no {name} cookie in {answer.headers}")


def provider_login(location: str, **changes: str) -> str:
    """The scripted browser at the provider (blocking: the provider is another process); the callback URL."""
    if changes:
        parts = urlsplit(location)
        params = {**query(location), **changes}
        location = f"{parts.scheme}://{parts.netloc}{parts.path}?{urlencode(params)}"
    with Browser() as browser:
        hop = browser.login(location, stop=CALLBACK)
    assert hop.is_redirect, hop.text[:300]
    return str(hop.headers["location"])


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + ("?" + parts.query if parts.query else "")


async def start(app: Gateway, return_to: str = "/app/") -> tuple[str, bytes]:
    answer = await call(app, "GET", "/oauth2/login?" + urlencode({"return": return_to}), HTML)
    assert answer.status == 302, answer.body
    location = answer.header(b"location")
    assert location is not None
    return location.decode(), cookie_of(answer, "gw-login")


async def log_in(app: Gateway) -> bytes:
    location, binding = await start(app)
    callback = provider_login(location)
    answer = await call(app, "GET", path_of(callback), [(b"cookie", binding)])
    assert answer.status == 302, answer.body
    return cookie_of(answer, "gw")


@pytest.fixture
def client(panva_provider: Provider) -> Client:
    return panva_provider.register_client([CALLBACK], [BASE + "/"])


@async_test
async def test_login_and_a_replayed_nonce(tmp_path: Path, panva_provider: Provider, client: Client) -> None:
    async with running(document(tmp_path, panva_provider, client)) as app:
        location, binding = await start(app)
        nonce = query(location)["nonce"]
        answer = await call(app, "GET", path_of(provider_login(location)), [(b"cookie", binding)])
        assert answer.status == 302 and answer.header(b"location") == b"/app/"
        # a second login whose provider answer carries the first login's nonce again
        login = app.auth.login  # type: ignore[union-attr]
        assert login is not None
        state, verifier = secrets.token_urlsafe(32), secrets.token_urlsafe(64)
        await login.store.put_pending(digest(state), {"b": digest(binding.split(b"=", 1)[1]), "n": nonce,
                                                      "v": verifier, "r": "/app/", "t": time.time()}, 60)
        callback = provider_login(location, state=state, code_challenge=s256(verifier))
        replayed = await call(app, "GET", path_of(callback), [(b"cookie", binding)])
        assert replayed.status == 401, replayed.body
        assert replayed.json()["message"] == "the ID token's nonce was used before"


@async_test
async def test_callback_errors(tmp_path: Path, panva_provider: Provider, client: Client) -> None:
    async with running(document(tmp_path, panva_provider, client)) as app:
        login = app.auth.login  # type: ignore[union-attr]
        assert login is not None

        async def pending(**params: str) -> Answer:
            location, binding = await start(app)
            state = query(location)["state"]
            return await call(app, "GET", "/oauth2/callback?" + urlencode({"state": state, **params}),
                              [(b"cookie", binding)])

        assert (await call(app, "GET", "/oauth2/callback?code=x")).status == 400  # no state
        denied = await pending(error="access_denied", error_description="no")
        assert (denied.status, denied.json()["message"]) == (401, "the provider refused the login (access_denied)")
        odd = await pending(error="<script>")
        assert odd.json()["message"] == "the provider refused the login (error)"
        mixed = await pending(code="c", iss="https://other.example")
        assert (mixed.status, mixed.json()["message"]) == (400, "the authorization response comes from another issuer")
        bare = await pending(code="c")  # oidc-provider says it sends iss (RFC 9207): one without it is refused
        assert (bare.status, bare.json()["message"]) == (400, "the authorization response lacks the issuer")
        no_code = await pending(iss=panva_provider.issuer)
        assert no_code.json()["message"] == "the callback has no code"
        bad_code = await pending(code="not-a-code", iss=panva_provider.issuer)
        assert (bad_code.status, bad_code.json()["message"]) == (
            401, "the provider refused the token request (invalid_grant)")
        without_binding = await call(app, "GET", "/oauth2/callback?" + urlencode(
            {"state": query((await start(app))[0])["state"], "code": "c"}))
        assert without_binding.status == 400


@async_test
async def test_unreachable_provider(tmp_path: Path, panva_provider: Provider, client: Client) -> None:
    doc = document(tmp_path, panva_provider, client)
    doc["auth"]["providers"]["idp"]["discovery_url"] = "http://127.0.0.1:1/.well-known/openid-configuration"
    async with running(doc) as app:
        answer = await call(app, "GET", "/oauth2/login", HTML)
        assert answer.status == 503
        out = await call(app, "GET", "/oauth2/logout")  # still logged out here
        assert (out.status, out.header(b"location")) == (302, b"/")


@async_test
async def test_browsers_are_sent_to_log_in_and_others_get_401(tmp_path: Path, panva_provider: Provider,
                                                              client: Client) -> None:
    async with running(document(tmp_path, panva_provider, client)) as app:
        page = await call(app, "GET", "/app/a%20b?q=1", HTML)
        assert (page.status, page.header(b"location")) == (302, b"/oauth2/login?return=%2Fapp%2Fa%2520b%3Fq%3D1")
        assert page.json()["error"] == "login_required"
        api = await call(app, "GET", "/app/x", [(b"accept", b"application/json")])
        assert api.status == 401 and api.header(b"location") is None
        stale = await call(app, "GET", "/app/x", [*HTML, (b"cookie", b"gw=" + b"x" * 43)])
        assert stale.status == 302
        assert stale.header(b"set-cookie") is not None and b"gw=;" in stale.header(b"set-cookie")  # type: ignore[operator]
        short = await call(app, "GET", "/app/x", [*HTML, (b"cookie", b"gw=x")])
        assert short.status == 302


@async_test
async def test_logout_without_a_session_and_with_one(tmp_path: Path, panva_provider: Provider,
                                                     client: Client) -> None:
    async with running(document(tmp_path, panva_provider, client, post_logout_redirect="/")) as app:
        out = await call(app, "POST", "/oauth2/logout")
        location = (out.header(b"location") or b"").decode()
        assert out.status == 302 and location.startswith(panva_provider.endpoint("end_session_endpoint"))
        assert "id_token_hint" not in query(location)
        session = await log_in(app)
        forged = await call(app, "GET", "/oauth2/logout", [(b"cookie", session), (b"sec-fetch-site", b"cross-site")])
        assert forged.status == 403  # another site's link: the session stays
        out = await call(app, "GET", "/oauth2/logout", [(b"cookie", session), (b"sec-fetch-site", b"same-origin")])
        assert "id_token_hint" in query((out.header(b"location") or b"").decode())
        assert (await call(app, "GET", "/app/x", [(b"cookie", session)])).status == 401


@async_test
async def test_refresh_by_two_workers_at_once(tmp_path: Path, panva_provider: Provider, client: Client) -> None:
    doc = document(tmp_path, panva_provider, client, refresh_before="1h")  # every request refreshes
    async with running(doc) as one, running(doc) as two:
        session = await log_in(one)
        login_one, login_two = one.auth.login, two.auth.login  # type: ignore[union-attr]
        assert login_one is not None and login_two is not None
        value = session.split(b"=", 1)[1]
        first = await login_one.read(value)
        assert first is not None
        results = await asyncio.gather(login_one.authenticate(value, exchange()),
                                       login_one.authenticate(value, exchange()),
                                       login_two.authenticate(value, exchange()))
        assert all(result is not None for result in results)
        after = await login_one.read(value)
        assert after is not None and after.version > first.version
        # the rotated refresh token was stored: refreshing again still works
        again = await login_two.authenticate(value, exchange())
        assert again is not None and again[0].subject == USER
        assert (await login_two.read(value)).version > after.version  # type: ignore[union-attr]


@async_test
async def test_waiting_for_another_workers_refresh(tmp_path: Path, panva_provider: Provider,
                                                   client: Client) -> None:
    async with running(document(tmp_path, panva_provider, client)) as app:
        session = await log_in(app)
        login = app.auth.login  # type: ignore[union-attr]
        assert isinstance(login, EdgeLogin)
        value = session.split(b"=", 1)[1]
        current = await login.read(value)
        assert current is not None
        expired = {**current.record, "ax": time.time() - 1}
        assert await login.store.replace_session(current.sid, current.version, expired, 60)
        assert await login.store.lock(current.sid, 60)  # another worker is refreshing

        async def other_worker() -> None:
            await asyncio.sleep(0.2)
            found = await login.store.session(current.sid)
            assert found is not None
            await login.store.replace_session(current.sid, found[0], {**found[1], "ax": time.time() + 300}, 60)

        waited, _ = await asyncio.gather(login.authenticate(value, exchange()), other_worker())
        assert waited is not None
        # the holder never finishes: the wait ends with 503
        now = await login.read(value)
        assert now is not None
        await login.store.replace_session(now.sid, now.version, {**now.record, "ax": time.time() - 1}, 60)
        login.timeout = -4.8  # waits 0.2 s
        with pytest.raises(login_module.ServiceUnavailable):
            await login.authenticate(value, exchange())


def code_flow_tokens(provider: Provider, client: Client, nonce: str) -> dict[str, Any]:
    """Tokens of a code flow run at the provider directly (not through the gateway)."""
    verifier = secrets.token_urlsafe(48)
    params = {"response_type": "code", "client_id": client.client_id, "redirect_uri": CALLBACK,
              "scope": "openid email", "state": "s", "nonce": nonce, "code_challenge": s256(verifier),
              "code_challenge_method": "S256"}
    callback = provider_login(provider.endpoint("authorization_endpoint") + "?" + urlencode(params))
    answer = provider.token(client, grant_type="authorization_code", code=query(callback)["code"],
                            redirect_uri=CALLBACK, code_verifier=verifier)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


@async_test
async def test_id_token_and_userinfo_checks(tmp_path: Path, panva_provider: Provider, client: Client) -> None:
    async with running(document(tmp_path, panva_provider, client)) as app:
        login = app.auth.login  # type: ignore[union-attr]
        assert login is not None
        tokens = code_flow_tokens(panva_provider, client, "n-1")
        claims = await login._id_token(tokens, nonce="n-1")
        assert claims["sub"] == USER
        with pytest.raises(login_module.LoginFailed, match="nonce does not match"):
            await login._id_token(tokens, nonce="n-2")
        with pytest.raises(login_module.LoginFailed, match="sent no ID token"):
            await login._id_token({}, nonce=None)
        with pytest.raises(login_module.LoginFailed, match="ID token is not valid"):
            await login._id_token({"id_token": "a.b.c"}, nonce=None)
        completed = await login._with_userinfo(claims, tokens)
        assert completed["email"] == f"{USER}@example.test"
        assert await login._with_userinfo(claims, {"access_token": "bogus"}) == claims  # 401: not used
        assert await login._with_userinfo({**claims, "sub": "bob"}, tokens) == {**claims, "sub": "bob"}
        assert await login._with_userinfo(claims, {}) == claims
        assert login._record({"sub": "a", "nonce": "n"}, {}, 1.0, 2.0) == {
            "c": {"sub": "a"}, "u": "a", "ct": 1.0, "x": 2.0, "ax": 0.0}
        assert login._record({"sub": "a"}, {"expires_in": "60"}, 1.0, 2.0)["ax"] > time.time()
        assert login._record({"sub": "a"}, {"expires_in": "soon"}, 1.0, 2.0)["ax"] == 0.0
        assert login._record({"sub": "a"}, {"expires_in": True}, 1.0, 2.0)["ax"] == 0.0
        session = login_module.LoginSession("s" * 32, 0, {"c": {"sub": USER}, "u": USER}, {})
        await login.store.put_session(session.sid, {}, 60)
        assert await login._refreshed_claims(session, {}) == {"sub": USER}
        assert await login._refreshed_claims(session, {"id_token": tokens["id_token"]}) == claims
        assert await login._refreshed_claims(session, {"id_token": "a.b.c"}) == {"sub": USER}  # kept
        other = login_module.LoginSession(session.sid, 0, {"c": {}, "u": "bob"}, {})
        assert await login._refreshed_claims(other, {"id_token": tokens["id_token"]}) is None  # it ends
        assert await login.store.session(session.sid) is None
        assert login._kept_tokens({"access_token": "a2"}, {"access_token": "a1", "refresh_token": "r1"}) == {
            "access_token": "a2", "refresh_token": "r1"}


@async_test
async def test_sessions_that_are_not_live(tmp_path: Path, panva_provider: Provider, client: Client) -> None:
    async with running(document(tmp_path, panva_provider, client)) as app:
        login = app.auth.login  # type: ignore[union-attr]
        assert login is not None
        value = b"v" * 43
        sid = digest(value)[:32]
        await login.store.put_session(sid, {"x": time.time() - 1, "t": ""}, 60)
        assert await login.read(value) is None  # past its end
        await login.store.put_session(sid, {"x": time.time() + 60, "t": "garbage"}, 60)
        assert await login.read(value) is None  # tokens not readable with this cookie
        unknown = await call(app, "GET", "/oauth2/callback?state=unknown&code=c")
        assert unknown.json()["message"] == "unknown, expired or already used login state"


@async_test
async def test_refresh_while_the_provider_is_unreachable(tmp_path: Path, panva_provider: Provider,
                                                         client: Client) -> None:
    async with running(document(tmp_path, panva_provider, client, refresh_before="1h")) as app:
        session = await log_in(app)
        login = app.auth.login  # type: ignore[union-attr]
        assert login is not None
        value = session.split(b"=", 1)[1]
        metadata = login.provider.metadata
        assert metadata.document is not None
        metadata.document = {**metadata.document, "token_endpoint": "http://127.0.0.1:1/token"}
        kept = await login.authenticate(value, exchange())  # the access token still serves
        assert kept is not None and kept[0].subject == USER
        current = await login.read(value)
        assert current is not None
        await login.store.replace_session(current.sid, current.version, {**current.record, "ax": time.time() - 1},
                                          60)
        with pytest.raises(login_module.ServiceUnavailable):
            await login.authenticate(value, exchange())
        metadata.document = {key: v for key, v in metadata.document.items() if key != "authorization_endpoint"}
        assert (await call(app, "GET", "/oauth2/login", HTML)).status == 503


@async_test
async def test_a_second_tab_keeps_the_binding_and_logout_reads_a_body(tmp_path: Path, panva_provider: Provider,
                                                                     client: Client) -> None:
    async with running(document(tmp_path, panva_provider, client)) as app:
        _, binding = await start(app)
        again = await call(app, "GET", "/oauth2/login", [*HTML, (b"cookie", binding)])
        assert again.status == 302 and again.header(b"set-cookie") is None  # the same binding serves both tabs
        out = await call(app, "POST", "/oauth2/logout", [(b"content-type", b"text/plain")], chunks=[b"a", b"b"])
        assert out.status == 302


@async_test
async def test_store_outage_is_503(tmp_path: Path, panva_provider: Provider, client: Client) -> None:
    (tmp_path / "file").write_text("not a directory")
    doc = document(tmp_path, panva_provider, client)
    doc["auth"]["state_dir"] = str(tmp_path / "file" / "state")
    async with running(doc) as app:
        answer = await call(app, "GET", "/oauth2/login", HTML)
        assert (answer.status, answer.json()["message"]) == (503, "login sessions cannot be used now")


def test_config_summary_and_builtin_routes(tmp_path: Path) -> None:
    from gateway.config import ConfigError

    provider = Client("gw", "secret")
    fake = type("P", (), {"issuer": "https://idp.example.com"})()
    doc = document(tmp_path, fake, provider)  # type: ignore[arg-type]
    config = from_document(doc)
    assert "auth login: provider idp, redirect URI http://127.0.0.1:9/oauth2/callback, login /oauth2/login, " \
           "logout /oauth2/logout" in config.summary()
    assert [route.name for route in config.builtin_routes()] == ["oidc:login", "oidc:callback", "oidc:logout"]
    doc["routes"].append({"path": "/oauth2/callback", "upstream": "api"})
    with pytest.raises(ConfigError, match=r"login\.callback_path"):
        from_document(doc)
