"""The supervisor: binds the sockets, runs the admin listener, starts, restarts and reloads workers.

Sockets. The supervisor creates one SO_REUSEPORT listening socket per worker slot and keeps them open for
its whole life. A slot's worker inherits the socket; when the worker is replaced (crash, reload) the new
one inherits the same socket, so connections waiting in its accept queue are served, not reset (closing
a SO_REUSEPORT listener resets its queue; keeping it open avoids that).

Reload (SIGHUP). The config is loaded and validated again; an invalid one is refused with a log line and
the old workers keep serving. A valid one starts a new worker per slot on the same sockets; once all of
them serve, the old ones are told to drain (SIGTERM). Old and new accept from the same sockets for a
moment, so no connection is refused and no request fails. Settings of the listeners themselves (host,
port, workers, backlog, admin address) take effect at the next restart.

Live changes. SIGHUP, the admin API and service discovery all go through ``reconfigure``: the base
configuration (the file, read again on SIGHUP) with every layer applied on top (gateway.server.layers),
validated, then rolled out as above; one change at a time, and nothing rolled when the result equals what
runs.

Crashes. A worker that exits unasked is restarted, after a delay that doubles while it keeps crashing
(from 0.1 s up to 10 s, reset once a worker has lived 10 s). The other slots keep serving meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from uvicorn.server import ServerState

from gateway import __version__
from gateway._fast.protocol import HttpProtocol, Limits
from gateway.admin.app import AdminApp
from gateway.admin.features import register_all
from gateway.config import ConfigError
from gateway.loader import GatewayConfig, load
from gateway.observability.metrics import HostMetrics, Schema
from gateway.server.layers import Layer, make_layers
from gateway.server.services import Service, make_services
from gateway.server.shared import Segments, segment_sizes, worker_exited
from gateway.settings import ServerSettings
from gateway.upstreams.host import UpstreamsHost

logger = logging.getLogger("gateway.supervisor")

RESTART_DELAY_MIN = 0.1
RESTART_DELAY_MAX = 10.0
STABLE_AFTER = 10.0
START_TIMEOUT = 30.0
LISTENER_SETTINGS = ("host", "port", "workers", "backlog", "admin_host", "admin_port", "admin_state_file")


class ReconfigureError(Exception):
    """New workers for a changed configuration did not start; the previous configuration still serves."""


class StartupError(Exception):
    """A runtime failure before serving (port in use, ...): one line for the user, exit code 1."""


@dataclass(eq=False)
class Worker:
    """One worker process of a slot, of one config generation."""

    slot: int
    generation: int
    process: asyncio.subprocess.Process
    started_at: float
    ready: bool = False
    stopping: bool = False
    exited: asyncio.Future[int] | None = None
    became_ready: asyncio.Future[bool] | None = None

    @property
    def pid(self) -> int:
        return self.process.pid


class Slot:
    """A listening socket and the worker currently serving it."""

    def __init__(self, index: int, sock: socket.socket) -> None:
        self.index = index
        self.sock = sock
        self.worker: Worker | None = None
        self.crashes = 0
        self.restart: asyncio.TimerHandle | None = None

    def restart_delay(self, lived: float) -> float:
        """Seconds to wait before replacing a worker that lived ``lived`` seconds: 0.1 s, doubling with
        each crash in a row up to 10 s; a worker that lived STABLE_AFTER seconds starts the count anew."""
        if lived >= STABLE_AFTER:
            self.crashes = 0
        delay = min(RESTART_DELAY_MAX, RESTART_DELAY_MIN * 2.0**self.crashes)
        self.crashes += 1
        return delay


def bind_listener(host: str, port: int, backlog: int, reuse_port: bool) -> socket.socket:
    """A listening TCP socket; raises StartupError naming the address on failure."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(f"cannot resolve listen address {host!r}: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(f"port {port} is already in use ({where})") from None
        raise StartupError(f"cannot listen on {where}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def bind_slots(server: ServerSettings) -> list[socket.socket]:
    """One SO_REUSEPORT socket per worker slot on the public port (port 0: one free port for all).

    Any process of the same user may join a SO_REUSEPORT group silently, so the port is first probed
    without SO_REUSEPORT: a port another gateway (or anything else) listens on is reported in use.
    """
    port = server.port
    if port != 0:
        bind_listener(server.host, port, 1, reuse_port=False).close()
    sockets: list[socket.socket] = []
    try:
        for _ in range(server.workers):
            sock = bind_listener(server.host, port, server.backlog, reuse_port=True)
            port = sock.getsockname()[1]
            sockets.append(sock)
    except StartupError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class Supervisor:
    """Runs the gateway: ``serve`` returns the process exit code."""

    def __init__(self, config: GatewayConfig, environ: Mapping[str, str], flags: Mapping[str, Any]) -> None:
        self.config = config  # what the workers run: ``base`` with every layer applied
        self.base = config  # what the file, the environment and the flags say
        self.layers: list[Layer] = make_layers(self, config)
        self.rolling = asyncio.Lock()  # one configuration change at a time
        self.environ = environ
        self.flags = flags
        self.generation = 0
        self.state = "starting"  # starting -> serving -> draining
        self.slots: list[Slot] = []
        self.retiring: set[Worker] = set()
        self.admin_sock: socket.socket | None = None
        self.admin_server: asyncio.base_events.Server | None = None
        self.reloading = False
        self.stop_requested: asyncio.Event | None = None
        self.force = False
        self.tasks: set[asyncio.Task[Any]] = set()
        self.schema = Schema.for_config(config)  # the metrics layout of the current generation
        self.metrics = HostMetrics(__version__)
        self.metrics.facts = self.metric_facts
        self.segments: Segments | None = None  # host-wide shared memory, made before the first worker
        self.admin: AdminApp | None = None
        self.upstreams_host = UpstreamsHost()  # shared upstream records, active health checks, gauges
        self.metrics.registry.register(self.upstreams_host)
        self.services: list[Service] | None = None  # made with the shared segments

    # -- start-up -----------------------------------------------------------------------------------

    def bind(self) -> None:
        """Binds the public slots and the admin port (before any worker exists)."""
        server = self.config.server
        sockets = bind_slots(server)
        try:
            self.admin_sock = bind_listener(server.admin_host, server.admin_port, 128, reuse_port=False)
        except StartupError as exc:
            for sock in sockets:
                sock.close()
            raise StartupError(f"admin listener: {exc}") from None
        self.slots = [Slot(i, sock) for i, sock in enumerate(sockets)]

    @property
    def port(self) -> int:
        return int(self.slots[0].sock.getsockname()[1])

    @property
    def admin_port(self) -> int:
        assert self.admin_sock is not None
        return int(self.admin_sock.getsockname()[1])

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        self.stop_requested = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        loop.add_signal_handler(signal.SIGUSR1, self.reopen_logs)
        await self.start_admin()
        server = self.config.server
        logger.info("gateway serving http://%s:%d with %d workers (%s); admin on http://%s:%d",
                    server.host, self.port, len(self.slots), self.config.source, server.admin_host,
                    self.admin_port)
        try:
            for layer in self.layers:
                await layer.start()
            self.config = self.keep_listener_settings(self.compose(self.base))
        except ConfigError as exc:
            logger.error("invalid configuration: %s", exc)
            await self.drain()
            return 2
        self.schema = Schema.for_config(self.config)
        self.prepare_shared(self.config)
        started = await asyncio.gather(*(self.spawn(slot, self.generation) for slot in self.slots))
        for slot, worker in zip(self.slots, started, strict=True):
            slot.worker = worker
        ready = await self.wait_ready(started)
        if ready and not self.stop_requested.is_set():
            self.state = "serving"
            logger.info("all %d workers serve", len(started))
        await self.stop_requested.wait()
        await self.drain()
        return 0

    async def start_admin(self) -> None:
        assert self.admin_sock is not None
        loop = asyncio.get_running_loop()
        app = self.admin = AdminApp(self)
        register_all(app, self.config)
        state = ServerState()
        limits = Limits(max_header_bytes=16384, max_body_bytes=65536, keepalive_timeout=5.0)
        self.admin_server = await loop.create_server(
            lambda: HttpProtocol(app, limits, state, loop),  # type: ignore[arg-type, return-value]
            sock=self.admin_sock,
        )

    # -- workers ------------------------------------------------------------------------------------

    def prepare_shared(self, config: GatewayConfig) -> None:
        """Before a configuration's workers start: the shared segments exist and the upstream records of
        ``config`` are in them; its active health checks run (once per host, here)."""
        if self.segments is None:
            self.segments = Segments(segment_sizes(self.config))
        self.upstreams_host.apply(config, self.segments.maps.get("upstreams"))
        if self.services is None:  # host services (gateway.server.services), once the segments exist
            self.services = make_services(self.segments.maps, self.metrics.registry)
        for service in self.services:
            service.apply(config)

    def document_bytes(self) -> bytes:
        return orjson.dumps(self.config.document)

    async def spawn(self, slot: Slot, generation: int) -> Worker:
        """Starts a worker for ``slot`` on its socket; returns at once (readiness is tracked)."""
        loop = asyncio.get_running_loop()
        ready_r, ready_w = os.pipe()
        fd = slot.sock.fileno()
        schema = self.schema
        if self.segments is None:
            self.segments = Segments(segment_sizes(self.config))
        shared = tuple(self.segments.fds.values())
        region = self.metrics.region_for(schema)
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway.server.worker", "--fd", str(fd), "--ready-fd", str(ready_w),
                "--slot", str(slot.index), "--metrics-fd", str(region.fd), "--shared", self.segments.argument(),
                stdin=asyncio.subprocess.PIPE, pass_fds=(fd, ready_w, region.fd, *shared),
            )
        except BaseException:
            region.close()
            raise
        finally:
            os.close(ready_w)
        self.metrics.attach(process.pid, schema, region)
        worker = Worker(slot.index, generation, process, loop.time())
        worker.exited = loop.create_future()
        worker.became_ready = loop.create_future()
        loop.add_reader(ready_r, self.on_ready_pipe, worker, ready_r)
        assert process.stdin is not None
        process.stdin.write(self.document_bytes())
        process.stdin.close()
        self.track(self.watch(worker))
        logger.debug("started worker slot %d pid %d (generation %d)", slot.index, worker.pid, generation)
        return worker

    def track(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def on_ready_pipe(self, worker: Worker, fd: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            data = os.read(fd, 1)
        except OSError:  # pragma: no cover - defensive
            data = b""
        loop.remove_reader(fd)
        os.close(fd)
        worker.ready = data == b"R"
        if worker.became_ready is not None and not worker.became_ready.done():
            worker.became_ready.set_result(worker.ready)

    async def wait_ready(self, workers: list[Worker]) -> bool:
        """True when every worker serves within START_TIMEOUT; False if one exited or timed out."""
        waits = [w.became_ready for w in workers if w.became_ready is not None]
        try:
            async with asyncio.timeout(START_TIMEOUT):
                results = await asyncio.gather(*waits)
        except TimeoutError:
            return False
        return all(results)

    async def watch(self, worker: Worker) -> None:
        code = await worker.process.wait()
        self.metrics.detach(worker.pid)  # its counts stay in the host's totals
        if self.segments is not None:
            worker_exited(self.segments, worker.pid, self.config)
        if worker.became_ready is not None and not worker.became_ready.done():
            worker.became_ready.set_result(False)
        if worker.exited is not None and not worker.exited.done():
            worker.exited.set_result(code)
        self.retiring.discard(worker)
        slot = self.slots[worker.slot]
        if worker.stopping or self.state == "draining":
            logger.info("worker slot %d pid %d stopped (exit code %d)", worker.slot, worker.pid, code)
            return
        logger.warning("worker slot %d pid %d exited unexpectedly (%s)", worker.slot, worker.pid,
                       describe_exit(code))
        if slot.worker is worker:
            self.schedule_restart(slot, worker)

    def schedule_restart(self, slot: Slot, dead: Worker) -> None:
        loop = asyncio.get_running_loop()
        delay = slot.restart_delay(lived=loop.time() - dead.started_at)
        self.metrics.worker_restarts += 1
        logger.info("restarting worker slot %d in %.1fs", slot.index, delay)
        slot.restart = loop.call_later(delay, lambda: self.track(self.restart(slot, dead)))

    async def restart(self, slot: Slot, dead: Worker) -> None:
        slot.restart = None
        if self.state == "draining" or slot.worker is not dead:
            return
        worker = await self.spawn(slot, self.generation)
        slot.worker = worker

    # -- signals: stop and reload -------------------------------------------------------------------

    def request_stop(self, sig: int) -> None:
        assert self.stop_requested is not None
        if self.stop_requested.is_set():
            logger.warning("second %s: stopping workers now", signal.Signals(sig).name)
            self.force = True
            for worker in self.all_workers():
                kill(worker, signal.SIGKILL)
            return
        logger.info("%s: draining (up to %gs)", signal.Signals(sig).name, self.config.server.drain_timeout)
        self.stop_requested.set()

    def reopen_logs(self) -> None:
        """SIGUSR1 (log rotation): every serving worker reopens its access log file. A worker still
        starting is skipped (the signal would kill it before its handler exists); it opens the file
        at its first request, after the rotation."""
        for worker in self.all_workers():
            if worker.ready:
                kill(worker, signal.SIGUSR1)

    def request_reload(self) -> None:
        if self.reloading or self.state != "serving":
            logger.warning("SIGHUP ignored: %s", "a reload is under way" if self.reloading else self.state)
            return
        self.reloading = True
        self.track(self.reload())

    async def reload(self) -> None:
        try:
            await self._reload()
        finally:
            self.reloading = False

    async def _reload(self) -> None:
        try:
            base = load(self.environ, self.flags)
            await self.reconfigure("reload", base)
        except ConfigError as exc:
            logger.error("reload refused, still serving the previous configuration: %s", exc)
            self.metrics.reloads["failure"] += 1
        except ReconfigureError:
            pass  # counted and logged by reconfigure

    def compose(self, base: GatewayConfig) -> GatewayConfig:
        """``base`` with every layer applied and validated (raises ConfigError)."""
        if not self.layers:
            return base
        document = dict(base.document)
        for layer in self.layers:
            document = layer.apply(document)
        from gateway.loader import from_document

        return from_document(document)

    async def reconfigure(self, reason: str, base: GatewayConfig | None = None) -> bool:
        """Composes the configuration again (with a new ``base`` on reload) and rolls it out to every
        worker: True once all new workers serve it, False when it equals what runs. Raises ConfigError
        (invalid: nothing changed) or ReconfigureError (the new workers did not start: rolled back)."""
        async with self.rolling:
            config = self.keep_listener_settings(self.compose(base or self.base))
            if base is None and config.document == self.config.document:
                return False
            if self.state != "serving":
                raise ReconfigureError(f"{reason}: the gateway is {self.state}")
            previous, previous_schema = self.config, self.schema
            self.config, self.schema = config, Schema.for_config(config)
            self.generation += 1
            self.prepare_shared(config)
            fresh = [await self.spawn(slot, self.generation) for slot in self.slots]
            if not await self.wait_ready(fresh) or self.state != "serving":
                logger.error("%s failed: new workers did not start; still serving the previous configuration",
                             reason)
                self.config, self.schema = previous, previous_schema
                self.prepare_shared(previous)
                self.metrics.reloads["failure"] += 1
                for worker in fresh:
                    worker.stopping = True
                    kill(worker, signal.SIGKILL)
                raise ReconfigureError(f"{reason}: the new workers did not start")
            if base is not None:
                self.base = base
            for slot, worker in zip(self.slots, fresh, strict=True):
                old, slot.worker = slot.worker, worker
                if slot.restart is not None:
                    slot.restart.cancel()
                    slot.restart = None
                if old is not None and old.process.returncode is None:
                    self.retire(old)
            self.metrics.reloads["success"] += 1
            if self.admin is not None:
                register_all(self.admin, config)
            logger.info("reloaded %s (%s): %d routes, %d upstreams (generation %d)", config.source, reason,
                        len(config.routes), len(config.upstreams), self.generation)
            return True

    def keep_listener_settings(self, config: GatewayConfig) -> GatewayConfig:
        """Listener settings cannot change under running sockets: keep the old ones, say so."""
        old, new = self.config.server, config.server
        changed = [name for name in LISTENER_SETTINGS if getattr(old, name) != getattr(new, name)]
        if not changed:
            return config
        logger.warning("reload: %s changed; that takes effect at the next restart", ", ".join(changed))
        document = dict(config.document)
        document["server"] = dict(document["server"], **{n: getattr(old, n) for n in LISTENER_SETTINGS})
        from gateway.loader import from_document

        return from_document(document)

    def retire(self, worker: Worker) -> None:
        """Tells a worker to drain and exit; it is killed if it outlives the drain timeout."""
        worker.stopping = True
        self.retiring.add(worker)
        kill(worker, signal.SIGTERM)
        self.track(self.reap_after(worker, self.config.server.drain_timeout + 5.0))

    async def reap_after(self, worker: Worker, deadline: float) -> None:
        assert worker.exited is not None
        try:
            async with asyncio.timeout(deadline):
                await asyncio.shield(worker.exited)
        except TimeoutError:
            logger.error("worker slot %d pid %d did not drain in time; killing it", worker.slot, worker.pid)
            kill(worker, signal.SIGKILL)

    def all_workers(self) -> list[Worker]:
        current = [slot.worker for slot in self.slots if slot.worker is not None]
        return current + [w for w in self.retiring if w not in current]

    async def drain(self) -> None:
        """Stops every worker gracefully (they finish in-flight requests), then the admin listener."""
        self.state = "draining"
        for slot in self.slots:
            if slot.restart is not None:
                slot.restart.cancel()
        workers = self.all_workers()
        for worker in workers:
            if worker.process.returncode is None and not worker.stopping:
                self.retire(worker)
        waits = [asyncio.shield(w.exited) for w in workers if w.exited is not None]
        if waits:
            try:
                async with asyncio.timeout(self.config.server.drain_timeout + 10.0):
                    await asyncio.gather(*waits)
            except TimeoutError:  # pragma: no cover - reap_after kills first
                for worker in workers:
                    kill(worker, signal.SIGKILL)
        if self.admin_server is not None:
            self.admin_server.close()
        for slot in self.slots:
            slot.sock.close()
        for task in list(self.tasks):
            task.cancel()
        self.metrics.close()
        self.upstreams_host.close()
        await self.close_services()
        for layer in self.layers:
            layer.close()
        if self.segments is not None:
            self.segments.close()
        logger.info("stopped")

    async def close_services(self) -> None:
        for service in self.services or ():
            await service.close()

    # -- what the admin listener reports -------------------------------------------------------------

    def metric_facts(self) -> dict[str, Any]:
        ready = sum(1 for slot in self.slots if slot.worker is not None and slot.worker.ready
                    and slot.worker.process.returncode is None)
        return {"workers": len(self.slots), "ready": ready, "generation": self.generation}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        workers = [
            {"slot": slot.index, "pid": slot.worker.pid if slot.worker else None,
             "ready": bool(slot.worker and slot.worker.ready and slot.worker.process.returncode is None)}
            for slot in self.slots
        ]
        ready = self.state == "serving" and all(w["ready"] for w in workers)
        status = "ready" if ready else ("degraded" if self.state == "serving" else self.state)
        return ready, {"status": status, "generation": self.generation, "workers": workers}


def kill(worker: Worker, sig: int) -> None:
    if worker.process.returncode is None:
        with contextlib.suppress(ProcessLookupError):  # raced with its exit
            worker.process.send_signal(sig)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:  # pragma: no cover
            return f"killed by signal {-code}"
    return f"exit code {code}"
