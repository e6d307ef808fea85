"""gateway.routing.paths: one normalised path for routing and forwarding, and the per-route rewriters."""

from __future__ import annotations

import pytest

from gateway.routing.config import RouteSpec
from gateway.routing.paths import make_rewriter, normalize_path
from gateway.routing.table import RouteTable

# --- normalize_path ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/users", "/users/42/posts", "/a-b_c~d", "/a.b/c.", "//x", "/a?b=c"])
def test_fast_path_returns_the_same_object(path: str) -> None:
    assert normalize_path(path) is path


@pytest.mark.parametrize(
    ("path", "normal"),
    [
        ("/%7E", "/~"),
        ("/%7e", "/~"),
        ("/%41", "/A"),
        ("/%61%62c", "/abc"),
        ("/%30%39", "/09"),
        ("/a%2Db%5Fc%2E", "/a-b_c."),
    ],
)
def test_unreserved_characters_are_decoded(path: str, normal: str) -> None:
    assert normalize_path(path) == normal


@pytest.mark.parametrize(
    ("path", "normal"),
    [
        ("/a%2fb", "/a%2Fb"),
        ("/a%2Fb", "/a%2Fb"),
        ("/%20", "/%20"),
        ("/%c3%a9", "/%C3%A9"),
        ("/%25", "/%25"),
        ("/%252e", "/%252e"),
        ("/%3f%23", "/%3F%23"),
    ],
)
def test_other_escapes_are_upper_cased_and_kept(path: str, normal: str) -> None:
    assert normalize_path(path) == normal


def test_an_encoded_slash_is_data_not_a_separator() -> None:
    assert normalize_path("/public/..%2Fadmin") == "/public/..%2Fadmin"
    assert normalize_path("/a%2F..%2Fb") == "/a%2F..%2Fb"


@pytest.mark.parametrize("path", ["/%G1", "/%1G", "/%", "/a%", "/a%4", "/%%41", "/%00", "/a%00b", "/%-1"])
def test_bad_escapes_are_refused(path: str) -> None:
    assert normalize_path(path) is None


@pytest.mark.parametrize(
    ("path", "normal"),
    [
        ("/a/./b", "/a/b"),
        ("/a/../b", "/b"),
        ("/../a", "/a"),
        ("/../../a", "/a"),
        ("/a/b/..", "/a/"),
        ("/a/b/.", "/a/b/"),
        ("/.", "/"),
        ("/..", "/"),
        ("/a/b/../..", "/"),
        ("/a/./b/../c/", "/a/c/"),
        ("/a/.b/..c/...", "/a/.b/..c/..."),
    ],
)
def test_dot_segments_are_removed(path: str, normal: str) -> None:
    assert normalize_path(path) == normal


@pytest.mark.parametrize(
    ("path", "normal"),
    [
        ("/a/%2E%2E/b", "/b"),
        ("/a/%2e%2e/b", "/b"),
        ("/a/.%2E/b", "/b"),
        ("/a/%2E/b", "/a/b"),
        ("/public/%2e%2e/admin", "/admin"),
    ],
)
def test_encoded_dots_are_dot_segments_after_decoding(path: str, normal: str) -> None:
    assert normalize_path(path) == normal


@pytest.mark.parametrize("path", ["", "a/b", "*", "http://h/a", "%2Fa", "./a"])
def test_a_path_not_starting_with_a_slash_is_refused(path: str) -> None:
    assert normalize_path(path) is None


@pytest.mark.parametrize("path", ["/a/%2E%2E/b", "/%7E/./x", "/a%2fb/../c", "/x/y/.."])
def test_normalizing_twice_changes_nothing(path: str) -> None:
    once = normalize_path(path)
    assert once is not None
    assert normalize_path(once) == once


# --- make_rewriter -----------------------------------------------------------------------------------


def spec(pattern: str, *, prefix: bool = False, strip: bool = False, rewrite: str | None = None) -> RouteSpec:
    return RouteSpec("r", pattern, prefix, "api", strip_prefix=strip, rewrite=rewrite)


def forward(route: RouteSpec, path: str, base_path: str = "") -> str:
    """The upstream path for ``path``, matched by the route table as the proxy does."""
    table = RouteTable([(route, "target")], "test")
    _, params, consumed = table.match("h", "GET", path)
    rewriter = make_rewriter(route, base_path)
    return path if rewriter is None else rewriter(path, params, consumed)


@pytest.mark.parametrize(
    "route", [spec("/users"), spec("/api", prefix=True), spec("/users/{id}"), spec("/", prefix=True)]
)
def test_no_rewriter_when_nothing_changes(route: RouteSpec) -> None:
    assert make_rewriter(route, "") is None


@pytest.mark.parametrize(
    ("path", "upstream"),
    [("/api", "/"), ("/api/", "/"), ("/api/x", "/x"), ("/api/x/y?", "/x/y?"), ("/api/x/", "/x/")],
)
def test_strip_prefix(path: str, upstream: str) -> None:
    assert forward(spec("/api", prefix=True, strip=True), path) == upstream


def test_strip_prefix_of_a_prefix_with_a_trailing_slash() -> None:
    assert forward(spec("/api/", prefix=True, strip=True), "/api/x") == "/x"


def test_strip_prefix_with_parameters() -> None:
    route = spec("/tenants/{tenant}", prefix=True, strip=True)
    assert forward(route, "/tenants/acme/items/1") == "/items/1"


def test_rewrite_exact_route_with_parameters() -> None:
    route = spec("/users/{id}/posts/{post}", rewrite="/v2/posts/{post}/by/{id}")
    assert forward(route, "/users/7/posts/99") == "/v2/posts/99/by/7"


def test_rewrite_exact_route_without_parameters() -> None:
    assert forward(spec("/old", rewrite="/new"), "/old") == "/new"


def test_rewrite_template_ending_with_a_parameter() -> None:
    assert forward(spec("/{a}/{b}", rewrite="/{b}/{a}"), "/x/y") == "/y/x"


@pytest.mark.parametrize(
    ("rewrite", "path", "upstream"),
    [
        ("/new", "/old", "/new"),
        ("/new", "/old/", "/new/"),
        ("/new", "/old/x/y", "/new/x/y"),
        ("/new/", "/old/x", "/new/x"),
        ("/new/", "/old", "/new/"),
        ("/", "/old/x", "/x"),
        ("/", "/old", "/"),
    ],
)
def test_rewrite_prefix_route_keeps_the_rest_without_a_double_slash(rewrite: str, path: str, upstream: str) -> None:
    assert forward(spec("/old", prefix=True, rewrite=rewrite), path) == upstream


def test_rewrite_prefix_route_with_parameters() -> None:
    route = spec("/u/{user}", prefix=True, rewrite="/users/{user}/")
    assert forward(route, "/u/ann/photos/3") == "/users/ann/photos/3"


@pytest.mark.parametrize(
    ("route", "path", "upstream"),
    [
        (spec("/users"), "/users", "/v1/users"),
        (spec("/", prefix=True), "/", "/v1/"),
        (spec("/", prefix=True), "/a/b", "/v1/a/b"),
        (spec("/api", prefix=True, strip=True), "/api/x", "/v1/x"),
        (spec("/api", prefix=True, strip=True), "/api", "/v1/"),
        (spec("/users/{id}", rewrite="/u/{id}"), "/users/5", "/v1/u/5"),
        (spec("/old", prefix=True, rewrite="/new"), "/old/x", "/v1/new/x"),
    ],
)
def test_upstream_base_path_is_prepended(route: RouteSpec, path: str, upstream: str) -> None:
    assert forward(route, path, "/v1") == upstream
