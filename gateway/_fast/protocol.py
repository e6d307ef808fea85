"""The HTTP/1.1 server protocol (see ``protocol_py``).

Pure Python for now: this source compiled unchanged by Cython proxied 16,300 req/s against 17,100 for
CPython running it (``python -m bench.proxy_rps``, one worker, same run), most likely because Cython's
coroutines resume the app's native coroutines through a slower path. The compiled protocol comes with
the performance issue, as a proper extension type, and will be chosen here like the router is.
"""

from gateway._fast.protocol_py import (
    ASGIApp,
    ClientDisconnected,
    HttpProtocol,
    Limits,
    Message,
    Receive,
    RequestCycle,
    Scope,
    Send,
    error_response,
    new_request_id,
    uvicorn_protocol,
)

IMPLEMENTATION = "python"

__all__ = [
    "IMPLEMENTATION", "ASGIApp", "ClientDisconnected", "HttpProtocol", "Limits", "Message", "Receive",
    "RequestCycle", "Scope", "Send", "error_response", "new_request_id", "uvicorn_protocol",
]
