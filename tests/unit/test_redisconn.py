"""gateway.redisconn: the URL forms, their errors (password-free), and the clients' options."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.sentinel import SentinelConnectionPool

from gateway import redisconn
from gateway.config import ConfigError, Node
from gateway.redisconn import RedisURLError, Script, Target, client_options, connect, parse
from gateway.settings import resolve


def test_single_server_defaults() -> None:
    target = parse("redis://127.0.0.1")
    assert target == Target(kind="redis", nodes=(("127.0.0.1", 6379),))
    assert target.describe() == "redis://127.0.0.1:6379"


def test_single_server_with_everything() -> None:
    target = parse("rediss://user:s%40cret@cache.example:6380/3?timeout=0.05&connect_timeout=0.5"
                   "&ssl_ca_certs=/etc/ca.pem&ssl_cert_reqs=optional")
    assert target.kind == "redis" and target.tls
    assert target.nodes == (("cache.example", 6380),)
    assert (target.db, target.username, target.password) == (3, "user", "s@cret")
    assert (target.timeout, target.connect_timeout) == (0.05, 0.5)
    assert (target.ssl_ca_certs, target.ssl_cert_reqs) == ("/etc/ca.pem", "optional")
    assert target.describe() == "rediss://user:***@cache.example:6380/3"
    assert "s@cret" not in repr(target)


def test_password_only_and_ipv6() -> None:
    target = parse("redis://:pw@[::1]:7000")
    assert (target.username, target.password, target.nodes) == (None, "pw", (("::1", 7000),))
    assert target.describe() == "redis://:***@[::1]:7000"
    assert parse("redis://[::1]").nodes == (("::1", 6379),)
    assert parse("redis://user@h").describe() == "redis://user@h:6379"


def test_unix_socket() -> None:
    target = parse("unix://:pw@/run/redis/redis.sock?db=2")
    assert (target.kind, target.path, target.db, target.password) == ("unix", "/run/redis/redis.sock", 2, "pw")
    assert target.describe() == "unix://:***@/run/redis/redis.sock?db=2"
    assert parse("unix:///tmp/r.sock").describe() == "unix:///tmp/r.sock"


def test_sentinel() -> None:
    target = parse("redis+sentinel://:pw@s1:26380,s2/mymaster/1?sentinel_password=spw")
    assert target.kind == "sentinel" and not target.tls
    assert target.nodes == (("s1", 26380), ("s2", 26379))
    assert (target.service, target.db, target.password, target.sentinel_password) == ("mymaster", 1, "pw", "spw")
    assert target.describe() == "redis+sentinel://:***@s1:26380,s2:26379/mymaster/1"
    assert "spw" not in repr(target)
    assert parse("rediss+sentinel://s1/m").tls


def test_cluster() -> None:
    target = parse("redis+cluster://n1:7000,n2:7001,n3")
    assert target.kind == "cluster"
    assert target.nodes == (("n1", 7000), ("n2", 7001), ("n3", 6379))
    assert target.describe() == "redis+cluster://n1:7000,n2:7001,n3:6379"
    assert parse("REDISS+CLUSTER://n1/0").tls


@pytest.mark.parametrize(("url", "message"), [
    ("http://h", "a Redis URL starts with"),
    ("127.0.0.1:6379", "a Redis URL starts with"),
    ("redis://", "needs a host"),
    ("redis://h:0", "bad port"),
    ("redis://h:99999", "bad port"),
    ("redis://h:abc", "bad port"),
    ("redis://h/x", "must be a number"),
    ("redis://h/1/2", "at most a database"),
    ("redis://h?db=1", "the database goes in the path"),
    ("redis://h?tls=1", "unknown Redis URL option 'tls'"),
    ("redis://h?timeout=0", "above 0"),
    ("redis://h?timeout=fast", "above 0"),
    ("rediss://h?ssl_cert_reqs=maybe", "ssl_cert_reqs must be one of"),
    ("redis://a,b", "several hosts need"),
    ("redis+cluster://a/1", "only database 0"),
    ("redis+sentinel://a", "names the master"),
    ("redis+sentinel://a/m/1/2", "names the master"),
    ("unix://", "needs the socket's path"),
    ("unix:///r.sock?db=x", "must be a number"),
])
def test_errors(url: str, message: str) -> None:
    with pytest.raises(RedisURLError, match=message):
        parse(url)


def test_errors_never_show_the_password() -> None:
    with pytest.raises(RedisURLError) as caught:
        parse("redis://:topsecret@h:port")
    assert "topsecret" not in str(caught.value)


def test_client_options_prefer_the_urls_timeouts() -> None:
    plain = client_options(parse("redis://h/2"), timeout=0.05, connect_timeout=None, retries=0,
                           decode_responses=False)
    assert (plain["socket_timeout"], plain["socket_connect_timeout"], plain["db"]) == (0.05, 0.05, 2)
    assert "ssl" not in plain
    assert plain["retry"].get_retries() == 0
    tuned = client_options(parse("redis://h?timeout=0.2&connect_timeout=1"), timeout=0.05, connect_timeout=0.1,
                           retries=2, decode_responses=True)
    assert (tuned["socket_timeout"], tuned["socket_connect_timeout"]) == (0.2, 1.0)
    assert tuned["retry"].get_retries() == 2 and tuned["decode_responses"]
    only_read = client_options(parse("redis://h?timeout=0.2"), timeout=None, connect_timeout=None, retries=0,
                               decode_responses=False)
    assert only_read["socket_connect_timeout"] == 0.2


def test_client_options_tls_and_cluster() -> None:
    tls = client_options(parse("rediss://h?ssl_cert_reqs=none"), timeout=1, connect_timeout=1, retries=0,
                         decode_responses=False)
    assert (tls["ssl"], tls["ssl_cert_reqs"], tls["ssl_check_hostname"]) == (True, "none", False)
    cluster = client_options(parse("rediss+cluster://h"), timeout=1, connect_timeout=1, retries=0,
                             decode_responses=False)
    assert "db" not in cluster and cluster["ssl_check_hostname"] is True


def test_connect_builds_the_right_client() -> None:
    async def build() -> None:
        single = connect("redis://127.0.0.1:1/4", timeout=0.1)
        assert isinstance(single, Redis)
        kwargs = single.connection_pool.connection_kwargs
        assert (kwargs["port"], kwargs["db"], kwargs["socket_timeout"]) == (1, 4, 0.1)
        unix = connect(parse("unix:///tmp/none.sock"))
        assert unix.connection_pool.connection_kwargs["path"] == "/tmp/none.sock"
        cluster = connect("redis+cluster://127.0.0.1:1,127.0.0.1:2")
        assert isinstance(cluster, RedisCluster)
        sentinel = connect("redis+sentinel://127.0.0.1:1/m?sentinel_password=spw")
        pool = sentinel.connection_pool
        assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "m"
        assert pool.sentinel_manager.sentinels[0].connection_pool.connection_kwargs["password"] == "spw"
        for client in (single, unix, cluster, sentinel):
            await redisconn.close(client)
    asyncio.run(build())


def test_script_sha() -> None:
    script = Script("return 1")
    assert script.sha == "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"


def test_run_script_with_no_calls_does_nothing() -> None:
    assert asyncio.run(redisconn.run_script(None, Script("return 1"), [])) == []  # type: ignore[arg-type]


def test_the_redis_url_setting_is_checked_at_load_without_showing_the_password() -> None:
    settings = resolve(None, {"GATEWAY_REDIS_URL": "redis+cluster://a:7000,b:7001"}, {})
    assert settings.redis_url == "redis+cluster://a:7000,b:7001"
    assert resolve(Node({"redis_url": None}, "gw.yaml", "server"), {}, {}).redis_url is None
    assert resolve(Node({"redis_url": "unix:///r.sock"}, "gw.yaml", "server"), {}, {}).redis_url == "unix:///r.sock"
    with pytest.raises(ConfigError) as caught:
        resolve(None, {"GATEWAY_REDIS_URL": "redis://:hunter2@a,b"}, {})
    assert str(caught.value) == ("environment variable GATEWAY_REDIS_URL: expected a Redis URL: several hosts "
                                 "need redis+sentinel:// or redis+cluster://")
