# cython: annotation_typing=False
"""The header rules' common cases written in C (``headers_ops.pxd``); here, in plain Python, none.

``headers_py.py`` calls these as ``ops.NAME(...)`` behind ``if ops.FAST:``. Compiled (``cimport`` in
``headers_c.pxd``, as ``router_ops`` does for the route trie) ``FAST`` is a C constant 1 and each function
is inline C that handles a call's common case on its own and answers None for the rest, which the general
code of ``headers_py.py`` then handles as it does in plain Python. What the C does instead of that code:

* a header name is classed by its length and then one ``memcmp``, not hashed into a set (the parser
  makes new name objects for every request, so each set lookup hashed them: about 290 instructions);
* the request head is sized in a first pass over the headers and written with ``memcpy`` into one new
  bytes object, with no list of parts to join;
* the response's kept header tuples are shared with the input list, not rebuilt.

Here ``FAST`` is False, so plain Python never calls these: each only answers None.
"""

from __future__ import annotations

FAST = False


def request_head(  # noqa: PLR0917 - the signature of headers_py.request_head
    method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], client_ip: bytes, scheme: bytes,
    request_id: bytes, upstream_host: bytes, preserve_host: bool,
) -> tuple[bytes, bytes] | None:
    """``headers_py.request_head``'s answer when every header is a pair of bytes and any Connection
    header names nothing beyond the hop-by-hop headers; else None."""
    return None


def response_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]] | None:
    """``headers_py.response_headers``'s answer when every header is a tuple of two with a bytes name
    and any Connection header names nothing beyond the hop-by-hop headers; else None."""
    return None


def request_info(headers: list[tuple[bytes, bytes]]) -> tuple[str, str] | None:
    """``headers_py.request_info``'s answer when every header is a pair of bytes and the Host header is
    ASCII; else None."""
    return None
