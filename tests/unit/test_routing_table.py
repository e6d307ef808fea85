"""gateway.routing.table: the Host header's host, and matching requests to routes with 404 and 405."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import ConfigError
from gateway.errors import GatewayError, MethodNotAllowed, RouteNotFound
from gateway.routing.config import RouteSpec
from gateway.routing.table import RouteTable, host_of

# --- host_of -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "host"),
    [
        ("example.com", "example.com"),
        ("example.com:8080", "example.com"),
        ("Example.COM", "example.com"),
        ("API.Example.com:443", "api.example.com"),
        ("127.0.0.1:9000", "127.0.0.1"),
        ("[::1]:8080", "[::1]"),
        ("[::1]", "[::1]"),
        ("[2001:DB8::A]:443", "[2001:db8::a]"),
        ("[::1", "[::1"),
        ("", ""),
        (":80", ""),
    ],
)
def test_host_of(header: str, host: str) -> None:
    assert host_of(header) == host


# --- match -------------------------------------------------------------------------------------------


def route(pattern: str, *, prefix: bool = False, methods: set[str] | None = None,
          hosts: tuple[str, ...] | None = None, name: str = "r") -> RouteSpec:
    return RouteSpec(name, pattern, prefix, "api", methods=None if methods is None else frozenset(methods),
                     hosts=hosts)


def table(*entries: tuple[RouteSpec, Any]) -> RouteTable[Any]:
    return RouteTable(list(entries), "gateway.yaml")


def test_match_returns_target_params_and_consumed() -> None:
    t = table(
        (route("/users"), "list"),
        (route("/users/{id}"), "one"),
        (route("/static", prefix=True), "static"),
        (route("/t/{tenant}", prefix=True), "tenant"),
    )
    assert len(t) == 4
    assert t.match("h", "GET", "/users") == ("list", None, 6)
    assert t.match("h", "GET", "/users/42") == ("one", {"id": "42"}, 9)
    assert t.match("h", "GET", "/static") == ("static", None, 7)
    assert t.match("h", "GET", "/static/css/a.css") == ("static", None, 7)
    assert t.match("h", "GET", "/t/acme/x") == ("tenant", {"tenant": "acme"}, 7)


def test_the_most_specific_route_wins() -> None:
    t = table(
        (route("/", prefix=True), "root"),
        (route("/api", prefix=True), "api"),
        (route("/api/{v}"), "param"),
        (route("/api/health"), "health"),
    )
    assert t.match("h", "GET", "/api/health")[0] == "health"
    assert t.match("h", "GET", "/api/v1")[0] == "param"
    assert t.match("h", "GET", "/api/v1/x")[0] == "api"
    assert t.match("h", "GET", "/other")[0] == "root"


def test_host_routes_before_wildcards_before_any_host() -> None:
    t = table(
        (route("/", prefix=True), "any"),
        (route("/", prefix=True, hosts=("*.example.com",), name="w"), "wildcard"),
        (route("/", prefix=True, hosts=("api.example.com",), name="h"), "host"),
    )
    assert t.match("api.example.com", "GET", "/x")[0] == "host"
    assert t.match("www.example.com", "GET", "/x")[0] == "wildcard"
    assert t.match("example.com", "GET", "/x")[0] == "any"
    assert t.match(host_of("API.Example.com:8443"), "GET", "/x")[0] == "host"


def test_methods_select_between_routes_on_one_path() -> None:
    t = table((route("/users", methods={"GET"}), "list"), (route("/users", methods={"POST"}), "create"))
    assert t.match("h", "GET", "/users")[0] == "list"
    assert t.match("h", "HEAD", "/users")[0] == "list"
    assert t.match("h", "POST", "/users")[0] == "create"


@pytest.mark.parametrize("path", ["/nothing", "/users/1/extra", "/user", "/", "users", ""])
def test_no_route_is_404(path: str) -> None:
    t = table((route("/users"), "list"), (route("/users/{id}"), "one"))
    with pytest.raises(RouteNotFound) as info:
        t.match("h", "GET", path)
    assert (info.value.status, info.value.code, info.value.headers) == (404, "route_not_found", ())
    assert isinstance(info.value, GatewayError)


def test_lookup_answers_what_match_answers_and_none_where_match_raises() -> None:
    t = table((route("/users", methods={"GET"}), "list"), (route("/users/{id}"), "one"))
    for path in ("/users", "/users/42"):
        assert t.lookup("h", "GET", path) == t.match("h", "GET", path)
    assert t.lookup("h", "GET", "/nope") is None  # match: 404
    assert t.lookup("h", "POST", "/users") is None  # match: 405


def test_a_route_for_another_host_is_404() -> None:
    t = table((route("/users", hosts=("api.example.com",)), "list"))
    with pytest.raises(RouteNotFound):
        t.match("www.example.com", "GET", "/users")


def test_wrong_method_is_405_with_sorted_allow_header() -> None:
    t = table(
        (route("/users", methods={"POST", "GET"}), "a"),
        (route("/users", methods={"DELETE"}), "b"),
        (route("/users/{id}", methods={"PUT"}), "c"),
    )
    with pytest.raises(MethodNotAllowed) as info:
        t.match("h", "PATCH", "/users")
    error = info.value
    assert (error.status, error.code) == (405, "method_not_allowed")
    assert error.headers == ((b"allow", b"DELETE, GET, HEAD, POST"),)


def test_405_allow_header_includes_prefix_routes_above_the_path() -> None:
    t = table((route("/api", prefix=True, methods={"POST"}), "a"), (route("/api/x", methods={"PUT"}), "b"))
    with pytest.raises(MethodNotAllowed) as info:
        t.match("h", "GET", "/api/x")
    assert info.value.headers == ((b"allow", b"POST, PUT"),)


def test_405_only_counts_routes_of_this_host() -> None:
    t = table(
        (route("/x", methods={"GET"}), "any"),
        (route("/x", methods={"PUT"}, hosts=("other.com",)), "other"),
    )
    with pytest.raises(MethodNotAllowed) as info:
        t.match("h", "POST", "/x")
    assert info.value.headers == ((b"allow", b"GET, HEAD"),)


# --- invalid routes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", ["/users/{id", "/users/{1d}", "/a/b{c}", "/{x}/{x}", "users"])
def test_invalid_pattern_names_the_route_path(pattern: str) -> None:
    with pytest.raises(ConfigError) as info:
        table((route("/ok"), "a"), (route(pattern), "b"))
    error = info.value
    assert (error.source, error.path) == ("gateway.yaml", "routes[1].path")
    assert error.message.startswith("expected a valid route: ")


def test_invalid_prefix_pattern_names_the_route_prefix() -> None:
    with pytest.raises(ConfigError) as info:
        table((route("/{a", prefix=True), "a"))
    assert info.value.path == "routes[0].prefix"


def test_duplicate_route_names_the_later_one() -> None:
    with pytest.raises(ConfigError) as info:
        table((route("/a"), "a"), (route("/b"), "b"), (route("/a", methods={"GET"}), "c"))
    assert info.value.path == "routes[2].path"
    assert "duplicate route" in info.value.message


def test_section_name_is_used_in_the_key_path() -> None:
    with pytest.raises(ConfigError) as info:
        RouteTable([(route("/a"), "a"), (route("/a"), "b")], "gateway.yaml", "admin.routes")
    assert info.value.path == "admin.routes[1].path"
