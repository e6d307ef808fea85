"""Builds the Cython extensions in gateway/_fast; every other fact about the package is in pyproject.toml.

Each compiled module ``gateway/_fast/X_c.py`` is a link to its pure-Python twin ``X_py.py`` and is
compiled with the C declarations in ``X_c.pxd`` (Cython's pure-Python mode), so one source serves both.
Set GATEWAY_NO_EXTENSIONS=1 to skip compilation (the package then runs on the pure-Python twins).
"""

import os
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent
FAST = HERE / "gateway" / "_fast"


def _extensions() -> list:
    if os.environ.get("GATEWAY_NO_EXTENSIONS"):
        return []
    from Cython.Build import cythonize
    from setuptools import Extension

    sources = sorted(FAST.glob("*_c.py")) + sorted(FAST.glob("*.pyx"))
    modules = [
        Extension(
            "gateway._fast." + src.name.rsplit(".", 1)[0],
            [str(src.relative_to(HERE))],
            # -Wno-array-bounds: GCC 12 misreads Cython's inlined tuple fast path for a constant x[-1]
            extra_compile_args=["-O3", "-Werror", "-Wno-unreachable-code", "-Wno-array-bounds"],
        )
        for src in sources
    ]
    return cythonize(
        modules,
        language_level=3,
        compiler_directives={},
        # boundscheck, wraparound and cdivision stay on: the compiled module must mean exactly what its
        # pure-Python twin means (x[-1], a // b); a .pxd may lift them locally where that is proven safe.
        quiet=True,
    )


setup(ext_modules=_extensions())
