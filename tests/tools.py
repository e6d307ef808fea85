"""External programs some tests drive (promtool and prometheus, chromium), found on PATH.

CI (``.ci/run``, which runs with ``CI=true``) installs them from Debian's packages, so there a missing
program fails the test. On a developer machine without them the test is skipped with the install hint,
the way the README's test command needs no service installed by hand.
"""

from __future__ import annotations

import os
import shutil

import pytest

REQUIRED = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def require_tool(name: str, package: str) -> str:
    """The path of program ``name``; fails under CI, else skips, when it is not installed."""
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} is not installed (Debian: apt-get install {package}; .ci/run installs it)"
    if REQUIRED:
        pytest.fail(message)
    pytest.skip(message)
