"""The access log: one JSON line per request, to stdout or a file, written off the event loop.

What a line holds: time (RFC 3339, UTC, milliseconds), request id, worker, client IP, method, path
(never the query string, which may carry credentials), route, upstream target, status, bytes in and
out, duration, time spent on the upstream, user agent (at most MAX_USER_AGENT characters) and the
authenticated subject. No other header is read, so tokens, cookies and the Authorization header never
appear.

How it is written, so the event loop never waits on a disk or a pipe:

    event loop thread                              writer thread (one per worker, a daemon)
    write(): a line per request, kept in a list
    flush(), once per loop turn: the lines joined
      into one batch, appended to a deque  ------>  every FLUSH_INTERVAL: pops every batch, joins
                                                    them, writes them with as few write()s as it can

The deque is the only object both threads touch (``append`` and ``popleft`` are atomic). It is bounded
in bytes: what waits is ``queued - done``, two counters each written by one thread only (``queued`` by
the loop, ``done`` by the writer). A batch that would pass max_queue_bytes is dropped whole and its lines
counted in ``dropped`` (a slow disk, a stdout pipe nobody reads), with a warning at most every
WARNING_INTERVAL. The writer wakes on a timer, not per batch: no thread wake-up and no system call per
request on the loop's side, and few GIL hand-overs (each may wait a switch interval on a busy loop).
The clock is read once per loop turn too (as nginx does): the lines of one turn share their time.

Rotation: ``reopen()`` (on SIGUSR1, which the supervisor forwards to every worker) appends a marker to
the deque; the writer reaches it after every batch handed over before it, opens the path again and
closes the old descriptor. A write goes to one file, so no line is lost or split between the two.

Several workers share the file or stdout. Each opens the file with O_APPEND, and one write of whole lines
to a regular file lands in one piece. On a pipe, writes are cut after a newline to at most the pipe's
capacity: the kernel keeps such a write whole while the pipe has room, that is while its reader keeps up.
"""

from __future__ import annotations

import asyncio
import collections
import fcntl
import logging
import os
import random
import select
import stat
import threading
import time
from typing import TYPE_CHECKING

from orjson import dumps

if TYPE_CHECKING:
    from gateway.exchange import Exchange

logger = logging.getLogger("gateway.access_log")

SLOW_SECONDS = 1.0  # a request this slow is logged whatever the sampling rate
MAX_USER_AGENT = 256
QUEUE_BYTES = 4 * 1024 * 1024  # per worker: bytes handed to the writer and not yet written
FLUSH_INTERVAL = 0.05  # the writer's period; a line reaches the file within about this
WARNING_INTERVAL = 10.0  # at most one warning about dropped lines this often
CLOSE_TIMEOUT = 2.0  # how long close() waits for the writer (it may be stuck on a full pipe)
OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
FILE_MODE = 0o640
PIPE_PIECE = 65536  # Linux's default pipe capacity, for sockets and where F_GETPIPE_SZ is missing
F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
REOPEN = b""  # in the writer's deque, an empty batch asks it to reopen the file
_MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000))


def open_log_file(path: str) -> int:
    """Opens ``path`` for appending (created 0o640 if missing); every worker holds its own descriptor."""
    return os.open(path, OPEN_FLAGS, FILE_MODE)


def check_log_file(path: str) -> str | None:
    """Why ``path`` cannot take the access log, or None if it can. Creates nothing (``gateway check``
    must not): an existing file is opened for appending and closed, else its folder must be writable."""
    try:
        if os.path.lexists(path):
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NONBLOCK))
            return None
        folder = os.path.dirname(path) or "."
        if not os.path.isdir(folder):
            return f"cannot create {path!r}: the folder {folder!r} does not exist"
        if not os.access(folder, os.W_OK | os.X_OK):  # pragma: no cover - always true for root
            return f"cannot create {path!r}: the folder {folder!r} is not writable"
    except OSError as exc:
        return f"cannot open {path!r} for appending: {exc.strerror or exc}"
    return None


class Timestamps:
    """RFC 3339 UTC times with milliseconds. The text of the current millisecond is cached (a busy loop
    turns many times per millisecond), and so is the formatted second the millis are appended to."""

    __slots__ = ("end", "prefix", "second", "start", "text")

    def __init__(self) -> None:
        self.second = -1
        self.prefix = ""
        self.start = self.end = 0.0  # the cached millisecond: [start, end)
        self.text = ""

    def format(self, now: float) -> str:
        if self.start <= now < self.end:
            return self.text
        second = int(now)
        if second != self.second:
            self.second = second
            self.prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        millis = int((now - second) * 1000)
        self.start, self.end = second + millis / 1000, second + (millis + 1) / 1000
        self.text = self.prefix + _MILLIS[millis]
        return self.text


class Writer(threading.Thread):
    """Writes the batches the event loop hands over, every FLUSH_INTERVAL, to ``path`` or ``fd``."""

    def __init__(self, path: str | None, fd: int) -> None:
        super().__init__(name="access-log", daemon=True)
        self.path = path
        self.fd = fd if path is None else -1
        self.piece = 0  # on a pipe or socket: largest write, cut at a line end (0: one write)
        self.batches: collections.deque[bytes] = collections.deque()  # REOPEN (b"") marks a reopen
        self.queued = 0  # bytes handed over: written by the event loop's thread only
        self.done = 0  # bytes written or given up: written by this thread only
        self.lost = 0  # lines that could not be written (closed stdout, full disk)
        self.stop = threading.Event()
        self.next_warning = 0.0

    def hand_over(self, batch: bytes) -> None:
        self.queued += len(batch)
        self.batches.append(batch)

    def run(self) -> None:
        if self.path is not None:
            self.reopen()
        else:
            self.piece = _piece_size(self.fd)
        while not self.stop.wait(FLUSH_INTERVAL):
            self.drain()
        self.drain()
        if self.path is not None and self.fd >= 0:
            os.close(self.fd)

    def drain(self) -> None:
        """Writes the batches waiting now, joined, in as few writes as it can: each write hands the GIL
        over and takes it back, which can wait a switch interval while the event loop is busy. Batches
        that arrive meanwhile wait for the next round rather than keep the thread chasing the loop."""
        batches = self.batches
        waiting = [batches.popleft() for _ in range(len(batches))]
        while REOPEN in waiting:
            cut = waiting.index(REOPEN)
            self.write(waiting[:cut])  # what was handed over before the signal goes to the old file
            self.reopen()
            waiting = waiting[cut + 1:]
        self.write(waiting)

    def write(self, batches: list[bytes]) -> None:
        if not batches:
            return
        data = batches[0] if len(batches) == 1 else b"".join(batches)
        try:
            if self.fd < 0:
                raise OSError(f"{self.path} is not open")
            self.write_all(data)
        except OSError as exc:
            lines = data.count(b"\n")
            self.lost += lines
            self.warn("access log: %d lines lost, cannot write to %s: %s", lines, self.describe(), exc)
        finally:
            self.done += len(data)

    def write_all(self, data: bytes) -> None:
        """Writes every byte. A regular file takes it in one write (O_APPEND keeps it whole); a pipe
        in pieces cut after a newline, each of which the kernel keeps whole while the pipe has room."""
        view = memoryview(data)
        start, end, piece = 0, len(data), self.piece
        while start < end:
            stop = end
            if piece and end - start > piece:
                cut = data.rfind(b"\n", start, start + piece)
                stop = cut + 1 if cut >= 0 else (data.find(b"\n", start) + 1 or end)  # a long line alone
            try:
                start += os.write(self.fd, view[start:stop])
            except BlockingIOError:  # someone made the descriptor non-blocking: wait for room
                select.select([], [self.fd], [], 1.0)

    def reopen(self) -> None:
        assert self.path is not None
        try:
            fd = open_log_file(self.path)
        except OSError as exc:
            logger.error("access log: cannot open %s: %s%s", self.path, exc.strerror or exc,
                         "; still writing to the previous file" if self.fd >= 0 else "")
            return
        old, self.fd = self.fd, fd
        self.piece = _piece_size(fd)
        if old >= 0:
            os.close(old)

    def describe(self) -> str:
        return self.path if self.path is not None else f"file descriptor {self.fd}"

    def warn(self, message: str, *args: object) -> None:
        """Logs at most once per WARNING_INTERVAL (a stuck disk must not flood the error log too)."""
        now = time.monotonic()
        if now >= self.next_warning:
            self.next_warning = now + WARNING_INTERVAL
            logger.warning(message, *args)


def _piece_size(fd: int) -> int:
    """0 (one write) for a file or device; for a pipe or socket, its capacity (64 KiB by default)."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return 0
    if stat.S_ISFIFO(mode):
        try:
            return int(fcntl.fcntl(fd, F_GETPIPE_SZ))
        except OSError:  # pragma: no cover - F_GETPIPE_SZ is Linux-only
            return PIPE_PIECE
    return PIPE_PIECE if stat.S_ISSOCK(mode) else 0


class AccessLog:
    """One worker's access log: ``write`` per request on the event loop, the rest on a writer thread.

    ``path`` None writes to ``fd`` (stdout). ``sample`` is the fraction of successful requests logged;
    failures (status 400 and up, or no status) and requests slower than SLOW_SECONDS always are.
    """

    def __init__(self, path: str | None = None, sample: float = 1.0, *, fd: int = 1,
                 max_queue_bytes: int = QUEUE_BYTES) -> None:
        self.worker = int(os.environ.get("GATEWAY_WORKER_SLOT", "0"))
        self.sample = sample
        self.random = random.random
        self.max_queue_bytes = max_queue_bytes
        self.lines: list[bytes] = []
        self.scheduled = False
        self.closed = False
        self.overflowed = 0  # lines dropped because the writer was behind
        self.timestamps = Timestamps()
        self.stamp = ""  # the time of this loop turn, as nginx does: one clock read per turn
        self.writer = Writer(path, fd)

    @property
    def dropped(self) -> int:
        """Lines not written: dropped while the writer was behind, or lost to a write error."""
        return self.overflowed + self.writer.lost

    def write(self, ex: Exchange, now: float) -> None:
        """Adds the line of a finished request (``now``: perf_counter at its end)."""
        status = ex.status
        duration = now - ex.started_at
        if self.sample < 1.0 and 0 < status < 400 and duration < SLOW_SECONDS and self.random() >= self.sample:
            return
        if not self.scheduled:  # the first line of this loop turn
            self.scheduled = True
            self.stamp = self.timestamps.format(time.time())
            asyncio.get_running_loop().call_soon(self.flush)
        scope = ex.scope
        client = scope["client"]
        route = ex.route
        target = ex.target
        agent = None
        for name, value in scope["headers"]:
            if name == b"user-agent":
                agent = value[:MAX_USER_AGENT].decode("latin-1")
                break
        record = {
            "time": self.stamp,
            "request_id": ex.request_id,
            "worker": self.worker,
            "client": client[0] if client else None,
            "method": scope["method"],
            "path": scope["path"],
            "route": route.name if route is not None else None,
            "upstream": target.url if target is not None else None,
            "status": status,
            "bytes_in": ex.bytes_received,
            "bytes_out": ex.bytes_sent,
            "duration_ms": duration * 1_000_000 // 1 / 1000,  # 3 decimals; cheaper than int() or round()
            "upstream_ms": ex.upstream_time * 1_000_000 // 1 / 1000 if target is not None else None,
            "user_agent": agent,
            "subject": ex.subject,
        }
        self.lines.append(dumps(record))  # no option: the newlines come with the join, at less cost

    def flush(self) -> None:
        """Hands this loop turn's lines to the writer as one batch, or drops them if it is behind."""
        self.scheduled = False
        lines = self.lines
        if not lines:
            return
        self.lines = []
        count = len(lines)
        lines.append(b"")  # the last line's newline
        batch = b"\n".join(lines)
        writer = self.writer
        if self.closed or writer.queued - writer.done + len(batch) > self.max_queue_bytes:
            self.overflowed += count
            writer.warn("access log: the writer is behind (%s); %d lines dropped so far",
                        writer.describe(), self.dropped)
            return
        if writer.ident is None:
            writer.start()
        writer.hand_over(batch)

    def reopen(self) -> None:
        """Reopens the file (log rotation). Safe in a signal handler: it only appends a marker."""
        if self.writer.path is not None and not self.closed:
            self.writer.batches.append(REOPEN)

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Hands over the last lines and waits up to ``timeout`` for the writer to write them."""
        if self.closed:
            return
        self.flush()
        self.closed = True
        writer = self.writer
        if writer.ident is not None:
            writer.stop.set()
            writer.join(timeout)
