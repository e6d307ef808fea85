"""Smoke tests of the test providers themselves (tests/oidc/providers.py): each starts, serves discovery,
issues client-credentials tokens, introspects them, runs the code flow with PKCE for the scripted browser
(and refuses it without the verifier), and rotates its keys."""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Callable
from urllib.parse import urlencode

import httpx
import jwt
import pytest

from tests.oidc.browser import Browser, query
from tests.oidc.providers import DOT, PANVA, RESOURCE, USER, Client, Provider

pytestmark = pytest.mark.integration


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def test_discovery(oidc_provider: Provider) -> None:
    metadata = oidc_provider.metadata()
    assert metadata["issuer"] == oidc_provider.issuer
    assert "S256" in metadata["code_challenge_methods_supported"]
    for name in ("authorization_endpoint", "token_endpoint", "jwks_uri", "introspection_endpoint",
                 "end_session_endpoint", "revocation_endpoint"):
        assert metadata[name].startswith(oidc_provider.base_url), name
    assert [key["kid"] for key in oidc_provider.jwks()["keys"]] == [oidc_provider.signing_kid]


def test_rfc8414_metadata_of_dot(dot_provider: Provider) -> None:
    response = httpx.get(dot_provider.base_url + "/.well-known/oauth-authorization-server/o", timeout=10)
    assert response.status_code == 200
    assert response.json()["issuer"] == dot_provider.issuer


def test_client_credentials_and_introspection(oidc_provider: Provider) -> None:
    token = oidc_provider.client_credentials(scope="orders:read")
    assert token["token_type"].lower() == "bearer"
    assert token["scope"] == "orders:read"
    info = oidc_provider.introspect(token["access_token"])
    assert info["active"] is True
    assert info["client_id"] == "machine"
    assert info["scope"] == "orders:read"
    oidc_provider.revoke(token["access_token"], client="machine")
    assert oidc_provider.introspect(token["access_token"])["active"] is False
    assert oidc_provider.introspect("not-a-token")["active"] is False
    assert oidc_provider.token(Client("machine", "wrong"), grant_type="client_credentials").status_code == 401


def test_jwt_access_token_for_the_resource(panva_provider: Provider) -> None:
    token = panva_provider.client_credentials(scope="orders:read orders:write", resource=RESOURCE)
    keys = jwt.PyJWKClient(panva_provider.endpoint("jwks_uri"))
    key = keys.get_signing_key_from_jwt(token["access_token"])
    claims = jwt.decode(token["access_token"], key.key, algorithms=["RS256"], audience=RESOURCE,
                        issuer=panva_provider.issuer)
    assert claims["client_id"] == "machine"
    assert claims["scope"] == "orders:read orders:write"
    assert jwt.get_unverified_header(token["access_token"])["kid"] == panva_provider.signing_kid


def authorize_url(provider: Provider, client_id: str, redirect_uri: str, challenge: str | None, *, state: str,
                  nonce: str) -> str:
    params = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri,
              "scope": "openid profile email", "state": state, "nonce": nonce}
    if challenge is not None:
        params |= {"code_challenge": challenge, "code_challenge_method": "S256"}
    return provider.endpoint("authorization_endpoint") + "?" + urlencode(params)


def test_code_flow_with_pkce_and_refresh(oidc_provider: Provider) -> None:
    redirect = f"http://127.0.0.1:9/cb/{secrets.token_hex(4)}"
    client = oidc_provider.register_client([redirect], ["http://127.0.0.1:9/bye"])
    verifier, state, nonce = secrets.token_urlsafe(48), secrets.token_urlsafe(8), secrets.token_urlsafe(8)
    with Browser() as browser:
        url = authorize_url(oidc_provider, client.client_id, redirect, s256(verifier), state=state, nonce=nonce)
        hop = browser.login(url, stop=redirect)
        params = query(hop.headers["location"])
        assert params["state"] == state
        form = {"grant_type": "authorization_code", "code": params["code"], "redirect_uri": redirect}
        refused = oidc_provider.token(client, **form, code_verifier=secrets.token_urlsafe(48))
        assert refused.status_code == 400
        assert refused.json()["error"] == "invalid_grant"
    # a refused code is spent at oidc-provider; run the flow again (the provider session logs in at once)
    with Browser() as browser:
        url = authorize_url(oidc_provider, client.client_id, redirect, s256(verifier), state=state, nonce=nonce)
        hop = browser.login(url, stop=redirect)
        code = query(hop.headers["location"])["code"]
    tokens = oidc_provider.token(client, grant_type="authorization_code", code=code, redirect_uri=redirect,
                                 code_verifier=verifier)
    assert tokens.status_code == 200, tokens.text
    body = tokens.json()
    claims = jwt.decode(body["id_token"], options={"verify_signature": False})
    assert claims["nonce"] == nonce
    assert claims["aud"] == client.client_id
    assert claims["sub"] == USER
    refreshed = oidc_provider.token(client, grant_type="refresh_token", refresh_token=body["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    assert refreshed.json()["refresh_token"] != body["refresh_token"]  # rotated


def test_authorization_without_pkce_is_refused(oidc_provider: Provider) -> None:
    redirect = f"http://127.0.0.1:9/cb/{secrets.token_hex(4)}"
    client = oidc_provider.register_client([redirect])
    with Browser() as browser:
        url = authorize_url(oidc_provider, client.client_id, redirect, None, state="s", nonce="n")
        hop = browser.login(url, stop=redirect)
        assert hop.is_redirect, (hop.status_code, hop.text[:500])  # the error goes back to the client
        params = query(hop.headers["location"])
        assert params["error"] == "invalid_request"
        assert "code" not in params


@pytest.mark.parametrize("kind", [PANVA, DOT])
def test_key_rotation(start_oidc_provider: Callable[..., Provider], kind: str) -> None:
    provider = start_oidc_provider(kind)
    old = provider.signing_kid
    new = provider.rotate_keys().kid
    assert [key["kid"] for key in provider.jwks()["keys"]] == [new, old]
    token = provider.client_credentials()
    assert provider.introspect(token["access_token"])["active"] is True
    if provider.resource is not None:
        signed = provider.client_credentials(resource=provider.resource)["access_token"]
        assert jwt.get_unverified_header(signed)["kid"] == new
