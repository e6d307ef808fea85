"""gateway: a high-throughput API gateway (uvloop + httptools workers, Cython hot path)."""

__version__ = "0.1.0"
