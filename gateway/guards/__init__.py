"""Connection guards (DDoS protection): allow and deny lists, connection caps per client and per host,
temporary bans with growing durations, and the hooks the HTTP protocol calls (see ``runtime``).

For other features (the rate limiter): ``offend(client_ip, reason)`` reports that a client exceeded a
limit; enough offences within the ban window ban it host-wide. It does nothing when bans are not
configured or the client is on the allow list, and costs one hash and a few memory operations otherwise.
"""

from __future__ import annotations

from typing import Any

_guard: Any = None  # the worker's gateway.guards.runtime.Guard (set by install)


def install(guard: Any) -> None:
    """Makes ``guard`` the one ``offend`` reports to (each worker process has one)."""
    global _guard  # noqa: PLW0603 - one guard per process, as there is one event loop
    _guard = guard


def current() -> Any:
    """The worker's guard, or None outside a worker."""
    return _guard


def offend(client_ip: str, reason: str = "rate_limit") -> float:
    """Counts an offence by ``client_ip`` towards a ban; returns the length in seconds of the ban it
    started (0.0: none). ``reason`` appears in the log line of a ban."""
    guard = _guard
    return 0.0 if guard is None else float(guard.offend(client_ip, reason))
