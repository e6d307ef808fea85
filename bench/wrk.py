"""wrk, the load generator of the throughput scenarios: making sure it is installed, running it pinned to
the load core, and reading its report (requests, requests per second, p50/p99 latency, errors).

wrk runs with one thread and 64 keep-alive connections by default (DESIGN.md's "Performance facts" use
the same), ``--latency`` for the percentiles, and a Lua script when the requests cycle over many paths.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
SCRIPT = """\
local paths = {{{paths}}}
local headers = {{{headers}}}
local requests = {{}}
local i = 0
function init(args)
  for n, path in ipairs(paths) do requests[n] = wrk.format("GET", path, headers) end
end
function request()
  i = i % #requests + 1
  return requests[i]
end
"""


@dataclass(frozen=True)
class WrkResult:
    """One wrk run: completed requests, duration, rate, latency percentiles (ms), errors ("" if none)."""

    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    errors: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def latency_ms(text: str) -> float:
    """A wrk duration such as ``812.00us``, ``1.23ms``, ``2.00s`` or ``1.00m``, in milliseconds."""
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * UNITS_MS[match.group(2)]


def parse(output: str) -> WrkResult:
    """Reads wrk's ``--latency`` report."""
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h)", output)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if total is None or rate is None:
        raise ValueError(f"unexpected wrk output:\n{output}")
    percentile = dict(re.findall(r"^\s+(50|99)(?:\.0+)?%\s+(\S+)\s*$", output, re.MULTILINE))
    errors = re.findall(r"^\s*(Socket errors: .*|Non-2xx or 3xx responses: \d+)$", output, re.MULTILINE)
    return WrkResult(
        requests=int(total.group(1)),
        seconds=latency_ms(total.group(2) + total.group(3)) / 1000,
        rps=float(rate.group(1)),
        p50_ms=latency_ms(percentile["50"]) if "50" in percentile else float("nan"),
        p99_ms=latency_ms(percentile["99"]) if "99" in percentile else float("nan"),
        errors="; ".join(errors),
    )


def write_script(directory: Path, paths: list[str], headers: dict[str, str] | None = None) -> Path:
    """A Lua script that makes wrk cycle over ``paths``, sending ``headers`` with each request."""
    script = directory / f"paths-{len(paths)}{'-h' if headers else ''}.lua"
    lua_headers = ", ".join(f'["{name}"] = "{value}"' for name, value in (headers or {}).items())
    script.write_text(SCRIPT.format(paths=", ".join(f'"{p}"' for p in paths), headers=lua_headers))
    return script


def run(port: int, seconds: int, core: int, connections: int = 64, script: Path | None = None) -> WrkResult:
    """Runs wrk against 127.0.0.1:``port`` for ``seconds``, pinned to ``core``."""
    argv = ["taskset", "-c", str(core), "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
            "--timeout", "10s"]
    if script is not None:
        argv += ["-s", str(script)]
    argv.append(f"http://127.0.0.1:{port}/")
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    return parse(done.stdout)


def ensure_installed(install: bool) -> str | None:
    """None when wrk is there (installing it from Debian's packages if allowed), else why it is not."""
    if shutil.which("wrk") is not None:
        return None
    if not install:
        return "wrk is not installed (apt-get install -y wrk); --no-install forbids installing it"
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "wrk is not installed and this is not a Debian machine where I am root: apt-get install -y wrk"
    print("wrk is missing: apt-get install -y wrk", flush=True)
    for argv in (["apt-get", "install", "-y", "wrk"], ["apt-get", "update"], ["apt-get", "install", "-y", "wrk"]):
        subprocess.run(argv, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if shutil.which("wrk") is not None:
            return None
    return "wrk is not installed and `apt-get install -y wrk` failed (no network or no package?)"
