"""The ``routes:`` section: which requests go where, and how their path is rewritten."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from gateway.auth.policy import RoutePolicy, parse_route_auth
from gateway.config import ConfigError, Node
from gateway.ratelimit.config import parse_route_ratelimit

ROUTE_KEYS = frozenset(
    {"name", "path", "prefix", "methods", "hosts", "upstream", "strip_prefix", "rewrite", "preserve_host", "auth",
     "max_body_bytes", "ratelimit"}
)
METHOD = re.compile(r"^[A-Z][A-Z0-9!#$%&'*+.^_`|~-]*\Z")
HOST = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*\Z")
PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
NAME = re.compile(r"^[A-Za-z0-9_.:-]+\Z")


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """One route as configured. Exactly one of an exact ``path`` or a ``prefix`` pattern."""

    name: str
    pattern: str
    prefix: bool
    upstream: str  # an upstream name, or an inline URL (then an anonymous upstream is made)
    methods: frozenset[str] | None = None
    hosts: tuple[str, ...] | None = None
    strip_prefix: bool = False
    rewrite: str | None = None
    preserve_host: bool = False
    auth: RoutePolicy | None = None  # None: no auth stage on this route
    max_body_bytes: int | None = None  # None: the server's max_body_bytes (gateway.guards.body resolves it)
    ratelimit: tuple[str, ...] | None = None  # policy names; None: ratelimit.default; (): off


def parse_route(node: Node) -> RouteSpec:
    node.mapping(ROUTE_KEYS)
    path_node, prefix_node = node.child("path"), node.child("prefix")
    if path_node.missing == prefix_node.missing:
        raise ConfigError(node.source, node.path, "expected exactly one of 'path' (exact) or 'prefix'")
    is_prefix = not prefix_node.missing
    pattern_node = prefix_node if is_prefix else path_node
    pattern = pattern_node.string()
    if not pattern.startswith("/"):
        pattern_node.fail("a path pattern starting with /")
    name_node = node.child("name")
    name = name_node.string(f"{'prefix' if is_prefix else 'path'}:{pattern}")
    if not name_node.missing and not NAME.match(name):
        name_node.fail("a route name of letters, digits and _ . : -")
    strip_node, rewrite_node = node.child("strip_prefix"), node.child("rewrite")
    strip = strip_node.boolean(False)
    if strip and not is_prefix:
        strip_node.fail("strip_prefix only on a 'prefix' route")
    rewrite = rewrite_node.string(None)
    if rewrite is not None:
        _check_rewrite(rewrite_node, rewrite, pattern, strip)
    return RouteSpec(
        name=name,
        pattern=pattern,
        prefix=is_prefix,
        upstream=node.child("upstream").required("an upstream name or URL").string(),
        methods=_parse_methods(node.child("methods")),
        hosts=_parse_hosts(node.child("hosts")),
        strip_prefix=strip,
        rewrite=rewrite,
        preserve_host=node.child("preserve_host").boolean(False),
        auth=parse_route_auth(node.child("auth")),
        max_body_bytes=node.child("max_body_bytes").size(None),
        ratelimit=parse_route_ratelimit(node.child("ratelimit")),
    )


def _check_rewrite(node: Node, rewrite: str, pattern: str, strip: bool) -> None:
    if strip:
        node.fail("either rewrite or strip_prefix, not both")
    if not rewrite.startswith("/"):
        node.fail("a path starting with /")
    known = set(PARAM.findall(pattern))
    for name in PARAM.findall(rewrite):
        if name not in known:
            node.fail(f"only parameters of the route's pattern ({', '.join(sorted(known)) or 'none'}), "
                      f"not {{{name}}}")


def _parse_methods(node: Node) -> frozenset[str] | None:
    if node.missing:
        return None
    methods = set()
    for entry in node.elements():
        method = entry.string()
        if not METHOD.match(method):
            entry.fail("an HTTP method in capitals, like GET")
        methods.add(method)
    if not methods:
        node.fail("at least one method (or leave 'methods' out to allow all)")
    return frozenset(methods)


def _parse_hosts(node: Node) -> tuple[str, ...] | None:
    if node.missing:
        return None
    hosts = []
    for entry in node.elements():
        host = entry.string().lower()
        if not HOST.match(host):
            entry.fail("a host name like api.example.com or *.example.com (no port)")
        hosts.append(host)
    if not hosts:
        node.fail("at least one host (or leave 'hosts' out to match any host)")
    return tuple(hosts)


def parse_routes(node: Node) -> list[RouteSpec]:
    routes = [parse_route(entry) for entry in node.elements(optional=True)]
    seen: dict[str, int] = {}
    for i, parsed in enumerate(routes):
        route = parsed
        if route.name in seen and node.child(i).child("name").missing:
            # a default name ("path:/users") repeats when routes differ only in methods or hosts
            route = routes[i] = dataclasses.replace(route, name=f"{route.name}#{i}")
        if route.name in seen:
            raise ConfigError(node.source, f"{node.path}[{i}].name",
                              f"expected a unique route name; {route.name!r} is also routes[{seen[route.name]}]")
        seen[route.name] = i
    return routes
