"""gateway.redisconn against real servers: one server (TCP, unix socket, password), a 3-node Cluster and
Sentinel with a forced failover; and run_script's EVALSHA/EVAL fallback after the script cache is lost."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from redis.exceptions import AuthenticationError, ConnectionError, RedisClusterException, ResponseError, TimeoutError

from gateway import redisconn
from gateway.redisconn import Call, Client, Script
from tests.redis_servers import RedisClusterServers, RedisServer, SentinelSet

T = TypeVar("T")

# KEYS[1]: a counter; ARGV[1]: how much to add. Returns the new count and the node's port.
ADD = Script("""
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], 60000)
local port = string.match(redis.call('INFO', 'server'), 'tcp_port:(%d+)')
return {n, tonumber(port)}
""")
FAIL = Script("return redis.error_reply('nope')")


def run(url: str, use: Callable[[Client], Awaitable[T]], **kwargs: Any) -> T:
    async def main() -> T:
        client = redisconn.connect(url, **kwargs)
        try:
            return await use(client)
        finally:
            await redisconn.close(client)
    return asyncio.run(main())


def test_single_server_tcp_and_unix(redis_server: RedisServer) -> None:
    async def use(client: Client) -> list[Any]:
        return await redisconn.run_script(client, ADD, [(["a"], [2]), (["b"], [3]), (["a"], [5])])
    assert run(redis_server.url, use) == [[2, redis_server.port], [3, redis_server.port], [7, redis_server.port]]
    assert run(redis_server.unix_url, use)[2] == [14, redis_server.port]  # the same server, by its socket


def test_script_errors_come_back_per_call(redis_server: RedisServer) -> None:
    async def use(client: Client) -> list[Any]:
        await client.set("text", "x")
        return [*await redisconn.run_script(client, ADD, [(["text"], [1]), (["n"], [1])]),
                *await redisconn.run_script(client, FAIL, [([], [])])]
    wrong_type, counted, failed = run(redis_server.url, use)
    assert isinstance(wrong_type, ResponseError) and counted == [1, redis_server.port]
    assert isinstance(failed, ResponseError) and "nope" in str(failed)


def test_password(tmp_path: Path, redis_server: RedisServer) -> None:
    with RedisServer(tmp_path, password="s3cret") as server:
        assert run(server.url, lambda client: client.ping()) is True
        with pytest.raises(AuthenticationError):
            run(f"redis://:wrong@127.0.0.1:{server.port}", lambda client: client.ping())


def test_timeout_bounds_a_hung_server(redis_server: RedisServer) -> None:
    redis_server.pause(2.0)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        run(redis_server.url, lambda client: client.get("k"), timeout=0.1)
    assert time.monotonic() - started < 1.5  # no retries behind the caller's back


def test_restart_loses_the_script_cache_and_run_script_reloads_it(redis_server: RedisServer) -> None:
    async def use(client: Client) -> list[Any]:
        first = await redisconn.run_script(client, ADD, [(["k"], [1])])
        redis_server.restart()
        with pytest.raises(ConnectionError):  # the pooled connection died with the server
            await client.ping()
        assert await client.script_exists(ADD.sha) == [False]
        return [*first, *await redisconn.run_script(client, ADD, [(["k"], [1]), (["j"], [4])])]
    assert [result[0] for result in run(redis_server.url, use)] == [1, 1, 4]


def test_cluster_batch_spans_every_node(redis_cluster: RedisClusterServers) -> None:
    keys = [f"{{rl:{i}}}:w" for i in range(30)]

    async def use(client: Client) -> tuple[list[Any], list[Any]]:
        for node in redis_cluster.nodes:  # a fresh node knows no script: EVALSHA says NOSCRIPT, EVAL runs
            with node.client() as sync:
                sync.script_flush()
        first = await redisconn.run_script(client, ADD, [([key], [1]) for key in keys])
        second = await redisconn.run_script(client, ADD, [([key], [i]) for i, key in enumerate(keys)])
        return first, second

    first, second = run(redis_cluster.url, use)
    ports = {node.port for node in redis_cluster.nodes}
    assert [count for count, _ in first] == [1] * len(keys)
    assert [count for count, _ in second] == [1 + i for i in range(len(keys))]
    assert {port for _, port in first} == ports  # the batch reached every node...
    for key, (_, port) in zip(keys, first, strict=True):  # ... each call the node owning its slot
        assert redis_cluster.node_for(key).port == port


def test_prepare_does_the_first_io_of_each_kind_of_client(redis_server: RedisServer,
                                                          redis_cluster: RedisClusterServers) -> None:
    async def use(client: Client) -> bytes | None:
        await redisconn.prepare(client)
        started = time.monotonic()
        async with asyncio.timeout(5):
            value = await client.get("nothing")
        assert time.monotonic() - started < 1.0  # slot map and command table already there
        return value
    assert run(redis_cluster.url, use) is None
    assert run(redis_server.url, use) is None
    redis_server.kill()
    with pytest.raises(ConnectionError):
        run(redis_server.url, redisconn.prepare)


def test_cluster_rejects_a_call_across_slots(redis_cluster: RedisClusterServers) -> None:
    two = Script("return redis.call('MSET', KEYS[1], 1, KEYS[2], 2)")

    async def use(client: Client) -> list[Any]:
        assert await redisconn.run_script(client, two, [(["{a}x", "{a}y"], [])]) == [b"OK"]
        return await redisconn.run_script(client, two, [(["{a}x", "{b}y"], [])])

    with pytest.raises(RedisClusterException, match="same key slot"):
        run(redis_cluster.url, use)


def test_cluster_node_down_fails_only_its_calls(redis_cluster: RedisClusterServers) -> None:
    keys = [f"{{down:{i}}}" for i in range(12)]
    victim = redis_cluster.nodes[1]
    lost = {key for key in keys if redis_cluster.node_for(key) is victim}
    assert lost and len(lost) < len(keys)

    async def use(client: Client) -> None:
        calls: list[Call] = [([key], [1]) for key in keys]
        await redisconn.run_script(client, ADD, calls)
        victim.kill()
        try:
            results = await redisconn.run_script(client, ADD, calls)
            failed = {key for key, result in zip(keys, results, strict=True) if isinstance(result, Exception)}
            assert failed == lost
            assert all(isinstance(result, ConnectionError) for result in results if isinstance(result, Exception))
        finally:
            redis_cluster.restart_node(victim)
        deadline = time.monotonic() + 20
        while True:  # the client re-learns the slot map; the restarted node answers CLUSTERDOWN until whole
            with contextlib.suppress(ConnectionError):
                results = await redisconn.run_script(client, ADD, calls)
                if not any(isinstance(result, Exception) for result in results):
                    break
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        for key, (count, _) in zip(keys, results, strict=True):  # the restarted node came back empty
            assert count == (1 if key in lost else 3)

    run(redis_cluster.url, use, timeout=0.5)


def test_sentinel_follows_a_failover(redis_sentinel: SentinelSet) -> None:
    async def use(client: Client) -> tuple[int, int]:
        await client.set("k", "before")
        before = int((await client.info("server"))["tcp_port"])
        new_master = redis_sentinel.failover()
        deadline = time.monotonic() + 20
        while True:  # the calls in flight at the switch may fail; the client then asks the sentinel again
            try:
                await client.set("k", "after")
                break
            except (ConnectionError, ResponseError):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
        after = int((await client.info("server"))["tcp_port"])
        assert after == new_master
        return before, after

    before, after = run(redis_sentinel.url, use, timeout=1.0)
    assert before == redis_sentinel.master.port and after == redis_sentinel.replica.port
    with redis_sentinel.replica.client() as promoted:
        assert promoted.get("k") == b"after"
