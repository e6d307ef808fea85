"""Server settings: one typed, frozen section; load order defaults < file < GATEWAY_* env < flags.

``SETTINGS`` is the single table of every setting: its name (the file key under ``server:``, the
environment variable ``GATEWAY_<NAME>`` and the flag ``--name``), how to read it, its default and what it
does. The CLI builds its flags from it and the README's reference table is generated from it
(``python -m gateway.settings --markdown``), so the three cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.config import ConfigError, Node

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def default_workers() -> int:
    """CPU count this process may run on (respects taskset and cpusets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting: its name, reader, default and description."""

    name: str
    read: Callable[[Node], Any]
    default: Any
    doc: str
    in_file: bool = True
    flag_type: str = "value"  # "value" or "bool" (--x / --no-x)
    default_doc: str | None = None

    @property
    def env(self) -> str:
        return "GATEWAY_" + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _host(node: Node) -> str:
    return str(node.string())


def _port(node: Node) -> int:
    return int(node.integer(minimum=0, maximum=65535))


def _optional_text(node: Node) -> str | None:
    value = node.string(None)
    return None if value is None else str(value)


def _upstream_url(node: Node) -> str | None:
    value = node.string(None)
    if value is None:
        return None
    from gateway.proxy.target import parse_target

    parse_target(node)
    return str(value)


def _redis_url(node: Node) -> str | None:
    """A URL gateway/redisconn.py can open; the error never repeats the value (it may hold a password)."""
    from gateway.redisconn import RedisURLError, parse

    value = str(node.string())  # read only when given (an unset setting keeps its default, None)
    try:
        parse(value)
    except RedisURLError as error:
        raise ConfigError(node.source, node.path, f"expected a Redis URL: {error}") from None
    return value


def _log_file(node: Node) -> str | None:
    """An absolute path (workers and reloads agree on it) the access log can be appended to."""
    value = node.string(None)
    if value is None:
        return None
    from gateway.observability.access_log import check_log_file

    path = os.path.abspath(str(value))
    problem = check_log_file(path)
    if problem is not None:
        raise ConfigError(node.source, node.path, problem)
    return path


def _state_file(node: Node) -> str | None:
    """An absolute path in an existing, writable directory (the file itself is made on first use)."""
    value = node.string(None)
    if value is None:
        return None
    path = os.path.abspath(str(value))
    directory = os.path.dirname(path)
    if os.path.isdir(path) or not os.path.isdir(directory) or not os.access(directory, os.W_OK):
        node.fail("a file path in an existing, writable directory")
    return path


def _secret_file(node: Node) -> str | None:
    """An absolute path of a readable file holding a secret (its content is checked, never shown)."""
    value = node.string(None)
    if value is None:
        return None
    path = os.path.abspath(str(value))
    try:
        with open(path, "rb") as file:
            secret = file.read().strip()
    except OSError as exc:
        raise ConfigError(node.source, node.path, f"cannot read {path}: {exc.strerror or exc}") from None
    if not secret:
        raise ConfigError(node.source, node.path, f"expected a token in {path}; the file is empty")
    return path


def _fraction(node: Node) -> float:
    """A number from 0 to 1; from the environment or a flag it arrives as text."""
    value = node.value
    try:
        number = float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else -1.0
    except ValueError:
        number = -1.0
    if not 0.0 <= number <= 1.0:  # NaN fails too
        node.fail("a number from 0 to 1")
    return number


SETTINGS: tuple[Setting, ...] = (
    Setting("host", _host, "0.0.0.0", "Address the public listener binds."),
    Setting("port", _port, 8080, "Public port; every worker serves its own SO_REUSEPORT socket on it."),
    Setting("workers", lambda n: n.integer(minimum=1, maximum=1024), None,
            "Worker processes.", default_doc="CPU count"),
    Setting("admin_host", _host, "127.0.0.1",
            "Address of the admin listener (health, readiness, metrics, dashboard, admin endpoints)."),
    Setting("admin_port", _port, 9901,
            "Admin port: `GET /healthz`, `GET /readyz`, `GET /metrics`, `GET /dashboard`."),
    Setting("admin_state_file", _state_file, None,
            "Where admin API changes to routes and upstreams are kept (JSON, replaced atomically), laid over "
            "the config file at start and on reload; without it `PUT`/`DELETE /config/...` answer 405.",
            default_doc="none (admin API read-only)"),
    Setting("admin_token_file", _secret_file, None,
            "File holding the bearer token every admin `PUT`, `POST` and `DELETE` must send "
            "(`Authorization: Bearer TOKEN`); read again on reload.", default_doc="none (no token)"),
    Setting("admin_token", _optional_text, None,
            "The admin bearer token itself (instead of `admin_token_file`); set it in the environment, "
            "a flag shows in `ps`.", in_file=False, default_doc="none (no token)"),
    Setting("access_log", lambda n: n.boolean(), True,
            "One JSON line per request (see Access log), on stdout or to `access_log_file`.", flag_type="bool"),
    Setting("access_log_file", _log_file, None,
            "Append the access log to this file instead of stdout; `SIGUSR1` to the supervisor reopens it "
            "(log rotation).", default_doc="none (stdout)"),
    Setting("access_log_sample", _fraction, 1.0,
            "Fraction (0 to 1) of successful requests logged; failed (status 400 and up) and slow (1s or "
            "more) requests are always logged.", default_doc="1"),
    Setting("log_level", lambda n: n.choice(LOG_LEVELS), "info", "One of " + ", ".join(LOG_LEVELS) + "."),
    Setting("drain_timeout", lambda n: n.duration(), 30.0,
            "On SIGTERM/SIGINT or reload, how long in-flight requests may take to finish.",
            default_doc="30s"),
    Setting("keepalive_timeout", lambda n: n.duration(), 60.0,
            "Idle client keep-alive connections are closed after this.", default_doc="60s"),
    Setting("header_timeout", lambda n: n.duration(), 10.0,
            "A client must send the request line and headers within this (slow-header guard).",
            default_doc="10s"),
    Setting("max_header_bytes", lambda n: n.size(), 65536,
            "Largest request line plus headers; larger gets 431.", default_doc="64KiB"),
    Setting("max_body_bytes", lambda n: n.size(), 1024**3,
            "Largest request body; larger gets 413. 0 means no limit. A route's `max_body_bytes` overrides it.",
            default_doc="1GiB"),
    Setting("max_header_count", lambda n: n.integer(minimum=0), 100,
            "Most header fields in a request; more gets 431. 0 means no limit."),
    Setting("min_body_rate", lambda n: n.size(), 0,
            "Bytes per second a request body must keep arriving at after `body_rate_grace` (measured over each "
            "`body_rate_window`); slower gets 408 (slow-body guard). 0 means no minimum."),
    Setting("body_rate_grace", lambda n: n.duration(), 5.0,
            "How long a request body may take before `min_body_rate` applies.", default_doc="5s"),
    Setting("body_rate_window", lambda n: n.duration(), 5.0,
            "The window over which `min_body_rate` is measured.", default_doc="5s"),
    Setting("backlog", lambda n: n.integer(minimum=1), 2048, "Listen backlog of each worker's socket."),
    Setting("gc_threshold", lambda n: n.integer(minimum=0), 50000,
            "Allocations between a worker's young-generation garbage collections (CPython's default is "
            "700; 0 keeps it). Fewer passes over per-request objects: about 14% less CPU per request."),
    Setting("config", _optional_text, None, "YAML config file (routes, upstreams, server settings).",
            in_file=False, default_doc="none"),
    Setting("upstream", _upstream_url, None,
            "Quick mode: proxy every path to this URL (`http://HOST:PORT`).", in_file=False,
            default_doc="none"),
    Setting("redis_url", _redis_url, None,
            "Redis for state shared across hosts; not needed on one host. `redis://[:PASSWORD@]HOST:PORT/DB`, "
            "`rediss://` (TLS), `unix:///PATH`; for rate limits also Sentinel "
            "(`redis+sentinel://H1:26379,H2:26379/MASTER`) and Cluster (`redis+cluster://H1:6379,H2:6379`), "
            "see Rate limiting.",
            default_doc="none"),
)
SETTINGS_BY_NAME = {s.name: s for s in SETTINGS}
SERVER_KEYS = frozenset(s.name for s in SETTINGS if s.in_file)


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """The resolved server settings (see SETTINGS for what each one does)."""

    host: str = "0.0.0.0"
    port: int = 8080
    workers: int = 1
    admin_host: str = "127.0.0.1"
    admin_port: int = 9901
    admin_state_file: str | None = None
    admin_token_file: str | None = None
    admin_token: str | None = dataclasses.field(default=None, repr=False)  # a secret: never in a repr
    access_log: bool = True
    access_log_file: str | None = None
    access_log_sample: float = 1.0
    log_level: str = "info"
    drain_timeout: float = 30.0
    keepalive_timeout: float = 60.0
    header_timeout: float = 10.0
    max_header_bytes: int = 65536
    max_body_bytes: int = 1024**3
    max_header_count: int = 100
    min_body_rate: int = 0
    body_rate_grace: float = 5.0
    body_rate_window: float = 5.0
    backlog: int = 2048
    gc_threshold: int = 50000
    config: str | None = None
    upstream: str | None = None
    redis_url: str | None = None


def resolve(
    file_section: Node | None,
    environ: Mapping[str, str],
    flags: Mapping[str, Any],
) -> ServerSettings:
    """Resolves every setting by precedence flag > environment > file > default."""
    values: dict[str, Any] = {}
    if file_section is not None:
        file_section.mapping(SERVER_KEYS, optional=True)
    for setting in SETTINGS:
        node = _winning_node(setting, file_section, environ, flags)
        if node is None:
            values[setting.name] = default_workers() if setting.name == "workers" else setting.default
            continue
        values[setting.name] = setting.read(node)
    if values["admin_token"] is not None and values["admin_token_file"] is not None:
        raise ConfigError("settings", "admin_token", "expected either GATEWAY_ADMIN_TOKEN (--admin-token) or "
                          "admin_token_file, not both")
    return ServerSettings(**values)


def _winning_node(
    setting: Setting, file_section: Node | None, environ: Mapping[str, str], flags: Mapping[str, Any]
) -> Node | None:
    if flags.get(setting.name) is not None:
        return Node(flags[setting.name], f"flag {setting.flag}")
    if environ.get(setting.env, "") != "":
        return Node(environ[setting.env], f"environment variable {setting.env}")
    if file_section is not None and setting.in_file:
        node = file_section.child(setting.name)
        if not node.missing:
            return node
    return None


def replace(settings: ServerSettings, **changes: Any) -> ServerSettings:
    """A copy of ``settings`` with ``changes`` (settings are frozen)."""
    return dataclasses.replace(settings, **changes)


def markdown_table() -> str:
    """The README's reference table of settings."""
    rows = [
        "| setting (file key under `server:`) | environment variable | flag | default | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for s in SETTINGS:
        key = f"`{s.name}`" if s.in_file else "(not in the file)"
        flag = f"`{s.flag}` / `--no-{s.flag[2:]}`" if s.flag_type == "bool" else f"`{s.flag}`"
        rows.append(f"| {key} | `{s.env}` | {flag} | {_default_cell(s)} | {s.doc} |")
    return "\n".join(rows)


def _default_cell(setting: Setting) -> str:
    if setting.default_doc is None:
        return f"`{str(setting.default).lower()}`"
    doc = setting.default_doc  # a value ("30s") is code; a phrase ("CPU count", "none") is prose
    return f"`{doc}`" if doc[0].isdigit() else doc


def _main(argv: list[str]) -> int:
    if argv[1:] == ["--markdown"]:
        print(markdown_table())
        return 0
    print("usage: python -m gateway.settings --markdown", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_main(sys.argv))


__all__ = ["SETTINGS", "ConfigError", "ServerSettings", "Setting", "resolve"]
