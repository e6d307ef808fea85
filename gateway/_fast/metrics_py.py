# cython: annotation_typing=False
"""A worker's metric cells and the request path's recording into them.

Each worker owns one region of shared memory (a memfd the supervisor made for it, read by the supervisor
on every scrape): an array of signed 64-bit cells. Only that worker writes its region, so an update is a
plain add on an aligned word: no lock, no atomic instruction, nothing a crashed worker could leave held;
the supervisor's reads of aligned 64-bit words are never torn on the platforms we build for.

Which cell holds what is decided by ``gateway.observability.metrics.Schema`` from the configuration; this
module knows only the offsets of the request path's families and how a histogram is laid out:
``len(BUCKETS)`` finite buckets (not cumulative), the +Inf bucket, then the sum in nanoseconds.
"""

from __future__ import annotations

from collections.abc import Mapping

# Upper bounds in seconds: from 100 us (the gateway's own share of a request) to 10 s (slow upstreams).
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
           5.0, 10.0)
HISTOGRAM_WIDTH = len(BUCKETS) + 2  # finite buckets, +Inf, sum (ns)
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "other")
METHOD_INDEX = {name: index for index, name in enumerate(METHODS[:-1])}
OTHER_METHOD = len(METHODS) - 1
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
UPSTREAM_CLASSES = (*STATUS_CLASSES, "error")  # "error": no response (refused, reset, timed out)


def status_class(status: int) -> int:
    """Index into STATUS_CLASSES; statuses outside 100-599 count as 5xx (the gateway failed)."""
    index = status // 100 - 1
    return index if 0 <= index < 5 else 4


class Recorder:
    """Writes one worker's cells. Offsets are where each family's cells start (see Schema)."""

    def __init__(self, cells: memoryview, offsets: Mapping[str, int]) -> None:
        self.cells = cells  # a memoryview of int64 ('q') over the worker's region
        self.bounds = memoryview(bytearray(8 * len(BUCKETS))).cast("d")
        for i, bound in enumerate(BUCKETS):
            self.bounds[i] = bound
        self.nbounds = len(BUCKETS)
        self.width = HISTOGRAM_WIDTH  # module constants copied to C fields: no Python arithmetic per call
        self.nmethods = len(METHODS)
        self.other_method = OTHER_METHOD
        self.method_index = METHOD_INDEX
        self.in_flight = offsets["gateway_requests_in_flight"]
        self.requests = offsets["gateway_requests"]
        self.duration = offsets["gateway_request_duration_seconds"]
        self.added = offsets["gateway_added_latency_seconds"]
        self.bytes_in = offsets["gateway_request_body_bytes"]
        self.bytes_out = offsets["gateway_response_body_bytes"]
        self.upstream_requests = offsets["gateway_upstream_requests"]
        self.upstream_duration = offsets["gateway_upstream_duration_seconds"]

    def begin(self) -> None:
        """A request started (the in-flight gauge)."""
        self.cells[self.in_flight] += 1

    def request(self, route: int, method: str, status: int, duration: float,  # noqa: PLR0917 - hot path
                upstream_time: float, bytes_in: int, bytes_out: int) -> None:
        """A request ended: count, both latency histograms and sizes, for route number ``route``."""
        cells = self.cells
        cells[self.in_flight] -= 1
        index = self.method_index.get(method, self.other_method)
        cells[self.requests + (route * self.nmethods + index) * 5 + status_class(status)] += 1
        self.observe(self.duration + route * self.width, duration)
        self.observe(self.added + route * self.width, duration - upstream_time)
        cells[self.bytes_in + route] += bytes_in
        cells[self.bytes_out + route] += bytes_out

    def upstream(self, target: int, status: int, duration: float) -> None:
        """An exchange with upstream target number ``target`` ended (``status`` 0: no response)."""
        index = 5 if status == 0 else status_class(status)
        self.cells[self.upstream_requests + target * 6 + index] += 1
        self.observe(self.upstream_duration + target * self.width, duration)

    def observe(self, offset: int, value: float) -> None:
        """Adds ``value`` (seconds, negative counts as 0) to the histogram whose cells start at ``offset``."""
        value = max(value, 0.0)
        bounds = self.bounds
        n = self.nbounds
        i = 0
        while i < n and value > bounds[i]:
            i += 1
        cells = self.cells
        cells[offset + i] += 1
        cells[offset + n + 1] += int(value * 1e9)

    def add(self, offset: int, value: int) -> None:
        self.cells[offset] += value

    def set(self, offset: int, value: int) -> None:
        self.cells[offset] = value

