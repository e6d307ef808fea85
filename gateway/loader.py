"""The whole configuration: server settings, upstreams and routes, loaded and cross-checked at once.

``load`` runs in the supervisor (and in ``gateway check``): it reads the file, applies the environment and
flags, and validates everything, routes compiled into a table included, so a config that loads here cannot
fail in a worker. ``document`` is the resolved, JSON-safe form handed to workers; ``from_document`` turns
it back into the same ``GatewayConfig`` there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.auth.policy import check_route_issuers
from gateway.config import ConfigError, Node, load_file
from gateway.guards.body import route_body_limits
from gateway.guards.config import GuardsSpec, parse_guards
from gateway.observability.tracing import TracingSpec, parse_tracing
from gateway.proxy.target import parse_target
from gateway.ratelimit.config import RateLimitSpec, check_route_policies, parse_ratelimit
from gateway.ratelimit.config import describe as describe_ratelimit
from gateway.routing.config import RouteSpec, parse_routes
from gateway.routing.table import RouteTable
from gateway.settings import ServerSettings, resolve
from gateway.upstreams.config import UpstreamSpec, parse_upstreams

if TYPE_CHECKING:
    from gateway.auth.config import AuthSpec

TOP_KEYS = frozenset({"server", "upstreams", "routes", "tracing", "auth", "guards", "ratelimit"})
QUICK_SOURCE = "--upstream"


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """Validated configuration; ``document`` recreates it in a worker process."""

    server: ServerSettings
    upstreams: Mapping[str, UpstreamSpec]
    routes: tuple[RouteSpec, ...]
    source: str
    document: dict[str, Any] = field(repr=False, compare=False)
    tracing: TracingSpec | None = None  # None: tracing off
    auth: AuthSpec | None = None  # None: no issuers, no route checks tokens
    guards: GuardsSpec | None = None  # None: no connection guards (the protocol's limits still apply)
    ratelimit: RateLimitSpec | None = None  # None: no rate limits

    def builtin_routes(self) -> list[RouteSpec]:
        """Routes the gateway answers itself (the token issuer's endpoints), after the configured ones."""
        if self.auth is None:
            return []
        from gateway.auth.issuer_config import builtin_routes

        return [spec for spec, _ in builtin_routes(self.auth)]

    def all_upstreams(self) -> dict[str, UpstreamSpec]:
        """The named upstreams, then one per distinct inline URL in the routes (named by the URL)."""
        found = dict(self.upstreams)
        for route in self.routes:
            if route.upstream not in found:  # an inline URL, checked at load
                target = parse_target(Node(route.upstream, self.source))
                found[route.upstream] = UpstreamSpec(route.upstream, (target,))
        return found

    def summary(self) -> str:
        """What ``gateway check`` prints: routes and upstreams, one per line."""
        lines = [f"{self.source}: valid", f"upstreams ({len(self.upstreams)}):"]
        for spec in self.upstreams.values():
            found = [f"{source.kind} {source.describe()}" for source in spec.sources]  # discovery
            lines.append(f"  {spec.name}: " + ", ".join([*(str(t) for t in spec.targets), *found]))
        lines.append(f"routes ({len(self.routes)}):")
        for route in self.routes:
            kind = "prefix" if route.prefix else "path"
            methods = ",".join(sorted(route.methods)) if route.methods else "*"
            hosts = ",".join(route.hosts) if route.hosts else "*"
            lines.append(f"  {route.name}: {kind} {route.pattern} methods={methods} hosts={hosts} "
                         f"-> {route.upstream}")
        if self.tracing is not None:
            lines.append(f"tracing: {self.tracing.describe()}")
        if self.auth is not None:
            lines += ["auth issuers:", *(f"  {spec.describe()}" for spec in self.auth.issuers.values())]
            if self.auth.providers:
                lines += ["auth providers:", *(f"  {spec.describe()}" for spec in self.auth.providers.values())]
            login = self.auth.login
            if login is not None:  # what to register at the provider, and the paths the gateway serves
                lines.append(f"auth login: provider {login.provider}, redirect URI {login.redirect_uri}, login "
                             f"{login.login_path}, logout {login.logout_path}")
        if self.guards is not None:
            lines.append(f"guards: {self.guards.describe()}")
        if self.ratelimit is not None:
            lines += describe_ratelimit(self.ratelimit)
        return "\n".join(lines)


def load(environ: Mapping[str, str], flags: Mapping[str, Any]) -> GatewayConfig:
    """Loads and validates the configuration named by flags or environment (raises ConfigError)."""
    path = flags.get("config") or environ.get("GATEWAY_CONFIG") or None
    upstream = flags.get("upstream") or environ.get("GATEWAY_UPSTREAM") or None
    if path is None:
        server = resolve(None, environ, flags)
        if upstream is None:
            raise ConfigError("command line", "", "nothing to proxy: pass --upstream URL or --config FILE "
                              "(or set GATEWAY_UPSTREAM / GATEWAY_CONFIG)")
        return _quick(server)
    root = load_file(path, environ).mapping(TOP_KEYS)
    server = resolve(root.child("server"), environ, flags)
    if server.upstream is not None:
        raise ConfigError(str(path), "", "use either a config file or --upstream/GATEWAY_UPSTREAM, not both")
    document = {
        "source": str(path),
        "server": _settings_document(server),
        "upstreams": root.child("upstreams").value,
        "routes": root.child("routes").value,
        "tracing": root.child("tracing").value,
        "auth": root.child("auth").value,
        "guards": root.child("guards").value,
        "ratelimit": root.child("ratelimit").value,
    }
    return from_document(document)


def _quick(server: ServerSettings) -> GatewayConfig:
    document = {
        "source": QUICK_SOURCE,
        "server": _settings_document(server),
        "upstreams": {"default": server.upstream},
        "routes": [{"name": "default", "prefix": "/", "upstream": "default"}],
    }
    return from_document(document)


def _settings_document(server: ServerSettings) -> dict[str, Any]:
    return {name: getattr(server, name) for name in server.__dataclass_fields__}


def from_document(document: Mapping[str, Any]) -> GatewayConfig:
    """Builds a GatewayConfig from the resolved document (in the supervisor and in each worker)."""
    source = document["source"]
    server = ServerSettings(**document["server"])
    upstreams = parse_upstreams(Node(document.get("upstreams"), source, "upstreams"))
    routes_node = Node(document.get("routes"), source, "routes")
    routes = parse_routes(routes_node)
    if not routes:
        raise ConfigError(source, "routes", "expected at least one route")
    routes = route_body_limits(server.max_body_bytes, routes)
    for index, route in enumerate(routes):
        _check_upstream_reference(route, index, upstreams, routes_node)
    RouteTable([(route, index) for index, route in enumerate(routes)], source)  # patterns and conflicts
    tracing = parse_tracing(Node(document.get("tracing"), source, "tracing"))
    auth = _parse_auth(Node(document.get("auth"), source, "auth"))
    check_route_issuers([(i, r.auth) for i, r in enumerate(routes) if r.auth is not None], auth, routes_node)
    guards = parse_guards(Node(document.get("guards"), source, "guards"))
    ratelimit = parse_ratelimit(Node(document.get("ratelimit"), source, "ratelimit"))
    check_route_policies([(i, r.ratelimit) for i, r in enumerate(routes) if r.ratelimit], ratelimit, routes_node)
    return GatewayConfig(server, upstreams, tuple(routes), source, dict(document), tracing, auth, guards,
                         ratelimit=ratelimit)


def _parse_auth(node: Node) -> AuthSpec | None:
    """The ``auth:`` section; its modules (pyjwt, cryptography) load only when a config has one."""
    if node.missing:
        return None
    from gateway.auth.config import parse_auth

    return parse_auth(node)


def _check_upstream_reference(
    route: RouteSpec, index: int, upstreams: Mapping[str, UpstreamSpec], routes_node: Node
) -> None:
    node = routes_node.child(index).child("upstream")
    if "://" in route.upstream:
        parse_target(node)
        return
    if route.upstream not in upstreams:
        names = ", ".join(sorted(upstreams)) or "none are defined"
        node.fail(f"the name of an upstream under 'upstreams' ({names}) or a URL like http://HOST:PORT")
