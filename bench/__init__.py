"""The gateway's benchmarks: the bench suite and its micro-benchmarks."""
