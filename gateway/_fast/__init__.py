"""The hot path: modules compiled with Cython, each with a pure-Python twin.

A module ``X`` here has three files: ``X_py.py`` (the source, plain Python), ``X_c.py`` (a link to
``X_py.py``, compiled with the C declarations in ``X_c.pxd``) and ``X.py`` (the facade the rest of the
package imports). The facade takes the compiled module when it was built and GATEWAY_NO_EXTENSIONS is not
set; GATEWAY_REQUIRE_EXTENSIONS=1 turns a missing build into an error instead of a silent fallback.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from importlib.machinery import ExtensionFileLoader
from types import ModuleType

NO_EXTENSIONS = os.environ.get("GATEWAY_NO_EXTENSIONS", "") not in ("", "0")
REQUIRE_EXTENSIONS = os.environ.get("GATEWAY_REQUIRE_EXTENSIONS", "") not in ("", "0")


def compiled(name: str) -> ModuleType | None:
    """The compiled ``gateway._fast.<name>_c``, or None when extensions are off or were not built."""
    if NO_EXTENSIONS:
        return None
    modname = f"{__name__}.{name}_c"
    spec = importlib.util.find_spec(modname)
    if spec is None:
        return None  # this module has no compiled build (yet)
    if not isinstance(spec.loader, ExtensionFileLoader):  # only the X_c.py link: not built
        if REQUIRE_EXTENSIONS:
            raise ImportError(f"{modname} is not compiled (GATEWAY_REQUIRE_EXTENSIONS is set)")
        return None
    return importlib.import_module(modname)


def load(name: str) -> ModuleType:
    """The implementation of ``name`` to use: compiled when available, else the pure-Python twin."""
    return compiled(name) or importlib.import_module(f"{__name__}.{name}_py")


def kind(module: ModuleType) -> str:
    """"compiled" or "python": which implementation a facade loaded."""
    return "compiled" if module.__name__.endswith("_c") else "python"


def implementations(name: str) -> dict[str, ModuleType]:
    """Every implementation of ``name`` present here, by kind; tests run against each."""
    found = {"python": importlib.import_module(f"{__name__}.{name}_py")}
    module = compiled(name)
    if module is not None:
        found["compiled"] = module
    return found
