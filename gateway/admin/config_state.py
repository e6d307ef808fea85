"""What the admin API changed in the configuration: an overlay over the file, and its state file.

The overlay holds the routes and upstreams PUT through the admin API (whole entries, in the config file's
shape) and the names DELETEd from the file's entries. ``apply`` lays it over a document: a PUT route
takes the place of the file's route of that name (or comes after the file's routes when new), a PUT
upstream replaces the file's upstream of that name (or is added), a deleted name is left out. An overlay
is immutable: a change makes a new one, so taking a change back is putting the old one back.

The state file (setting ``admin_state_file``) is the overlay as JSON, rewritten whole on each change:
a temporary file in the same directory, fsync, rename over the old one, fsync of the directory, so a
crash leaves the old or the new file, never a torn one::

    {"version": 1,
     "routes": [{"name": "orders", "prefix": "/orders", "upstream": "orders"}],
     "upstreams": {"orders": {"targets": ["http://10.0.0.7:8000"]}},
     "deleted": {"routes": ["legacy"], "upstreams": []}}

Reading it checks every entry like the config file does and names the file and key of a mistake.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import orjson

from gateway.config import ConfigError, Node
from gateway.routing.config import NAME as ROUTE_NAME
from gateway.routing.config import parse_route, parse_routes
from gateway.upstreams.config import UPSTREAM_NAME, parse_upstream

if TYPE_CHECKING:
    from gateway.loader import GatewayConfig

VERSION = 1
STATE_KEYS = frozenset({"version", "routes", "upstreams", "deleted"})


@dataclass(frozen=True, slots=True)
class Overlay:
    """The admin API's changes: routes (entries with their ``name``, in the order first PUT), upstreams
    (name -> entry) and the names of the file's entries that were deleted."""

    routes: tuple[dict[str, Any], ...] = ()
    upstreams: Mapping[str, Any] = field(default_factory=dict)
    deleted_routes: frozenset[str] = frozenset()
    deleted_upstreams: frozenset[str] = frozenset()

    @property
    def empty(self) -> bool:
        return not (self.routes or self.upstreams or self.deleted_routes or self.deleted_upstreams)

    def apply(self, document: Mapping[str, Any]) -> dict[str, Any]:
        """``document`` with the overlay laid over its ``routes`` and ``upstreams`` (a new dict)."""
        result = dict(document)
        if self.empty:
            return result
        upstreams = {name: entry for name, entry in (document.get("upstreams") or {}).items()
                     if name not in self.deleted_upstreams}
        upstreams.update(self.upstreams)
        result["upstreams"] = upstreams
        result["routes"] = self._routes(document.get("routes") or [])
        return result

    def _routes(self, entries: list[Any]) -> list[Any]:
        mine = {route["name"]: route for route in self.routes}
        routes, placed = [], set()
        for name, entry in zip(route_names(entries), entries, strict=True):
            if name in mine:
                routes.append(mine[name])
                placed.add(name)
            elif name not in self.deleted_routes:
                routes.append(entry)
        routes += [route for route in self.routes if route["name"] not in placed]
        return routes

    def put_route(self, entry: dict[str, Any]) -> Overlay:
        name = entry["name"]
        routes = [entry if route["name"] == name else route for route in self.routes]
        if all(route["name"] != name for route in self.routes):
            routes.append(entry)
        return replace(self, routes=tuple(routes), deleted_routes=self.deleted_routes - {name})

    def delete_route(self, name: str, in_base: bool) -> Overlay:
        """Drops the admin API's route ``name``; one from the file (``in_base``) is remembered as deleted."""
        routes = tuple(route for route in self.routes if route["name"] != name)
        deleted = self.deleted_routes | {name} if in_base else self.deleted_routes
        return replace(self, routes=routes, deleted_routes=deleted)

    def put_upstream(self, name: str, entry: Any) -> Overlay:
        return replace(self, upstreams={**self.upstreams, name: entry},
                       deleted_upstreams=self.deleted_upstreams - {name})

    def delete_upstream(self, name: str, in_base: bool) -> Overlay:
        upstreams = {key: entry for key, entry in self.upstreams.items() if key != name}
        deleted = self.deleted_upstreams | {name} if in_base else self.deleted_upstreams
        return replace(self, upstreams=upstreams, deleted_upstreams=deleted)

    def to_json(self) -> bytes:
        return orjson.dumps({
            "version": VERSION, "routes": list(self.routes), "upstreams": dict(self.upstreams),
            "deleted": {"routes": sorted(self.deleted_routes), "upstreams": sorted(self.deleted_upstreams)},
        }, option=orjson.OPT_INDENT_2)


def route_names(entries: list[Any]) -> list[str]:
    """The name of each route entry as the loader gives it (its ``name``, else ``prefix:/x`` or
    ``path:/x``, made unique with ``#index``); the entries are valid (they come from a loaded config)."""
    return [route.name for route in parse_routes(Node(entries, "", "routes"))]


def etag(entry: Any) -> str:
    """A strong entity tag of an entry's content (the same content gives the same tag, across restarts)."""
    digest = hashlib.sha256(orjson.dumps(entry, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return f'"{digest[:20]}"'


def check_route(name: str, entry: Any, source: str, path: str = "") -> dict[str, Any]:
    """A route entry for ``name`` checked like a config file's (raises ConfigError naming the key),
    with ``name`` first; an entry's own ``name`` must be ``name``."""
    node = Node(entry, source, path)
    if not isinstance(entry, dict):
        node.fail("a mapping (a route entry like one of the config file's routes)")
    if not ROUTE_NAME.match(name):
        raise ConfigError(source, path, f"expected a route name of letters, digits and _ . : -, got {name!r}")
    if "name" in entry and entry["name"] != name:
        node.child("name").fail(f"{name!r} (the name in the URL) or no name")
    checked = {"name": name, **{key: value for key, value in entry.items() if key != "name"}}
    parse_route(Node(checked, source, path))
    return checked


def check_upstream(name: str, entry: Any, source: str, path: str = "") -> Any:
    """An upstream entry checked like a config file's (a URL string or a mapping; raises ConfigError)."""
    if not UPSTREAM_NAME.match(name):
        raise ConfigError(source, path, f"expected an upstream name of letters, digits and _ . -, got {name!r}")
    parse_upstream(name, Node(entry, source, path))
    return entry


def read_state(path: str) -> Overlay:
    """The overlay stored in ``path`` (empty when there is no file yet); raises ConfigError naming the
    file and the key of anything wrong in it."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except FileNotFoundError:
        return Overlay()
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read the admin state file: {exc.strerror or exc}") from None
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(path, "", f"expected the admin API's JSON state, not valid JSON: {exc}") from None
    root = Node(document, path).mapping(STATE_KEYS)
    version = root.child("version").integer(VERSION)
    if version != VERSION:
        root.child("version").fail(f"state version {VERSION}")
    routes = []
    seen: set[str] = set()
    for node in root.child("routes").elements(optional=True):
        name = node.mapping().child("name").required("the route's name").string()
        if name in seen:
            node.child("name").fail("a name listed once")
        seen.add(name)
        routes.append(check_route(name, node.value, path, node.path))
    upstreams = {name: check_upstream(name, node.value, path, node.path)
                 for name, node in root.child("upstreams").mapping(optional=True).items()}
    deleted = root.child("deleted").mapping(frozenset({"routes", "upstreams"}), optional=True)
    return Overlay(tuple(routes), upstreams, _names(deleted.child("routes")), _names(deleted.child("upstreams")))


def _names(node: Node) -> frozenset[str]:
    return frozenset(str(entry.string()) for entry in node.elements(optional=True))


class StateFile:
    """Writes an overlay to its state file atomically, in two steps: ``prepare`` writes and syncs a
    temporary file (nothing visible changes), ``commit`` renames it over the state file; ``discard``
    drops a prepared file that should not be kept."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.directory = os.path.dirname(path) or "."

    def prepare(self, overlay: Overlay) -> str:
        fd, temporary = tempfile.mkstemp(prefix=".admin-state-", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(overlay.to_json())
                file.flush()
                os.fsync(file.fileno())
        except BaseException:
            self.discard(temporary)
            raise
        return temporary

    def commit(self, temporary: str) -> None:
        os.replace(temporary, self.path)
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)  # the rename itself survives a crash
        finally:
            os.close(fd)

    def discard(self, temporary: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def names_using(routes: Iterable[Any], upstream: str) -> list[str]:
    """Names of the route entries whose ``upstream`` is ``upstream``."""
    entries = list(routes)
    return [name for name, entry in zip(route_names(entries), entries, strict=True)
            if isinstance(entry, dict) and entry.get("upstream") == upstream]


def with_changes(base: GatewayConfig, overlay: Overlay, state_path: str) -> GatewayConfig:
    """``base`` with the admin API's changes, validated; a mistake says the state file is involved."""
    from gateway.loader import from_document

    try:
        return from_document(overlay.apply(base.document))
    except ConfigError as exc:
        raise ConfigError(exc.source, exc.path, f"{exc.message} (with the admin API's changes in {state_path})"
                          ) from None


def stored_changes(config: GatewayConfig) -> GatewayConfig:
    """``config`` with the changes of its ``admin_state_file`` (for ``gateway check``; raises ConfigError)."""
    path = config.server.admin_state_file
    return config if path is None else with_changes(config, read_state(path), path)
