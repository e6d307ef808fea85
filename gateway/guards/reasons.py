"""Why the guards turned a connection or a request away: the ``reason`` label of their metrics.

Kept apart from the rest of the package so the metrics schema can name the reasons without importing it.
"""

from __future__ import annotations

# connection time: deny list, running ban, per-client cap, host cap; then the protocol's own limits
REASONS = ("deny", "banned", "ip_connections", "total_connections", "header_timeout", "body_rate", "header_size",
           "header_count", "body_size")
REASON_INDEX = {reason: index for index, reason in enumerate(REASONS)}
# the error code a rejection answers with -> its reason (gateway.errors and gateway._fast.protocol codes)
CODE_REASONS = {
    "client_banned": "banned",
    "request_timeout": "header_timeout",
    "request_body_too_slow": "body_rate",
    "request_header_fields_too_large": "header_size",
    "too_many_headers": "header_count",
    "payload_too_large": "body_size",
}
# rejections that count as offences towards a ban (the client did something; a full host is not its fault)
OFFENCES = frozenset({"ip_connections", "header_timeout", "body_rate", "header_size", "header_count", "body_size"})
TABLES = ("connections", "bans")  # the tables whose "full" events are counted
