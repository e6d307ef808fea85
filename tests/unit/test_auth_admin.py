"""gateway.auth.admin: the issuer's admin endpoints on the admin app (no sockets), on a real store."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.admin.app import AdminApp
from gateway.auth import admin as auth_admin
from gateway.auth import keyset
from gateway.auth.store import COOKIE, JTI, REFRESH, SID, Revoked, Session
from gateway.loader import GatewayConfig, from_document
from tests.unit.helpers import async_test
from tests.unit.test_auth_support import issuer_document

NOW = time.time()


@pytest.fixture(autouse=True)
def fresh_now() -> None:
    """The suite may reach these tests minutes after import; times derived from NOW must stay current."""
    global NOW  # noqa: PLW0603 - the tests read the module's NOW
    NOW = time.time()


class FakeSupervisor:
    metrics: Any = None

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        return True, {"status": "ready"}


def admin_for(config: GatewayConfig) -> AdminApp:
    app = AdminApp(FakeSupervisor())  # type: ignore[arg-type]
    auth_admin.register(app, config)
    return app


async def call(app: AdminApp, method: str, path: str, body: bytes = b"") -> tuple[int, dict[bytes, bytes], Any]:
    sent: list[dict[str, Any]] = []
    path, _, query = path.partition("?")

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "query_string": query.encode(), "headers": []}
    await app(scope, receive, send)  # type: ignore[arg-type]
    return sent[0]["status"], dict(sent[0]["headers"]), orjson.loads(sent[1]["body"])


def issuer_config(tmp: Path, **issuer: Any) -> GatewayConfig:
    return from_document(issuer_document(tmp, issuer={"issuer": "https://gw.test/", **issuer}))


@async_test
async def test_without_an_issuer_there_are_no_endpoints_and_a_reload_that_drops_it_disables_them(
        tmp_path: Path) -> None:
    document = issuer_document(tmp_path)
    document["auth"] = {"issuers": {"idp": {"issuer": "https://idp.test/", "secret": "s" * 32}}}
    without = from_document(document)
    app = admin_for(without)
    assert app.find("/auth/keys") is None
    auth_admin.register(app, issuer_config(tmp_path))  # a reload adds the issuer
    assert app.find("/auth/keys") is not None
    auth_admin.register(app, without)  # and another removes it
    for method, path in (("GET", "/auth/keys"), ("POST", "/auth/keys/rotate"), ("GET", "/auth/sessions?subject=a"),
                         ("POST", "/auth/revoke")):
        status, _, body = await call(app, method, path)
        assert (status, body["error"]) == (404, "not_found"), path
        assert "no auth.issuer" in body["message"]


@async_test
async def test_keys_and_rotation(tmp_path: Path) -> None:
    app = admin_for(issuer_config(tmp_path, jwks_max_age="1s", rotation="1h"))
    try:
        status, _, keys = await call(app, "GET", "/auth/keys")
        assert status == 200 and keys["generation"] == 1
        assert [key["role"] for key in keys["keys"]] == ["next", "current"]
        assert b"PRIVATE" not in orjson.dumps(keys)
        status, headers, body = await call(app, "POST", "/auth/keys/rotate")
        assert (status, body["error"]) == (409, "next_key_too_young")  # published for less than 1s
        assert headers[b"retry-after"] in (b"1", b"2")
        status, _, forced = await call(app, "POST", "/auth/keys/rotate", b'{"force": true}')
        assert status == 200 and forced["generation"] == 2
        assert [key["role"] for key in forced["keys"]] == ["next", "current", "previous"]
        assert forced["keys"][1]["kid"] == keys["keys"][0]["kid"]  # the published next key signs now
        for bad in (b'{"force": "yes"}', b"[1]", b"{", b" " * 70_000):
            status, _, body = await call(app, "POST", "/auth/keys/rotate", bad)
            assert status in (400, 413) and body["error"] in ("bad_request", "payload_too_large")
        # the key file is what workers follow
        stored = keyset.loads((tmp_path / "state" / "issuer-keys.json").read_bytes())
        assert stored.generation == 2
    finally:
        await auth_admin.close_stores()


@async_test
async def test_a_subjects_sessions_listed_and_ended(tmp_path: Path) -> None:
    config = issuer_config(tmp_path)
    app = admin_for(config)
    try:
        store = auth_admin.AuthAdmin(config.auth, None).store()
        await store.add_session(Session("s1", "alice", REFRESH, "demo", NOW, NOW + 600, NOW), "r1", NOW + 600)
        await store.add_session(Session("s2", "alice", COOKIE, "demo", NOW + 1, NOW + 900, NOW + 1), None, 0)
        await store.add_session(Session("s3", "bob", COOKIE, "demo", NOW, NOW + 900, NOW), None, 0)
        status, _, listed = await call(app, "GET", "/auth/sessions?subject=alice")
        assert status == 200 and listed["subject"] == "alice"
        assert [(s["id"], s["kind"]) for s in listed["sessions"]] == [("s1", "refresh"), ("s2", "cookie")]
        status, _, ended = await call(app, "DELETE", "/auth/sessions?subject=alice&id=s2")
        assert (status, ended["ended"]) == (200, ["s2"])
        status, _, ended = await call(app, "DELETE", "/auth/sessions?subject=alice")
        assert ended["ended"] == ["s1"]
        status, _, ended = await call(app, "DELETE", "/auth/sessions?id=s3")
        assert ended == {"subject": None, "ended": ["s3"]}
        _, revoked, _ = await store.revocations(None, NOW)
        assert {entry.value for entry in revoked if entry.kind == SID} == {"s1", "s2", "s3"}
        for path in ("/auth/sessions", "/auth/sessions?subject=a&subject=b"):
            status, _, _ = await call(app, "GET", path)
            assert status == 400
        status, _, _ = await call(app, "DELETE", "/auth/sessions")
        assert status == 400
    finally:
        await auth_admin.close_stores()


@async_test
async def test_revoking_a_token_by_jti(tmp_path: Path) -> None:
    config = issuer_config(tmp_path, access_ttl="2m", leeway="10s")
    app = admin_for(config)
    try:
        status, _, body = await call(app, "POST", "/auth/revoke", b'{"jti": "abc"}')
        assert status == 200 and body["revoked"] == "abc"
        assert NOW + 129 < body["until"] < time.time() + 131  # access_ttl + leeway: every token of ours is dead by then
        status, _, body = await call(app, "POST", "/auth/revoke", b'{"jti": "def", "expires_at": 4000000000}')
        assert body["until"] == 4000000010
        store = auth_admin.AuthAdmin(config.auth, None).store()
        _, revoked, _ = await store.revocations(None, NOW)
        assert Revoked(JTI, "def", 4000000010) in revoked
        for bad in (b"{}", b'{"jti": ""}', b'{"jti": 5}', b'{"jti": "' + b"x" * 300 + b'"}',
                    b'{"jti": "a", "expires_at": "soon"}', b'{"jti": "a", "expires_at": true}'):
            status, _, body = await call(app, "POST", "/auth/revoke", bad)
            assert (status, body["error"]) == (400, "bad_request"), bad
    finally:
        await auth_admin.close_stores()


@async_test
async def test_a_store_that_fails_is_503(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    document = issuer_document(tmp_path, state_dir=str(tmp_path / "file" / "state"))
    app = admin_for(from_document(document))
    try:
        status, _, body = await call(app, "POST", "/auth/revoke", b'{"jti": "abc"}')
        assert (status, body["error"]) == (503, "store_unavailable")
    finally:
        await auth_admin.close_stores()
