"""Rate limiting: named policies per route, decided in a host-wide shared-memory table (see DESIGN.md).

config.py reads the ``ratelimit:`` section, keys.py makes a request's key, stage.py is the route stage,
runtime.py the worker's limiter; the buckets themselves are gateway/_fast/bucket_py.py (compiled).
"""
