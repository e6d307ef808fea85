"""GET /dashboard in a real browser: headless Chromium loads the page, traffic goes through the gateway,
and the numbers on the page move with it (and settle back when it stops), with no script error and
nothing refused by the page's Content-Security-Policy.

Chromium is driven over the Chrome DevTools Protocol (a WebSocket, with the ``websockets`` client): it is
started on loopback with a throwaway profile, finds itself a free debugging port and writes it to
``DevToolsActivePort`` in the profile, and is killed with its whole process group afterwards.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from tests.integration.conftest import wait_until
from tests.tools import require_tool

pytestmark = pytest.mark.integration

CONFIG = """
upstreams:
  api: http://127.0.0.1:{port}
  dead: http://127.0.0.1:9
routes:
  - {{name: api, prefix: /api, upstream: api, strip_prefix: true}}
  - {{name: down, prefix: /down, upstream: dead}}
"""

# What the page shows, read in one go: raw numbers from the elements' data attributes.
SNAPSHOT = """(() => {
  const ids = ["rps", "requests-total", "p50", "p99", "added-p99", "error-ratio", "client-error-ratio", "in-flight",
               "connections", "workers", "status", "routes", "upstreams"];
  if (document.readyState !== "complete" || ids.some((id) => !document.getElementById(id))
      || !document.querySelector("#rps-chart polyline")) return { samples: 0, status: null };  // still loading
  const value = (id) => { const v = document.getElementById(id).dataset.value; return v === "" ? null : Number(v); };
  const rows = (id) => [...document.getElementById(id).rows].map((tr) => ({
    ...tr.dataset, cells: [...tr.cells].map((td) => td.textContent) }));
  const workers = document.getElementById("workers").dataset;
  return {
    samples: Number(document.body.dataset.samples || 0),
    status: document.getElementById("status").dataset.state,
    rps: value("rps"), total: value("requests-total"), p50: value("p50"), p99: value("p99"),
    added_p99: value("added-p99"), errors: value("error-ratio"), client_errors: value("client-error-ratio"),
    in_flight: value("in-flight"), connections: value("connections"),
    workers: [Number(workers.ready), Number(workers.configured)],
    rps_points: document.querySelector("#rps-chart polyline").getAttribute("points").split(" ").length,
    routes: rows("routes"), upstreams: rows("upstreams"),
  };
})()"""


class DevTools:
    """A Chrome DevTools Protocol connection to the browser; pages are attached in flat mode."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.last_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, session: str | None = None, timeout: float = 15.0, **params: Any) -> Any:
        self.last_id += 1
        message: dict[str, Any] = {"id": self.last_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        deadline = time.monotonic() + timeout
        while True:
            reply = json.loads(self.ws.recv(timeout=max(0.0, deadline - time.monotonic())))
            if reply.get("id") == self.last_id:
                assert "error" not in reply, f"{method}: {reply['error']}"
                return reply["result"]
            if "method" in reply:
                self.events.append(reply)



class Page:
    """One browser tab; collects what its console, its log and its script errors report."""

    def __init__(self, devtools: DevTools, url: str) -> None:
        self.devtools = devtools
        self.target = devtools.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = devtools.call("Target.attachToTarget", targetId=self.target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")
        self.call("Page.navigate", url=url)

    def call(self, method: str, **params: Any) -> Any:
        return self.devtools.call(method, self.session, **params)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def wait_for(self, check: Callable[[dict[str, Any]], bool], timeout: float = 20.0) -> dict[str, Any]:
        """Polls the page's numbers until ``check`` holds; the last ones are in the error if it never does."""
        seen: dict[str, Any] = {}

        def holds() -> bool:
            seen.clear()
            seen.update(self.evaluate(SNAPSHOT))
            return check(seen)

        try:
            wait_until(holds, timeout, interval=0.25)
        except TimeoutError:
            pytest.fail(f"the dashboard never showed it; last seen: {json.dumps(seen, indent=1)}")
        return dict(seen)

    def problems(self) -> list[Any]:
        """Script errors, console errors and warnings, CSP refusals and failed loads on this page."""
        found = []
        for event in self.devtools.events:
            if event.get("sessionId") != self.session:
                continue
            method, params = event["method"], event["params"]
            if method == "Runtime.exceptionThrown":
                found.append(params["exceptionDetails"])
            elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "warning", "assert"):
                found.append(params["args"])
            elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
                found.append(params["entry"])
        return found

    def close(self) -> None:
        self.devtools.call("Target.closeTarget", targetId=self.target)


def chromium_args(profile: Path) -> list[str]:
    return [
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
        "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
        "--disable-backgrounding-occluded-windows", "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank",
    ]


@pytest.fixture(scope="module")
def devtools(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevTools]:
    """Headless Chromium on loopback, reached over its DevTools WebSocket."""
    binary = require_tool("chromium", "chromium")
    tmp = tmp_path_factory.mktemp("chromium")
    profile = tmp / "profile"
    active_port = profile / "DevToolsActivePort"  # "PORT\n/devtools/browser/ID", once it listens
    with (tmp / "chromium.log").open("wb") as log:
        proc = subprocess.Popen([binary, *chromium_args(profile)], stdout=log, stderr=log, start_new_session=True)
    try:
        def port_file() -> list[str] | None:
            assert proc.poll() is None, f"chromium exited: {(tmp / 'chromium.log').read_text(errors='replace')}"
            lines = active_port.read_text().split() if active_port.exists() else []
            return lines if len(lines) == 2 else None

        port, path = wait_until(port_file, timeout=60, interval=0.1)
        with connect(f"ws://127.0.0.1:{port}{path}", max_size=None, open_timeout=15) as ws:
            yield DevTools(ws)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@contextlib.contextmanager
def open_page(devtools: DevTools, url: str) -> Iterator[Page]:
    page = Page(devtools, url)
    try:
        yield page
    finally:
        page.close()


class Traffic:
    """Requests through the gateway on a keep-alive connection until stopped: mostly 200s, with a 404, an
    upstream 503 and a 502 from a dead upstream in every twenty."""

    PATHS = ("/api/echo",) * 17 + ("/nowhere", "/api/status?code=503", "/down/x")

    def __init__(self, port: int) -> None:
        self.port = port
        self.sent = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run)

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self.stopping.is_set():
            conn.request("GET", self.PATHS[self.sent % len(self.PATHS)])
            response = conn.getresponse()
            response.read()
            self.sent += 1
            if response.getheader("connection", "").lower() == "close":
                conn.close()
        conn.close()

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(15)


def row(rows: list[dict[str, Any]], **match: str) -> dict[str, Any]:
    found = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
    return found[0] if found else {}


def test_dashboard_numbers_move_with_traffic(start_gateway, upstream_port, devtools):
    gw = start_gateway(CONFIG.format(port=upstream_port), workers=2)
    api_target = f"http://127.0.0.1:{upstream_port}"
    with open_page(devtools, f"http://127.0.0.1:{gw.admin_port}/dashboard") as page:
        idle = page.wait_for(lambda s: s["samples"] >= 2 and s["status"] == "live")
        assert idle["rps"] == 0
        assert idle["workers"] == [2, 2]
        assert idle["total"] == 0
        assert idle["routes"] == []  # route rows come with the first request
        # upstream targets show from the start (their pool gauges are exported at 0), idle
        assert {u["target"] for u in idle["upstreams"]} >= {api_target}
        assert all(u["rps"] == "0" for u in idle["upstreams"])

        with Traffic(gw.port) as traffic:
            busy = page.wait_for(lambda s: (
                s["rps"] > 0 and s["total"] > idle["total"] and s["errors"] > 0 and s["client_errors"] > 0
                and s["p50"] is not None and s["p99"] >= s["p50"] > 0 and s["added_p99"] is not None
                and float(row(s["routes"], route="api").get("rps", 0)) > 0
                and float(row(s["upstreams"], upstream="api").get("rps", 0)) > 0
                and row(s["upstreams"], upstream="dead")["cells"][3] == "100%"
            ))
            assert busy["status"] == "live"
            assert busy["workers"] == [2, 2]
            assert busy["rps_points"] >= 2  # the sparkline has been drawn
            assert {r["route"] for r in busy["routes"]} == {"api", "down", "(unmatched)"}
            assert {(r["upstream"], r["target"]) for r in busy["upstreams"]} == {
                ("api", api_target), ("dead", "http://127.0.0.1:9")}
            api = row(busy["upstreams"], upstream="api")
            assert api["target"] == api_target
            assert api["health"] == "up"  # no active checks: healthy unless passive checks eject it
        assert traffic.sent > 20

        # rates come from the change between scrapes: with the traffic gone they fall back to zero,
        # while the total keeps every request sent
        after = page.wait_for(lambda s: s["rps"] == 0 and s["total"] >= idle["total"] + traffic.sent)
        assert after["total"] == idle["total"] + traffic.sent
        assert after["errors"] is None  # no requests in the last interval: no ratio
        assert page.problems() == []


# The page's parser and arithmetic, run in the browser on crafted scrapes.
EXPOSITION = r'''# HELP x_total A "quoted" help with a \\ backslash.
# TYPE x_total counter
x_total{path="a \"b\" c",odd="x\\y\nz , } {"} 3
x_total{} 1.5e+03 1700000000000

lat_bucket{le="0.001",r="a"} 0
lat_bucket{le="0.01",r="a"} 50
lat_bucket{le="0.1",r="a"} 100
lat_bucket{le="+Inf",r="a"} 100
lat_count{r="a"} 100
g NaN
h -Inf
# EOF
'''

ARITHMETIC = """(() => {
  const scrape = (text, time) => new Scrape(parseMetrics(text), time);
  const hist = (r, counts) => ["0.001", "0.01", "0.1", "+Inf"].map((le, i) =>
    `lat_bucket{le="${le}",r="${r}"} ${counts[i]}`).join("\\n") + `\\nlat_count{r="${r}"} ${counts[3]}\\n`;
  const zero = scrape("c_total 10\\n" + hist("a", [0, 0, 0, 0]) + hist("b", [1, 1, 5, 5]), 1000);
  const later = scrape("c_total 30\\nnew_total 4\\n" + hist("a", [0, 50, 100, 100]) + hist("b", [1, 1, 2, 2]), 3000);
  const reset = scrape("c_total 5\\n", 4000);
  const span = new Interval(zero, later);
  const onlyA = (l) => l.r === "a";
  return {
    rate: span.rate("c_total"), new_series: span.sum("new_total"),
    after_reset: new Interval(later, reset).sum("c_total"),
    p50: span.quantile(0.5, "lat", onlyA), p99: span.quantile(0.99, "lat", onlyA),
    // b's count went 5 -> 2: it restarted, so all its buckets count from zero (its first bucket, 1 -> 1,
    // holds one new observation, not none)
    p50_both: span.quantile(0.5, "lat"),
    in_inf_bucket: bucketQuantile(0.99, [{ le: 0.1, count: 1 }, { le: Infinity, count: 10 }]),
    no_data: span.quantile(0.5, "missing"),
  };
})()"""


@pytest.mark.parametrize("impl", ["python"])  # the page is the same whatever serves it
def test_dashboard_parser_and_percentiles(start_gateway, upstream_port, devtools):
    gw = start_gateway(args=["--upstream", f"http://127.0.0.1:{upstream_port}"])
    with open_page(devtools, f"http://127.0.0.1:{gw.admin_port}/dashboard") as page:
        page.wait_for(lambda s: s["samples"] >= 1)
        parse = f"parseMetrics({json.dumps(EXPOSITION)})"
        samples = page.evaluate(parse + ".map((s) => [s.name, s.labels, String(s.value)])")
        assert samples[:2] == [
            ["x_total", {"path": 'a "b" c', "odd": "x\\y\nz , } {"}, "3"],
            ["x_total", {}, "1500"],  # a timestamp after the value is ignored
        ]
        assert samples[2] == ["lat_bucket", {"le": "0.001", "r": "a"}, "0"]
        assert samples[5:] == [["lat_bucket", {"le": "+Inf", "r": "a"}, "100"], ["lat_count", {"r": "a"}, "100"],
                               ["g", {}, "NaN"], ["h", {}, "-Infinity"]]
        found = page.evaluate(ARITHMETIC)
        assert found["rate"] == 10  # (30 - 10) over 2 s
        assert found["new_series"] == 4  # a series that was not there counted from zero
        assert found["after_reset"] == 5
        # histogram_quantile: linear interpolation inside the bucket holding the rank
        assert found["p50"] == pytest.approx(0.001 + 0.009 * 50 / 50)
        assert found["p99"] == pytest.approx(0.01 + 0.09 * 49 / 50)
        # a: 50 in (0.001, 0.01], 50 in (0.01, 0.1]; b: 1 in [0, 0.001], 1 in (0.01, 0.1]: rank 51 of 102
        assert found["p50_both"] == pytest.approx(0.001 + 0.009 * (51 - 1) / 50)
        assert found["in_inf_bucket"] == 0.1  # the highest finite bound, as Prometheus answers
        assert found["no_data"] is None  # NaN comes back as null
        assert page.problems() == []
