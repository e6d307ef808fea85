"""The peers the gateway is measured against, besides nginx: each a runnable module (``python -m bench.peers.X``)."""
