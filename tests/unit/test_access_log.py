"""The access log: the fields of a line, what never appears, sampling, the timestamp, and the writer
thread (files, rotation, pipes, a writer that falls behind, write errors). Real files, pipes and sockets;
no socket to a server."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
import random
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import EXIT_CONFIG, main
from gateway.config import ConfigError, Node
from gateway.exchange import Exchange
from gateway.observability.access_log import (
    FLUSH_INTERVAL,
    MAX_USER_AGENT,
    SLOW_SECONDS,
    AccessLog,
    Timestamps,
    check_log_file,
)
from gateway.settings import resolve
from tests.unit.helpers import async_test

SECRET = "s3cr3t-t0ken"
RFC3339_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
FIELDS = {
    "time", "request_id", "worker", "client", "method", "path", "route", "upstream", "status", "bytes_in",
    "bytes_out", "duration_ms", "upstream_ms", "user_agent", "subject",
}


class FakeRoute:
    name = "users"


class FakeTarget:
    url = "http://127.0.0.1:9001"


def exchange(status: int = 200, *, path: str = "/users/42", headers: list[tuple[bytes, bytes]] | None = None,
             routed: bool = True, age: float = 0.002) -> Exchange:
    """A finished request as the app leaves it, ``age`` seconds long at perf_counter()."""
    scope: dict[str, Any] = {
        "type": "http", "method": "GET", "path": path, "raw_path": path.encode(),
        "query_string": f"token={SECRET}&x=1".encode(), "client": ("203.0.113.7", 50123),
        "headers": headers if headers is not None else [
            (b"host", b"api.example.com"), (b"user-agent", b"curl/8.5.0"),
            (b"authorization", f"Bearer {SECRET}".encode()), (b"cookie", f"session={SECRET}".encode()),
            (b"x-api-key", SECRET.encode()),
        ],
    }
    ex = Exchange(scope, None, None, time.perf_counter() - age)  # type: ignore[arg-type]
    ex.request_id = "req-1"
    ex.status = status
    ex.bytes_received = 12
    ex.bytes_sent = 345
    if routed:
        ex.route = FakeRoute()
        ex.target = FakeTarget()
        ex.upstream_time = 0.0015
    return ex


def lines_of(path: Path) -> list[dict[str, Any]]:
    text = path.read_text()
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


async def log_requests(log: AccessLog, exchanges: list[Exchange], per_turn: int = 1) -> None:
    """Logs the exchanges as finished requests, ``per_turn`` per event-loop turn."""
    for start in range(0, len(exchanges), per_turn):
        for ex in exchanges[start:start + per_turn]:
            log.write(ex, time.perf_counter())
        await asyncio.sleep(0)
    await asyncio.sleep(0)


def wait_written(log: AccessLog, timeout: float = 5.0) -> None:
    writer = log.writer
    deadline = time.monotonic() + timeout
    while writer.done < writer.queued or writer.batches:
        assert time.monotonic() < deadline, "the writer did not catch up"
        time.sleep(0.01)


def logged(tmp_path: Path, exchanges: list[Exchange], **options: Any) -> list[dict[str, Any]]:
    path = tmp_path / "access.log"
    log = AccessLog(str(path), **options)
    asyncio.run(log_requests(log, exchanges))
    log.close()
    return lines_of(path) if path.exists() else []


# --- the line --------------------------------------------------------------------------------------------


def test_a_line_has_every_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_WORKER_SLOT", "3")
    ex = exchange()
    ex.subject = "user-17"
    before = time.time()
    [line] = logged(tmp_path, [ex])
    assert set(line) == FIELDS
    assert line["request_id"] == "req-1"
    assert line["worker"] == 3
    assert line["client"] == "203.0.113.7"
    assert (line["method"], line["path"], line["route"]) == ("GET", "/users/42", "users")
    assert line["upstream"] == "http://127.0.0.1:9001"
    assert (line["status"], line["bytes_in"], line["bytes_out"]) == (200, 12, 345)
    assert 2.0 <= line["duration_ms"] < 1000
    assert line["upstream_ms"] == 1.5
    assert line["user_agent"] == "curl/8.5.0"
    assert line["subject"] == "user-17"
    assert RFC3339_MS.match(line["time"]), line["time"]
    assert time.strftime("%Y-%m-%dT%H:%M", time.gmtime(before)) <= line["time"][:16]


def test_no_query_string_token_cookie_or_authorization_appears(tmp_path: Path) -> None:
    path = "/echo/" + "a%3F"  # a decoded path may hold a "?" of its own: it is the path, logged as is
    text = json.dumps(logged(tmp_path, [exchange(path=path), exchange(404, routed=False)]))
    assert SECRET not in text
    assert "token=" not in text and "Bearer" not in text and "session=" not in text


def test_an_unrouted_request_has_no_route_upstream_or_upstream_time(tmp_path: Path) -> None:
    [line] = logged(tmp_path, [exchange(404, routed=False, headers=[(b"host", b"x")])])
    assert (line["route"], line["upstream"], line["upstream_ms"], line["user_agent"]) == (None, None, None, None)
    assert line["subject"] is None
    assert line["status"] == 404


def test_the_user_agent_is_cut(tmp_path: Path) -> None:
    agent = b"A" * (MAX_USER_AGENT + 500)
    [line] = logged(tmp_path, [exchange(headers=[(b"user-agent", agent)])])
    assert line["user_agent"] == "A" * MAX_USER_AGENT


def test_a_request_without_a_client_address(tmp_path: Path) -> None:
    ex = exchange()
    ex.scope["client"] = None
    [line] = logged(tmp_path, [ex])
    assert line["client"] is None


# --- timestamps -----------------------------------------------------------------------------------------


def test_timestamps_are_rfc3339_utc_with_milliseconds() -> None:
    stamps = Timestamps()
    assert stamps.format(0.0) == "1970-01-01T00:00:00.000Z"
    assert stamps.format(0.9999) == "1970-01-01T00:00:00.999Z"  # truncated, as the second is
    second = 1_795_000_000
    expected = datetime.datetime.fromtimestamp(second, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    assert stamps.format(second + 0.0625) == expected + ".062Z"
    assert stamps.format(second + 0.5) == expected + ".500Z"  # the cached second
    following = datetime.datetime.fromtimestamp(second + 1, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    assert stamps.format(second + 1.25) == following + ".250Z"
    assert stamps.format(second + 1.2504) == following + ".250Z"  # the cached millisecond
    assert stamps.format(second + 0.0625) == expected + ".062Z"  # the clock went back: not the cache


@async_test
async def test_one_clock_read_per_loop_turn() -> None:
    """Lines of one event-loop turn share a time (as nginx's); the next turn reads the clock again."""
    fd = os.open(os.devnull, os.O_WRONLY)
    log = AccessLog(fd=fd)
    log.write(exchange(), time.perf_counter())
    log.write(exchange(), time.perf_counter())
    first = log.stamp
    await asyncio.sleep(0.01)
    log.write(exchange(), time.perf_counter())
    assert log.stamp != first
    log.close()
    os.close(fd)
    assert log.dropped == 0


# --- sampling -------------------------------------------------------------------------------------------


def test_sampling_keeps_every_failure_and_every_slow_request(tmp_path: Path) -> None:
    exchanges = [exchange(200), exchange(302), exchange(404), exchange(500), exchange(499), exchange(0),
                 exchange(200, age=SLOW_SECONDS + 0.1)]
    lines = logged(tmp_path, exchanges, sample=0.0)
    assert [line["status"] for line in lines] == [404, 500, 499, 0, 200]
    assert lines[-1]["duration_ms"] >= SLOW_SECONDS * 1000


@async_test
async def test_sampling_logs_about_the_fraction_asked(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(str(path), sample=0.25)
    log.random = random.Random(7).random
    await log_requests(log, [exchange() for _ in range(4000)], per_turn=50)
    log.close()
    assert 850 <= len(lines_of(path)) <= 1150


def test_sampling_off_logs_everything(tmp_path: Path) -> None:
    assert len(logged(tmp_path, [exchange() for _ in range(300)], sample=1.0)) == 300


# --- the writer thread ----------------------------------------------------------------------------------


def test_lines_reach_the_file_within_the_flush_interval(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(str(path))

    async def main() -> None:
        await log_requests(log, [exchange() for _ in range(20)], per_turn=5)
        started = time.monotonic()
        while not path.exists() or len(lines_of(path)) < 20:  # written while serving, not only at close
            assert time.monotonic() - started < 5.0
            await asyncio.sleep(0.01)

    asyncio.run(main())
    log.close()
    assert (path.stat().st_mode & 0o777) == 0o640


def test_close_writes_the_last_lines_and_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(str(path))

    async def main() -> None:
        log.write(exchange(), time.perf_counter())  # still in this turn's list when close() runs
        log.close()
        log.close()

    asyncio.run(main())
    assert len(lines_of(path)) == 1
    assert not log.writer.is_alive()


@async_test
async def test_lines_after_close_are_dropped_and_counted(tmp_path: Path) -> None:
    log = AccessLog(str(tmp_path / "access.log"))
    log.close()  # the writer never started: nothing to wait for
    log.write(exchange(), time.perf_counter())
    await asyncio.sleep(0)
    assert log.dropped == 1
    assert not (tmp_path / "access.log").exists()


def test_rotation_reopens_the_path_without_losing_or_splitting_a_line(tmp_path: Path) -> None:
    path, rotated = tmp_path / "access.log", tmp_path / "access.log.1"
    log = AccessLog(str(path))

    async def main() -> None:
        await log_requests(log, [exchange() for _ in range(30)], per_turn=3)
        wait_written(log)
        path.rename(rotated)
        await log_requests(log, [exchange() for _ in range(10)], per_turn=3)  # before the reopen: old file
        log.reopen()
        await log_requests(log, [exchange() for _ in range(25)], per_turn=3)

    asyncio.run(main())
    log.close()
    assert (len(lines_of(rotated)), len(lines_of(path))) == (40, 25)


def test_a_failed_reopen_keeps_the_previous_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "logs"
    folder.mkdir()
    log = AccessLog(str(folder / "access.log"))

    async def main() -> None:
        await log_requests(log, [exchange()])
        wait_written(log)
        folder.rename(tmp_path / "moved")  # the path now leads nowhere
        log.reopen()
        await log_requests(log, [exchange()])

    asyncio.run(main())
    log.close()
    assert "cannot open" in caplog.text and "still writing to the previous file" in caplog.text
    assert len(lines_of(tmp_path / "moved" / "access.log")) == 2


def test_reopen_on_stdout_does_nothing() -> None:
    log = AccessLog(fd=1)
    log.reopen()
    assert not log.writer.batches
    log.close()


def test_a_file_that_cannot_be_opened_loses_lines_and_counts_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = AccessLog(str(tmp_path / "missing" / "access.log"))
    asyncio.run(log_requests(log, [exchange() for _ in range(4)], per_turn=2))
    log.close()
    assert log.dropped == 4
    assert "cannot open" in caplog.text and "4 lines lost" in caplog.text


def test_a_write_error_counts_the_lines_lost(caplog: pytest.LogCaptureFixture) -> None:
    fd = os.open("/dev/full", os.O_WRONLY)  # every write fails with ENOSPC
    try:
        log = AccessLog(fd=fd)
        asyncio.run(log_requests(log, [exchange() for _ in range(6)], per_turn=3))
        log.close()
    finally:
        os.close(fd)
    assert log.dropped == 6
    assert "lines lost" in caplog.text


def fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_a_closed_stdout_counts_the_lines_lost(caplog: pytest.LogCaptureFixture) -> None:
    write_fd = 900  # far above what the event loop and the test open meanwhile
    while fd_open(write_fd):
        write_fd += 1
    log = AccessLog(fd=write_fd)
    asyncio.run(log_requests(log, [exchange() for _ in range(3)]))
    log.close()
    assert log.dropped == 3
    assert f"cannot write to file descriptor {write_fd}" in caplog.text


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_fd, write_fd = os.pipe()
    yield read_fd, write_fd
    for fd in (read_fd, write_fd):
        with contextlib.suppress(OSError):  # the test may have closed it
            os.close(fd)


def read_all(fd: int, into: bytearray) -> threading.Thread:
    def run() -> None:
        while chunk := os.read(fd, 65536):
            into.extend(chunk)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_writer_stuck_on_a_full_pipe_drops_whole_batches_and_counts_them(
    pipe: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    """Nobody reads stdout: the writer blocks, the event loop does not; what cannot wait is dropped
    and counted, one warning says so, close() gives up after its bound. Then a reader comes: every line
    it gets is whole, and written + dropped = logged."""
    read_fd, write_fd = pipe
    log = AccessLog(fd=write_fd, max_queue_bytes=256 * 1024)
    big = "/" + "p" * 2000  # about 2.4 KB a line
    total = 600

    async def main() -> None:
        await log_requests(log, [exchange(path=big) for _ in range(60)], per_turn=6)  # fills the pipe
        await asyncio.sleep(FLUSH_INTERVAL * 4)  # the writer is now blocked in write()
        started = time.perf_counter()
        await log_requests(log, [exchange(path=big) for _ in range(total - 60)], per_turn=6)
        assert time.perf_counter() - started < 1.0  # the loop never waited on the pipe

    asyncio.run(main())
    assert log.dropped > 0
    warnings = [r for r in caplog.records if "writer is behind" in r.getMessage()]
    assert len(warnings) == 1  # at most one per WARNING_INTERVAL
    started = time.perf_counter()
    log.close(timeout=0.2)
    assert time.perf_counter() - started < 1.0
    assert log.writer.is_alive()  # still stuck: close() did not wait for it
    received = bytearray()
    reader = read_all(read_fd, received)
    log.writer.join(10)
    assert not log.writer.is_alive()
    os.close(write_fd)
    reader.join(10)
    lines = bytes(received).splitlines()
    assert all(json.loads(line)["path"] == big for line in lines)
    assert len(lines) + log.dropped == total


def test_a_non_blocking_pipe_is_waited_on_not_spun(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    os.set_blocking(write_fd, False)
    log = AccessLog(fd=write_fd)
    asyncio.run(log_requests(log, [exchange(path="/" + "q" * 1000) for _ in range(300)], per_turn=30))
    received = bytearray()
    time.sleep(FLUSH_INTERVAL * 4)  # the pipe is full and the writer waits for room
    reader = read_all(read_fd, received)
    log.close(timeout=10)
    os.close(write_fd)
    reader.join(10)
    assert len(bytes(received).splitlines()) == 300
    assert log.dropped == 0


def test_on_a_socket_writes_are_cut_at_line_ends() -> None:
    """A SOCK_SEQPACKET pair keeps each write() a message of its own, so the cuts can be seen."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        log = AccessLog(fd=ours.fileno())
        asyncio.run(log_requests(log, [exchange(path="/" + "s" * 300) for _ in range(40)], per_turn=40))
        wait_written(log)
        first = theirs.recv(1 << 20)
        assert first.count(b"\n") == 40  # under the piece size (64 KiB): one write
        size = len(first) // 40
        log.writer.piece = 2 * size + size // 2  # two lines fit a piece
        asyncio.run(log_requests(log, [exchange(path="/" + "s" * 300) for _ in range(40)], per_turn=40))
        asyncio.run(log_requests(log, [exchange(path="/" + "L" * 3 * size)]))  # longer than a piece: alone
        log.close()
        theirs.setblocking(False)
        messages = []
        while True:
            try:
                messages.append(theirs.recv(1 << 20))
            except BlockingIOError:
                break
    assert all(m.endswith(b"\n") for m in messages)
    assert [m.count(b"\n") for m in messages] == [2] * 20 + [1]
    assert len(messages[-1]) > 3 * size


# --- the setting -----------------------------------------------------------------------------------------


def test_check_log_file(tmp_path: Path) -> None:
    existing = tmp_path / "old.log"
    existing.write_text("")
    assert check_log_file(str(existing)) is None
    assert check_log_file(str(tmp_path / "new.log")) is None
    assert not (tmp_path / "new.log").exists()  # `gateway check` creates nothing
    assert "does not exist" in str(check_log_file(str(tmp_path / "nope" / "a.log")))
    assert "Is a directory" in str(check_log_file(str(tmp_path)))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert "cannot open" in str(check_log_file(str(fifo)))  # no reader: it would block, so it fails


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write to any folder")
def test_check_log_file_in_a_read_only_folder(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    assert "is not writable" in str(check_log_file(str(folder / "a.log")))


def test_the_file_setting_is_made_absolute_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve(None, {"GATEWAY_ACCESS_LOG_FILE": "a.log"}, {}).access_log_file == str(tmp_path / "a.log")
    assert resolve(None, {}, {}).access_log_file is None
    bad = str(tmp_path / "nope" / "a.log")
    with pytest.raises(ConfigError) as info:
        resolve(Node({"access_log_file": bad}, "gateway.yaml", "server"), {}, {})
    assert str(info.value).startswith("gateway.yaml: server.access_log_file: cannot create ")
    assert bad in str(info.value)


@pytest.mark.parametrize(("value", "expected"), [("0.25", 0.25), (0, 0.0), (1, 1.0), ("1", 1.0), (0.5, 0.5)])
def test_the_sample_setting(value: Any, expected: float) -> None:
    assert resolve(Node({"access_log_sample": value}, "f.yaml", "server"), {}, {}).access_log_sample == expected


@pytest.mark.parametrize("value", ["1.5", -0.1, "half", True, "nan", [1]])
def test_a_bad_sample_setting_is_refused(value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(Node({"access_log_sample": value}, "f.yaml", "server"), {}, {})
    assert "server.access_log_sample: expected a number from 0 to 1" in str(info.value)


def test_an_unwritable_file_is_a_config_error_naming_the_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = str(tmp_path / "nope" / "access.log")
    argv = ["check", "--upstream", "http://127.0.0.1:9", "--access-log-file", bad]
    assert main(argv, environ={}) == EXIT_CONFIG
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("gateway: invalid configuration: flag --access-log-file: cannot create ")
    assert bad in err
    assert main(["run", "--upstream", "http://127.0.0.1:9"], environ={"GATEWAY_ACCESS_LOG_FILE": bad}) == EXIT_CONFIG
    assert "environment variable GATEWAY_ACCESS_LOG_FILE: cannot create" in capsys.readouterr().err


def test_warnings_go_to_the_gateway_logger(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.access_log")
    log = AccessLog(fd=-1)
    log.writer.warn("first %d", 1)
    log.writer.warn("second %d", 2)  # within WARNING_INTERVAL: not logged
    assert [r.getMessage() for r in caplog.records] == ["first 1"]
