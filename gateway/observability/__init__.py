"""Observability: access log now; metrics and tracing with the observability issue."""
