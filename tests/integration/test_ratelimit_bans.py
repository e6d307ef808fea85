"""A client that keeps exceeding a rate limit is banned host-wide by the connection guards."""

from __future__ import annotations

from tests.integration.conftest import wait_until

CONFIG = """
guards:
  bans: {{after: 3, window: 60s, duration: 30s}}
ratelimit:
  default: [tight]
  policies:
    tight:
      key: ip
      limits:
        - {{rate: 1/m, burst: 2, algorithm: gcra}}
upstreams:
  api: http://127.0.0.1:{port}
routes:
  - {{name: api, prefix: /, upstream: api}}
"""


def test_repeated_refusals_ban_the_client(start_gateway, upstream_port):
    gw = start_gateway(CONFIG.format(port=upstream_port))  # one worker: the pure twin limits per process
    statuses = [gw.get("/echo").status for _ in range(2)]
    assert statuses == [200, 200]
    refused = [gw.get("/echo").status for _ in range(3)]
    assert refused == [429, 429, 429]  # three offences: the ban starts
    banned = wait_until(lambda: (r := gw.get("/echo")).status == 403 and r, timeout=5)
    assert banned.json()["error"] == "client_banned"
    assert int(banned.headers["retry-after"]) > 0
    bans = gw.admin("/guards/bans").json()
    assert any(ban.get("client") == "127.0.0.1" for ban in bans.get("bans", bans if isinstance(bans, list) else []))
