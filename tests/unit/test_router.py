"""The route trie (gateway._fast.router), against both implementations.

The randomized tests compare each implementation with a brute-force reference that applies the
specificity-key rule literally: every route is matched on its own and the largest key wins.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest

from gateway._fast import implementations, router

IMPLS = implementations("router")
ALL = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"))
GET = frozenset({"GET"})


@pytest.fixture(params=sorted(IMPLS), ids=str)
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return IMPLS[request.param]


def make(impl: ModuleType, *routes: tuple[str, object] | tuple[str, object, dict[str, Any]]) -> Any:
    """A Router holding ``(pattern, target[, keyword arguments])`` routes."""
    r = impl.Router()
    for route in routes:
        r.add(route[0], route[1], **(route[2] if len(route) == 3 else {}))
    return r


# --- the build ---------------------------------------------------------------------------------------


def test_compiled_module_is_an_extension() -> None:
    if "compiled" not in IMPLS:
        pytest.skip("router_c is not built (setup.py build_ext --inplace) or GATEWAY_NO_EXTENSIONS is set")
    assert str(IMPLS["compiled"].__file__).endswith((".so", ".pyd"))
    assert router.IMPLEMENTATION == "compiled"


def test_facade_exposes_the_chosen_implementation() -> None:
    assert router.Router in {module.Router for module in IMPLS.values()}
    assert router.ALL_METHODS == ALL


# --- exact and prefix routes -------------------------------------------------------------------------


def test_exact_route_matches_the_whole_path(impl: ModuleType) -> None:
    r = make(impl, ("/users", "users"), ("/", "root"))
    assert r.lookup("h", "GET", "/users") == ("users", None, 6)
    assert r.lookup("h", "GET", "/") == ("root", None, 1)
    assert r.lookup("h", "GET", "/users/1") is None
    assert r.lookup("h", "GET", "/user") is None
    assert r.lookup("h", "GET", "/usersx") is None


def test_trailing_slash_is_significant_for_exact_routes(impl: ModuleType) -> None:
    r = make(impl, ("/users", "bare"), ("/users/", "slash"))
    assert r.lookup("h", "GET", "/users") == ("bare", None, 6)
    assert r.lookup("h", "GET", "/users/") == ("slash", None, 7)
    assert make(impl, ("/users", "bare")).lookup("h", "GET", "/users/") is None
    assert make(impl, ("/users/", "slash")).lookup("h", "GET", "/users") is None


def test_prefix_matches_on_segment_boundaries(impl: ModuleType) -> None:
    r = make(impl, ("/api", "api", {"prefix": True}))
    assert r.lookup("h", "GET", "/api") == ("api", None, 4)
    assert r.lookup("h", "GET", "/api/") == ("api", None, 4)
    assert r.lookup("h", "GET", "/api/x/y") == ("api", None, 4)
    assert r.lookup("h", "GET", "/apix") is None
    assert r.lookup("h", "GET", "/ap") is None
    assert r.lookup("h", "GET", "/") is None


def test_prefix_trailing_slash_is_ignored(impl: ModuleType) -> None:
    r = make(impl, ("/api/", "api", {"prefix": True}))
    assert r.lookup("h", "GET", "/api") == ("api", None, 4)
    assert r.lookup("h", "GET", "/api/x") == ("api", None, 4)
    with pytest.raises(ValueError, match="duplicate route"):
        r.add("/api", "again", prefix=True)


def test_root_prefix_matches_everything_and_consumes_nothing(impl: ModuleType) -> None:
    r = make(impl, ("/", "all", {"prefix": True}))
    for path in ("/", "/a", "/a/b/", "//", "/x/y/z"):
        assert r.lookup("h", "GET", path) == ("all", None, 0)


def test_paths_not_starting_with_a_slash_match_nothing(impl: ModuleType) -> None:
    r = make(impl, ("/", "all", {"prefix": True}))
    for path in ("", "*", "a/b", "http://x/"):
        assert r.lookup("h", "OPTIONS", path) is None
        assert r.allowed_methods("h", path) == frozenset()


def test_empty_segments_are_literals(impl: ModuleType) -> None:
    r = make(impl, ("/a//b", "double"), ("/a/{x}/b", "param"))
    assert r.lookup("h", "GET", "/a//b") == ("double", None, 5)
    assert r.lookup("h", "GET", "/a/c/b") == ("param", {"x": "c"}, 6)


def test_len_counts_routes_added(impl: ModuleType) -> None:
    r = make(impl, ("/a", 1), ("/b", 2, {"hosts": ("x.com", "*.y.com")}))
    assert len(r) == 2


# --- parameters --------------------------------------------------------------------------------------


def test_params_are_raw_segments(impl: ModuleType) -> None:
    r = make(impl, ("/users/{id}/posts/{post}", "post"))
    assert r.lookup("h", "GET", "/users/a%20b/posts/7") == ("post", {"id": "a%20b", "post": "7"}, 20)


def test_param_matches_exactly_one_nonempty_segment(impl: ModuleType) -> None:
    r = make(impl, ("/users/{id}", "user"))
    assert r.lookup("h", "GET", "/users/") is None
    assert r.lookup("h", "GET", "/users") is None
    assert r.lookup("h", "GET", "/users/1/2") is None
    assert r.lookup("h", "GET", "/users/1/") is None


def test_params_are_none_without_parameters(impl: ModuleType) -> None:
    r = make(impl, ("/a/{x}", "param"), ("/a/b", "literal"), ("/p/{x}", "prefix", {"prefix": True}))
    assert r.lookup("h", "GET", "/a/b")[1] is None
    assert r.lookup("h", "GET", "/a/c")[1] == {"x": "c"}
    assert r.lookup("h", "GET", "/p/q/r") == ("prefix", {"x": "q"}, 4)


def test_params_before_a_literal_tail(impl: ModuleType) -> None:
    r = make(impl, ("/{a}/x/y", "t"), ("/{a}/{b}/z", "u", {"prefix": True}))
    assert r.lookup("h", "GET", "/q/x/y") == ("t", {"a": "q"}, 6)
    assert r.lookup("h", "GET", "/q/w/z/rest") == ("u", {"a": "q", "b": "w"}, 6)


def test_params_after_a_long_literal_head(impl: ModuleType) -> None:
    # the walk for params starts after the literal segments before the first one, whose length is fixed
    r = make(impl, ("/api/v1/svc7/{org}/repos/{repo}", "x"), ("/static/app7/{v}", "p", {"prefix": True}))
    assert r.lookup("h", "GET", "/api/v1/svc7/acme/repos/gw") == ("x", {"org": "acme", "repo": "gw"}, 26)
    assert r.lookup("h", "GET", "/static/app7/v2/js/main.js") == ("p", {"v": "v2"}, 15)


# --- literal children: many, and any characters ------------------------------------------------------


def test_many_literal_children_at_one_node(impl: ModuleType) -> None:
    # the compiled build's probe table grows and probes past taken slots; every child stays reachable
    names = [f"svc{i}" for i in range(2_000)] + ["", "x" * 40, "svc", "Svc1"]
    r = make(impl, *((f"/api/{name}/items", name) for name in names))
    for name in names:
        assert r.lookup("h", "GET", f"/api/{name}/items") == (name, None, len(name) + 11)
    for missing in ("svc2000", "svc1x", "svc01", "sv", "x" * 39, "x" * 41, "SVC1", "svc1/"):
        assert r.lookup("h", "GET", f"/api/{missing}/items") is None


@pytest.mark.parametrize(
    ("literal", "other"),
    [("café", "日本"), ("日本", "café"), ("\U0001f600", "é"), ("é", "\U0001f600"), ("a", "\U0001f600")],
    ids=ascii,
)
def test_literals_match_whatever_the_strings_kinds(impl: ModuleType, literal: str, other: str) -> None:
    # a literal and the path segment equal to it may be stored with different character widths
    r = make(impl, (f"/{literal}/{{x}}", "param"), (f"/{literal}/{literal}", "static"), (f"/{other}", "o"))
    assert r.lookup("h", "GET", f"/{literal}/{other}") == ("param", {"x": other}, len(literal) + len(other) + 2)
    assert r.lookup("h", "GET", f"/{literal}/{literal}") == ("static", None, 2 * len(literal) + 2)
    assert r.lookup("h", "GET", f"/{other}") == ("o", None, len(other) + 1)
    assert r.lookup("h", "GET", f"/{literal}{other}/{literal}") is None
    assert r.lookup("h", "GET", f"/{other}/{literal}") is None


def test_a_route_without_params_has_one_result(impl: ModuleType) -> None:
    # made once, when the route is added: the same tuple for every path it matches
    r = make(impl, ("/a/b", "exact"), ("/p", "prefix", {"prefix": True}), ("/a/{x}", "param"))
    assert r.lookup("h", "GET", "/a/b") is r.lookup("h", "POST", "/a/b")
    assert r.lookup("h", "GET", "/p/1") is r.lookup("h", "GET", "/p/2/3") == ("prefix", None, 2)
    assert r.lookup("h", "GET", "/a/c") is not r.lookup("h", "GET", "/a/c")


# --- specificity -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("winner", "loser", "path"),
    [
        (("/users/admin", True), ("/users/{id}", False), "/users/admin"),
        (("/a/b", False), ("/a", True), "/a/b"),
        (("/a/b", True), ("/a", True), "/a/b/c"),
        (("/a/{x}", False), ("/a/{x}", True), "/a/q"),
        (("/a", True), ("/", True), "/a/b"),
        (("/{x}", False), ("/", True), "/a"),
        (("/", False), ("/", True), "/"),
        (("/a/{x}/c", False), ("/a/{x}", True), "/a/b/c"),
        (("/a/{x}", True), ("/a", True), "/a/b/c"),
        (("/{x}/b", False), ("/{x}/{y}", False), "/a/b"),
    ],
    ids=str,
)
def test_most_specific_route_wins(
    impl: ModuleType, winner: tuple[str, bool], loser: tuple[str, bool], path: str
) -> None:
    for order in ((winner, loser), (loser, winner)):
        r = impl.Router()
        for pattern, prefix in order:
            r.add(pattern, (pattern, prefix), prefix=prefix)
        assert r.lookup("h", "GET", path)[0] == winner


def test_search_backtracks_from_a_dead_literal_branch(impl: ModuleType) -> None:
    r = make(impl, ("/a/b/c", "abc"), ("/a/{x}/d", "axd"))
    assert r.lookup("h", "GET", "/a/b/d") == ("axd", {"x": "b"}, 6)
    assert r.lookup("h", "GET", "/a/b/c") == ("abc", None, 6)


def test_search_backtracks_past_nodes_it_stepped_through(impl: ModuleType) -> None:
    # nodes with nothing to fall back to are stepped through without a call: a dead end below them still
    # returns to the last node that has an alternative
    r = make(impl, ("/p", "prefix", {"prefix": True}), ("/p/q/r/s", "deep"), ("/p/{x}/r/t", "param"))
    assert r.lookup("h", "GET", "/p/q/r/s") == ("deep", None, 8)
    assert r.lookup("h", "GET", "/p/q/r/t") == ("param", {"x": "q"}, 8)
    assert r.lookup("h", "GET", "/p/q/r/u") == ("prefix", None, 2)
    assert r.lookup("h", "GET", "/p/q/r") == ("prefix", None, 2)


def test_search_backtracks_to_a_shallower_prefix(impl: ModuleType) -> None:
    r = make(impl, ("/a/b/c/d", "deep"), ("/a", "prefix", {"prefix": True}), ("/a/{x}/c/e", "other"))
    assert r.lookup("h", "GET", "/a/b/c/f") == ("prefix", None, 2)
    assert r.lookup("h", "GET", "/a/b/c/e") == ("other", {"x": "b"}, 8)


# --- methods -----------------------------------------------------------------------------------------


def test_get_allows_head(impl: ModuleType) -> None:
    r = make(impl, ("/a", "get", {"methods": GET}))
    assert r.lookup("h", "HEAD", "/a") == ("get", None, 2)
    assert r.lookup("h", "POST", "/a") is None
    assert make(impl, ("/a", "head", {"methods": frozenset({"HEAD"})})).lookup("h", "GET", "/a") is None


def test_method_mismatch_falls_back_to_a_less_specific_route(impl: ModuleType) -> None:
    r = make(
        impl,
        ("/users/{id}", "get", {"methods": GET}),
        ("/users/{id}", "delete", {"methods": frozenset({"DELETE"})}),
        ("/users", "fallback", {"prefix": True, "methods": frozenset({"POST", "DELETE"})}),
        ("/", "root", {"prefix": True, "methods": frozenset({"PUT"})}),
    )
    assert r.lookup("h", "GET", "/users/1")[0] == "get"
    assert r.lookup("h", "DELETE", "/users/1")[0] == "delete"
    assert r.lookup("h", "POST", "/users/1") == ("fallback", None, 6)
    assert r.lookup("h", "PUT", "/users/1") == ("root", None, 0)
    assert r.lookup("h", "PATCH", "/users/1") is None


def test_methods_none_allows_any_method(impl: ModuleType) -> None:
    r = make(impl, ("/a", "any"))
    for method in (*ALL, "PURGE"):
        assert r.lookup("h", method, "/a")[0] == "any"


def test_allowed_methods_for_405_and_404(impl: ModuleType) -> None:
    r = make(
        impl,
        ("/users/{id}", "get", {"methods": GET}),
        ("/users", "post", {"prefix": True, "methods": frozenset({"POST"})}),
        ("/users/me", "put", {"methods": frozenset({"PUT"}), "hosts": ("x.com",)}),
        ("/other", "any"),
    )
    assert r.lookup("h", "DELETE", "/users/me") is None
    assert r.allowed_methods("h", "/users/me") == {"GET", "HEAD", "POST"}
    assert r.allowed_methods("x.com", "/users/me") == {"GET", "HEAD", "POST", "PUT"}
    assert r.allowed_methods("h", "/other") == ALL
    assert r.allowed_methods("h", "/nothing") == frozenset()
    assert r.allowed_methods("h", "/other/x") == frozenset()
    assert isinstance(r.allowed_methods("h", "/users/me"), frozenset)


# --- hosts -------------------------------------------------------------------------------------------


def test_host_tiers_exact_then_wildcard_then_any(impl: ModuleType) -> None:
    r = make(
        impl,
        ("/a", "exact", {"hosts": ("api.example.com",)}),
        ("/a", "wild", {"hosts": ("*.example.com",)}),
        ("/a", "any"),
    )
    assert r.lookup("api.example.com", "GET", "/a")[0] == "exact"
    assert r.lookup("www.example.com", "GET", "/a")[0] == "wild"
    assert r.lookup("a.b.example.com", "GET", "/a")[0] == "wild"
    assert r.lookup("example.com", "GET", "/a")[0] == "any"
    assert r.lookup("notexample.com", "GET", "/a")[0] == "any"
    assert r.lookup("other.org", "GET", "/a")[0] == "any"


def test_a_tier_without_a_match_falls_through_even_to_a_less_specific_route(impl: ModuleType) -> None:
    r = make(impl, ("/a/b", "exact", {"hosts": ("x.com",), "methods": GET}), ("/", "any", {"prefix": True}))
    assert r.lookup("x.com", "GET", "/a/b")[0] == "exact"
    assert r.lookup("x.com", "POST", "/a/b")[0] == "any"
    assert r.lookup("x.com", "GET", "/c")[0] == "any"


def test_longest_wildcard_wins_then_shorter_ones(impl: ModuleType) -> None:
    r = make(
        impl,
        ("/a", "short", {"hosts": ("*.example.com",)}),
        ("/", "short-prefix", {"prefix": True, "hosts": ("*.example.com",)}),
        ("/a", "long", {"hosts": ("*.eu.example.com",)}),
    )
    assert r.lookup("x.eu.example.com", "GET", "/a")[0] == "long"
    assert r.lookup("x.eu.example.com", "GET", "/b")[0] == "short-prefix"
    assert r.lookup("eu.example.com", "GET", "/a")[0] == "short"
    assert r.lookup("example.com", "GET", "/a") is None
    assert r.lookup(".example.com", "GET", "/a") is None


@pytest.mark.parametrize(
    ("host", "tier"),
    [("", "any"), ("x", "any"), ("com", "any"), ("example.com", "any"), ("xexample.com", "any"),
     ("a.example.com", "wild"), ("a.b.example.com", "wild"), ("é.example.com", "wild"), ("日.example.com", "wild"),
     ("a.example.co", "any"), ("a.example.com.", "any")],
)
def test_wildcard_suffixes_are_found_in_any_host(impl: ModuleType, host: str, tier: str) -> None:
    r = make(impl, ("/a", "wild", {"hosts": ("*.example.com",)}), ("/a", "any"))
    assert r.lookup(host, "GET", "/a") == (tier, None, 2)


def test_a_route_can_serve_several_hosts(impl: ModuleType) -> None:
    r = make(impl, ("/a", "multi", {"hosts": ("a.com", "*.b.com")}))
    assert r.lookup("a.com", "GET", "/a")[0] == "multi"
    assert r.lookup("x.b.com", "GET", "/a")[0] == "multi"
    assert r.lookup("c.com", "GET", "/a") is None


def test_allowed_methods_unions_the_tiers_that_apply(impl: ModuleType) -> None:
    r = make(
        impl,
        ("/a", 1, {"hosts": ("x.y.com",), "methods": frozenset({"PUT"})}),
        ("/a", 2, {"hosts": ("*.y.com",), "methods": frozenset({"POST"})}),
        ("/a", 3, {"hosts": ("*.com",), "methods": frozenset({"PATCH"})}),
        ("/a", 4, {"hosts": ("z.com",), "methods": frozenset({"TRACE"})}),
        ("/a", 5, {"methods": frozenset({"DELETE"})}),
    )
    assert r.allowed_methods("x.y.com", "/a") == {"PUT", "POST", "PATCH", "DELETE"}
    assert r.allowed_methods("other.org", "/a") == {"DELETE"}


# --- invalid and duplicate routes --------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern",
    [
        "",
        "users",
        "/a{b}",
        "/{}",
        "/{1x}",
        "/{a",
        "/a}",
        "/{a}b",
        "/{{a}}",
        "/{a-b}",
        "/{a}/{a}",
        "/x/" * 200,
    ],
    ids=str,
)
def test_invalid_patterns_raise(impl: ModuleType, pattern: str) -> None:
    r = impl.Router()
    with pytest.raises(ValueError, match="route pattern"):
        r.add(pattern, "t")
    assert len(r) == 0


@pytest.mark.parametrize(
    "hosts", [(), ("Example.com",), ("a.com:80",), ("*",), ("*.",), ("a.*.com",), ("",), (".a.com",)], ids=str
)
def test_invalid_hosts_raise(impl: ModuleType, hosts: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="host"):
        impl.Router().add("/a", "t", hosts=hosts)


@pytest.mark.parametrize("methods", [frozenset(), frozenset({""}), frozenset({"GET PUT"})], ids=str)
def test_invalid_methods_raise(impl: ModuleType, methods: frozenset[str]) -> None:
    with pytest.raises(ValueError, match="method"):
        impl.Router().add("/a", "t", methods=methods)


def test_strings_where_collections_belong_raise(impl: ModuleType) -> None:
    with pytest.raises(TypeError):
        impl.Router().add("/a", "t", methods="GET")
    with pytest.raises(TypeError):
        impl.Router().add("/a", "t", hosts="a.com")


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("/u/{id}", {}), ("/u/{name}", {})),
        (("/u", {"methods": GET}), ("/u", {"methods": frozenset({"GET", "POST"})})),
        (("/u", {"methods": GET}), ("/u", {"methods": frozenset({"HEAD"})})),
        (("/u", {}), ("/u", {"methods": GET})),
        (("/u", {"methods": GET}), ("/u", {})),
        (("/u", {"prefix": True}), ("/u/", {"prefix": True})),
        (("/u", {"hosts": ("a.com", "b.com")}), ("/u", {"hosts": ("b.com",)})),
        (("/u", {"hosts": ("*.a.com",)}), ("/u", {"hosts": ("*.a.com",)})),
    ],
    ids=str,
)
def test_duplicate_routes_raise(
    impl: ModuleType, first: tuple[str, dict[str, Any]], second: tuple[str, dict[str, Any]]
) -> None:
    r = impl.Router()
    r.add(first[0], "first", **first[1])
    with pytest.raises(ValueError, match="duplicate route"):
        r.add(second[0], "second", **second[1])
    assert len(r) == 1


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("/u", {"methods": GET}), ("/u", {"methods": frozenset({"POST"})})),
        (("/u", {}), ("/u", {"prefix": True})),
        (("/u", {}), ("/u/", {})),
        (("/u", {"hosts": ("a.com",)}), ("/u", {"hosts": ("*.a.com",)})),
        (("/u", {"hosts": ("a.com",)}), ("/u", {})),
        (("/u/{id}", {}), ("/u/id", {})),
    ],
    ids=str,
)
def test_distinct_routes_coexist(
    impl: ModuleType, first: tuple[str, dict[str, Any]], second: tuple[str, dict[str, Any]]
) -> None:
    r = impl.Router()
    r.add(first[0], "first", **first[1])
    r.add(second[0], "second", **second[1])
    assert len(r) == 2


def test_a_rejected_route_leaves_no_trace(impl: ModuleType) -> None:
    r = make(impl, ("/u", "b-only", {"hosts": ("b.com",)}))
    with pytest.raises(ValueError, match="duplicate route"):
        r.add("/u", "both", hosts=("a.com", "b.com"))
    assert r.lookup("a.com", "GET", "/u") is None
    assert r.allowed_methods("a.com", "/u") == frozenset()
    assert len(r) == 1


# --- randomized comparison with a brute-force reference ----------------------------------------------


@dataclass
class RefRoute:
    """A route as the reference sees it: its segments, each ("lit", text) or ("param", name)."""

    target: int
    segments: list[tuple[str, str]]
    prefix: bool
    methods: frozenset[str] | None
    hosts: tuple[str, ...] | None

    def match(self, path: str, method: str | None) -> tuple[tuple[int, ...], dict[str, str] | None, int] | None:
        """(specificity key, params, consumed) when this route matches; ``method`` None: any method."""
        if method is not None and self.methods is not None and method not in self.methods:
            return None
        parts = [] if path == "/" else path[1:].split("/")
        if len(self.segments) > len(parts) or (not self.prefix and len(self.segments) != len(parts)):
            return None
        key: list[int] = []
        params: dict[str, str] = {}
        for (kind, text), part in zip(self.segments, parts, strict=False):
            if (kind == "lit" and part != text) or (kind == "param" and not part):
                return None
            key.append(2 if kind == "lit" else 1)
            if kind == "param":
                params[text] = part
        key.append(0 if self.prefix else 3)
        consumed = sum(len(part) + 1 for part in parts[: len(self.segments)]) if self.prefix else len(path)
        return tuple(key), params or None, consumed

    def shape(self) -> tuple[tuple[str, ...], bool]:
        return tuple("{}" if kind == "param" else text for kind, text in self.segments), self.prefix


def ref_parse(pattern: str, prefix: bool) -> list[tuple[str, str]]:
    parts = [] if pattern == "/" else pattern[1:].split("/")
    if prefix and parts and parts[-1] == "":
        parts.pop()
    return [("param", p[1:-1]) if p.startswith("{") else ("lit", p) for p in parts]


def ref_tiers(host: str) -> list[str | None]:
    """The tiers for ``host``: itself, the wildcards that end it longest first, then any host (None)."""
    labels = host.split(".")
    return [host, *("*." + ".".join(labels[i:]) for i in range(1, len(labels)) if labels[0]), None]


def ref_in_tier(route: RefRoute, tier: str | None) -> bool:
    return route.hosts is None if tier is None else route.hosts is not None and tier in route.hosts


def ref_lookup(routes: list[RefRoute], host: str, method: str, path: str) -> tuple[object, Any, int] | None:
    for tier in ref_tiers(host):
        found = []
        for route in routes:
            if ref_in_tier(route, tier) and (m := route.match(path, method)) is not None:
                found.append((m[0], route, m[1], m[2]))
        if found:
            found.sort(key=lambda f: f[0], reverse=True)
            assert len(found) == 1 or found[0][0] != found[1][0], "ties are duplicates"
            return found[0][1].target, found[0][2], found[0][3]
    return None


def ref_allowed(routes: list[RefRoute], host: str, path: str) -> frozenset[str]:
    methods: set[str] = set()
    for tier in ref_tiers(host):
        for route in routes:
            if ref_in_tier(route, tier) and route.match(path, None) is not None:
                methods |= ALL if route.methods is None else route.methods
    return frozenset(methods)


def ref_duplicate(routes: list[RefRoute], new: RefRoute) -> bool:
    for old in routes:
        if old.shape() != new.shape():
            continue
        if not ((old.hosts is None and new.hosts is None) or set(old.hosts or ()) & set(new.hosts or ())):
            continue
        if old.methods is None or new.methods is None or old.methods & new.methods:
            return True
    return False


LITERALS = ["a", "b", "c", ""]
HOSTS = ["x.com", "*.x.com", "*.y.x.com", "a.y.x.com", "*.com"]
REQUEST_HOSTS = ["x.com", "a.x.com", "a.y.x.com", "b.y.x.com", "y.x.com", "z.com", "z.org", "com"]
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE"]


def random_route(rng: random.Random, target: int) -> tuple[str, bool, frozenset[str] | None, Any]:
    segments = []
    for i in range(rng.randint(0, 4)):
        segments.append(f"{{p{i}}}" if rng.random() < 0.35 else rng.choice(LITERALS))
    pattern = "/" + "/".join(segments)
    prefix = rng.random() < 0.4
    methods = None if rng.random() < 0.4 else frozenset(rng.sample(METHODS[:4], rng.randint(1, 2)))
    hosts = None if rng.random() < 0.6 else tuple(rng.sample(HOSTS, rng.randint(1, 2)))
    return pattern, prefix, methods, hosts


def random_path(rng: random.Random) -> str:
    return "/" + "/".join(rng.choice([*LITERALS, "d"]) for _ in range(rng.randint(0, 5)))


@pytest.mark.parametrize("seed", range(60))
def test_matches_the_brute_force_reference(impl: ModuleType, seed: int) -> None:
    rng = random.Random(seed)
    r = impl.Router()
    routes: list[RefRoute] = []
    for target in range(rng.randint(5, 80)):
        pattern, prefix, methods, hosts = random_route(rng, target)
        effective = methods | {"HEAD"} if methods and "GET" in methods else methods
        ref = RefRoute(target, ref_parse(pattern, prefix), prefix, effective, hosts)
        if ref_duplicate(routes, ref):
            with pytest.raises(ValueError, match="duplicate route"):
                r.add(pattern, target, prefix=prefix, methods=methods, hosts=hosts)
            continue
        r.add(pattern, target, prefix=prefix, methods=methods, hosts=hosts)
        routes.append(ref)
    assert len(r) == len(routes)
    for _ in range(80):
        host, method, path = rng.choice(REQUEST_HOSTS), rng.choice(METHODS), random_path(rng)
        assert r.lookup(host, method, path) == ref_lookup(routes, host, method, path), (host, method, path)
        assert r.allowed_methods(host, path) == ref_allowed(routes, host, path), (host, path)
