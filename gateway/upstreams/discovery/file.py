"""A watched file of targets: a YAML (or JSON, which YAML reads too) list of ``http://HOST:PORT`` URLs or
``{url, weight}`` mappings, optionally under a ``targets:`` key.

Polled every ``interval``: the file is read again when its modification time, size or inode changed (an
editor's write-and-rename changes the inode), and the targets change when its content did. A file that is
missing, unreadable, not a list, empty or holding a bad entry is logged (once, until it is good again) and
the last good list is kept, so a half-written file never reaches the workers.
"""

from __future__ import annotations

import asyncio
import os
import time

import yaml

from gateway.config import ConfigError
from gateway.upstreams.discovery.config import FileSpec, parse_list
from gateway.upstreams.discovery.watcher import Watcher


class FileWatcher(Watcher):
    spec: FileSpec

    stamp: tuple[int, int, int] | None = None
    content: bytes | None = None

    def start(self) -> None:
        self.poll()  # a local file answers at once: a reload that adds it composes its targets already
        super().start()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.wait_after(self.spec.interval))
            self.poll()

    def poll(self) -> None:
        path = self.spec.path
        try:
            info = os.stat(path)
            stamp = (info.st_mtime_ns, info.st_size, info.st_ino)
            if stamp == self.stamp:
                self.last_refresh = time.time()  # checked: unchanged
                return
            with open(path, "rb") as file:
                content = file.read()
        except OSError as exc:
            self.stamp = self.content = None
            self.bad(f"cannot read {path}: {exc.strerror or exc}")
            return
        self.stamp = stamp
        if content == self.content:
            self.last_refresh = time.time()
            return
        self.content = content
        try:
            found = parse_list(yaml.safe_load(content), path)
        except yaml.YAMLError as exc:
            self.bad(f"{path}: not valid YAML or JSON: {str(exc).splitlines()[0]}")
        except ConfigError as exc:
            self.bad(str(exc))
        else:
            self.good(found)
