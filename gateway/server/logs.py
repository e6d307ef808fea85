"""Log set-up shared by the supervisor and the workers: one line per event on stderr."""

from __future__ import annotations

import logging
import os
import sys


def setup_logging(level: str) -> None:
    slot = os.environ.get("GATEWAY_WORKER_SLOT")
    who = f"worker {slot}" if slot is not None else "supervisor"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s %(levelname)s [{who} %(process)d] %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S"
    ))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # uvicorn's own start/stop lines repeat per worker; the supervisor reports those events once
    logging.getLogger("uvicorn").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
