"""Service discovery: an upstream's targets from DNS (A/AAAA or SRV, honouring TTLs), a watched file or
etcd, beside or instead of its static ``targets``.

The sources run in the supervisor (``layer.DiscoveryLayer``, listed in gateway.server.layers); what they
find is composed into the configuration and rolled out to the workers by ``Supervisor.reconfigure``, the
same zero-downtime path as a SIGHUP reload, so the request path knows nothing of discovery: a worker
only ever sees a configuration with concrete targets. A source that fails keeps its last good answer.

``config`` reads the ``dns:``/``file:``/``etcd:`` keys (imported by the loader, so it stays light);
``watcher`` holds what every source shares (state, last good answer, counters); ``dns``, ``file`` and
``etcd`` are the sources, loaded only in the supervisor.
"""
