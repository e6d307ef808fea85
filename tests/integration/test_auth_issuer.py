"""The gateway as token issuer in real ``gateway run`` processes, with the host-local store and with a real
Redis: the token endpoint and the example, refresh-token reuse detection, revocation seen by every worker
within a second, two gateways sharing keys through Redis, and key rotation under traffic with no 401."""

from __future__ import annotations

import base64
import http.client
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import ROOT, Gateway, Response, request, run_cli
from tests.unit.test_auth_support import drop_keys, require_redis

pytestmark = pytest.mark.integration
BASIC = "Basic " + base64.b64encode(b"demo:demo-secret").decode()
FORM = {"Content-Type": "application/x-www-form-urlencoded", "Authorization": BASIC}


@pytest.fixture(params=["local", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """How the gateways of a test keep the issuer's state: ``env`` and the ``auth:`` lines to add."""
    if request.param == "local":
        yield {"kind": "local", "env": "", "auth": f"  state_dir: {tmp_path / 'state'}\n"}
        return
    url = require_redis()
    prefix = f"test:auth:{uuid.uuid4().hex[:12]}:"
    yield {"kind": "redis", "env": url, "auth": f'  redis_prefix: "{prefix}"\n'}
    drop_keys(url, prefix)


def config(upstream_port: int, store: dict[str, str], issuer: str = "") -> str:
    return f"""
server:
  access_log: false
auth:
{store["auth"]}  issuer:
    issuer: https://gw.test/
    audience: api
    jwks_max_age: 1s
{issuer}  consumers:
    demo: {{secret: demo-secret, scope: [read]}}
  sessions: {{secure: false}}
upstreams:
  app: http://127.0.0.1:{upstream_port}
routes:
  - prefix: /api
    strip_prefix: true
    upstream: app
    auth: {{forward: {{sub: X-User-Id, sid: X-Session}}, token: {{session: true}}}}
"""


def start(start_gateway: Callable[..., Gateway], upstream_port: int, store: dict[str, str], issuer: str = "",
          workers: int = 2) -> Gateway:
    env = {"GATEWAY_REDIS_URL": store["env"]} if store["env"] else {}
    return start_gateway(config(upstream_port, store, issuer), workers=workers, env=env)


def post_token(port: int, form: str, headers: dict[str, str] | None = None) -> Response:
    return request(port, "POST", "/auth/token", form, headers=headers or FORM)


def new_token(port: int) -> dict[str, Any]:
    answer = post_token(port, "grant_type=client_credentials")
    assert answer.status == 200, answer.body
    return dict(answer.json())


def get(port: int, token: str, path: str = "/api/echo") -> Response:
    return request(port, "GET", path, headers={"Authorization": f"Bearer {token}"})


def admin(gw: Gateway, method: str, path: str, body: Any = None) -> Response:
    data = json.dumps(body).encode() if body is not None else None
    return request(gw.admin_port, method, path, data, timeout=10)


def echoed(response: Response) -> dict[str, str]:
    return {name: value for name, value in response.json()["headers"]}


def test_tokens_from_the_gateway_open_its_routes(start_gateway, upstream_port, store):
    gw = start(start_gateway, upstream_port, store)
    body = new_token(gw.port)
    assert body["token_type"] == "Bearer" and body["scope"] == "read"
    assert get(gw.port, "nonsense").status == 401
    answer = get(gw.port, body["access_token"])
    assert answer.status == 200
    assert echoed(answer)["x-user-id"] == "demo" and "authorization" not in echoed(answer)
    jwks = request(gw.port, "GET", "/.well-known/jwks.json")
    assert jwks.status == 200 and jwks.headers["Cache-Control"] == "public, max-age=1"
    assert len(jwks.json()["keys"]) == 2  # current and next
    # a login session works on the route too, and its cookie is not passed on
    login = request(gw.port, "POST", "/auth/login", headers={"Authorization": BASIC})
    cookie = login.headers["Set-Cookie"].split(";")[0]
    through = request(gw.port, "GET", "/api/echo", headers={"Cookie": f"{cookie}; theme=dark"})
    assert through.status == 200 and echoed(through)["x-user-id"] == "demo"
    assert echoed(through)["cookie"] == "theme=dark"
    sessions = admin(gw, "GET", "/auth/sessions?subject=demo").json()["sessions"]
    assert sorted(s["kind"] for s in sessions) == ["cookie", "refresh"]
    wrong = post_token(gw.port, "grant_type=client_credentials", {**FORM, "Authorization": "Basic ZGVtbzp4"})
    assert (wrong.status, wrong.json()["error"]) == (401, "invalid_client")
    gw.stop()
    logs = gw.stderr
    for secret in (body["access_token"], body["refresh_token"], "demo-secret", cookie.partition("=")[2]):
        assert secret not in logs


def test_refresh_token_reuse_ends_the_family_on_every_worker(start_gateway, upstream_port, store):
    gw = start(start_gateway, upstream_port, store)
    first = new_token(gw.port)
    second = post_token(gw.port, f"grant_type=refresh_token&refresh_token={first['refresh_token']}")
    assert second.status == 200
    newest = second.json()
    assert all(get(gw.port, token["access_token"]).status == 200 for token in (first, newest) for _ in range(8))
    reused = post_token(gw.port, f"grant_type=refresh_token&refresh_token={first['refresh_token']}")
    assert (reused.status, reused.json()["error"]) == (400, "invalid_grant")
    refused = post_token(gw.port, f"grant_type=refresh_token&refresh_token={newest['refresh_token']}")
    assert refused.status == 400  # the thief's or the owner's newest token: the family is over
    time.sleep(1.0)
    # every worker (fresh connections spread over both) refuses the family's access tokens now
    statuses = Counter(get(gw.port, token["access_token"]).status for token in (first, newest) for _ in range(20))
    assert statuses == Counter({401: 40})
    other = new_token(gw.port)  # another family is untouched
    assert get(gw.port, other["access_token"]).status == 200
    gw.stop()
    assert "a used refresh token of client demo was presented again" in gw.stderr
    assert first["refresh_token"] not in gw.stderr


def test_a_revoked_token_is_refused_by_every_worker_within_a_second(start_gateway, upstream_port, store):
    gw = start(start_gateway, upstream_port, store)
    token = new_token(gw.port)
    jti = json.loads(base64.urlsafe_b64decode(token["access_token"].split(".")[1] + "=="))["jti"]
    for _ in range(20):  # cached as verified in every worker
        assert get(gw.port, token["access_token"]).status == 200
    answer = admin(gw, "POST", "/auth/revoke", {"jti": jti})
    assert answer.status == 200
    revoked_at = time.monotonic()
    time.sleep(max(0.0, 1.0 - (time.monotonic() - revoked_at)))
    statuses = Counter(get(gw.port, token["access_token"]).status for _ in range(30))
    assert statuses == Counter({401: 30}), statuses
    refused = get(gw.port, token["access_token"])
    assert refused.json()["message"] == "token revoked"
    assert get(gw.port, new_token(gw.port)["access_token"]).status == 200


def test_two_gateways_share_keys_sessions_and_revocations_through_redis(start_gateway, upstream_port, tmp_path):
    url = require_redis()
    prefix = f"test:auth:{uuid.uuid4().hex[:12]}:"
    shared = {"kind": "redis", "env": url, "auth": f'  redis_prefix: "{prefix}"\n'}
    try:
        a = start(start_gateway, upstream_port, shared)
        b = start(start_gateway, upstream_port, shared)
        from_a = new_token(a.port)
        assert get(b.port, from_a["access_token"]).status == 200  # B verifies A's token with the shared keys
        refreshed = post_token(b.port, f"grant_type=refresh_token&refresh_token={from_a['refresh_token']}")
        assert refreshed.status == 200  # the refresh family is shared too
        reused = post_token(a.port, f"grant_type=refresh_token&refresh_token={from_a['refresh_token']}")
        assert reused.status == 400
        # a rotation on A's admin port: B publishes and verifies with the new keys
        before = admin(b, "GET", "/auth/keys").json()
        rotated = admin(a, "POST", "/auth/keys/rotate", {"force": True})
        assert rotated.status == 200 and rotated.json()["generation"] == before["generation"] + 1
        time.sleep(1.5)
        kids = {key["kid"] for key in request(b.port, "GET", "/.well-known/jwks.json").json()["keys"]}
        assert kids == {key["kid"] for key in rotated.json()["keys"]}
        after = new_token(a.port)
        header = json.loads(base64.urlsafe_b64decode(after["access_token"].split(".")[0] + "=="))
        assert header["kid"] == rotated.json()["keys"][1]["kid"]  # signed by the new current key
        assert get(b.port, after["access_token"]).status == 200
        assert get(b.port, from_a["access_token"]).status == 401  # its family ended at the reuse
        # sessions listed and ended from either admin port; revocations reach the other gateway
        listed = admin(b, "GET", "/auth/sessions?subject=demo").json()["sessions"]
        assert len(listed) == 1  # the family created at A by `after` (the first one has ended)
        ended = admin(b, "DELETE", "/auth/sessions?subject=demo")
        assert ended.json()["ended"] == [listed[0]["id"]]
        time.sleep(1.0)
        assert get(a.port, after["access_token"]).status == 401
    finally:
        drop_keys(url, prefix)


def traffic(seconds: float, connect: Callable[[], http.client.HTTPConnection],
            work: Callable[[http.client.HTTPConnection], int], threads: int) -> Counter[int]:
    """Runs ``work`` from several clients for ``seconds``; a new connection every 5 requests, so every
    worker serves some. Returns the status counts."""
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def client() -> None:
        mine: Counter[int] = Counter()
        conn: http.client.HTTPConnection | None = None
        count = 0
        while time.monotonic() < end:
            if conn is None or count % 5 == 0:
                if conn is not None:
                    conn.close()
                conn = connect()
            mine[work(conn)] += 1
            count += 1
        if conn is not None:
            conn.close()
        with lock:
            statuses.update(mine)

    clients = [threading.Thread(target=client) for _ in range(threads)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    return statuses


def test_tokens_keep_verifying_across_key_rotations_under_traffic(start_gateway, upstream_port, store):
    """Scheduled rotations every 2 s and one forced on the admin port, while tokens are issued and used at
    the issuing gateway and verified at a second gateway that knows the issuer only by its JWKS URL."""
    gw = start(start_gateway, upstream_port, store, issuer="    rotation: 2s\n")
    outside = start_gateway(f"""
server:
  access_log: false
auth:
  issuers:
    gw:
      issuer: https://gw.test/
      audiences: [api]
      jwks_url: http://127.0.0.1:{gw.port}/.well-known/jwks.json
      jwks_min_ttl: 1s
upstreams:
  app: http://127.0.0.1:{upstream_port}
routes:
  - prefix: /api
    strip_prefix: true
    upstream: app
    auth: required
""", workers=1)
    generation = admin(gw, "GET", "/auth/keys").json()["generation"]
    kids: set[str] = set()
    lock = threading.Lock()

    def connect(port: int) -> Callable[[], http.client.HTTPConnection]:
        return lambda: http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def issue() -> str:
        access = new_token(gw.port)["access_token"]  # a new token each time: never a cache hit
        with lock:
            kids.add(json.loads(base64.urlsafe_b64decode(access.split(".")[0] + "=="))["kid"])
        return str(access)

    def work(conn: http.client.HTTPConnection) -> int:
        conn.request("GET", "/api/echo", headers={"Authorization": f"Bearer {issue()}"})
        answer = conn.getresponse()
        answer.read()
        return answer.status

    def force_rotation() -> None:
        time.sleep(2.5)
        assert admin(gw, "POST", "/auth/keys/rotate", {"force": True}).status == 200

    def run(name: str, port: int) -> None:
        results[name] = traffic(6.0, connect(port), work, threads=2)

    results: dict[str, Counter[int]] = {}
    threads = [threading.Thread(target=force_rotation), threading.Thread(target=run, args=("issuer", gw.port)),
               threading.Thread(target=run, args=("outside", outside.port))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(results["issuer"]) == {200}, results
    assert set(results["outside"]) == {200}, results
    assert results["issuer"][200] > 20 and results["outside"][200] > 20
    final = admin(gw, "GET", "/auth/keys").json()["generation"]
    assert final >= generation + 3, (generation, final)  # at least two scheduled rotations and the forced one
    assert len(kids) >= 3  # tokens were signed by at least three different keys


def test_the_example_issues_tokens_for_its_routes(start_gateway, upstream_port, tmp_path):
    env = {"UPSTREAM": f"http://127.0.0.1:{upstream_port}", "XDG_STATE_HOME": str(tmp_path / "xdg")}
    gw = start_gateway(args=["--config", str(ROOT / "examples" / "jwt.yaml")], env=env, workers=2)
    # the README's curl commands: curl -u demo:demo-secret -d grant_type=client_credentials .../auth/token
    token = request(gw.port, "POST", "/auth/token", "grant_type=client_credentials",
                    headers={"Authorization": BASIC, "Content-Type": "application/x-www-form-urlencoded"})
    assert token.status == 200
    access = token.json()["access_token"]
    answer = get(gw.port, access, "/echo")
    assert answer.status == 200 and echoed(answer)["x-user-id"] == "demo"
    assert request(gw.port, "GET", "/echo").status == 401
    assert (tmp_path / "xdg" / "gateway" / "issuer-keys.json").exists()
    result = run_cli("check", "--config", str(ROOT / "examples" / "jwt.yaml"))
    assert result.returncode == 0, result.stderr
    assert "gateway: iss http://localhost:8080/, RS256, the gateway's own rotating keys" in result.stdout
