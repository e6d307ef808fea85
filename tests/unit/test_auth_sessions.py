"""Login sessions through the app (no sockets), embedded (a sealed cookie, the host's index) and server-side
(a real Redis): login, the session on routes, idle and absolute timeouts, renewal, logout, ending."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.auth import keyset
from gateway.auth.redis_store import RedisStore
from gateway.auth.stage import take_cookie
from gateway.exchange import Exchange, Stage
from gateway.loader import from_document
from tests.unit.helpers import async_test
from tests.unit.test_auth_support import BASIC, call, drop_keys, issuer_document, require_redis, token

KEYS = keyset.bootstrap(1.0, keyset.generate_key(1.0), keyset.generate_key(1.0))
ROUTES = [
    {"prefix": "/", "upstream": "api",
     "auth": {"token": {"session": True}, "forward": {"sub": "X-User-Id", "sid": "X-Session"}}},
    {"prefix": "/optional", "upstream": "api", "auth": {"mode": "optional", "token": {"session": True}}},
    {"prefix": "/bearer-only", "upstream": "api", "auth": "required"},
]


class Upstream(Stage):
    """Stands in for the proxy: records what it would pass on, answers 200."""

    def __init__(self) -> None:
        self.seen: list[tuple[list[tuple[bytes, bytes]], str | None]] = []

    async def __call__(self, ex: Exchange) -> None:
        self.seen.append((list(ex.scope["headers"]), ex.subject))
        await ex.start_response(200, [(b"content-length", b"0")])
        await ex.send_body(b"", False)


class Clock:
    def __init__(self) -> None:
        import time

        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["embedded", "redis"])
def mode(request: pytest.FixtureRequest) -> Iterator[tuple[str, str, str]]:
    if request.param == "embedded":
        yield "embedded", "", ""
        return
    url = require_redis()
    prefix = f"test:auth:{__import__('os').urandom(6).hex()}:"
    yield "redis", url, prefix
    drop_keys(url, prefix)


@asynccontextmanager
async def running(tmp: Path, mode: tuple[str, str, str]) -> AsyncIterator[tuple[Gateway, Upstream, Clock]]:
    kind, url, prefix = mode
    document = issuer_document(tmp, routes=ROUTES, sessions={"idle_timeout": "10m", "absolute_timeout": "1h",
                                                             "secure": False})
    if kind == "redis":
        document["server"]["redis_url"] = url
        document["auth"]["redis_prefix"] = prefix
        seed = RedisStore(url, prefix)
        await seed.save_keys(KEYS, 0)
        await seed.close()
    else:
        (tmp / "state").mkdir(exist_ok=True)
        (tmp / "state" / "issuer-keys.json").write_bytes(keyset.dumps(KEYS))
    app = Gateway(from_document(document))
    assert app.auth is not None and app.auth.issuer is not None and app.auth.issuer.sessions is not None
    upstream = Upstream()
    for path in ("/x", "/optional", "/bearer-only"):
        app.table.match("api.test", "GET", path)[0].first.next = upstream
    clock = Clock()
    app.auth.issuer.sessions.clock = clock
    app.auth.start()
    try:
        yield app, upstream, clock
    finally:
        app.close()
        if app.auth.issuer.closing is not None:
            await app.auth.issuer.closing


async def login(app: Gateway) -> bytes:
    answer = await call(app, "POST", "/auth/login", [(b"authorization", BASIC)])
    assert answer.status == 200, answer.body
    cookie = answer.header(b"set-cookie")
    assert cookie is not None
    return cookie.split(b";")[0]


def set_cookie(answer: Any) -> bytes | None:
    value = answer.header(b"set-cookie")
    return None if value is None else value.split(b";")[0]


@async_test
async def test_login_sets_a_session_cookie_that_authenticates(tmp_path: Path, mode: Any) -> None:
    async with running(tmp_path, mode) as (app, upstream, _):
        answer = await call(app, "POST", "/auth/login", [(b"authorization", BASIC)])
        assert answer.status == 200 and answer.header(b"cache-control") == b"no-store"
        body = answer.json()
        assert (body["subject"], body["expires_in"], body["idle_timeout"]) == ("demo", 3600, 600)
        cookie_header = answer.header(b"set-cookie")
        assert cookie_header is not None
        assert cookie_header.endswith(b"; Max-Age=3600; Path=/; HttpOnly; SameSite=Lax")
        cookie = cookie_header.split(b";")[0]
        passed = await call(app, "GET", "/x", [(b"cookie", b"theme=dark; " + cookie + b"; lang=en")])
        assert passed.status == 200
        headers, subject = upstream.seen[-1]
        assert subject == "demo"
        assert (b"x-user-id", b"demo") in headers and (b"x-session", body["session"].encode()) in headers
        assert (b"cookie", b"theme=dark; lang=en") in headers  # the session cookie itself never goes upstream
        assert not any(cookie in value for _, value in headers)


@async_test
async def test_without_a_live_session(tmp_path: Path, mode: Any) -> None:
    async with running(tmp_path, mode) as (app, upstream, _):
        cookie = await login(app)
        name, _, value = cookie.partition(b"=")
        for forged in (name + b"=" + value[:-4] + b"AAAA", name + b"=zz." + value.partition(b".")[2], name + b"=",
                       name + b"=" + b"x" * 5000):
            refused = await call(app, "GET", "/x", [(b"cookie", forged)])
            assert refused.status == 401
            assert refused.json()["message"] in ("session expired or ended", "a bearer token is required")
        expired = await call(app, "GET", "/x", [(b"cookie", name + b"=" + value[:-4] + b"AAAA")])
        assert set_cookie(expired) == b"gateway_session="  # the browser is told to drop it
        anonymous = await call(app, "GET", "/optional", [(b"cookie", name + b"=" + value[:-4] + b"AAAA")])
        assert anonymous.status == 200 and upstream.seen[-1][1] is None
        assert set_cookie(anonymous) == b"gateway_session="
        assert (await call(app, "GET", "/optional")).status == 200
        assert (await call(app, "GET", "/bearer-only", [(b"cookie", cookie)])).status == 401  # not a session route


@async_test
async def test_idle_and_absolute_timeouts_and_renewal(tmp_path: Path, mode: Any) -> None:
    async with running(tmp_path, mode) as (app, _, clock):
        cookie = await login(app)
        clock.now += 9 * 60  # idle 9 of 10 minutes: still live, and renewed
        renewed = await call(app, "GET", "/x", [(b"cookie", cookie)])
        assert renewed.status == 200
        if mode[0] == "embedded":
            fresh = set_cookie(renewed)
            assert fresh is not None and fresh != cookie
            cookie = fresh
        else:
            assert set_cookie(renewed) is None  # the server-side session was renewed in Redis
        clock.now += 9 * 60  # 18 minutes after login, 9 after the renewal
        assert (await call(app, "GET", "/x", [(b"cookie", cookie)])).status == 200
        clock.now += 11 * 60  # idle too long
        idle = await call(app, "GET", "/x", [(b"cookie", cookie)])
        assert (idle.status, idle.json()["message"]) == (401, "session expired or ended")

        cookie = await login(app)
        for _ in range(8):  # active all along, but the absolute timeout is one hour
            clock.now += 8 * 60
            answer = await call(app, "GET", "/x", [(b"cookie", cookie)])
            cookie = set_cookie(answer) or cookie
        assert answer.status == 401


@async_test
async def test_logout_ends_the_session_and_clears_the_cookie(tmp_path: Path, mode: Any) -> None:
    async with running(tmp_path, mode) as (app, _, _):
        cookie = await login(app)
        other = await login(app)
        answer = await call(app, "POST", "/auth/logout", [(b"cookie", cookie)])
        assert answer.status == 204
        assert answer.header(b"set-cookie") == b"gateway_session=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax"
        assert (await call(app, "GET", "/x", [(b"cookie", cookie)])).status == 401
        assert (await call(app, "GET", "/x", [(b"cookie", other)])).status == 200  # only that session ended
        assert (await call(app, "POST", "/auth/logout", [(b"cookie", cookie)])).status == 204  # again: no error


@async_test
async def test_ending_a_subjects_sessions_in_the_store_refuses_them(tmp_path: Path, mode: Any) -> None:
    async with running(tmp_path, mode) as (app, _, _):
        assert app.auth is not None and app.auth.issuer is not None
        cookie = await login(app)
        issuer = app.auth.issuer
        listed = await issuer.store.sessions("demo", issuer.sessions.clock())  # type: ignore[union-attr]
        assert [session.kind for session in listed] == ["cookie"]
        ended = await issuer.store.end_sessions("demo", None, 0.0)
        assert ended == [listed[0].id]
        await issuer.revocations.poll()  # what every worker does twice a second
        assert (await call(app, "GET", "/x", [(b"cookie", cookie)])).status == 401


@async_test
async def test_a_bearer_token_comes_before_the_session(tmp_path: Path, mode: Any) -> None:
    async with running(tmp_path, mode) as (app, upstream, _):
        cookie = await login(app)
        keyed = await token(app, authorization=b"", extra=[(b"x-api-key", b"k" * 32)])
        bearer = b"Bearer " + keyed.json()["access_token"].encode()
        answer = await call(app, "GET", "/x", [(b"cookie", cookie), (b"authorization", bearer)])
        assert answer.status == 200 and upstream.seen[-1][1] == "svc"
        assert not any(name == b"cookie" for name, _ in upstream.seen[-1][0])  # still stripped


@async_test
async def test_login_needs_client_authentication(tmp_path: Path) -> None:
    async with running(tmp_path, ("embedded", "", "")) as (app, _, _):
        wrong = b"Basic " + base64.b64encode(b"demo:nope")
        answer = await call(app, "POST", "/auth/login", [(b"authorization", wrong)])
        assert (answer.status, answer.json()["error"]) == (401, "invalid_client")
        keyed = await call(app, "POST", "/auth/login", [(b"x-api-key", b"k" * 32)])
        assert keyed.status == 200 and keyed.json()["subject"] == "svc"


def test_take_cookie() -> None:
    headers = [(b"host", b"a"), (b"cookie", b"a=1; s=v; b=2"), (b"cookie", b"s=w"), (b"cookie", b"c=3")]
    assert take_cookie(headers, b"s=") == (b"v", [(b"host", b"a"), (b"cookie", b"a=1; b=2"), (b"cookie", b"c=3")])
    assert take_cookie([(b"cookie", b'ss=1; s="q"')], b"s=") == (b"q", [(b"cookie", b"ss=1")])
    assert take_cookie([(b"cookie", b"x=1")], b"s=") == (None, [(b"cookie", b"x=1")])


@async_test
async def test_the_store_failing_during_a_session_check_is_503(tmp_path: Path) -> None:
    document = issuer_document(tmp_path, routes=ROUTES, sessions={}, redis_prefix="test:auth:down:")
    document["server"]["redis_url"] = "redis://127.0.0.1:1/0"  # nothing listens there
    app = Gateway(from_document(document))
    answer = await call(app, "GET", "/x", [(b"cookie", b"gateway_session=abc")])
    assert answer.status == 503 and answer.json()["message"] == "sessions cannot be checked now"
    app.close()
    await asyncio.sleep(0)


@async_test
async def test_embedded_sessions_keep_the_index_current_and_end_without_it(tmp_path: Path) -> None:
    from gateway.auth.store import COOKIE, SID, Session

    async with running(tmp_path, ("embedded", "", "")) as (app, _, clock):
        assert app.auth is not None and app.auth.issuer is not None
        issuer = app.auth.issuer
        sessions = issuer.sessions
        assert sessions is not None
        cookie = await login(app)
        clock.now += 120
        assert (await call(app, "GET", "/x", [(b"cookie", cookie)])).status == 200
        (listed,) = await issuer.store.sessions("demo", clock.now)
        assert listed.last_seen == clock.now  # renewed in the host's index too
        # a sealed cookie the index does not know (a wiped state dir) is still ended by logout
        orphan = Session("0rphan", "demo", COOKIE, "demo", clock.now, clock.now + 3600, clock.now)
        value = b"gateway_session=" + await sessions.seal(orphan, clock.now)
        assert (await call(app, "GET", "/x", [(b"cookie", value)])).status == 200
        assert (await call(app, "POST", "/auth/logout", [(b"cookie", value)])).status == 204
        _, revoked, _ = await issuer.store.revocations(None, clock.now)
        assert any(entry.kind == SID and entry.value == "0rphan" for entry in revoked)
        assert (await call(app, "GET", "/x", [(b"cookie", value)])).status == 401
