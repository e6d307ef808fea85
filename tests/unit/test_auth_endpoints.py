"""The token issuer's endpoints through the app (no sockets): the token endpoint (RFC 6749), the JWKS, logout;
and the issued tokens verified by the gateway's own verifier."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import jwt
import pytest

from gateway.app import Gateway
from gateway.auth import keyset
from gateway.auth.keys import keys_from_jwks
from gateway.auth.verify import TokenError
from gateway.loader import from_document
from tests.unit.helpers import async_test
from tests.unit.test_auth_support import BASIC, FORM, SECRET, call, issuer_document, token

KEYS = keyset.bootstrap(1.0, keyset.generate_key(1.0), keyset.generate_key(1.0))  # made once: RSA is slow


@asynccontextmanager
async def running(tmp: Path, **auth: Any) -> AsyncIterator[Gateway]:
    """A started app whose key file already holds KEYS."""
    document = issuer_document(tmp, **auth)
    (tmp / "state").mkdir(exist_ok=True)
    (tmp / "state" / "issuer-keys.json").write_bytes(keyset.dumps(KEYS))
    app = Gateway(from_document(document))
    assert app.auth is not None and app.auth.issuer is not None
    app.auth.start()
    try:
        yield app
    finally:
        app.close()
        issuer = app.auth.issuer
        if issuer.closing is not None:
            await issuer.closing


def claims_of(access_token: str) -> dict[str, Any]:
    return dict(jwt.decode(access_token, options={"verify_signature": False}))


@async_test
async def test_client_credentials_with_basic_authentication(tmp_path: Path) -> None:
    async with running(tmp_path) as app:
        answer = await token(app)
        assert answer.status == 200, answer.body
        assert answer.header(b"cache-control") == b"no-store" and answer.header(b"pragma") == b"no-cache"
        body = answer.json()
        assert sorted(body) == ["access_token", "expires_in", "refresh_token", "scope", "token_type"]
        assert (body["token_type"], body["expires_in"], body["scope"]) == ("Bearer", 300, "read write")
        assert len(body["refresh_token"]) == 43  # 256 bits, base64url
        header = jwt.get_unverified_header(body["access_token"])
        assert header == {"alg": "RS256", "kid": KEYS.current.kid, "typ": "at+jwt"}
        claims = claims_of(body["access_token"])
        assert {k: claims[k] for k in ("iss", "sub", "aud", "client_id", "scope", "role")} == {
            "iss": "https://gw.test/", "sub": "demo", "aud": "api", "client_id": "demo", "scope": "read write",
            "role": "admin"}
        assert claims["exp"] - claims["iat"] == 300 and claims["jti"] and claims["sid"]
        assert app.auth is not None
        verified = await app.auth.verifier.verify(body["access_token"].encode())
        assert (verified.issuer, verified.subject) == ("gateway", "demo")


@async_test
async def test_other_client_authentication_methods(tmp_path: Path) -> None:
    async with running(tmp_path) as app:
        in_body = await token(app, b"grant_type=client_credentials&client_id=demo&client_secret=" + SECRET.encode(),
                              authorization=b"")
        assert in_body.status == 200
        keyed = await token(app, authorization=b"", extra=[(b"x-api-key", b"k" * 32)])
        assert keyed.status == 200
        assert claims_of(keyed.json()["access_token"])["sub"] == "svc"
        # RFC 6749 section 2.3.1 form-encodes inside Basic; curl -u sends as is: both are accepted
        encoded = b"Basic " + base64.b64encode(b"demo:demo%2Dsecret")
        assert (await token(app, authorization=encoded)).status == 200
        spaced = b"Basic " + base64.b64encode(b"demo:demo+secret")  # "+" is a space in form encoding
        assert (await token(app, authorization=spaced)).status == 401
        same_id = await token(app, b"grant_type=client_credentials&client_id=demo")
        assert same_id.status == 200


@pytest.mark.parametrize(("authorization", "extra", "form"), [
    (b"Basic " + base64.b64encode(b"demo:wrong"), [], b""),
    (b"Basic " + base64.b64encode(b"nobody:demo-secret"), [], b""),
    (b"Basic " + base64.b64encode(b"keyed:"), [], b""),  # a consumer with an API key only
    (b"Basic !!!", [], b""),
    (b"Basic " + base64.b64encode(b"no-colon"), [], b""),
    (b"", [], b""),
    (b"Bearer abc", [], b""),
    (b"", [(b"x-api-key", b"wrong")], b""),
    (b"", [], b"&client_id=demo&client_secret=wrong"),
])
def test_a_failed_client_authentication_is_401_invalid_client(tmp_path: Path, authorization: bytes,
                                                                extra: list[tuple[bytes, bytes]], form: bytes) -> None:
    async def check() -> None:
        async with running(tmp_path) as app:
            answer = await token(app, b"grant_type=client_credentials" + form, authorization=authorization,
                                 extra=extra)
            assert answer.status == 401
            assert answer.json() == {"error": "invalid_client", "error_description": "client authentication failed"}
            assert answer.header(b"www-authenticate") == b'Basic realm="gateway", charset="UTF-8"'
            assert answer.header(b"cache-control") == b"no-store"

    asyncio.run(check())


@pytest.mark.parametrize(("form", "headers", "error", "description"), [
    (b"grant_type=client_credentials", [(b"content-type", b"application/json")], "invalid_request",
     "application/x-www-form-urlencoded"),
    (b"grant_type=client_credentials&grant_type=refresh_token", [FORM], "invalid_request", "more than once"),
    (b"scope=read", [FORM], "invalid_request", "grant_type is missing"),
    (b"grant_type=", [FORM], "invalid_request", "grant_type is missing"),  # empty counts as absent
    (b"grant_type=password&username=a&password=b", [FORM], "unsupported_grant_type", "client_credentials"),
    (b"grant_type=refresh_token", [FORM], "invalid_request", "refresh_token is missing"),
    (b"grant_type=client_credentials&scope=admin", [FORM], "invalid_scope", "not allowed"),
    (b"grant_type=client_credentials&scope=read%20%20write", [FORM], "invalid_scope", "not allowed"),
    (b"grant_type=client_credentials\xff", [FORM], "invalid_request", "UTF-8"),
    (b"grant_type=client_credentials&client_secret=x", [FORM], "invalid_request", "one client authentication"),
    (b"grant_type=client_credentials&client_id=other", [FORM], "invalid_request", "client_id differs"),
    (b"x=" + b"a" * 20000, [FORM], "invalid_request", "larger than"),
])
def test_malformed_token_requests_are_400(tmp_path: Path, form: bytes, headers: list[tuple[bytes, bytes]],
                                          error: str, description: str) -> None:
    async def check() -> None:
        async with running(tmp_path) as app:
            answer = await call(app, "POST", "/auth/token", [*headers, (b"authorization", BASIC)], form)
            assert answer.status == 400, answer.body
            assert answer.json()["error"] == error and description in answer.json()["error_description"]

    asyncio.run(check())


@async_test
async def test_two_authorization_headers_are_400(tmp_path: Path) -> None:
    async with running(tmp_path) as app:
        answer = await token(app, extra=[(b"authorization", BASIC)])
        assert (answer.status, answer.json()["error"]) == (400, "invalid_request")


@async_test
async def test_a_body_in_several_parts_and_a_narrower_scope(tmp_path: Path) -> None:
    async with running(tmp_path) as app:
        answer = await call(app, "POST", "/auth/token", [FORM, (b"authorization", BASIC)],
                            chunks=[b"grant_type=client_", b"credentials&scope=read"])
        assert answer.status == 200 and answer.json()["scope"] == "read"
        assert claims_of(answer.json()["access_token"])["scope"] == "read"
        # refreshing never widens the family's scope: what it holds of the request is granted, and said
        refreshed = await token(app, b"grant_type=refresh_token&scope=read%20write&refresh_token="
                                + answer.json()["refresh_token"].encode())
        assert refreshed.status == 200 and refreshed.json()["scope"] == "read"
        # a scope the client may never have is refused before the refresh token is used up
        refused = await token(app, b"grant_type=refresh_token&scope=admin&refresh_token="
                              + refreshed.json()["refresh_token"].encode())
        assert (refused.status, refused.json()["error"]) == (400, "invalid_scope")
        form = b"grant_type=refresh_token&refresh_token=" + refreshed.json()["refresh_token"].encode()
        still = await token(app, form)
        assert still.status == 200 and still.json()["scope"] == "read"


@async_test
async def test_the_refresh_grant_rotates_and_reuse_revokes_the_family(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with running(tmp_path) as app:
        assert app.auth is not None
        first = (await token(app)).json()
        second = await token(app, b"grant_type=refresh_token&refresh_token=" + first["refresh_token"].encode())
        assert second.status == 200
        second_body = second.json()
        assert second_body["refresh_token"] != first["refresh_token"]
        assert claims_of(second_body["access_token"])["sid"] == claims_of(first["access_token"])["sid"]
        form = b"grant_type=refresh_token&refresh_token=" + second_body["refresh_token"].encode()
        other_client = await token(app, form, authorization=b"", extra=[(b"x-api-key", b"k" * 32)])
        assert (other_client.status, other_client.json()["error"]) == (400, "invalid_grant")
        reused = await token(app, b"grant_type=refresh_token&refresh_token=" + first["refresh_token"].encode())
        assert (reused.status, reused.json()["error"]) == (400, "invalid_grant")
        # the newest refresh token of the family is dead too, and so are its access tokens (after the poll)
        newest = await token(app, b"grant_type=refresh_token&refresh_token=" + second_body["refresh_token"].encode())
        assert newest.status == 400
        await app.auth.issuer.revocations.poll()  # type: ignore[union-attr]
        for access in (first["access_token"], second_body["access_token"]):
            with pytest.raises(TokenError, match="token revoked"):
                app.auth.verifier.cached(access.encode()) or await app.auth.verifier.verify(access.encode())
        # a token of another family is untouched
        assert (await app.auth.verifier.verify((await token(app)).json()["access_token"].encode())).subject == "demo"
    logged = caplog.text
    assert "a used refresh token of client demo was presented again" in logged
    for secret in (first["refresh_token"], second_body["refresh_token"], first["access_token"], SECRET):
        assert secret not in logged


@async_test
async def test_refresh_tokens_can_be_turned_off(tmp_path: Path) -> None:
    consumers = {"demo": {"secret": SECRET, "refresh_tokens": False}}
    async with running(tmp_path, consumers=consumers) as app:
        body = (await token(app)).json()
        assert "refresh_token" not in body and "scope" not in body
        assert "sid" not in claims_of(body["access_token"])


@async_test
async def test_the_jwks(tmp_path: Path) -> None:
    async with running(tmp_path) as app:
        answer = await call(app, "GET", "/.well-known/jwks.json")
        assert answer.status == 200
        assert answer.header(b"cache-control") == b"public, max-age=300"
        keys, skipped = keys_from_jwks(answer.json(), ["RS256"])
        assert not skipped and sorted(key.kid for key in keys if key.kid) == sorted(k.kid for k in KEYS.keys)
        head = await call(app, "HEAD", "/.well-known/jwks.json")
        assert head.status == 200 and head.body == b"" and head.header(b"content-length") == b"%d" % len(answer.body)
        posted = await call(app, "POST", "/.well-known/jwks.json")
        assert posted.status == 401  # not the built-in route (GET only): the catch-all route, which needs a token


@async_test
async def test_logout_ends_a_refresh_family_and_revokes_a_bearer_token(tmp_path: Path) -> None:
    async with running(tmp_path) as app:
        assert app.auth is not None
        verifier = app.auth.verifier
        first = (await token(app)).json()
        answer = await call(app, "POST", "/auth/logout", [FORM], b"refresh_token=" + first["refresh_token"].encode())
        assert answer.status == 204 and answer.body == b""
        with pytest.raises(TokenError, match="token revoked"):  # its family's access tokens, in this worker at once
            await verifier.verify(first["access_token"].encode())
        again = await token(app, b"grant_type=refresh_token&refresh_token=" + first["refresh_token"].encode())
        assert again.status == 400
        second = (await token(app)).json()
        await verifier.verify(second["access_token"].encode())  # cached now
        bearer = [(b"authorization", b"Bearer " + second["access_token"].encode())]
        assert (await call(app, "POST", "/auth/logout", bearer)).status == 204
        with pytest.raises(TokenError, match="token revoked"):
            verifier.cached(second["access_token"].encode())
        refused = await token(app, b"grant_type=refresh_token&refresh_token=" + second["refresh_token"].encode())
        assert refused.status == 400  # the token's session ended with it
        # logging out again, or with nothing, or with a token that fails, is no error
        assert (await call(app, "POST", "/auth/logout", bearer)).status == 204
        assert (await call(app, "POST", "/auth/logout")).status == 204
        assert (await call(app, "POST", "/auth/logout", [(b"authorization", b"Bearer x.y.z")])).status == 204
        assert (await call(app, "POST", "/auth/logout", [], b"refresh_token=x")).status == 400  # not a form


@async_test
async def test_tokens_issued_are_accepted_on_routes_and_forward_the_subject(tmp_path: Path) -> None:
    async with running(tmp_path, routes=None) as app:
        body = (await token(app)).json()
        no_token = await call(app, "GET", "/x")
        assert no_token.status == 401
        with_token = await call(app, "GET", "/x", [(b"authorization", b"Bearer " + body["access_token"].encode())])
        assert with_token.status == 502  # past auth: the test upstream does not exist


@async_test
async def test_the_store_unavailable_is_503_temporarily_unavailable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    document = issuer_document(tmp_path, state_dir=str(tmp_path / "file" / "state"), sessions={})
    app = Gateway(from_document(document))
    assert app.auth is not None
    app.auth.start()
    try:
        answer = await token(app)
        assert (answer.status, answer.json()["error"]) == (503, "temporarily_unavailable")
        jwks = await call(app, "GET", "/.well-known/jwks.json")
        assert jwks.status == 503
        login = await call(app, "POST", "/auth/login", [(b"authorization", BASIC)])
        assert (login.status, login.json()["error"]) == (503, "temporarily_unavailable")
        logout = await call(app, "POST", "/auth/logout", [FORM], b"refresh_token=abc")
        assert (logout.status, logout.json()["error"]) == (503, "temporarily_unavailable")
    finally:
        app.close()
