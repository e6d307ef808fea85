"""Reading configuration: YAML files with ${VAR} interpolation, and typed readers that name the key.

Every value is read through a ``Node``, which knows where it came from (a file, an environment
variable, a flag) and its key path (``routes[3].upstream``), so any mistake becomes one ``ConfigError``
line naming the source, the key and what was expected. The CLI prints that line and exits 2.
"""

from __future__ import annotations

import math
import os
import re
import ssl
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn

import yaml

_INTEGER = re.compile(r"\s*-?[0-9]+\s*")
_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|kib|mb|mib|gb|gib|k|m|g)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    None: 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1024**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1024**3, "gb": 1000**3, "gib": 1024**3,
}
_DURATION_UNITS = {None: 1.0, "s": 1.0, "ms": 0.001, "m": 60.0, "h": 3600.0}
_MISSING = object()


class ConfigError(Exception):
    """Invalid configuration: names the source, the key path and what was expected."""

    def __init__(self, source: str, path: str, message: str) -> None:
        self.source = source
        self.path = path
        self.message = message
        super().__init__(f"{source}: {path}: {message}" if path else f"{source}: {message}")


def describe(value: Any) -> str:
    """A short, safe description of a bad value for an error message."""
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Node:
    """A configuration value with its source and key path; typed readers raise ConfigError."""

    __slots__ = ("path", "source", "value")

    def __init__(self, value: Any, source: str, path: str = "") -> None:
        self.value = value
        self.source = source
        self.path = path

    def fail(self, expected: str) -> NoReturn:
        raise ConfigError(self.source, self.path, f"expected {expected}, got {describe(self.value)}")

    def child(self, key: str | int) -> Node:
        if isinstance(key, int):
            return Node(self.value[key], self.source, f"{self.path}[{key}]")
        value = self.value.get(key, None) if isinstance(self.value, Mapping) else None
        return Node(value, self.source, f"{self.path}.{key}" if self.path else key)

    @property
    def missing(self) -> bool:
        return self.value is None

    def mapping(self, allowed: frozenset[str] | None = None, *, optional: bool = False) -> Node:
        """Checks the value is a mapping (empty if absent and optional) with only ``allowed`` keys."""
        if self.value is None and optional:
            self.value = {}
        if not isinstance(self.value, Mapping):
            self.fail("a mapping")
        if allowed is not None:
            for key in self.value:
                if key not in allowed:
                    where = f"{self.path}.{key}" if self.path else str(key)
                    raise ConfigError(
                        self.source, where, f"unknown key; expected one of: {', '.join(sorted(allowed))}"
                    )
        return self

    def items(self) -> Iterator[tuple[str, Node]]:
        for key in self.mapping().value:
            if not isinstance(key, str):
                Node(key, self.source, self.path).fail("string keys")
            yield key, self.child(key)

    def elements(self, *, optional: bool = False) -> Iterator[Node]:
        if self.value is None and optional:
            return
        if not isinstance(self.value, list):
            self.fail("a list")
        for index in range(len(self.value)):
            yield self.child(index)

    def required(self, expected: str = "a value") -> Node:
        if self.value is None:
            raise ConfigError(self.source, self.path, f"expected {expected}; the key is missing or empty")
        return self

    def string(self, default: Any = _MISSING, *, nonempty: bool = True) -> Any:
        if self.value is None and default is not _MISSING:
            return default
        if isinstance(self.value, (int, float)) and not isinstance(self.value, bool):
            self.value = str(self.value)
        if not isinstance(self.value, str) or (nonempty and not self.value):
            self.fail("a non-empty string" if nonempty else "a string")
        return self.value

    def integer(self, default: Any = _MISSING, *, minimum: int | None = None, maximum: int | None = None) -> Any:
        if self.value is None and default is not _MISSING:
            return default
        value = self.value
        if isinstance(value, str) and _INTEGER.fullmatch(value):
            value = int(value)
        bounds = _bounds(minimum, maximum)
        if not isinstance(value, int) or isinstance(value, bool):
            self.fail("an integer" + bounds)
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            self.fail("an integer" + bounds)
        return value

    def boolean(self, default: Any = _MISSING) -> Any:
        if self.value is None and default is not _MISSING:
            return default
        if isinstance(self.value, bool):
            return self.value
        if isinstance(self.value, str):
            text = self.value.strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
        self.fail("true or false")

    def choice(self, choices: tuple[str, ...], default: Any = _MISSING) -> Any:
        if self.value is None and default is not _MISSING:
            return default
        value = self.value.lower() if isinstance(self.value, str) else self.value
        if value not in choices:
            self.fail("one of " + ", ".join(choices))
        return value

    def duration(self, default: Any = _MISSING, *, positive: bool = True) -> Any:
        """Seconds as a float, from a number or a string like ``250ms``, ``5s``, ``2m``, ``1h``."""
        if self.value is None and default is not _MISSING:
            return default
        seconds = _parse_duration(self.value)
        if seconds is None or math.isnan(seconds) or (positive and seconds <= 0):
            self.fail("a duration such as 250ms, 5s, 2m" + (" (greater than zero)" if positive else ""))
        return seconds

    def size(self, default: Any = _MISSING) -> Any:
        """Bytes as an int, from a number or a string like ``64KiB``, ``10MB``, ``1GiB``."""
        if self.value is None and default is not _MISSING:
            return default
        size = _parse_size(self.value)
        if size is None:
            self.fail("a size such as 65536, 64KiB, 10MB or 1GiB")
        return size

    def ca_file(self) -> str | None:
        """A CA bundle's path (relative to the config file), checked loadable now; None when not set."""
        name: str | None = self.string(None)
        if name is None:
            return None
        path = str(Path(self.source).parent / name)
        try:
            ssl.create_default_context(cafile=path)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(self.source, self.path, f"cannot use CA file {name}: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None
        return path


def _bounds(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f" from {minimum} to {maximum}"
    if minimum is not None:
        return f" of at least {minimum}"
    return f" of at most {maximum}" if maximum is not None else ""


def _parse_duration(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, str):
        return None
    match = _DURATION.match(value)
    if match is None:
        return None
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def _parse_size(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if not isinstance(value, str):
        return None
    match = _SIZE.match(value)
    if match is None:
        return None
    unit = match.group(2).lower() if match.group(2) else None
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def interpolate(text: str, environ: Mapping[str, str], source: str, path: str = "") -> str:
    """Replaces ``${VAR}`` and ``${VAR:-default}`` with values from ``environ``; ``$$`` is a literal $.

    A variable that is unset (and has no default) is an error naming the key, so a secret or address
    that was meant to come from the environment is never silently empty.
    """

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        value = environ.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                raise ConfigError(source, path, f"expected environment variable {name} to be set "
                                  f"(write ${{{name}:-default}} to give a default)")
            return default
        return value

    return _INTERPOLATION.sub(replace, text)


def interpolate_tree(value: Any, environ: Mapping[str, str], source: str, path: str = "") -> Any:
    """Interpolates every string value of a parsed document (keys and structure are never touched,
    so a variable's value cannot change the file's shape, and a ``${VAR}`` in a comment is inert)."""
    if isinstance(value, str):
        return interpolate(value, environ, source, path) if "$" in value else value
    if isinstance(value, list):
        return [interpolate_tree(v, environ, source, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: interpolate_tree(v, environ, source, f"{path}.{k}" if path else str(k))
                for k, v in value.items()}
    return value


def load_file(path: str | os.PathLike[str], environ: Mapping[str, str]) -> Node:
    """Reads a YAML config file and interpolates the environment into its values; the root is a mapping."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read the file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(source, "", "the file is not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, where, f"invalid YAML: {problem}") from None
    root = Node({} if data is None else data, source).mapping()
    root.value = interpolate_tree(root.value, environ, source)
    return root


Reader = Callable[[Node], Any]
