"""Opening a Redis client from one URL: a single server (TCP, TLS or a unix socket), Sentinel or Cluster.

Every feature that keeps state in Redis (rate-limit reconciliation, ...) names its Redis with one URL
string (the ``redis_url`` setting, ``GATEWAY_REDIS_URL``, or a feature's own key) and gets its client
from ``connect``. The deployment shape is part of the URL, so a config moves from one Redis to Sentinel or
Cluster without any other key changing:

    redis://[[user]:password@]host[:port][/db][?options]       one server (port 6379, db 0 by default)
    rediss://...                                               the same over TLS
    unix://[[user]:password@]/path/to/redis.sock[?db=N&...]    one server on a unix socket
    redis+sentinel://[[user]:password@]h1[:p1],h2[:p2]/service[/db][?options]
                                                               Sentinel: the sentinels (port 26379 by
                                                               default) and the master's service name
    redis+cluster://[[user]:password@]h1[:p1],h2[:p2][?options]
                                                               Cluster: any reachable nodes to start from
                                                               (db must be 0: Cluster has no databases)
    rediss+sentinel://, rediss+cluster://                      the same over TLS (to the sentinels too)

The user and password are the data nodes' (Sentinel: the master's). Options: ``timeout`` and
``connect_timeout`` (seconds; they override what the caller asked for: a feature passes its defaults,
the operator may loosen them per deployment), ``sentinel_password`` (the sentinels' own ``requirepass``,
when they have one), ``ssl_ca_certs`` (a CA file) and ``ssl_cert_reqs`` (``required``, ``optional`` or
``none``) for TLS. Anything else is an error, found at config load (``parse``), never at the first
request. IPv6 hosts are written in brackets (``[::1]:6379``).

Why one URL rather than a mapping of keys: it is the form every Redis tool and hosted Redis already
hands out, one environment variable carries it (``GATEWAY_REDIS_URL``), and a feature's config needs
one key. ``describe`` gives the URL with the password masked: the only form that may reach a log line.

The client is ``redis.asyncio.Redis`` (one server, or Sentinel's master: ``Sentinel.master_for``, which
asks the sentinels for the master's address on each new connection and drops pooled connections when
the master changes, so a failover costs the calls in flight, not a restart) or
``redis.asyncio.RedisCluster`` (which learns the slot map from the start nodes and follows MOVED/ASK).
By default the client does not retry (``retries=0``): a caller that wants a bounded delay (the rate
limiter's sync loop, with its own timeout and circuit breaker) must not see one call become four. Such a
caller runs ``prepare`` first, without its short timeout: a Cluster client's first command also fetches
the slot map and the command table, which takes longer than a short timeout allows.

``run_script`` runs one Lua script for many key sets in one pipelined batch, on either client. On a
Cluster, redis-py's pipeline groups the calls by the node owning each call's slot and sends each node
its part concurrently, so a batch costs one round trip per node, not per call; every call's keys must
hash to one slot (give them one hash tag, ``{...}``), which Redis itself demands of a script. A node
that is down fails only its own calls (they come back as exceptions), so a caller can tell which
keys were counted. Calls go as
EVALSHA; those answered NOSCRIPT (a node restarted, a failover, a fresh cluster node) are sent again as
EVAL, which also puts the script back in that node's cache.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError

Client = Redis | RedisCluster

SCHEMES = {
    "redis": ("redis", False), "rediss": ("redis", True), "unix": ("unix", False),
    "redis+sentinel": ("sentinel", False), "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False), "rediss+cluster": ("cluster", True),
}
DEFAULT_PORTS = {"redis": 6379, "sentinel": 26379, "cluster": 6379}
OPTIONS = frozenset({"timeout", "connect_timeout", "sentinel_password", "ssl_ca_certs", "ssl_cert_reqs", "db"})
CERT_REQS = ("required", "optional", "none")


class RedisURLError(ValueError):
    """A Redis URL that cannot be used; the message never contains the password."""


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed Redis URL (see the module docstring)."""

    kind: str  # "redis", "unix", "sentinel" or "cluster"
    tls: bool = False
    nodes: tuple[tuple[str, int], ...] = ()
    path: str | None = None  # unix socket
    service: str | None = None  # Sentinel's master name
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float | None = None
    connect_timeout: float | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    ssl_ca_certs: str | None = None
    ssl_cert_reqs: str = "required"

    def describe(self) -> str:
        """The URL for log lines and errors: the password masked, options left out."""
        scheme = next(name for name, shape in SCHEMES.items() if shape == (self.kind, self.tls))
        auth = ""
        if self.username or self.password:
            auth = (self.username or "") + (":***" if self.password else "") + "@"
        if self.kind == "unix":
            return f"{scheme}://{auth}{self.path}" + (f"?db={self.db}" if self.db else "")
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.nodes)
        tail = f"/{self.service}" if self.service else ""
        if self.db:
            tail += f"/{self.db}"
        return f"{scheme}://{auth}{hosts}{tail}"


def parse(url: str) -> Target:
    """The target a Redis URL names; ``RedisURLError`` (password-free) when it names none."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in SCHEMES:
        raise RedisURLError(f"a Redis URL starts with one of {', '.join(s + '://' for s in SCHEMES)}")
    kind, tls = SCHEMES[scheme.lower()]
    rest, _, query = rest.partition("?")
    options = _options(query)
    if kind == "unix":  # unix://[userinfo@]/path: the path is everything after the userinfo
        userinfo, _, path = rest.rpartition("@")
        hosts, slash, path = "", "/", path.lstrip("/")
    else:
        netloc, slash, path = rest.partition("/")
        userinfo, _, hosts = netloc.rpartition("@")
    username, password = _userinfo(userinfo)
    common: dict[str, Any] = {
        "kind": kind, "tls": tls, "username": username, "password": password,
        "timeout": _seconds(options, "timeout"), "connect_timeout": _seconds(options, "connect_timeout"),
        "sentinel_password": options.get("sentinel_password"), "ssl_ca_certs": options.get("ssl_ca_certs"),
        "ssl_cert_reqs": _cert_reqs(options),
    }
    if kind == "unix":
        if not path:
            raise RedisURLError("a unix:// Redis URL needs the socket's path (unix:///run/redis.sock)")
        return Target(path="/" + path, db=_db(options.get("db", "0")), **common)
    nodes = _hosts(hosts, DEFAULT_PORTS[kind])
    parts = [p for p in path.split("/") if p] if slash else []
    if "db" in options:
        raise RedisURLError("the database goes in the path (redis://host/2), db= is for unix:// URLs")
    if kind == "sentinel":
        if not parts or len(parts) > 2:
            raise RedisURLError("a Sentinel URL names the master: redis+sentinel://h1:26379,h2:26379/mymaster[/db]")
        return Target(nodes=nodes, service=unquote(parts[0]), db=_db(parts[1]) if len(parts) > 1 else 0, **common)
    if len(parts) > 1:
        raise RedisURLError("expected at most a database number after the host (redis://host:6379/0)")
    db = _db(parts[0]) if parts else 0
    if kind == "cluster" and db:
        raise RedisURLError("Redis Cluster has only database 0")
    if kind == "redis" and len(nodes) > 1:
        raise RedisURLError("several hosts need redis+sentinel:// or redis+cluster://")
    return Target(nodes=nodes, db=db, **common)


def _options(query: str) -> dict[str, str]:
    options = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(options) - OPTIONS)
    if unknown:
        raise RedisURLError(f"unknown Redis URL option {unknown[0]!r} (known: {', '.join(sorted(OPTIONS))})")
    return options


def _userinfo(userinfo: str) -> tuple[str | None, str | None]:
    if not userinfo:
        return None, None
    user, colon, password = userinfo.partition(":")
    return unquote(user) or None, unquote(password) if colon and password else None


def _hosts(hosts: str, default_port: int) -> tuple[tuple[str, int], ...]:
    nodes = []
    for item in hosts.split(","):
        if item.startswith("["):
            host, _, after = item[1:].partition("]")
            port = after[1:] if after.startswith(":") else ""
        else:
            host, _, port = item.partition(":")
        if not host:
            raise RedisURLError("a Redis URL needs a host (redis://127.0.0.1:6379)")
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise RedisURLError(f"bad port {port!r} for Redis host {host!r}")
        nodes.append((host, int(port) if port else default_port))
    return tuple(nodes)


def _db(text: str) -> int:
    if not text.isdigit():
        raise RedisURLError(f"the database must be a number, got {text!r}")
    return int(text)


def _seconds(options: dict[str, str], name: str) -> float | None:
    if name not in options:
        return None
    try:
        value = float(options[name])
    except ValueError:
        value = -1.0
    if not 0 < value < 3600:
        raise RedisURLError(f"option {name} must be a number of seconds above 0, got {options[name]!r}")
    return value


def _cert_reqs(options: dict[str, str]) -> str:
    value = options.get("ssl_cert_reqs", "required")
    if value not in CERT_REQS:
        raise RedisURLError(f"option ssl_cert_reqs must be one of {', '.join(CERT_REQS)}, got {value!r}")
    return value


def client_options(target: Target, *, timeout: float | None, connect_timeout: float | None, retries: int,
                   decode_responses: bool) -> dict[str, Any]:
    """Keyword arguments of a data-node connection (the URL's timeouts win over the caller's)."""
    options: dict[str, Any] = {
        "username": target.username, "password": target.password, "decode_responses": decode_responses,
        "socket_timeout": target.timeout or timeout,
        "socket_connect_timeout": target.connect_timeout or connect_timeout or target.timeout or timeout,
        "retry": Retry(NoBackoff(), retries),
    }
    if target.kind != "cluster":
        options["db"] = target.db
    if target.tls:
        options.update(ssl=True, ssl_cert_reqs=target.ssl_cert_reqs, ssl_ca_certs=target.ssl_ca_certs,
                       ssl_check_hostname=target.ssl_cert_reqs == "required")
    return options


def connect(url: str | Target, *, timeout: float | None = 1.0, connect_timeout: float | None = None,
            retries: int = 0, decode_responses: bool = False) -> Client:
    """An asyncio client for ``url`` (no I/O until its first command). ``timeout``: each socket read or
    write; ``connect_timeout`` (default: ``timeout``): opening a connection; ``retries``: how often
    redis-py itself repeats a command after a connection error or timeout (0: the caller decides)."""
    target = parse(url) if isinstance(url, str) else url
    options = client_options(target, timeout=timeout, connect_timeout=connect_timeout, retries=retries,
                             decode_responses=decode_responses)
    if target.kind == "unix":
        return Redis(unix_socket_path=target.path, **options)
    if target.kind == "redis":
        (host, port), = target.nodes
        return Redis(host=host, port=port, **options)
    if target.kind == "cluster":
        nodes = [ClusterNode(host, port) for host, port in target.nodes]
        return RedisCluster(startup_nodes=nodes, **options)
    sentinel_options = {key: value for key, value in options.items()
                        if key.startswith(("socket_", "ssl")) or key == "retry"}
    sentinel_options["password"] = target.sentinel_password
    sentinel = Sentinel(list(target.nodes), sentinel_kwargs=sentinel_options, **options)  # type: ignore[no-untyped-call]
    assert target.service is not None
    client: Redis = sentinel.master_for(target.service)
    return client


async def prepare(client: Client) -> None:
    """Does the I/O a client needs before its first command, outside any short per-call timeout: a
    Cluster client learns the slot map and reads the command table (COMMAND: 250-400 ms on a busy
    2-core host), which a 50 ms ``asyncio.timeout`` around the first call would cancel every time, so
    the client would never get going; others open their first connection (PING). Raises what the
    connection raises: call it at start (in a task) and again after a failure."""
    if isinstance(client, RedisCluster):
        await client.initialize()
    else:
        await client.ping()


async def close(client: Client) -> None:
    """Closes ``client`` with its pool (and, for Sentinel, the connections to the sentinels)."""
    pool = getattr(client, "connection_pool", None)
    await client.aclose()
    if isinstance(pool, SentinelConnectionPool):
        await pool.sentinel_manager.aclose()


class Script:
    """A Lua script and its SHA1, for ``run_script``."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


Call = tuple[Sequence[str | bytes], Sequence[str | bytes | int | float]]


async def run_script(client: Client, script: Script, calls: Sequence[Call]) -> list[Any]:
    """Runs ``script`` once per (keys, args) of ``calls`` in one pipelined batch (on a Cluster: one per
    node, concurrently) and returns each call's result in order, or the exception that call got: a
    ``ResponseError`` from Redis (a Lua error, a wrong type...) and, on a Cluster, the ``ConnectionError``
    or ``TimeoutError`` of a node that failed while the other nodes' calls ran (or ``ClusterDownError``
    while a restarted node rejoins). A connection error or timeout that stops the whole batch raises
    (single server, Sentinel, and a Cluster client still re-learning its slot map): then no call's fate
    is known. Each call's keys must share one slot (on a Cluster, redis-py raises
    ``RedisClusterException`` before sending anything otherwise)."""
    if not calls:
        return []
    results = await _pipeline(client, [("EVALSHA", script.sha, keys, args) for keys, args in calls])
    missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
    if missing:
        again = await _pipeline(client, [("EVAL", script.source, *calls[i]) for i in missing])
        for i, result in zip(missing, again, strict=True):
            results[i] = result
    return results


async def _pipeline(client: Client, commands: Sequence[tuple[str, str, Sequence[Any], Sequence[Any]]]) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for command, body, keys, args in commands:
        pipe.execute_command(command, body, len(keys), *keys, *args)
    return list(await pipe.execute(raise_on_error=False))
