# cython: annotation_typing=False
"""The route trie: host, method and path to a route target, most specific route first.

Routes are added once, when the configuration is loaded; ``Router.lookup`` runs on every request. It
allocates nothing for a route without params (that result is made when the route is added) and, for a
route with params, only their dict, its values and the result; compiled, it finds literal children by
probing a table with the path's characters in place (``router_ops``) instead of slicing and hashing
each segment. Measured with ``python -m bench.micro_router`` at 10,000 routes (2 busy cores): about
140 ns a lookup compiled (300 ns when it sliced and hashed each segment), 1.6 us in plain Python.
This is the pure-Python twin; ``router_c.py`` links here and is compiled with ``router_c.pxd``.
"""

from __future__ import annotations

import string
from collections.abc import Iterable

import gateway._fast.router_ops as ops

# What a route with ``methods=None`` contributes to ``allowed_methods`` (the Allow header of a 405).
ALL_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"))

# The characters of an HTTP token (RFC 9110), which a method name is.
_TOKEN_CHARS = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~")

# Far deeper than any real API; bounds the search's recursion in both implementations.
MAX_SEGMENTS = 128


class Route:
    """One added route: what ``lookup`` returns and what it needs to build its result."""

    def __init__(
        self,
        target: object,
        pattern: str,
        *,
        exact: bool,
        methods: frozenset[str] | None,
        hosts: tuple[str, ...] | None,
        slots: list[str | None],
        segments: list[str],
    ) -> None:
        self.target = target
        self.pattern = pattern
        self.exact = exact
        self.methods = methods
        self.hosts = hosts
        # slots[i] names the parameter at segment i, or is None for a literal. The list stops at the last
        # segment ``lookup`` must walk after a match: the last parameter, or the whole pattern of a prefix
        # route, whose end is its ``consumed``.
        self.slots = slots
        self.walk = len(slots)
        # The walk starts at the first parameter: the literal segments before it have a fixed length.
        self.first = next((i for i, name in enumerate(slots) if name is not None), self.walk)
        self.skip = sum(len(segment) + 1 for segment in segments[: self.first])
        # The whole result of a route without params, the same for every path it matches.
        self.fixed = None if self.first < self.walk else (target, None, len(pattern) if exact else self.skip)

    def __repr__(self) -> str:
        kind = "exact" if self.exact else "prefix"
        return f"<Route {kind} {self.pattern!r} methods={self.methods} hosts={self.hosts}>"


class Node:
    """A trie node: the routes whose pattern ends here, and the children for the next segment.

    The literal children are in the ``literal`` dict by their text, and in ``table`` as ``lookup`` finds
    them (see ``router_ops``): compiled, a probe table; in plain Python, the same dict. Each of the two
    kinds of route ending here (exact, prefix) is held as either one route for any method (``*_any``) or
    routes by method (``*_methods``), never both: their methods cannot overlap.
    """

    def __init__(self) -> None:
        self.literal: dict[str, Node] | None = None
        self.table: dict[str, Node] | None = None
        self.param: Node | None = None
        self.exact_any: Route | None = None
        self.exact_methods: dict[str, Route] | None = None
        self.prefix_any: Route | None = None
        self.prefix_methods: dict[str, Route] | None = None

    def child(self, literal: str | None) -> Node:
        """The child for the next segment (``None``: the parameter child), created when missing."""
        node = self.existing(literal)
        if node is not None:
            return node
        node = Node()
        if literal is None:
            self.param = node
            return node
        if self.literal is None:
            self.literal = {}
        self.literal[literal] = node
        self.table = ops.with_child(self.table, self.literal, literal, node)
        return node

    def existing(self, literal: str | None) -> Node | None:
        """The child for the next segment, or None when there is none."""
        if literal is None:
            return self.param
        return None if self.literal is None else self.literal.get(literal)

    def conflict(self, exact: bool, methods: frozenset[str] | None) -> Route | None:
        """A route already here of this kind whose methods overlap ``methods``, else None."""
        any_route, by_method = (self.exact_any, self.exact_methods) if exact else (self.prefix_any, self.prefix_methods)
        if any_route is not None:
            return any_route
        if by_method is None:
            return None
        if methods is None:
            return next(iter(by_method.values()))
        for method in methods:
            if method in by_method:
                return by_method[method]
        return None

    def put(self, route: Route) -> None:
        """Hold ``route`` here; the caller has checked ``conflict`` first."""
        if route.methods is None:
            if route.exact:
                self.exact_any = route
            else:
                self.prefix_any = route
            return
        if route.exact:
            if self.exact_methods is None:
                self.exact_methods = {}
            by_method = self.exact_methods
        else:
            if self.prefix_methods is None:
                self.prefix_methods = {}
            by_method = self.prefix_methods
        for method in route.methods:
            by_method[method] = route


class Tier:
    """The routes of one host tier: a trie, and its exact routes without parameters by path.

    An exact route without parameters is the most specific candidate for the path it names (its key is
    all 2s then 3), so ``statics`` finds it with one hash of the path, before any trie walk. Only where
    ``ops.STATICS``: compiled, the walk is cheaper than hashing the path, and ``statics`` stays empty.
    """

    def __init__(self) -> None:
        self.root = Node()
        self.statics: dict[str, Node] = {}

    def insert(self, shape: list[str | None], route: Route) -> None:
        """Hold ``route`` at the node for ``shape``, creating the nodes on the way."""
        node = self.root
        for literal in shape:
            node = node.child(literal)
        node.put(route)
        if ops.STATICS and route.exact and route.walk == 0:
            self.statics[route.pattern] = node

    def find(self, shape: list[str | None]) -> Node | None:
        """The node for ``shape``, or None when there is none."""
        node: Node | None = self.root
        for literal in shape:
            if node is None:
                return None
            node = node.existing(literal)
        return node


class Router:
    """Host, method and path to the most specific matching route.

    A pattern is split on "/" into segments, each a literal or a whole-segment parameter ``{name}``;
    "/" has no segments and a trailing "/" is a final empty segment of an exact route (a prefix route
    ignores it: prefix "/api/" is prefix "/api"). Host tiers are tried in order: the exact host, the
    wildcard hosts ("*.example.com") longest suffix first, then the routes for any host. Method names
    are case-sensitive, as in HTTP. Build a router at config load, then share it: ``lookup`` and
    ``allowed_methods`` never change it, while ``add`` must not run alongside them.
    """

    # How ``lookup`` finds the most specific route without building keys.
    #
    # Each tier is a trie with one node per segment shape: literal children by their text and one
    # ``param`` child (parameter names are not part of the shape). A route's specificity key is its
    # segment kinds (2 literal, 1 parameter) then 3 for an exact route or 0 for a prefix route, compared
    # as tuples. For a path, the node of a candidate is fixed by its kinds (the literals must equal the
    # path's segments), so candidates below a node at depth k share the key's first k elements, and:
    #   * when the path has more segments: candidates through the literal child (next element 2) beat
    #     those through the parameter child (1), which beat the prefix route ending here (0). Exact
    #     routes ending here do not match.
    #   * when the path ends here: the exact route (3) beats the prefix route (0); nothing deeper matches.
    # So a depth-first search that tries literal child, parameter child, then the prefix route here (or,
    # at the path's end, exact then prefix), and backtracks on failure, meets the candidates in
    # decreasing key order: the first route it finds that allows the method is the best one. Every
    # node is visited at most once per tier. ``Tier.statics`` (pure-Python twin only, see
    # ``router_ops.STATICS``) short-cuts the one case that needs no walk: an exact route without
    # parameters, which beats every other candidate for its path.

    def __init__(self) -> None:
        self._any = Tier()
        self._hosts: dict[str, Tier] = {}
        self._wildcards: dict[str, Tier] = {}  # by suffix, with its leading ".": ".example.com"
        self._wild_min = 0
        self._wild_max = 0
        self._count = 0

    def __len__(self) -> int:
        """The number of routes added."""
        return self._count

    def add(
        self,
        pattern: str,
        target: object,
        *,
        prefix: bool = False,
        methods: frozenset[str] | None = None,
        hosts: tuple[str, ...] | None = None,
    ) -> None:
        """Add a route; raise ValueError for a bad pattern, method or host, or a duplicate route.

        ``methods`` None allows any method, and a route allowing GET allows HEAD. ``hosts`` None serves
        any host; otherwise lowercase hosts without port, or "*.suffix" wildcards.
        """
        segments = _split_pattern(pattern, prefix)
        shape, slots = _shape(pattern, segments)
        if not prefix:
            while slots and slots[len(slots) - 1] is None:
                slots.pop()
        effective = _effective_methods(methods)
        hosts = _host_tuple(hosts)
        keys = _tier_keys(hosts)
        route = Route(target, pattern, exact=not prefix, methods=effective, hosts=hosts, slots=slots,
                      segments=segments)
        for key in keys:
            self._check_free(key, shape, route)
        for key in keys:
            self._tier(key).insert(shape, route)
        self._count += 1

    def lookup(self, host: str, method: str, path: str) -> tuple[object, dict[str, str] | None, int] | None:
        """The best route for ``method``: ``(target, params or None, consumed)``, or None.

        ``host`` is lowercase without port. ``consumed`` is how many characters of ``path`` the pattern
        matched (all of it for an exact route), for stripping a prefix. The three arguments are plain
        ``str``: the compiled build raises TypeError for a subclass (an ``http.HTTPMethod`` member).
        """
        n = len(path)
        if n == 0 or path[0] != "/":
            return None
        route: Route | None
        if self._hosts:
            tier = self._hosts.get(host)
            if tier is not None:
                route = _find(tier, path, n, method)
                if route is not None:
                    return _result(route, path, n)
        if self._wildcards:
            route = self._find_wildcards(host, path, n, method)
            if route is not None:
                return _result(route, path, n)
        route = _find(self._any, path, n, method)
        if route is None:
            return None
        return _result(route, path, n)

    def allowed_methods(self, host: str, path: str) -> frozenset[str]:
        """The methods of every route matching ``path`` in the tiers for ``host``; empty: no route."""
        if not path.startswith("/"):
            return frozenset()
        n = len(path)
        start = n if n == 1 else 0  # "/" has no segments
        found: set[str] = set()
        wildcards = [self._wildcards.get(suffix) for suffix in _wildcard_suffixes(host)]
        for tier in (self._hosts.get(host), *wildcards, self._any):
            if tier is not None:
                _collect(tier.root, path, start, n, found)
        return frozenset(found)

    def _find_wildcards(self, host: str, path: str, n: int, method: str) -> Route | None:
        """Search the wildcard tiers whose suffix ends ``host``, longest first, skipping impossible ones."""
        size = len(host)
        dot = ops.find(host, ".", max(1, size - self._wild_max), size)
        while size - dot >= self._wild_min:  # no dot left: dot == size
            tier = self._wildcards.get(host[dot:])
            if tier is not None:
                route = _find(tier, path, n, method)
                if route is not None:
                    return route
            dot = ops.find(host, ".", dot + 1, size)
        return None

    def _tier(self, key: str | None) -> Tier:
        """The tier for a key of ``_tier_keys``, created when missing."""
        if key is None:
            return self._any
        table = self._tier_table(key)
        tier = table.get(key)
        if tier is None:
            tier = table[key] = Tier()
            if table is self._wildcards:
                self._wild_min = min(len(k) for k in table)
                self._wild_max = max(len(k) for k in table)
        return tier

    def _tier_table(self, key: str) -> dict[str, Tier]:
        """The table holding the tier ``key``: wildcard suffixes start with a dot, host names cannot."""
        return self._wildcards if key.startswith(".") else self._hosts

    def _check_free(self, key: str | None, shape: list[str | None], route: Route) -> None:
        """Raise ValueError when the tier ``key`` holds a route that ``route`` would duplicate."""
        tier = self._any if key is None else self._tier_table(key).get(key)
        node = None if tier is None else tier.find(shape)
        other = None if node is None else node.conflict(route.exact, route.methods)
        if other is not None:
            where = "any host" if key is None else ("*" + key if key.startswith(".") else key)
            raise ValueError(f"duplicate route: {route!r} overlaps {other!r} on {where}")


def _find(tier: Tier, path: str, n: int, method: str) -> Route | None:
    """The best route in ``tier`` for ``method`` and ``path`` (which starts with "/")."""
    if ops.STATICS:
        node = tier.statics.get(path)
        if node is not None:
            route = _pick(node.exact_any, node.exact_methods, method)
            if route is not None:
                return route
    return _search(tier.root, path, n if n == 1 else 0, n, method)  # "/" has no segments


def _pick(any_route: Route | None, by_method: dict[str, Route] | None, method: str) -> Route | None:
    """The route of one kind at a node that allows ``method``, if any."""
    if any_route is not None:
        return any_route
    if by_method is None:
        return None
    return by_method.get(method)


def _search(node: Node, path: str, start: int, n: int, method: str) -> Route | None:
    """The best route below ``node`` (see the comment in Router); ``start`` is the "/" before the next
    segment, or ``n`` at the path's end.

    The last alternative tried at a node needs no coming back, so it is a step of the loop, not a call:
    on most nodes (no parameter child, no prefix route) the search goes down without recursing."""
    while start < n:
        pos = start + 1
        end = ops.find(path, "/", pos, n)
        child = ops.literal_child(node.table, path, pos, end)
        param = node.param if end > pos else None
        prefix = node.prefix_any is not None or node.prefix_methods is not None
        if child is not None:
            if param is None and not prefix:
                node, start = child, end
                continue
            route = _search(child, path, end, n, method)
            if route is not None:
                return route
        if param is not None:
            if not prefix:
                node, start = param, end
                continue
            route = _search(param, path, end, n, method)
            if route is not None:
                return route
        return _pick(node.prefix_any, node.prefix_methods, method)
    route = _pick(node.exact_any, node.exact_methods, method)
    if route is not None:
        return route
    return _pick(node.prefix_any, node.prefix_methods, method)


def _result(route: Route, path: str, n: int) -> tuple[object, dict[str, str] | None, int]:
    """``lookup``'s answer for ``route`` matched on ``path``: walk its slots for params and consumed."""
    if route.fixed is not None:
        return route.fixed
    params: dict[str, str] = {}
    slots = route.slots
    start = route.skip
    for i in range(route.first, route.walk):
        end = ops.find(path, "/", start + 1, n)
        name = slots[i]
        if name is not None:
            params[name] = path[start + 1 : end]
        start = end
    return (route.target, params, n if route.exact else start)


def _collect(node: Node, path: str, start: int, n: int, found: set[str]) -> None:
    """Add to ``found`` the methods of every route below ``node`` that matches ``path``."""
    _collect_kind(node.prefix_any, node.prefix_methods, found)
    if start == n:
        _collect_kind(node.exact_any, node.exact_methods, found)
        return
    pos = start + 1
    end = ops.find(path, "/", pos, n)
    child = ops.literal_child(node.table, path, pos, end)
    if child is not None:
        _collect(child, path, end, n, found)
    if node.param is not None and end > pos:
        _collect(node.param, path, end, n, found)


def _collect_kind(any_route: Route | None, by_method: dict[str, Route] | None, found: set[str]) -> None:
    """Add the methods of the routes of one kind at a node."""
    if any_route is not None:
        found.update(ALL_METHODS)
    elif by_method is not None:
        found.update(by_method)


def _wildcard_suffixes(host: str) -> Iterable[str]:
    """Every suffix of ``host`` a wildcard could name, with its leading dot, longest first."""
    dot = host.find(".", 1)
    while dot > 0:
        yield host[dot:]
        dot = host.find(".", dot + 1)


def _split_pattern(pattern: str, prefix: bool) -> list[str]:
    """The segments of ``pattern``; a prefix pattern's trailing "/" is dropped."""
    if not isinstance(pattern, str) or not pattern.startswith("/"):
        raise ValueError(f"route pattern must be a string starting with '/': {pattern!r}")
    if pattern == "/":
        return []
    segments = pattern[1:].split("/")
    if prefix and segments[len(segments) - 1] == "":
        segments.pop()
    if len(segments) > MAX_SEGMENTS:
        raise ValueError(f"route pattern has more than {MAX_SEGMENTS} segments: {pattern[:80]!r}...")
    return segments


def _shape(pattern: str, segments: list[str]) -> tuple[list[str | None], list[str | None]]:
    """The trie shape of ``segments`` (a literal, or None for a parameter) and the parameter names."""
    shape: list[str | None] = []
    names: list[str | None] = []
    for segment in segments:
        name = _param_name(pattern, segment)
        if name is not None and name in names:
            raise ValueError(f"route pattern {pattern!r} repeats parameter {name!r}")
        shape.append(None if name is not None else segment)
        names.append(name)
    return shape, names


def _param_name(pattern: str, segment: str) -> str | None:
    """The name of the parameter ``segment`` is, or None for a literal; ValueError for stray braces."""
    if "{" not in segment and "}" not in segment:
        return None
    name = segment[1 : len(segment) - 1]
    if segment.startswith("{") and segment.endswith("}") and name.isidentifier():
        return name
    raise ValueError(
        f"bad segment {segment!r} in route pattern {pattern!r}: a parameter is a whole segment "
        "'{name}' whose name is an identifier, and a literal has no braces"
    )


def _effective_methods(methods: Iterable[str] | None) -> frozenset[str] | None:
    """The methods a route allows (GET brings HEAD), or None for any; ValueError when empty or bad."""
    if methods is None:
        return None
    if isinstance(methods, str):
        raise TypeError(f"methods must be a set of method names, not a string: {methods!r}")
    allowed = frozenset(methods)
    if not allowed:
        raise ValueError("methods must name at least one method (None allows any)")
    for method in allowed:
        if not isinstance(method, str) or not method or not _TOKEN_CHARS.issuperset(method):
            raise ValueError(f"bad method name {method!r}: an HTTP token, like 'GET'")
    return allowed | {"HEAD"} if "GET" in allowed else allowed


def _host_tuple(hosts: Iterable[str] | None) -> tuple[str, ...] | None:
    """``hosts`` as a tuple; TypeError for a bare string, which would read as one host per character."""
    if isinstance(hosts, str):
        raise TypeError(f"hosts must be a tuple of host names, not a string: {hosts!r}")
    return None if hosts is None else tuple(hosts)


def _tier_keys(hosts: tuple[str, ...] | None) -> list[str | None]:
    """The tier key of each host, without repeats: the host, a wildcard's suffix (".example.com"), or
    None for the tier of any host."""
    if hosts is None:
        return [None]
    keys: list[str | None] = [_tier_key(host) for host in hosts]
    if not keys:
        raise ValueError("hosts must name at least one host (None serves any host)")
    return list(dict.fromkeys(keys))


def _tier_key(host: str) -> str:
    """The tier key of one host entry; ValueError unless lowercase, without port, and '*' only as '*.'."""
    if not isinstance(host, str) or not host or host != host.lower() or not host.isprintable():
        raise ValueError(f"bad host {host!r}: hosts are lowercase names without port")
    suffix = host[1:] if host.startswith("*.") else host
    if suffix == "." or host.startswith(".") or "*" in suffix or " " in suffix or "/" in suffix:
        raise ValueError(f"bad host {host!r}: a host name, or '*.' and a domain for a wildcard")
    if ":" in suffix and not suffix.startswith("["):
        raise ValueError(f"bad host {host!r}: hosts are lowercase names without port")
    return suffix
