"""Request-target normalisation and path rewriting.

Routing and the upstream must see the same path, or a request can be routed as one path and served as
another (``/public/..%2Fadmin``). So the gateway routes on, and forwards, one normalised form: unreserved
characters percent-decoded (RFC 3986 section 6.2.2.2), other escapes upper-cased and kept, dot segments
removed (section 5.2.4). An encoded slash stays encoded: it is data, not a separator.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.routing.config import PARAM, RouteSpec

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = "0123456789ABCDEFabcdef"


def normalize_path(path: str) -> str | None:
    """The normalised form of an origin-form path, or None when it cannot be one (400)."""
    if not path.startswith("/"):
        return None
    if "%" not in path and "/." not in path:
        return path  # the common case: nothing to do
    if "%" in path:
        decoded = _decode_unreserved(path)
        if decoded is None:
            return None
        path = decoded
    if "/." in path:
        path = _remove_dot_segments(path)
    return path


def _decode_unreserved(path: str) -> str | None:
    parts = path.split("%")
    out = [parts[0]]
    for part in parts[1:]:
        if len(part) < 2 or part[0] not in _HEX or part[1] not in _HEX:
            return None
        byte = int(part[:2], 16)
        if byte == 0:
            return None
        out.append(chr(byte) if byte in _UNRESERVED else "%" + part[:2].upper())
        out.append(part[2:])
    return "".join(out)


def _remove_dot_segments(path: str) -> str:
    segments = path.split("/")
    output: list[str] = []
    for segment in segments[1:]:
        if segment == ".":
            continue
        if segment == "..":
            if output:
                output.pop()
            continue
        output.append(segment)
    if segments[-1] in (".", ".."):
        output.append("")  # "/a/b/.." is the directory "/a/"
    return "/" + "/".join(output)


Rewriter = Callable[[str, "dict[str, str] | None", int], str]


def make_rewriter(spec: RouteSpec, base_path: str) -> Rewriter | None:
    """A function (path, params, consumed) -> upstream path for this route; None when unchanged."""
    if spec.rewrite is not None:
        template = _compile_template(spec.rewrite)
        if spec.prefix:
            return lambda path, params, consumed: base_path + _join(template(params), path[consumed:])
        return lambda path, params, consumed: base_path + template(params)
    if spec.strip_prefix:
        return lambda path, params, consumed: base_path + (path[consumed:] or "/")
    if base_path:
        return lambda path, params, consumed: base_path + path
    return None


def _join(head: str, rest: str) -> str:
    if not rest:
        return head
    if head.endswith("/") and rest.startswith("/"):
        return head + rest[1:]
    return head + rest


def _compile_template(template: str) -> Callable[[dict[str, str] | None], str]:
    pieces = PARAM.split(template)  # literal, name, literal, name, ..., literal
    if len(pieces) == 1:
        return lambda params: template
    literals, names = pieces[0::2], pieces[1::2]

    def render(params: dict[str, str] | None) -> str:
        values = params or {}
        out = [literals[0]]
        for name, literal in zip(names, literals[1:], strict=True):
            out.append(values[name])
            out.append(literal)
        return "".join(out)

    return render
