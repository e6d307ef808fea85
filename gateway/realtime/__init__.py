"""Realtime traffic: WebSocket proxying (``tunnel``)."""
