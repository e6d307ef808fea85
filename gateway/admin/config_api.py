"""The admin API for routes and upstreams, on the admin port; a layer over the config file.

    GET     /config/routes              every route the gateway runs (file + admin API), in order
    GET     /config/routes/NAME         one route entry, with its ETag
    PUT     /config/routes/NAME         create or replace it (body: a route entry, as in the file's routes)
    DELETE  /config/routes/NAME
    GET     /config/upstreams           every upstream (file + admin API)
    GET     /config/upstreams/NAME      one upstream entry, with its ETag
    PUT     /config/upstreams/NAME      create or replace it (body: an upstream entry, as in the file)
    DELETE  /config/upstreams/NAME      409 while a route still uses it

A PUT body is checked exactly like the config file (400 naming the key and what was expected), then the
whole configuration is composed again (the file, this layer, then service discovery; see
gateway.server.layers), validated, and rolled out to every worker by ``Supervisor.reconfigure``: the
answer comes once the new workers serve (200 with the stored entry), and if they do not start, the
previous configuration keeps serving and the answer is 503 with nothing changed. ``If-Match`` (the ETag
of a GET) makes a PUT or DELETE conditional (412 when the entry changed meanwhile); ``If-None-Match: *``
makes a PUT create-only. Changes are applied one at a time.

Persistence. Changes are kept in the state file (setting ``admin_state_file``; see
gateway.admin.config_state), written before the answer, and laid over the config file again at start and
on every SIGHUP reload, so a restart or a reload keeps them. A DELETE of an entry from the file is kept
too (the entry stays deleted until a PUT of that name). Without a state file the API is read-only (PUT and
DELETE answer 405), as Kong's is without a database: a change that a restart would silently undo is
never accepted.

Authentication. With ``admin_token`` (``GATEWAY_ADMIN_TOKEN``) or ``admin_token_file`` set, every
mutating request on the admin port (PUT, POST, DELETE: these endpoints and the other features') must
send ``Authorization: Bearer TOKEN`` (compared in constant time; 401 otherwise). The token file is read
again on reload. Reads stay open, like /metrics.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from gateway._fast.protocol import Receive, Scope, Send, new_request_id
from gateway.admin.app import read_body as read_bounded
from gateway.admin.app import respond
from gateway.admin.config_state import (
    Overlay,
    StateFile,
    check_route,
    check_upstream,
    etag,
    names_using,
    read_state,
    route_names,
    with_changes,
)
from gateway.config import ConfigError
from gateway.errors import error_body
from gateway.server.supervisor import ReconfigureError

if TYPE_CHECKING:
    from gateway.admin.app import AdminApp
    from gateway.loader import GatewayConfig
    from gateway.settings import ServerSettings

logger = logging.getLogger("gateway.admin")

PREFIX = "/config/"
KINDS = ("routes", "upstreams")
BODY_SOURCE = "request body"
MAX_BODY = 64 * 1024
READ = ("GET", "HEAD")
Headers = tuple[tuple[bytes, bytes], ...]
Answer = tuple[int, bytes, Headers]
_MISSING = object()


class Host(Protocol):
    """What the layer needs from the supervisor."""

    @property
    def base(self) -> GatewayConfig: ...

    async def reconfigure(self, reason: str) -> bool: ...


class APIError(Exception):
    """An error answer: status, code, message, and optionally the key of the body at fault."""

    def __init__(self, status: int, code: str, message: str, *, key: str | None = None,
                 headers: Headers = (), cause: ConfigError | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.key, self.headers = status, code, message, key, headers
        self.cause = cause  # the configuration mistake behind a 400 or 409

    def answer(self) -> Answer:
        body = orjson.loads(error_body(self.status, self.code, self.message, new_request_id()))
        if self.key is not None:
            body["key"] = self.key
        return self.status, orjson.dumps(body), self.headers


class AdminConfigLayer:
    """The admin API's layer: its overlay, the state file, and changes rolled out one at a time."""

    name = "admin_api"

    def __init__(self, host: Host, state_path: str | None) -> None:
        self.host = host
        self.overlay = Overlay()
        self.state = StateFile(state_path) if state_path is not None else None
        self.changing = asyncio.Lock()

    async def start(self) -> None:
        if self.state is not None:
            self.overlay = read_state(self.state.path)
            with_changes(self.host.base, self.overlay, self.state.path)
            if not self.overlay.empty:
                logger.info("admin API changes from %s: %d routes, %d upstreams, %d deleted", self.state.path,
                            len(self.overlay.routes), len(self.overlay.upstreams),
                            len(self.overlay.deleted_routes) + len(self.overlay.deleted_upstreams))

    def apply(self, document: dict[str, Any]) -> dict[str, Any]:
        return self.overlay.apply(document)

    def close(self) -> None:
        """Nothing to release: the state file is written whole on each change."""

    def written(self, overlay: Overlay | None = None) -> dict[str, Any]:
        """The configuration as written: the file with the admin API's changes (discovery left out)."""
        return (self.overlay if overlay is None else overlay).apply(self.host.base.document)

    async def change(self, mutate: Callable[[Overlay], Overlay], reason: str, failing: int = 400) -> None:
        """Applies ``mutate`` to the overlay, checks, stores and rolls out the result; on any failure the
        previous overlay stays. Shielded: a client that leaves does not interrupt a roll half-way."""
        if self.state is None:
            raise APIError(405, "read_only", "the admin API is read-only: set admin_state_file "
                           "(GATEWAY_ADMIN_STATE_FILE) so that changes survive a restart",
                           headers=((b"allow", b"GET, HEAD"),))
        await asyncio.shield(self._change(self.state, mutate, reason, failing))

    async def _change(self, state: StateFile, mutate: Callable[[Overlay], Overlay], reason: str,
                      failing: int) -> None:
        async with self.changing:
            previous = self.overlay
            self.overlay = mutate(previous)  # raises APIError (404, 409, 412): nothing changed
            temporary, rolled, committed = None, False, False
            try:
                temporary = state.prepare(self.overlay)
                # composes the whole configuration, validates it like the file (ConfigError), rolls it out
                rolled = await self.host.reconfigure(f"admin API: {reason}")
                state.commit(temporary)
                committed = True
            except ConfigError as exc:
                code = "invalid_config" if failing == 400 else "conflict"
                raise APIError(failing, code, str(exc), key=exc.path or None, cause=exc) from None
            except ReconfigureError as exc:
                raise APIError(503, "reconfigure_failed", f"{exc}; the previous configuration still serves, "
                               "nothing was changed") from None
            except OSError as exc:
                logger.error("admin API: cannot write %s: %s", state.path, exc)
                raise APIError(500, "state_file_error", "cannot write the admin state file: "
                               f"{exc.strerror or exc}; nothing was changed") from None
            finally:
                if not committed:  # take the change back
                    self.overlay = previous
                    if temporary is not None:
                        state.discard(temporary)
                    if rolled:
                        await self.restore(reason)

    async def restore(self, reason: str) -> None:
        """The change rolled out but could not be stored: roll the previous configuration out again."""
        try:
            await self.host.reconfigure(f"admin API: undo {reason}")
        except (ConfigError, ReconfigureError) as exc:  # pragma: no cover - it served a moment ago
            logger.error("admin API: undoing %s failed: %s", reason, exc)


def relative(exc: ConfigError, prefix: str) -> ConfigError:
    """``exc`` as a mistake of the request body when it concerns the entry at ``prefix`` of the composed
    document (``routes[4].upstream`` -> ``upstream``)."""
    if exc.path == prefix or exc.path.startswith((prefix + ".", prefix + "[")):
        return ConfigError(BODY_SOURCE, exc.path[len(prefix):].lstrip("."), exc.message)
    return exc


def find(document: dict[str, Any], kind: str, name: str) -> Any:
    """The entry ``name`` of ``kind`` in ``document`` (_MISSING when there is none)."""
    if kind == "upstreams":
        return (document.get("upstreams") or {}).get(name, _MISSING)
    routes = document.get("routes") or []
    for found, entry in zip(route_names(routes), routes, strict=True):
        if found == name:
            return entry
    return _MISSING


def preconditions(headers: list[tuple[bytes, bytes]], current: Any, what: str) -> None:
    """``If-Match`` / ``If-None-Match`` against the current entry's ETag (412 when they fail)."""
    tag = None if current is _MISSING else etag(current)
    for header, value in headers:
        if header not in (b"if-match", b"if-none-match"):
            continue
        tags = {part.strip() for part in value.decode("latin-1").split(",")}
        matches = tag is not None and ("*" in tags or tag in tags)
        if matches != (header == b"if-match"):
            extra = ((b"etag", tag.encode("ascii")),) if tag is not None else ()
            state = f"its ETag is now {tag}" if tag is not None else "it does not exist"
            raise APIError(412, "precondition_failed", f"{header.decode('ascii')} failed for {what}: {state}",
                           headers=extra)


class ConfigAPI:
    """The HTTP side: parses requests, answers JSON."""

    def __init__(self, layer: AdminConfigLayer) -> None:
        self.layer = layer

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            status, body, headers = await self.dispatch(scope, receive)
        except APIError as exc:
            status, body, headers = exc.answer()
        await respond(send, status, body, headers)

    async def dispatch(self, scope: Scope, receive: Receive) -> Answer:
        kind, _, name = scope["path"][len(PREFIX):].partition("/")
        if kind not in KINDS:
            raise APIError(404, "not_found", "no such admin endpoint (try /config/routes or /config/upstreams)")
        method = scope["method"]
        if not name:
            if method not in READ:
                raise APIError(405, "method_not_allowed", f"use GET; PUT or DELETE /config/{kind}/NAME",
                               headers=((b"allow", b"GET, HEAD"),))
            return self.listing(kind)
        if method in READ:
            return self.get(kind, name)
        if method == "PUT":
            body = await read_body(receive)
            return await self.put(kind, name, body, scope["headers"])
        return await self.delete(kind, name, scope["headers"])

    def listing(self, kind: str) -> Answer:
        overlay = self.layer.overlay
        if kind == "routes":
            put, deleted = [route["name"] for route in overlay.routes], sorted(overlay.deleted_routes)
        else:
            put, deleted = list(overlay.upstreams), sorted(overlay.deleted_upstreams)
        entries = self.layer.written().get(kind) or ([] if kind == "routes" else {})
        state = self.layer.state.path if self.layer.state is not None else None
        admin = {"put": put, "deleted": deleted, "state_file": state}
        return 200, orjson.dumps({kind: entries, "admin": admin}), ()

    def get(self, kind: str, name: str) -> Answer:
        entry = find(self.layer.written(), kind, name)
        if entry is _MISSING:
            raise APIError(404, "not_found", f"no {kind[:-1]} named {name!r}")
        return 200, orjson.dumps(entry), ((b"etag", etag(entry).encode("ascii")),)

    async def put(self, kind: str, name: str, body: bytes, headers: list[tuple[bytes, bytes]]) -> Answer:
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise APIError(400, "bad_request", f"the body is not JSON: {exc}") from None
        try:
            entry = check_route(name, value, BODY_SOURCE) if kind == "routes" else \
                check_upstream(name, value, BODY_SOURCE)
        except ConfigError as exc:
            raise APIError(400, "invalid_config", str(exc), key=exc.path or None) from None

        def mutate(overlay: Overlay) -> Overlay:
            preconditions(headers, find(self.layer.written(overlay), kind, name), f"{kind[:-1]} {name!r}")
            if kind == "routes":
                return overlay.put_route(entry)
            return overlay.put_upstream(name, entry)

        try:
            await self.layer.change(mutate, f"PUT /config/{kind}/{name}")
        except APIError as exc:
            raise self.about_body(exc, kind, name, entry) from None
        return 200, orjson.dumps(entry), ((b"etag", etag(entry).encode("ascii")),)

    def about_body(self, exc: APIError, kind: str, name: str, entry: Any) -> APIError:
        """A cross-check's mistake (``routes[4].upstream``) told as the body's key when it is this entry."""
        cause = exc.cause
        if exc.status != 400 or cause is None:
            return exc
        if kind == "routes":
            changed = self.layer.overlay.put_route(entry)
            names = route_names(self.layer.written(changed).get("routes") or [])
            prefix = f"routes[{names.index(name)}]"
        else:
            prefix = f"upstreams.{name}"
        mine = relative(cause, prefix)
        if mine is cause:
            return exc
        return APIError(400, "invalid_config", str(mine), key=mine.path or None)

    async def delete(self, kind: str, name: str, headers: list[tuple[bytes, bytes]]) -> Answer:
        def mutate(overlay: Overlay) -> Overlay:
            written = self.layer.written(overlay)
            current = find(written, kind, name)
            if current is _MISSING:
                raise APIError(404, "not_found", f"no {kind[:-1]} named {name!r}")
            preconditions(headers, current, f"{kind[:-1]} {name!r}")
            base = self.layer.host.base.document
            if kind == "routes":
                return overlay.delete_route(name, name in route_names(base.get("routes") or []))
            users = names_using(written.get("routes") or [], name)
            if users:
                raise APIError(409, "upstream_in_use", f"upstream {name!r} is used by routes "
                               f"{', '.join(users)}: change or delete them first")
            return overlay.delete_upstream(name, name in (base.get("upstreams") or {}))

        await self.layer.change(mutate, f"DELETE /config/{kind}/{name}", failing=409)
        return 200, orjson.dumps({"deleted": name}), ()


async def read_body(receive: Receive) -> bytes:
    body = await read_bounded(receive, MAX_BODY)
    if body is None:
        raise APIError(413, "payload_too_large", f"the body is larger than {MAX_BODY} bytes")
    return body


def layer(supervisor: Any, config: GatewayConfig) -> AdminConfigLayer:
    """The layer (gateway.server.layers): always present, so the routes and upstreams can be read."""
    return AdminConfigLayer(supervisor, config.server.admin_state_file)


def register(admin: AdminApp, config: GatewayConfig) -> None:
    """The admin token (again on reload: a new token file takes effect) and, once, the endpoints."""
    admin.token = read_token(config.server)
    found = [found for found in getattr(admin.supervisor, "layers", ()) if isinstance(found, AdminConfigLayer)]
    if found and admin.find(PREFIX + "routes") is None:
        admin.add(PREFIX, ConfigAPI(found[0]).handle, methods=("GET", "HEAD", "PUT", "DELETE"), prefix=True)


def read_token(server: ServerSettings) -> bytes | None:
    """The admin bearer token, or None for none. A token file that became unreadable refuses every
    mutating request (fail closed) until a reload reads a good one."""
    if server.admin_token is not None:
        return server.admin_token.encode("utf-8")
    if server.admin_token_file is None:
        return None
    try:
        with open(server.admin_token_file, "rb") as file:
            token = file.read().strip()
    except OSError as exc:
        token = b""
        logger.error("cannot read admin_token_file %s (%s): refusing admin changes", server.admin_token_file,
                     exc.strerror or exc)
    return token or os.urandom(32)
