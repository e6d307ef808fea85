"""The auth stage with a route's OAuth parts (gateway/auth/stage.py + oidc/runtime.py RouteOidc): opaque
tokens introspected, scopes per method, the client-credentials token relayed; the wiring in
gateway/auth/runtime.py; and the admin listing (oidc/providers_admin.py)."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.auth.errors import InsufficientScope, InvalidToken
from gateway.auth.oidc import providers_admin
from gateway.auth.oidc.client_credentials import ClientCredentials
from gateway.auth.oidc.discovery import ProviderMetadata, http_client
from gateway.auth.oidc.introspection import Introspector
from gateway.auth.oidc.runtime import RouteOidc
from gateway.auth.oidc.scopes import ScopeCheck, ScopeRules
from gateway.auth.policy import RoutePolicy
from gateway.auth.runtime import Auth
from gateway.auth.stage import AuthStage
from gateway.exchange import Exchange
from gateway.loader import load
from tests.unit.test_jwt_stage import TOKEN, Upstream
from tests.unit.test_jwt_support import verifier
from tests.unit.test_oidc_support import OAuthServer, provider


@pytest.fixture
def server() -> Iterator[OAuthServer]:
    server = OAuthServer()
    server.metadata()
    server.routes["/idp/introspect"] = lambda form: (200, orjson.dumps(
        {"active": True, "sub": "opaque-user", "scope": "orders:read"} if form["token"] == "opaque" else
        {"active": False}))
    server.json("/idp/token", {"access_token": "gateway-token", "expires_in": 300})
    yield server
    server.close()


ENTER: list[bool] = [False]


@pytest.fixture(autouse=True, params=["call", "enter"])
def stage_entry(request: pytest.FixtureRequest) -> Any:
    """Each test runs the stage awaited and through ``enter`` (the fast lane), which must decide alike:
    introspection, scopes and relay (``enter`` returns False for what must wait, then it is awaited)."""
    ENTER[0] = request.param == "enter"
    yield
    ENTER[0] = False


async def call(stage: AuthStage, method: str, headers: list[tuple[bytes, bytes]]) -> Upstream:
    upstream = stage.next = Upstream()
    scope = {"headers": headers, "query_string": b"", "method": method}
    ex = Exchange(scope, None, None, 0.0)  # type: ignore[arg-type]
    if ENTER[0] and stage.enter(ex):
        await upstream(ex)
        return upstream
    await stage(ex)
    return upstream


def test_introspection_scopes_and_relay(server: OAuthServer) -> None:
    spec = provider(server)

    async def main() -> None:
        client = http_client(spec)
        metadata = ProviderMetadata(spec, client)
        oidc = RouteOidc(Introspector(spec, metadata, client),
                         ScopeCheck(ScopeRules(scopes=("orders:read",), methods=(("POST", ("orders:write",)),))),
                         ClientCredentials(spec, metadata, client))
        stage = AuthStage(RoutePolicy(), verifier(), oidc=oidc)
        seen = await call(stage, "GET", [(b"authorization", b"Bearer opaque"), (b"x-a", b"1")])
        assert seen.subject == "opaque-user"
        assert seen.headers == [(b"x-a", b"1"), (b"authorization", b"Bearer gateway-token")]
        with pytest.raises(InsufficientScope):
            await call(stage, "POST", [(b"authorization", b"Bearer opaque")])
        with pytest.raises(InvalidToken) as info:
            await call(stage, "GET", [(b"authorization", b"Bearer unknown")])
        assert info.value.message == "token inactive" and info.value.auth_reason == "inactive"
        with pytest.raises(InsufficientScope):  # a JWT goes to the verifier, then the scopes apply
            await call(stage, "GET", [(b"authorization", b"Bearer " + TOKEN)])
        plain = AuthStage(RoutePolicy(), verifier(), oidc=RouteOidc(oidc.introspector, None, None))
        assert (await call(plain, "GET", [(b"authorization", b"Bearer " + TOKEN)])).subject == "alice"
        optional = AuthStage(RoutePolicy(required=False), verifier(), oidc=RouteOidc(None, None, oidc.credentials))
        anonymous = await call(optional, "GET", [])
        assert anonymous.headers == [(b"authorization", b"Bearer gateway-token")]
        await client.aclose()

    asyncio.run(main())


def test_the_runtime_builds_route_parts_and_closes(server: OAuthServer, tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(textwrap.dedent(f"""\
        auth:
          providers:
            corp:
              issuer: {server.url}/idp
              client_id: gw
              client_secret: gw-secret
              introspection: true
              client_credentials: {{scopes: [a]}}
        upstreams:
          api: http://127.0.0.1:9001
        routes:
          - {{prefix: /, upstream: api, auth: {{provider: corp, scopes: [orders:read], relay: client_credentials}}}}
          - {{prefix: /plain, upstream: api, auth: {{issuers: [corp], mode: optional}}}}
        """))
    config = load({}, {"config": str(path)})
    assert config.auth is not None

    async def main() -> None:
        auth = Auth(config.auth)
        assert auth.oidc is not None
        corp = auth.oidc.providers["corp"]
        assert auth.sources["corp"] is corp.keys
        routes = [route.auth for route in config.routes]
        assert routes[0] is not None and routes[1] is not None
        stage = auth.stage(routes[0])
        assert stage.introspector is corp.introspector and stage.relay is corp.credentials
        assert stage.scopes is not None
        seen = await call(stage, "GET", [(b"authorization", b"Bearer opaque")])
        assert seen.headers == [(b"authorization", b"Bearer gateway-token")]
        plain = auth.stage(routes[1])
        assert plain.introspector is corp.introspector and plain.relay is None and plain.scopes is None
        auth.start()
        await asyncio.sleep(0)
        auth.close()
        assert corp.closing is not None
        await corp.closing

    asyncio.run(main())


class FakeAdmin:
    def __init__(self) -> None:
        self.paths: dict[str, Any] = {}

    def add(self, path: str, handler: Any) -> None:
        self.paths[path] = handler

    def find(self, path: str) -> Any:
        return self.paths.get(path)


def test_the_admin_listing(server: OAuthServer, tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    base = "upstreams:\n  api: http://127.0.0.1:9001\nroutes:\n  - {prefix: /, upstream: api}\n"
    path.write_text(f"auth:\n  providers:\n    corp: {{issuer: {server.url}/idp, client_id: gw, "
                    "client_secret: gw-secret, introspection: true}\n" + base)
    with_providers = load({}, {"config": str(path)})
    path.write_text(base)
    without = load({}, {"config": str(path)})
    admin = FakeAdmin()
    providers_admin.register(admin, without)  # type: ignore[arg-type]
    assert not admin.paths  # nothing configured, nothing served

    async def get(handler: Any) -> dict[str, Any]:
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await handler({"method": "GET"}, None, send)
        assert sent[0]["status"] == 200
        return dict(orjson.loads(sent[1]["body"]))

    providers_admin.register(admin, with_providers)  # type: ignore[arg-type]  # no loop: starts on request

    async def main() -> None:
        handler = admin.paths["/auth/providers"]
        listing = await get(handler)
        assert set(listing["providers"]) == {"corp"}
        for _ in range(100):
            listing = await get(handler)
            if listing["providers"]["corp"]["reachable"]:
                break
            await asyncio.sleep(0.02)
        corp = listing["providers"]["corp"]
        assert corp["reachable"] and corp["client_id"] == "gw" and "introspection" not in corp
        assert "gw-secret" not in orjson.dumps(listing).decode()
        providers_admin.register(admin, without)  # type: ignore[arg-type]  # a reload that drops them
        assert await get(admin.paths["/auth/providers"]) == {"providers": {}}
        providers_admin.register(admin, with_providers)  # type: ignore[arg-type]  # a loop: started at once
        monitor = providers_admin._monitors[id(admin)]
        assert monitor.started
        monitor.close()
        await asyncio.sleep(0.05)
        providers_admin._monitors.pop(id(admin))

    asyncio.run(main())
