"""Processes of the bench suite: started pinned to a core in their own process group, always stopped, and
measured through /proc (CPU time of a whole process tree, peak and current resident memory).

Every process started here is remembered until stopped, so ``stop_all`` (called from the suite's
``finally``, also on Ctrl-C and SIGTERM) leaves nothing running.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_LIVE: dict[int, subprocess.Popen[bytes]] = {}


def cores() -> tuple[int, int]:
    """(the core for the proxy under test, the core for the load generator and the upstream)."""
    available = sorted(os.sched_getaffinity(0))
    return available[0], available[1] if len(available) > 1 else available[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any GATEWAY_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(extra)
    return env


def python(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def start(argv: list[str], core: int | str | None, env: dict[str, str] | None = None,
          log: Path | None = None) -> subprocess.Popen[bytes]:
    """Starts ``argv`` pinned to ``core`` (taskset list syntax), stdout discarded, stderr to ``log``."""
    if core is not None:
        argv = ["taskset", "-c", str(core), *argv]
    stderr: IO[bytes] | int = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    try:
        proc = subprocess.Popen(argv, env=env or clean_env(), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    finally:
        if not isinstance(stderr, int):
            stderr.close()
    _LIVE[proc.pid] = proc
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group, SIGKILL after 10 s."""
    _LIVE.pop(proc.pid, None)
    if proc.poll() is not None:
        return
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait(5)


def stop_all() -> None:
    for proc in list(_LIVE.values()):
        stop(proc)


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 60.0) -> None:
    """Waits until something accepts on 127.0.0.1:``port``; fails early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode} before listening on {port}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout:.0f} s")


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (all its threads' children)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found.extend(int(p) for p in task.read_text().split())
        except OSError:
            continue
    return found


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        todo.extend(children(current))
    return pids


def cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid`` (all its threads) in clock ticks; 0 once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5), counted from the state


def cpu_snapshot(pids: Iterable[int]) -> dict[int, int]:
    return {pid: cpu_ticks(pid) for pid in pids}


def cpu_seconds_since(before: dict[int, int]) -> float:
    """CPU seconds the processes of ``before`` used since it was taken."""
    return sum(cpu_ticks(pid) - ticks for pid, ticks in before.items()) / CLOCK_TICKS


def status_kib(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/PID/status (VmHWM: peak resident, VmRSS: resident now); 0 if gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0
