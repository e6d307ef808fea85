"""gateway.loader: the whole configuration, quick mode or a file, with every error naming its key path."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError
from gateway.loader import QUICK_SOURCE, GatewayConfig, from_document, load
from gateway.proxy.target import Target
from gateway.routing.config import RouteSpec
from gateway.upstreams.config import OutlierSpec, RetrySpec, UpstreamSpec

UPSTREAMS = """\
upstreams:
  api: http://127.0.0.1:9001
  web: http://127.0.0.1:9002
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_text(
    tmp_path: Path, text: str, environ: dict[str, str] | None = None, **flags: Any
) -> GatewayConfig:
    return load(environ or {}, {"config": str(write(tmp_path, text)), **flags})


def failure(tmp_path: Path, text: str, environ: dict[str, str] | None = None, **flags: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text, environ, **flags)
    return info.value


def routes_failure(tmp_path: Path, routes: str) -> ConfigError:
    """The error of a file with the ``api`` and ``web`` upstreams and these routes (YAML, indented by 2)."""
    return failure(tmp_path, UPSTREAMS + "routes:\n" + textwrap.indent(textwrap.dedent(routes), "  "))


def one_route(tmp_path: Path, route: str) -> RouteSpec:
    config = load_text(tmp_path, UPSTREAMS + "routes:\n" + textwrap.indent(textwrap.dedent(route), "  "))
    assert len(config.routes) == 1
    return config.routes[0]


# --- quick mode --------------------------------------------------------------------------------------


def test_quick_mode_from_a_flag_makes_one_prefix_route() -> None:
    config = load({}, {"upstream": "http://127.0.0.1:9000"})
    assert config.source == QUICK_SOURCE
    assert config.upstreams == {"default": UpstreamSpec("default", (Target("127.0.0.1", 9000),))}
    assert config.routes == (RouteSpec(name="default", pattern="/", prefix=True, upstream="default"),)
    assert config.server.upstream == "http://127.0.0.1:9000"
    assert config.server.config is None


def test_quick_mode_from_the_environment() -> None:
    config = load({"GATEWAY_UPSTREAM": "http://upstream.local:8000/base", "GATEWAY_PORT": "81"}, {})
    assert config.upstreams["default"].targets == (Target("upstream.local", 8000, "/base"),)
    assert [(r.pattern, r.prefix) for r in config.routes] == [("/", True)]
    assert config.server.port == 81


def test_quick_mode_flag_beats_environment() -> None:
    config = load({"GATEWAY_UPSTREAM": "http://env:1"}, {"upstream": "http://flag:2"})
    assert config.upstreams["default"].targets == (Target("flag", 2),)


def test_quick_mode_bad_url_names_where_it_came_from() -> None:
    with pytest.raises(
        ConfigError, match=r"^environment variable GATEWAY_UPSTREAM: expected an upstream URL"
    ):
        load({"GATEWAY_UPSTREAM": "https://secure:443"}, {})


def test_nothing_to_proxy() -> None:
    with pytest.raises(ConfigError, match="nothing to proxy: pass --upstream URL or --config FILE"):
        load({}, {})


def test_empty_config_and_upstream_values_are_unset() -> None:
    with pytest.raises(ConfigError, match="nothing to proxy"):
        load({"GATEWAY_CONFIG": "", "GATEWAY_UPSTREAM": ""}, {"config": None, "upstream": None})


@pytest.mark.parametrize(
    ("environ", "flags"),
    [
        ({}, {"upstream": "http://127.0.0.1:9000"}),
        ({"GATEWAY_UPSTREAM": "http://127.0.0.1:9000"}, {}),
    ],
    ids=["flag", "environment"],
)
def test_config_file_and_upstream_together_are_refused(
    tmp_path: Path, environ: dict[str, str], flags: dict[str, Any]
) -> None:
    path = write(tmp_path, UPSTREAMS + "routes:\n  - prefix: /\n    upstream: api\n")
    with pytest.raises(ConfigError) as info:
        load(environ, {"config": str(path), **flags})
    assert str(info.value) == f"{path}: use either a config file or --upstream/GATEWAY_UPSTREAM, not both"


# --- the file ----------------------------------------------------------------------------------------


FULL = """\
server:
  port: 8081
  workers: 2
  drain_timeout: 5s
upstreams:
  short: http://127.0.0.1:9001/base/
  pool:
    targets:
      - http://10.0.0.1:80
      - url: http://10.0.0.2:8080
    connect_timeout: 250ms
    read_timeout: 2m
    keepalive: 16
    keepalive_timeout: 30s
  v6:
    targets: ["http://[::1]:9003"]
routes:
  - name: users
    path: /users/{id}
    methods: [GET, PUT]
    upstream: pool
    rewrite: /v2/users/{id}
  - name: api
    prefix: /api
    hosts: [API.example.com, "*.example.org"]
    strip_prefix: true
    preserve_host: true
    upstream: short
  - prefix: /inline
    upstream: http://127.0.0.1:9100/x
  - path: /
    upstream: v6
"""


def test_full_config(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    config = load({}, {"config": str(path)})
    assert config.source == str(path)
    assert (config.server.port, config.server.workers, config.server.drain_timeout) == (8081, 2, 5.0)
    assert config.server.config == str(path)
    assert config.upstreams == {
        "short": UpstreamSpec("short", (Target("127.0.0.1", 9001, "/base"),)),
        "pool": UpstreamSpec(
            "pool",
            (Target("10.0.0.1", 80), Target("10.0.0.2", 8080)),
            connect_timeout=0.25,
            read_timeout=120.0,
            keepalive=16,
            keepalive_timeout=30.0,
            outlier=OutlierSpec(),  # on by default with several targets, as are retries
            retries=RetrySpec(),
            plain=False,
        ),
        "v6": UpstreamSpec("v6", (Target("::1", 9003),)),
    }
    assert config.routes == (
        RouteSpec(
            "users", "/users/{id}", False, "pool", methods=frozenset({"GET", "PUT"}), rewrite="/v2/users/{id}"
        ),
        RouteSpec(
            "api",
            "/api",
            True,
            "short",
            hosts=("api.example.com", "*.example.org"),
            strip_prefix=True,
            preserve_host=True,
        ),
        RouteSpec("prefix:/inline", "/inline", True, "http://127.0.0.1:9100/x"),
        RouteSpec("path:/", "/", False, "v6"),
    )


def test_upstream_defaults(tmp_path: Path) -> None:
    config = load_text(
        tmp_path, "upstreams:\n  a:\n    targets: [http://h:1]\nroutes:\n  - path: /\n    upstream: a\n"
    )
    spec = config.upstreams["a"]
    assert (spec.connect_timeout, spec.read_timeout, spec.keepalive, spec.keepalive_timeout) == (
        5.0,
        60.0,
        128,
        60.0,
    )


def test_the_file_is_interpolated_from_the_environment(tmp_path: Path) -> None:
    text = "upstreams:\n  api: ${API_URL}\nroutes:\n  - prefix: ${API_PREFIX:-/api}\n    upstream: api\n"
    config = load_text(tmp_path, text, {"API_URL": "http://10.1.1.1:7000"})
    assert config.upstreams["api"].targets == (Target("10.1.1.1", 7000),)
    assert config.routes[0].pattern == "/api"


def test_config_path_from_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, UPSTREAMS + "routes:\n  - prefix: /\n    upstream: api\n")
    assert load({"GATEWAY_CONFIG": str(path)}, {}).source == str(path)


def test_config_flag_beats_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, UPSTREAMS + "routes:\n  - prefix: /\n    upstream: api\n")
    assert load({"GATEWAY_CONFIG": str(tmp_path / "missing.yaml")}, {"config": str(path)}).source == str(path)


def test_server_section_then_environment_then_flags(tmp_path: Path) -> None:
    text = "server:\n  port: 1000\n  admin_port: 1001\n  backlog: 10\n" + UPSTREAMS
    text += "routes:\n  - prefix: /\n    upstream: api\n"
    config = load_text(tmp_path, text, {"GATEWAY_PORT": "2000", "GATEWAY_ADMIN_PORT": "2001"}, port="3000")
    assert (config.server.port, config.server.admin_port, config.server.backlog) == (3000, 2001, 10)


def test_route_forms(tmp_path: Path) -> None:
    exact = one_route(tmp_path, "- path: /health\n  upstream: api\n")
    assert (exact.pattern, exact.prefix, exact.methods, exact.hosts) == ("/health", False, None, None)
    prefix = one_route(tmp_path, "- prefix: /static/\n  upstream: web\n  methods: [GET]\n")
    assert (prefix.pattern, prefix.prefix, prefix.methods) == ("/static/", True, frozenset({"GET"}))


def test_route_wildcard_and_plain_hosts_are_lower_cased(tmp_path: Path) -> None:
    route = one_route(
        tmp_path, '- prefix: /\n  upstream: api\n  hosts: ["*.Example.COM", Api.Local, 10.0.0.1]\n'
    )
    assert route.hosts == ("*.example.com", "api.local", "10.0.0.1")


def test_route_rewrite_with_parameters(tmp_path: Path) -> None:
    route = one_route(
        tmp_path, "- path: /u/{user}/posts/{post}\n  upstream: api\n  rewrite: /posts/{post}?u={user}\n"
    )
    assert route.rewrite == "/posts/{post}?u={user}"


def test_route_strip_prefix_and_preserve_host(tmp_path: Path) -> None:
    route = one_route(tmp_path, "- prefix: /api\n  upstream: api\n  strip_prefix: yes\n  preserve_host: on\n")
    assert (route.strip_prefix, route.preserve_host) == (True, True)


def test_route_inline_url_upstream(tmp_path: Path) -> None:
    config = load_text(tmp_path, "routes:\n  - prefix: /\n    upstream: http://127.0.0.1:9000\n")
    assert config.upstreams == {}
    assert config.routes[0].upstream == "http://127.0.0.1:9000"


def test_same_path_on_other_hosts_or_kinds_is_no_conflict(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        UPSTREAMS
        + """\
routes:
  - {name: a, path: /x, upstream: api}
  - {name: b, path: /x, upstream: web, hosts: [b.example.com]}
  - {name: c, prefix: /x, upstream: web}
  - {name: d, path: /x, upstream: web, hosts: ["*.example.com"]}
""",
    )
    assert [r.name for r in config.routes] == ["a", "b", "c", "d"]


def test_named_routes_on_one_path_with_other_methods(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        UPSTREAMS
        + """\
routes:
  - {name: list, path: /users, methods: [GET], upstream: api}
  - {name: create, path: /users, methods: [POST], upstream: web}
""",
    )
    assert [sorted(r.methods or ()) for r in config.routes] == [["GET"], ["POST"]]


def test_unnamed_routes_on_one_path_with_other_methods(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        UPSTREAMS
        + """\
routes:
  - {path: /users, methods: [GET], upstream: api}
  - {path: /users, methods: [POST], upstream: web}
""",
    )
    assert len(config.routes) == 2


# --- every error names its key path ------------------------------------------------------------------


def test_unknown_upstream_name_names_the_route_index_and_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        UPSTREAMS
        + """\
routes:
  - {path: /a, upstream: api}
  - {path: /b, upstream: web}
  - {prefix: /c, upstream: api}
  - {prefix: /d, upstream: missing}
""",
    )
    with pytest.raises(ConfigError) as info:
        load({}, {"config": str(path)})
    error = info.value
    assert error.source == str(path)
    assert error.path == "routes[3].upstream"
    assert str(error).startswith(
        f"{path}: routes[3].upstream: expected the name of an upstream under 'upstreams' "
        "(api, web) or a URL like http://HOST:PORT, got 'missing'"
    )


def test_unknown_upstream_name_without_upstreams(tmp_path: Path) -> None:
    error = failure(tmp_path, "routes:\n  - {path: /, upstream: api}\n")
    assert "(none are defined)" in str(error)


ROUTE_ERRORS = [
    # routes (YAML list), key path, start of the message
    (
        "- {path: /a, prefix: /a, upstream: api}",
        "routes[0]",
        "expected exactly one of 'path' (exact) or 'prefix'",
    ),
    ("- {upstream: api}", "routes[0]", "expected exactly one of 'path' (exact) or 'prefix'"),
    (
        "- {path: /a, upstream: api}\n"
        "- {name: x, path: /b, upstream: api}\n"
        "- {name: x, path: /c, upstream: web}",
        "routes[2].name",
        "expected a unique route name; 'x' is also routes[1]",
    ),
    (
        "- {name: users, path: /a, upstream: api}\n- {name: users, path: /b, upstream: web}",
        "routes[1].name",
        "expected a unique route name; 'users' is also routes[0]",
    ),
    ("- {name: 'a b', path: /a, upstream: api}", "routes[0].name", "expected a route name of letters"),
    ("- {path: a, upstream: api}", "routes[0].path", "expected a path pattern starting with /"),
    ("- {prefix: '', upstream: api}", "routes[0].prefix", "expected a non-empty string"),
    ("- {path: /a}", "routes[0].upstream", "expected an upstream name or URL; the key is missing"),
    (
        "- {path: /a, upstream: api, paht: /b}",
        "routes[0].paht",
        "unknown key; expected one of: auth, hosts, max_body_bytes, methods",
    ),
    ("- {path: /a, upstream: 'http://h:1?x=1'}", "routes[0].upstream", "expected an upstream URL like"),
    (
        "- {path: /a, upstream: api, strip_prefix: true}",
        "routes[0].strip_prefix",
        "expected strip_prefix only on a 'prefix' route",
    ),
    (
        "- {prefix: /a, upstream: api, strip_prefix: true, rewrite: /b}",
        "routes[0].rewrite",
        "expected either rewrite or strip_prefix, not both",
    ),
    ("- {path: /a, upstream: api, rewrite: b}", "routes[0].rewrite", "expected a path starting with /"),
    (
        "- {path: '/a/{id}', upstream: api, rewrite: '/b/{ID}'}",
        "routes[0].rewrite",
        "expected only parameters of the route's pattern (id), not {ID}",
    ),
    (
        "- {path: /a, upstream: api, methods: [GET, get]}",
        "routes[0].methods[1]",
        "expected an HTTP method in capitals",
    ),
    ("- {path: /a, upstream: api, methods: []}", "routes[0].methods", "expected at least one method"),
    ("- {path: /a, upstream: api, methods: GET}", "routes[0].methods", "expected a list, got 'GET'"),
    (
        "- {path: /a, upstream: api, hosts: [a.com, 'a.com:80']}",
        "routes[0].hosts[1]",
        "expected a host name like",
    ),
    ("- {path: /a, upstream: api, hosts: []}", "routes[0].hosts", "expected at least one host"),
    (
        "- {path: /a, upstream: api, preserve_host: sometimes}",
        "routes[0].preserve_host",
        "expected true or false",
    ),
    (
        "- {path: /a, upstream: api}\n- {name: b, path: '/x/{id', upstream: api}",
        "routes[1].path",
        "expected a valid route: bad segment",
    ),
    (
        "- {path: /a, upstream: api}\n- {name: b, prefix: '/x/{a}/{a}', upstream: api}",
        "routes[1].prefix",
        "expected a valid route: route pattern '/x/{a}/{a}' repeats parameter 'a'",
    ),
    (
        "- {name: a, path: /a, upstream: api}\n- {name: b, path: /a, upstream: web}",
        "routes[1].path",
        "expected a valid route: duplicate route",
    ),
    (
        "- {name: a, path: /a, methods: [GET, POST], upstream: api}\n"
        "- {name: b, path: /a, methods: [POST], upstream: web}",
        "routes[1].path",
        "expected a valid route: duplicate",
    ),
    (
        "- {name: a, prefix: /a, upstream: api, hosts: [x.com]}\n"
        "- {name: b, prefix: /a/, upstream: web, hosts: [x.com]}",
        "routes[1].prefix",
        "expected a valid route: duplicate route",
    ),
    ("- not a mapping", "routes[0]", "expected a mapping, got 'not a mapping'"),
]


@pytest.mark.parametrize(
    ("routes", "key", "message"), ROUTE_ERRORS, ids=[e[1] + ":" + e[2][:30] for e in ROUTE_ERRORS]
)
def test_route_errors_name_the_key_path(tmp_path: Path, routes: str, key: str, message: str) -> None:
    error = routes_failure(tmp_path, routes)
    assert error.source == str(tmp_path / "gateway.yaml")
    assert error.path == key
    assert error.message.startswith(message)


@pytest.mark.parametrize(
    ("field", "key"), [("methods", "routes[0].methods[0]"), ("hosts", "routes[0].hosts[0]")]
)
def test_a_trailing_newline_is_named_at_its_key(tmp_path: Path, field: str, key: str) -> None:
    value = '"GET\\n"' if field == "methods" else '"a.com\\n"'
    assert routes_failure(tmp_path, f"- {{path: /a, upstream: api, {field}: [{value}]}}").path == key


UPSTREAM_ERRORS = [
    ("api:\n  targets: []", "upstreams.api.targets", "expected at least one target URL, got a list"),
    ("api: {}", "upstreams.api.targets", "expected a list of target URLs; the key is missing"),
    ("api:\n  targets: http://h:1", "upstreams.api.targets", "expected a list"),
    (
        "api: https://h:443",
        "upstreams.api",
        "expected an upstream URL like http://127.0.0.1:9000 (https upstreams",
    ),
    (
        "api:\n  targets: [http://h:1, https://h:2]",
        "upstreams.api.targets[1]",
        "expected an upstream URL like",
    ),
    ("api:\n  targets: [{url: https://h}]", "upstreams.api.targets[0].url", "expected an upstream URL like"),
    (
        "api:\n  targets: [{uri: http://h}]",
        "upstreams.api.targets[0].uri",
        "unknown key; expected one of: url",
    ),
    ("api:\n  targets: [{}]", "upstreams.api.targets[0].url", "expected a value; the key is missing"),
    ("api: h:1", "upstreams.api", "expected an upstream URL like"),
    (
        "api: http://u:p@h:1",
        "upstreams.api",
        "expected an upstream URL like http://127.0.0.1:9000 without credentials",
    ),
    ("api: http://h:70000", "upstreams.api", "expected an upstream URL like"),
    (
        "api:\n  targets: [http://a/x, http://b/y]",
        "upstreams.api.targets",
        "expected targets that share one base path",
    ),
    (
        "api:\n  targets: [http://a]\n  read_timeout: never",
        "upstreams.api.read_timeout",
        "expected a duration",
    ),
    (
        "api:\n  targets: [http://a]\n  keepalive: -1",
        "upstreams.api.keepalive",
        "expected an integer of at least 0",
    ),
    (
        "api:\n  targets: [http://a]\n  retry: 3",
        "upstreams.api.retry",
        "unknown key; expected one of: backup, balancer, circuit_breaker, connect",
    ),
    ("api:", "upstreams.api", "expected a value; the key is missing"),
    ("'my api': http://a", "upstreams.my api", "expected an upstream name of letters, digits, - _ ."),
]


@pytest.mark.parametrize(
    ("upstreams", "key", "message"), UPSTREAM_ERRORS, ids=[e[1] for e in UPSTREAM_ERRORS]
)
def test_upstream_errors_name_the_key_path(tmp_path: Path, upstreams: str, key: str, message: str) -> None:
    text = (
        "upstreams:\n" + textwrap.indent(upstreams, "  ") + "\nroutes:\n  - {prefix: /, upstream: http://h}\n"
    )
    error = failure(tmp_path, text)
    assert (error.source, error.path) == (str(tmp_path / "gateway.yaml"), key)
    assert error.message.startswith(message)


def test_upstreams_must_be_a_mapping(tmp_path: Path) -> None:
    error = failure(tmp_path, "upstreams: [http://h]\nroutes:\n  - {prefix: /, upstream: http://h}\n")
    assert (error.path, error.message) == ("upstreams", "expected a mapping, got a list")


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        (UPSTREAMS, "routes", "expected at least one route"),
        (UPSTREAMS + "routes: []\n", "routes", "expected at least one route"),
        (UPSTREAMS + "routes: {path: /}\n", "routes", "expected a list, got a mapping"),
        ("rotes: []\n", "rotes",
         "unknown key; expected one of: auth, guards, ratelimit, routes, server, tracing, upstreams"),
        ("server:\n  prot: 1\n", "server.prot", "unknown key; expected one of: access_log"),
        ("server:\n  workers: 0\n", "server.workers", "expected an integer from 1 to 1024, got 0"),
    ],
)
def test_top_level_errors(tmp_path: Path, text: str, key: str, message: str) -> None:
    error = failure(tmp_path, text)
    assert error.path == key
    assert error.message.startswith(message)


def test_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load({}, {"config": str(tmp_path / "missing.yaml")})


# --- the document and the summary --------------------------------------------------------------------


def test_from_document_round_trips(tmp_path: Path) -> None:
    config = load_text(tmp_path, FULL)
    again = from_document(config.document)
    assert again == config
    assert again.document == config.document


def test_from_document_round_trips_through_json(tmp_path: Path) -> None:
    config = load_text(tmp_path, FULL, {"GATEWAY_LOG_LEVEL": "debug"})
    again = from_document(json.loads(json.dumps(config.document)))
    assert again == config
    assert again.server.log_level == "debug"


def test_quick_mode_round_trips() -> None:
    config = load({}, {"upstream": "http://127.0.0.1:9000"})
    assert from_document(json.loads(json.dumps(config.document))) == config


def test_from_document_validates_like_load() -> None:
    document = {"source": "doc", "server": {}, "upstreams": {}, "routes": [{"path": "/", "upstream": "nope"}]}
    with pytest.raises(ConfigError, match=r"^doc: routes\[0\]\.upstream: expected the name of an upstream"):
        from_document(document)


def test_summary_lists_upstreams_and_routes(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    summary = load({}, {"config": str(path)}).summary()
    assert summary.splitlines() == [
        f"{path}: valid",
        "upstreams (3):",
        "  short: http://127.0.0.1:9001/base",
        "  pool: http://10.0.0.1, http://10.0.0.2:8080",
        "  v6: http://[::1]:9003",
        "routes (4):",
        "  users: path /users/{id} methods=GET,PUT hosts=* -> pool",
        "  api: prefix /api methods=* hosts=api.example.com,*.example.org -> short",
        "  prefix:/inline: prefix /inline methods=* hosts=* -> http://127.0.0.1:9100/x",
        "  path:/: path / methods=* hosts=* -> v6",
    ]


def test_quick_mode_summary() -> None:
    assert load({}, {"upstream": "http://127.0.0.1:9000"}).summary().splitlines() == [
        "--upstream: valid",
        "upstreams (1):",
        "  default: http://127.0.0.1:9000",
        "routes (1):",
        "  default: prefix / methods=* hosts=* -> default",
    ]
