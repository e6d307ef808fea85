"""Rate limiting: named policies per route, decided in a host-wide shared-memory table (see DESIGN.md).

config.py reads the ``ratelimit:`` section, keys.py makes a request's key, stage.py is the route stage,
runtime.py the worker's limiter; the buckets themselves are gateway/_fast/bucket_py.py (compiled). Across
hosts (with ``server.redis_url``): sync.py is the loop that reconciles a table with Redis every sync
interval, host.py runs it once per host in the supervisor (a host service), store.py holds the circuit
breaker and the ``mode: sync`` limits decided in Redis per request, lua.py the scripts and key names.
"""
