"""The supervisor's composition of base + layers and its ``reconfigure`` roll, with the process-level steps
(spawning, readiness, retiring) replaced by recorders: the logic of what is composed, compared, kept,
rolled back and serialised. Real worker processes are rolled in tests/integration (reload, admin API,
discovery)."""

from __future__ import annotations

import asyncio
import socket
import types
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.config import ConfigError
from gateway.loader import from_document
from gateway.server import layers as layers_module
from gateway.server import supervisor as supervisor_module
from gateway.server.supervisor import ReconfigureError, Slot, Supervisor, Worker
from tests.unit.helpers import async_test

BASE = {"source": "gateway.yaml", "server": {"workers": 2},
        "upstreams": {"api": "http://127.0.0.1:9001"},
        "routes": [{"name": "a", "prefix": "/a", "upstream": "api"}]}


class Process:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.signals: list[int] = []

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)


class AddRoute:
    """A layer that adds a route (``name`` -> prefix ``/name``) while ``on``."""

    def __init__(self, name: str, upstream: str = "api") -> None:
        self.name = name
        self.upstream = upstream
        self.on = False

    async def start(self) -> None:
        pass

    def apply(self, document: dict[str, Any]) -> dict[str, Any]:
        if not self.on:
            return dict(document)
        route = {"name": self.name, "prefix": f"/{self.name}", "upstream": self.upstream}
        return {**document, "routes": [*document["routes"], route]}

    def close(self) -> None:
        pass


class Rig:
    """A Supervisor whose process-level steps are recorded instead of run."""

    def __init__(self, layers: list[Any]) -> None:
        self.sockets = [socket.socket(), socket.socket()]
        sup = self.supervisor = Supervisor(from_document(BASE), {}, {})
        sup.layers = layers
        sup.slots = [Slot(i, sock) for i, sock in enumerate(self.sockets)]
        sup.state = "serving"
        self.ready = True
        self.gate: asyncio.Event | None = None  # when set, new workers wait for it before being ready
        self.spawned: list[Worker] = []
        self.retired: list[Worker] = []
        self.registered: list[Any] = []
        for slot in sup.slots:
            slot.worker = Worker(slot.index, 0, Process(100 + slot.index), 0.0)  # type: ignore[arg-type]
        sup.spawn = self.spawn  # type: ignore[method-assign]
        sup.wait_ready = self.wait_ready  # type: ignore[method-assign]
        sup.prepare_shared = lambda config: None  # type: ignore[method-assign]
        sup.retire = self.retired.append  # type: ignore[method-assign, assignment]
        sup.admin = types.SimpleNamespace()  # type: ignore[assignment]

    async def spawn(self, slot: Slot, generation: int) -> Worker:
        worker = Worker(slot.index, generation, Process(200 + len(self.spawned)), 0.0)  # type: ignore[arg-type]
        self.spawned.append(worker)
        return worker

    async def wait_ready(self, workers: list[Worker]) -> bool:
        if self.gate is not None:
            await self.gate.wait()
        return self.ready

    def close(self) -> None:
        self.supervisor.metrics.close()
        self.supervisor.upstreams_host.close()
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    calls: list[Any] = []
    monkeypatch.setattr(supervisor_module, "register_all", lambda admin, config: calls.append(config))
    yield calls


def test_make_layers_keeps_the_order_and_skips_unused(monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = AddRoute("x"), AddRoute("y")
    modules = {"one": types.SimpleNamespace(layer=lambda sup, config: first),
               "none": types.SimpleNamespace(layer=lambda sup, config: None),
               "two": types.SimpleNamespace(layer=lambda sup, config: second)}
    monkeypatch.setattr(layers_module, "LAYERS", ("one", "none", "two"))
    monkeypatch.setattr("gateway.server.layers.importlib", types.SimpleNamespace(import_module=modules.__getitem__))
    assert layers_module.make_layers(None, from_document(BASE)) == [first, second]  # type: ignore[arg-type]


def test_the_admin_api_comes_before_discovery() -> None:
    assert layers_module.LAYERS[0] == "gateway.admin.config_api"


def test_compose_applies_every_layer_in_order_and_validates() -> None:
    first, second = AddRoute("x"), AddRoute("y", upstream="x-upstream")
    rig = Rig([first, second])
    try:
        base = rig.supervisor.base
        assert rig.supervisor.compose(base).document == base.document
        first.on = True
        assert [r.name for r in rig.supervisor.compose(base).routes] == ["a", "x"]
        second.on = True  # names an upstream nobody defines
        with pytest.raises(ConfigError, match=r"routes\[2\]\.upstream"):
            rig.supervisor.compose(base)
        rig.supervisor.layers = []
        assert rig.supervisor.compose(base) is base
    finally:
        rig.close()


@async_test
async def test_reconfigure_rolls_a_change_and_nothing_else(registered: list[Any]) -> None:
    layer = AddRoute("x")
    rig = Rig([layer])
    sup = rig.supervisor
    try:
        old = [slot.worker for slot in sup.slots]
        assert await sup.reconfigure("nothing changed") is False
        assert rig.spawned == [] and sup.generation == 0
        layer.on = True
        assert await sup.reconfigure("test") is True
        assert [r.name for r in sup.config.routes] == ["a", "x"]
        assert [slot.worker for slot in sup.slots] == rig.spawned
        assert rig.retired == old
        assert (sup.generation, sup.metrics.reloads["success"]) == (1, 1)
        assert registered == [sup.config]  # the admin endpoints follow the new configuration
        assert sup.base.document == BASE  # the base is what the file says, without the layers
    finally:
        rig.close()


@async_test
async def test_a_reload_replaces_the_base_and_always_rolls(registered: list[Any]) -> None:
    rig = Rig([AddRoute("x")])
    sup = rig.supervisor
    try:
        new_base = from_document({**BASE, "routes": [*BASE["routes"], {"name": "b", "prefix": "/b",
                                                                         "upstream": "api"}]})
        assert await sup.reconfigure("reload", new_base) is True
        assert sup.base is new_base
        assert await sup.reconfigure("reload", new_base) is True  # SIGHUP re-reads: it rolls again
        assert len(rig.spawned) == 4
    finally:
        rig.close()


@async_test
async def test_an_invalid_or_untimely_change_changes_nothing(registered: list[Any]) -> None:
    layer = AddRoute("x", upstream="missing")
    rig = Rig([layer])
    sup = rig.supervisor
    try:
        layer.on = True
        with pytest.raises(ConfigError):
            await sup.reconfigure("invalid")
        layer.upstream = "api"
        sup.state = "starting"
        with pytest.raises(ReconfigureError, match="untimely: the gateway is starting"):
            await sup.reconfigure("untimely")
        assert rig.spawned == [] and sup.generation == 0 and registered == []
        assert [r.name for r in sup.config.routes] == ["a"]
    finally:
        rig.close()


@async_test
async def test_new_workers_that_do_not_start_are_killed_and_the_old_ones_keep_serving(
        registered: list[Any]) -> None:
    layer = AddRoute("x")
    rig = Rig([layer])
    sup = rig.supervisor
    try:
        old = [slot.worker for slot in sup.slots]
        previous = sup.config
        layer.on = True
        rig.ready = False
        new_base = from_document(BASE)
        with pytest.raises(ReconfigureError, match="test: the new workers did not start"):
            await sup.reconfigure("test", new_base)
        assert sup.config is previous and sup.base is not new_base
        assert [slot.worker for slot in sup.slots] == old and rig.retired == []
        assert all(w.stopping and w.process.signals for w in rig.spawned)  # type: ignore[attr-defined]
        assert sup.metrics.reloads["failure"] == 1 and registered == []
    finally:
        rig.close()


@async_test
async def test_changes_are_rolled_one_at_a_time(registered: list[Any]) -> None:
    first, second = AddRoute("x"), AddRoute("y")
    rig = Rig([first, second])
    sup = rig.supervisor
    try:
        rig.gate = asyncio.Event()
        first.on = True
        one = asyncio.create_task(sup.reconfigure("one"))
        await asyncio.sleep(0.01)
        second.on = True
        two = asyncio.create_task(sup.reconfigure("two"))
        await asyncio.sleep(0.01)
        assert len(rig.spawned) == 2  # the second change waits for the first roll
        rig.gate.set()
        assert await one is True and await two is True
        assert [r.name for r in sup.config.routes] == ["a", "x", "y"]
        assert sup.generation == 2
    finally:
        rig.close()


def test_listener_settings_and_the_state_file_wait_for_a_restart(tmp_path: Any) -> None:
    rig = Rig([])
    try:
        changed = from_document({**BASE, "server": {"workers": 2, "backlog": 16,
                                                    "admin_state_file": str(tmp_path / "s.json")}})
        kept = rig.supervisor.keep_listener_settings(changed)
        assert (kept.server.backlog, kept.server.admin_state_file) == (2048, None)
    finally:
        rig.close()
