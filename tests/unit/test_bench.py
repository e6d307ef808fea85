"""The bench suite's pure helpers: reading wrk's report, ratios and Markdown, result file names, targets.

No benchmark runs here (no processes, no timing).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import report, routes, scenarios, targets, wrk

WRK_OUTPUT = """\
Running 3s test @ http://127.0.0.1:19301/
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   460.93ms  399.53ms   2.62s    83.54%
    Req/Sec   127.40     55.66   410.00     93.33%
  Latency Distribution
     50%  330.33ms
     75%  685.54ms
     90%  973.50ms
     99%    1.79s{trailing}
  381 requests in 3.00s, 80.37KB read
  Socket errors: connect 0, read 2, write 0, timeout 5
  Non-2xx or 3xx responses: 3
Requests/sec:    126.96
Transfer/sec:     26.78KB
""".format(trailing=" ")  # wrk pads seconds with a space


@pytest.mark.parametrize(("text", "ms"), [("812.00us", 0.812), ("1.23ms", 1.23), ("2.00s", 2000.0),
                                          ("1.50m", 90_000.0)])
def test_wrk_durations_in_every_unit(text: str, ms: float) -> None:
    assert wrk.latency_ms(text) == pytest.approx(ms)


def test_a_wrk_duration_without_a_unit_is_refused() -> None:
    with pytest.raises(ValueError, match="not a wrk duration"):
        wrk.latency_ms("12")


def test_wrk_report_is_read_with_percentiles_and_errors() -> None:
    result = wrk.parse(WRK_OUTPUT)
    assert (result.requests, result.seconds, result.rps) == (381, 3.0, 126.96)
    assert (result.p50_ms, result.p99_ms) == (pytest.approx(330.33), pytest.approx(1790.0))
    assert "timeout 5" in result.errors and "Non-2xx or 3xx responses: 3" in result.errors


def test_a_clean_wrk_report_has_no_errors() -> None:
    clean = "\n".join(line for line in WRK_OUTPUT.splitlines() if "errors" not in line and "Non-2xx" not in line)
    assert wrk.parse(clean).errors == ""


def test_unexpected_wrk_output_is_an_error() -> None:
    with pytest.raises(ValueError, match="unexpected wrk output"):
        wrk.parse("unable to connect to 127.0.0.1:1 Connection refused")


def test_the_lua_script_cycles_over_the_paths(tmp_path: Path) -> None:
    script = wrk.write_script(tmp_path, ["/a", "/b/{x}"]).read_text()
    assert 'local paths = {"/a", "/b/{x}"}' in script and "function request()" in script


def test_ratios_refuse_missing_zero_and_nan() -> None:
    assert report.ratio(3.0, 2.0) == 1.5
    assert report.ratio(None, 2.0) is None
    assert report.ratio(1.0, 0.0) is None
    assert report.ratio(float("nan"), 1.0) is None
    assert (report.fmt_ratio(0.256), report.fmt_ratio(1234.0), report.fmt_ratio(None)) == ("0.26x", "1,234x", "-")


def test_markdown_table() -> None:
    assert report.markdown_table(["a", "b"], [["1", "2"]]) == "| a | b |\n| --- | --- |\n| 1 | 2 |"


def rows() -> dict[str, dict[str, dict[str, float | str]]]:
    return {
        "gateway": {"median": {"rps": 30_000.0, "p99_ms": 2.0, "errors": ""}},
        "nginx": {"median": {"rps": 60_000.0, "p99_ms": 1.0, "errors": "Socket errors: timeout 1"}},
    }


def test_figures_and_ratio_tables() -> None:
    columns = [("rps", "req/s", "{:,.0f}"), ("p99_ms", "p99 ms", "{:.2f}")]
    figures = report.figures_table(rows(), columns)
    assert "| gateway | 30,000 | 2.00 |" in figures
    assert "| nginx ¹ | 60,000 | 1.00 |" in figures
    assert "| gateway ÷ nginx | 0.50x | 2.00x |" in report.ratios_table(rows(), columns, "gateway")


def test_result_files_get_a_suffix_when_today_has_one(tmp_path: Path) -> None:
    assert report.result_stem(tmp_path, "2026-01-02") == tmp_path / "2026-01-02"
    (tmp_path / "2026-01-02.json").write_text("{}")
    assert report.result_stem(tmp_path, "2026-01-02") == tmp_path / "2026-01-02-2"
    (tmp_path / "2026-01-02-2.md").write_text("")
    assert report.result_stem(tmp_path, "2026-01-02") == tmp_path / "2026-01-02-3"


def test_json_is_cleaned_of_nan_and_int_keys() -> None:
    assert report.clean_json({10: [float("nan"), 1.5]}) == {"10": [None, 1.5]}


def test_micro_results_side_by_side() -> None:
    section = report.micro_section("router", {"compiled": {10: {"net": 100.0}}, "python": {10: {"net": 450.0}}})
    assert "| 10 / net | 100.0 | 450.0 | 4.50x |" in section


def test_medians_of_rounds_skip_missing_figures() -> None:
    merged = scenarios.medians([{"rps": 1.0, "up": None}, {"rps": 3.0, "up": 5.0}, {"rps": 2.0, "up": 7.0}])
    assert merged == {"rps": 2.0, "up": 6.0, "errors": ""}


def test_rounds_with_errors_are_named_and_left_out_while_a_clean_one_exists() -> None:
    merged = scenarios.medians([{"rps": 10.0, "errors": ""}, {"rps": 1.0, "errors": "Non-2xx: 5"}])
    assert merged == {"rps": 10.0, "errors": "round 2 of 2: Non-2xx: 5 (left out of the medians)"}
    merged = scenarios.medians([{"rps": 2.0, "errors": "a"}, {"rps": 4.0, "errors": "b"}])
    assert merged == {"rps": 3.0, "errors": "round 1 of 2: a; round 2 of 2: b"}


def results() -> dict[str, object]:
    plain = rows() | {"FastAPI + httpx": {"median": {"rps": 400.0}}}
    return {
        "date": "2026-01-02", "quick": False, "wall_seconds": 65.0, "upstream": "nginx",
        "machine": {"cpu": "cpu", "cores": 2, "python": "3.11"},
        "settings": {"proxy_core": 0, "load_core": 1, "rounds": 3, "seconds": 8},
        "scenarios": {"plain": {"title": "1. Plain proxy", "kind": "throughput", "subject": "gateway", "rows": plain},
                      "streams": {"title": "5. Streams", "skipped": "not yet"}},
        "micro": {"router": {"compiled": {10_000: {"net": 250.0, "raw": 260.0}}}},
    }


def test_targets_pass_fail_and_not_measured() -> None:
    found = {t["name"]: t for t in targets.evaluate(results())}
    assert found["plain proxy ≥ 0.6 x nginx throughput"]["passed"] is False
    assert found["plain proxy ≥ 50 x FastAPI + httpx throughput"]["passed"] is True
    assert found["router lookup with 10,000 routes < 300 ns (compiled)"]["passed"] is True
    assert found["memory per idle keep-alive client connection < 10 KB"]["passed"] is None


def test_the_report_has_tables_skips_and_target_lines() -> None:
    data = results()
    data["targets"] = targets.evaluate(data)
    markdown = report.render(data)
    assert "## Bench results 2026-01-02 (full run)" in markdown and "Wall time 1 min 5 s" in markdown
    assert "Skipped: not yet" in markdown
    assert "- FAIL plain proxy ≥ 0.6 x nginx throughput: 0.50x" in markdown
    assert "| 1. Plain proxy | 30,000 | 0.50x | - | 75.00x | 2.00 | - |" in markdown


def test_routes_are_deterministic_and_each_sample_path_is_a_get_route() -> None:
    entries = routes.routes(80)
    assert len(entries) == 80 and entries[4][0] == {"name": "r4", "upstream": "api", "prefix": "/static/app0"}
    paths = routes.sample_paths(entries)
    assert paths == routes.sample_paths(routes.routes(80))
    assert len(paths) == len(set(paths)) == 70  # the PUT/DELETE routes take no GET
