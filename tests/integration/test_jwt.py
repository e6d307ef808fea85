"""JWT verification in a real ``gateway run``: a real JWKS server on loopback (threads of this process), the
test upstream echoing what it received; key rotation under traffic, a JWKS outage, a flood of random kids."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.conftest import ROOT, run_cli, wait_until
from tests.unit.test_jwt_support import EC_KEY, RSA_KEY, RSA_KEY_2, JwksServer, jwk, mint
from tests.unit.test_jwt_support import pem as jwk_pem

pytestmark = pytest.mark.integration


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    server = JwksServer()
    server.publish(jwk(RSA_KEY, "k1"), jwk(EC_KEY, "e1"))
    yield server
    server.close()


def config(jwks: JwksServer, upstream_port: int, issuer: str = "") -> str:
    return f"""
server:
  access_log: false
auth:
  issuers:
    idp:
      issuer: https://idp.test/
      audiences: [api]
      algorithms: [RS256, ES256]
      jwks_url: {jwks.url}
{issuer}
upstreams:
  app: http://127.0.0.1:{upstream_port}
routes:
  - prefix: /open
    strip_prefix: true
    upstream: app
  - prefix: /api
    strip_prefix: true
    upstream: app
    auth:
      mode: required
      forward: {{sub: X-User-Id, email: X-User-Email}}
  - prefix: /admin
    strip_prefix: true
    upstream: app
    auth:
      claims: {{role: admin}}
  - prefix: /feed
    strip_prefix: true
    upstream: app
    auth:
      mode: optional
      token: {{cookie: access_token}}
      forward: {{sub: X-User-Id}}
"""


def confusion_token() -> bytes:
    """HS256 signed with the issuer's RSA public key (PEM) as the HMAC secret."""
    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    payload = {"iss": "https://idp.test/", "aud": "api", "sub": "mallory", "exp": int(time.time()) + 600}
    signing_input = b64(json.dumps({"alg": "HS256", "kid": "k1"}).encode()) + b"." + \
        b64(json.dumps(payload).encode())
    secret = jwk_pem(RSA_KEY)
    return signing_input + b"." + b64(hmac.new(secret, signing_input, hashlib.sha256).digest())


def echo_headers(response: Any) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name, value in response.json()["headers"]:
        found.setdefault(name, []).append(value)
    return found


def test_tokens_through_the_gateway(start_gateway, upstream_port, jwks):
    gw = start_gateway(config(jwks, upstream_port), workers=2)
    token = mint(RSA_KEY, kid="k1", email="alice@example.com")

    missing = gw.get("/api/echo")
    assert missing.status == 401
    assert missing.headers["WWW-Authenticate"] == 'Bearer realm="gateway"'
    assert missing.json()["error"] == "unauthorized" and missing.json()["request_id"]

    ok = gw.get("/api/echo", headers={"Authorization": f"Bearer {token.decode()}", "X-User-Id": "root",
                                      "X-User-Email": "root@evil"})
    assert ok.status == 200
    seen = echo_headers(ok)
    assert seen["x-user-id"] == ["alice"]
    assert seen["x-user-email"] == ["alice@example.com"]
    assert "authorization" not in seen

    es = gw.get("/api/echo", headers={"Authorization": f"Bearer {mint(EC_KEY, 'ES256', kid='e1').decode()}"})
    assert es.status == 200

    expired = mint(RSA_KEY, kid="k1", exp=int(time.time()) - 3600)
    refused = gw.get("/api/echo", headers={"Authorization": f"Bearer {expired.decode()}"})
    assert refused.status == 401
    assert refused.headers["WWW-Authenticate"] == \
        'Bearer realm="gateway", error="invalid_token", error_description="token expired"'
    assert refused.json()["message"] == "token expired"

    forbidden = gw.get("/admin/echo", headers={"Authorization": f"Bearer {token.decode()}"})
    assert forbidden.status == 403
    assert forbidden.json()["error"] == "insufficient_scope"
    admin = mint(RSA_KEY, kid="k1", role="admin")
    assert gw.get("/admin/echo", headers={"Authorization": f"Bearer {admin.decode()}"}).status == 200

    anonymous = gw.get("/feed/echo", headers={"X-User-Id": "root"})
    assert anonymous.status == 200 and "x-user-id" not in echo_headers(anonymous)
    cookie = gw.get("/feed/echo", headers={"Cookie": f"theme=dark; access_token={token.decode()}"})
    assert echo_headers(cookie)["x-user-id"] == ["alice"]

    open_route = gw.get("/open/echo", headers={"Authorization": "Bearer anything"})
    assert echo_headers(open_route)["authorization"] == ["Bearer anything"]  # no auth stage there

    confused = gw.get("/api/echo", headers={"Authorization": f"Bearer {confusion_token().decode()}"})
    assert (confused.status, confused.json()["message"]) == (401, "algorithm not allowed")

    def failures() -> dict[tuple[str, str], float]:
        from prometheus_client.parser import text_string_to_metric_families

        found = {}
        for family in text_string_to_metric_families(gw.admin("/metrics").body.decode()):
            for sample in family.samples:
                if sample.name == "gateway_auth_failures_total":
                    found[(sample.labels["route"], sample.labels["reason"])] = sample.value
        return found

    expected = {("prefix:/api", "missing_token"): 1, ("prefix:/api", "expired"): 1,
                ("prefix:/admin", "insufficient_scope"): 1, ("prefix:/api", "algorithm"): 1}
    wait_until(lambda: failures() == expected, timeout=5)  # counted by route and reason, host-wide
    gw.stop()
    logs = gw.stderr
    assert token.decode() not in logs and expired.decode() not in logs


def traffic(port: int, sign: Any, seconds: float, threads: int = 4) -> Counter[int]:
    """Requests with fresh tokens (``sign()`` makes one) from several keep-alive clients; status counts."""
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine: Counter[int] = Counter()
        while time.monotonic() < end:
            conn.request("GET", "/api/echo", headers={"Authorization": f"Bearer {sign().decode()}"})
            response = conn.getresponse()
            response.read()
            mine[response.status] += 1
        conn.close()
        with lock:
            statuses.update(mine)

    workers = [threading.Thread(target=client) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return statuses


def test_a_key_rotation_under_traffic_refuses_no_valid_token(start_gateway, upstream_port, jwks):
    """The issuer publishes a new key and at once signs with it, then retires the old one."""
    gw = start_gateway(config(jwks, upstream_port, "      jwks_ttl: 2s\n      jwks_cooldown: 500ms\n"),
                       workers=2)
    signer = {"key": RSA_KEY, "kid": "k1"}

    def sign() -> bytes:
        return mint(signer["key"], kid=signer["kid"], jti=uuid.uuid4().hex)  # every token new: no cache hits

    def rotate() -> None:
        time.sleep(1.5)
        jwks.publish(jwk(RSA_KEY, "k1"), jwk(RSA_KEY_2, "k2"), jwk(EC_KEY, "e1"))
        time.sleep(0.05)
        signer.update(key=RSA_KEY_2, kid="k2")  # tokens signed by the new key start arriving
        time.sleep(2.0)
        jwks.publish(jwk(RSA_KEY_2, "k2"))  # the old key is retired (its tokens have stopped)

    rotation = threading.Thread(target=rotate)
    rotation.start()
    statuses = traffic(gw.port, sign, 6.0)
    rotation.join()
    assert set(statuses) == {200}, statuses
    assert statuses[200] > 100
    retired = gw.get("/api/echo", headers={"Authorization": f"Bearer {mint(RSA_KEY, kid='k1').decode()}"})
    assert retired.status == 401
    assert retired.json()["message"] == "unknown signing key"


@pytest.mark.parametrize("failure", ["500", "close"])
def test_a_jwks_outage_keeps_the_cached_keys_serving(start_gateway, upstream_port, jwks, failure):
    gw = start_gateway(config(jwks, upstream_port, "      jwks_ttl: 500ms\n      jwks_cooldown: 200ms\n"))
    warm = traffic(gw.port, lambda: mint(RSA_KEY, kid="k1", jti=uuid.uuid4().hex), 0.5, threads=2)
    assert set(warm) == {200}
    before = jwks.requests
    jwks.mode = failure
    statuses = traffic(gw.port, lambda: mint(RSA_KEY, kid="k1", jti=uuid.uuid4().hex), 3.0, threads=2)
    assert set(statuses) == {200}, statuses
    assert jwks.requests - before >= 3  # the worker kept trying in the background
    jwks.mode = "ok"
    time.sleep(1.5)
    gw.stop()
    log = gw.stderr
    assert log.count("cannot fetch signing keys") == 1, log  # once per change of state, not per attempt
    assert log.count("signing keys fetched again") == 1, log
    assert "eyJ" not in log  # no token (nor any base64 JSON) in the log


def test_a_flood_of_random_kids_fetches_a_bounded_number_of_times(start_gateway, upstream_port, jwks):
    gw = start_gateway(config(jwks, upstream_port, "      jwks_cooldown: 500ms\n"))
    valid = gw.get("/api/echo", headers={"Authorization": f"Bearer {mint(RSA_KEY, kid='k1').decode()}"})
    assert valid.status == 200
    before = jwks.requests
    started = time.monotonic()
    statuses = traffic(gw.port, lambda: mint(RSA_KEY, kid=uuid.uuid4().hex), 2.0, threads=16)
    elapsed = time.monotonic() - started
    assert set(statuses) == {401}
    assert sum(statuses.values()) >= 16
    fetches = jwks.requests - before
    assert fetches <= elapsed / 0.5 + 2, (fetches, elapsed)
    again = gw.get("/api/echo", headers={"Authorization": f"Bearer {mint(RSA_KEY, kid='k1').decode()}"})
    assert again.status == 200  # the known key never waited behind the flood


def test_check_accepts_the_verification_example():
    result = run_cli("check", "--config", str(ROOT / "examples" / "jwt-verify.yaml"))
    assert result.returncode == 0, result.stderr
    assert "auth issuers:" in result.stdout
    assert "idp: iss https://idp.example.com/, RS256, ES256, JWKS http://127.0.0.1:9002/jwks.json" in result.stdout


def test_check_names_a_route_with_an_unknown_issuer(tmp_path, upstream_port, jwks):
    path = tmp_path / "bad.yaml"
    path.write_text(config(jwks, upstream_port).replace("claims: {role: admin}", "issuers: [corp]"))
    result = run_cli("check", "--config", str(path))
    assert result.returncode == 2
    assert "routes[2].auth.issuers[0]: expected the name of an issuer under auth.issuers (idp), got 'corp'" \
        in result.stderr
