"""Upstreams: named groups of targets, how to pick one, and the limits of talking to them."""
