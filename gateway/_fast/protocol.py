"""The HTTP/1.1 server protocol (see ``protocol_py``): compiled when built, else the pure-Python twin."""

from typing import TYPE_CHECKING

from gateway._fast import kind, load

_impl = load("protocol")

if TYPE_CHECKING:  # both builds share protocol_py's API; type-check against it
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
        limit_body,
        new_request_id,
        uvicorn_protocol,
    )
else:
    ASGIApp, Message, Receive, Scope, Send = (_impl.ASGIApp, _impl.Message, _impl.Receive, _impl.Scope,
                                              _impl.Send)
    ClientDisconnected = _impl.ClientDisconnected
    HttpProtocol = _impl.HttpProtocol
    Limits = _impl.Limits
    RequestCycle = _impl.RequestCycle
    error_response = _impl.error_response
    limit_body = _impl.limit_body
    new_request_id = _impl.new_request_id
    uvicorn_protocol = _impl.uvicorn_protocol

IMPLEMENTATION = kind(_impl)

__all__ = [
    "IMPLEMENTATION", "ASGIApp", "ClientDisconnected", "HttpProtocol", "Limits", "Message", "Receive",
    "RequestCycle", "Scope", "Send", "error_response", "limit_body", "new_request_id", "uvicorn_protocol",
]
