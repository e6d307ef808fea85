"""Processes: the supervisor (sockets, admin, reloads, restarts) and its workers."""
