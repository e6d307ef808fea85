"""``pip wheel .`` builds a wheel with the compiled extensions and their pure-Python twins, and the
installed wheel runs (what the Dockerfile's build stage does)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


@pytest.mark.timeout(600)  # builds seven extensions from a clean copy: over the default 120 s on a busy machine
def test_wheel_has_compiled_extensions_and_twins(tmp_path):
    source = tmp_path / "src"  # a clean copy: no build outputs of the working tree leak in
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", "*.so", "*.c", ".*_cache", ".coverage*"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(wheels),
                    str(source)], check=True, timeout=600)
    [wheel] = list(wheels.glob("gateway-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("router_c", "protocol_c", "headers_c", "upstream_c", "metrics_c", "guards_c", "bucket_c"):
        assert any(n.startswith(f"gateway/_fast/{module}.") and n.endswith(".so") for n in names), module
    for twin in ("gateway/_fast/router_py.py", "gateway/_fast/router_c.pxd", "gateway/_fast/router.py",
                 "gateway/cli.py", "gateway/admin/dashboard.html"):
        assert twin in names
    assert not any(n.endswith(".c") for n in names)

    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=False)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    zipfile.ZipFile(wheel).extractall(site)
    check = subprocess.run(
        [str(python), "-c", "import gateway._fast.router as r, gateway; print(r.IMPLEMENTATION, gateway.__file__)"],
        capture_output=True, text=True, check=True, cwd=tmp_path,
    )
    implementation, location = check.stdout.split()
    assert implementation == "compiled"
    assert location.startswith(site)
