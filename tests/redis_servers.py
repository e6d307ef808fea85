"""Private Redis deployments for tests and benches, started from the ``redis-server`` binary on free ports.

- ``RedisServer``: one server (no persistence) that a test may kill, restart or pause without touching
  the shared Redis at 127.0.0.1:6379; optionally a unix socket, a password, or a replica of another.
- ``RedisClusterServers``: three cluster-enabled servers joined by ``redis-cli --cluster create
  --cluster-replicas 0`` (16384 slots split three ways); ``url`` is ``redis+cluster://...``.
- ``SentinelSet``: a master, one replica and one sentinel watching them (quorum 1, 1 s down-after), so a
  test can force a failover (``failover()``) and see clients follow; ``url`` is ``redis+sentinel://...``.

Each is a context manager that kills every process it started on exit, and keeps its files (logs,
cluster and sentinel configs) under the directory it is given. The pytest fixtures ``redis_server``,
``redis_cluster`` (one per session: joining a cluster takes seconds) and ``redis_sentinel`` wrap them and
skip (fail under CI) when ``redis-server``/``redis-cli`` is missing (tests/tools.py); import them into a
conftest (tests/integration/conftest.py does). Benches use the classes directly.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

import pytest
import redis

from tests.tools import require_tool

SERVICE = "mymaster"


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(cluster: bool = False) -> int:
    """A free loopback port; ``cluster``: one whose cluster-bus port (port + 10000) is free too."""
    if not cluster:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])
    for _ in range(200):
        port = random.randrange(20000, 50000)
        if _port_free(port) and _port_free(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(redis.RedisError, OSError):
            result = predicate()
            if result:
                return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout}s")
        time.sleep(0.05)


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1 (see the module docstring)."""

    def __init__(self, directory: Path, port: int | None = None, *, password: str | None = None,
                 unix_socket: bool = False, cluster: bool = False, replica_of: int | None = None,
                 extra: tuple[str, ...] = ()) -> None:
        self.directory = directory
        self.port = port or free_port(cluster)
        self.password = password
        # a unix socket's path is limited to 107 bytes: pytest's tmp_path can be longer
        self.socket_path = Path(tempfile.gettempdir(), f"gw-redis-{self.port}.sock") if unix_socket else None
        self.cluster = cluster
        self.replica_of = replica_of
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        assert self.socket_path is not None
        auth = f":{self.password}@" if self.password else ""
        return f"unix://{auth}{self.socket_path}"

    def argv(self) -> list[str]:
        argv = [shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.directory),
                "--logfile", str(self.directory / f"redis-{self.port}.log"),
                "--repl-diskless-sync-delay", "0"]  # a replica syncs at once, not after 5 s
        if self.password:
            argv += ["--requirepass", self.password, "--masterauth", self.password]
        if self.socket_path is not None:
            argv += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        if self.cluster:
            argv += ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{self.port}.conf",
                     "--cluster-node-timeout", "2000"]
        if self.replica_of is not None:
            argv += ["--replicaof", "127.0.0.1", str(self.replica_of)]
        return argv + list(self.extra)

    def client(self, **kwargs: Any) -> redis.Redis:
        """A synchronous client (for setting up and checking; the gateway uses its own)."""
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=5,
                           **kwargs)

    def ping(self) -> bool:
        with self.client(socket_connect_timeout=0.5) as client:
            return bool(client.ping())

    def start(self, timeout: float = 15.0) -> Self:
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.proc = subprocess.Popen(self.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        _wait(lambda: self._alive() and self.ping(), timeout, f"redis-server on port {self.port} answering")
        return self

    def _alive(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            log = self.directory / f"redis-{self.port}.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"redis-server on port {self.port} exited with {self.proc.returncode}:\n{tail}")
        return True

    def kill(self) -> None:
        """SIGKILL: the abrupt outage (connections reset, nothing flushed)."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        self._end(signal.SIGTERM)

    def restart(self, timeout: float = 15.0) -> Self:
        """Starts it again on the same port (empty: nothing is persisted)."""
        self.kill()
        return self.start(timeout)

    def pause(self, seconds: float) -> None:
        """Holds every client's commands for ``seconds`` (CLIENT PAUSE): a hung, not a dead, Redis."""
        with self.client() as client:
            client.execute_command("CLIENT", "PAUSE", int(seconds * 1000), "ALL")

    def _end(self, sig: int) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
        if self.socket_path is not None:
            self.socket_path.unlink(missing_ok=True)


class RedisClusterServers:
    """Three cluster-enabled ``redis-server`` processes joined into one cluster without replicas."""

    def __init__(self, directory: Path, size: int = 3) -> None:
        self.nodes = [RedisServer(directory, cluster=True) for _ in range(size)]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def start(self, timeout: float = 30.0) -> Self:
        try:
            for node in self.nodes:
                node.start()
            addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
            created = subprocess.run(
                [shutil.which("redis-cli") or "redis-cli", "--cluster", "create", *addresses,
                 "--cluster-replicas", "0", "--cluster-yes"],
                capture_output=True, timeout=timeout, check=False)
            if created.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed:\n{created.stdout.decode(errors='replace')}"
                                   f"{created.stderr.decode(errors='replace')}")
            _wait(self.ready, timeout, "every cluster node reporting cluster_state:ok")
        except BaseException:
            self.kill()
            raise
        return self

    def ready(self) -> bool:
        for node in self.nodes:
            with node.client() as client:
                info = client.execute_command("CLUSTER", "INFO")
                text = info.decode() if isinstance(info, bytes) else str(info)
                if "cluster_state:ok" not in text or f"cluster_known_nodes:{len(self.nodes)}" not in text:
                    return False
        return True

    def node_for(self, key: str | bytes) -> RedisServer:
        """The node serving ``key``'s slot."""
        with self.nodes[0].client() as client:
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
            for start, end, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    port = int(primary[1])
                    return next(node for node in self.nodes if node.port == port)
        raise LookupError(slot)  # pragma: no cover - the slots cover 0-16383 once the cluster is ok

    def restart_node(self, node: RedisServer, timeout: float = 30.0) -> None:
        """Starts a killed node again (it keeps its slots: its nodes-*.conf survives) and waits until the
        cluster is whole again."""
        node.start()
        _wait(self.ready, timeout, "every cluster node reporting cluster_state:ok")

    def flush(self) -> None:
        for node in self.nodes:
            with node.client() as client:
                client.flushall()

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


class SentinelSet:
    """A master, one replica and one sentinel monitoring them as ``mymaster`` (quorum 1)."""

    def __init__(self, directory: Path, password: str | None = None) -> None:
        self.directory = directory
        self.master = RedisServer(directory, password=password)
        self.replica = RedisServer(directory, password=password, replica_of=self.master.port)
        self.sentinel_port = free_port()
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis+sentinel://{auth}127.0.0.1:{self.sentinel_port}/{SERVICE}"

    def sentinel(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.sentinel_port, socket_timeout=5, decode_responses=True)

    def master_port(self) -> int:
        with self.sentinel() as client:
            _, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
            return int(port)

    def start(self, timeout: float = 30.0) -> Self:
        try:
            self.master.start()
            self.replica.start()
            _wait(lambda: self._link_up(self.replica), timeout, "the replica in sync")
            conf = self.directory / f"sentinel-{self.sentinel_port}.conf"
            auth = f"sentinel auth-pass {SERVICE} {self.password}\n" if self.password else ""
            conf.write_text(
                f"port {self.sentinel_port}\nbind 127.0.0.1\ndir {self.directory}\n"
                f"logfile {self.directory / f'sentinel-{self.sentinel_port}.log'}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.master.port} 1\n{auth}"
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 5000\n")
            self.proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", str(conf), "--sentinel"],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         start_new_session=True)
            _wait(self._watching_replica, timeout, "the sentinel watching the master and its replica")
        except BaseException:
            self.kill()
            raise
        return self

    def _role(self, server: RedisServer) -> str:
        with server.client(decode_responses=True) as client:
            return str(client.info("replication")["role"])

    def _link_up(self, server: RedisServer) -> bool:
        with server.client(decode_responses=True) as client:
            return client.info("replication").get("master_link_status") == "up"

    def _watching_replica(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"the sentinel exited with {self.proc.returncode}")
        with self.sentinel() as client:
            replicas = client.sentinel_slaves(SERVICE)
        return any(int(r["port"]) == self.replica.port and not r["is_sdown"] and not r["is_disconnected"]
                   for r in replicas)

    def failover(self, timeout: float = 30.0) -> int:
        """Forces a failover (SENTINEL FAILOVER) and waits until the sentinel names the replica, the replica
        is master and the old master its replica (before that, a client's pooled connection to the old
        master may still write there); returns the new master's port."""
        old = self.master_port()
        with self.sentinel() as client:
            client.execute_command("SENTINEL", "FAILOVER", SERVICE)
        new = _wait(lambda: (port := self.master_port()) != old and port, timeout, "the sentinel naming a new master")
        promoted, demoted = (self.master, self.replica) if new == self.master.port else (self.replica, self.master)
        _wait(lambda: self._role(promoted) == "master", timeout, "the new master promoted")
        with demoted.client() as client:  # what the sentinel does at its next INFO round (within 10 s)
            client.execute_command("REPLICAOF", "127.0.0.1", new)
        _wait(lambda: self._role(demoted) == "slave", timeout, "the old master turned replica")
        return int(new)

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)
        self.replica.kill()
        self.master.kill()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


def _require_redis() -> None:
    require_tool("redis-server", "redis-server")
    require_tool("redis-cli", "redis-tools")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server on a free port (with a unix socket too), killed after the test."""
    _require_redis()
    with RedisServer(tmp_path, unix_socket=True) as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A 3-node Redis Cluster for the whole session (tests use their own keys; ``flush()`` empties it)."""
    _require_redis()
    with RedisClusterServers(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster


@pytest.fixture
def redis_sentinel(tmp_path: Path) -> Iterator[SentinelSet]:
    """A master, a replica and a sentinel (``failover()`` promotes the replica), killed after the test."""
    _require_redis()
    with SentinelSet(tmp_path) as sentinel_set:
        yield sentinel_set
