"""Pure pieces of the supervisor (the processes themselves are tested in tests/integration)."""

from __future__ import annotations

import signal
import socket

import pytest

from gateway.server.supervisor import Slot, StartupError, bind_listener, describe_exit


def test_restart_delay_doubles_while_crashing_and_resets_after_a_stable_run() -> None:
    slot = Slot(0, socket.socket())
    try:
        delays = [slot.restart_delay(lived=1.0) for _ in range(10)]
        assert delays[:5] == [0.1, 0.2, 0.4, 0.8, 1.6]
        assert delays[-1] == 10.0  # capped
        assert slot.restart_delay(lived=60.0) == 0.1  # it served a while: a new failure, not a loop
    finally:
        slot.sock.close()


def test_describe_exit() -> None:
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"


def test_bind_listener_names_the_address() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        with pytest.raises(StartupError, match=f"port {port} is already in use \\(127.0.0.1:{port}\\)"):
            bind_listener("127.0.0.1", port, 16, reuse_port=False)
    with pytest.raises(StartupError, match=r"cannot listen on 192\.0\.2\.1:8080: Cannot assign requested address"):
        bind_listener("192.0.2.1", 8080, 16, reuse_port=False)  # TEST-NET: not an address of this host
