"""The suite's outputs: result file names, the Markdown report (tables of figures, ratios against the
peers, micro-benchmarks, target lines) and the PNG chart. Pure functions except ``write`` and ``chart``.

In every ratio table a figure is the gateway's divided by the peer's: above 1 is better for requests
per second and MB/s, below 1 is better for latency, CPU per request and memory.

``python -m bench.report bench/results/DATE.json`` renders a run's target lines, Markdown and chart again
from its JSON (after a change to the report or the targets).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

# Columns per kind of scenario: (key in a row's medians, header, format).
Column = tuple[str, str, str]
COLUMNS: dict[str, list[Column]] = {
    "throughput": [
        ("rps", "req/s", "{:,.0f}"), ("p50_ms", "p50 ms", "{:.2f}"), ("p99_ms", "p99 ms", "{:.2f}"),
        ("cpu_us_per_request", "CPU µs/req", "{:.1f}"), ("peak_rss_mib", "peak RSS MiB", "{:.1f}"),
    ],
    "bodies": [
        ("up_mb_s", "upload MB/s", "{:,.0f}"), ("down_mb_s", "download MB/s", "{:,.0f}"),
        ("cpu_ms_per_mb", "CPU ms/MB", "{:.2f}"), ("peak_rss_mib", "peak RSS MiB", "{:.1f}"),
    ],
    "latency": [
        ("achieved_rate", "req/s done", "{:,.0f}"), ("p50_ms", "p50 ms", "{:.2f}"),
        ("p99_ms", "p99 ms", "{:.2f}"), ("max_ms", "max ms", "{:.1f}"), ("max_queue", "max queued", "{:,.0f}"),
        ("client_cpu_share", "client's core use", "{:.0%}"),
    ],
    "websocket": [
        ("messages_per_s", "messages/s", "{:,.0f}"), ("p50_ms", "p50 ms", "{:.2f}"), ("p99_ms", "p99 ms", "{:.2f}"),
        ("cpu_us_per_message", "CPU µs/message", "{:.1f}"), ("peak_rss_mib", "peak RSS MiB", "{:.1f}"),
        ("client_cpu_share", "client's core use", "{:.0%}"), ("upstream_cpu_share", "upstream's core use", "{:.0%}"),
    ],
    "sse": [
        ("events_per_s", "events/s delivered", "{:,.0f}"), ("p50_ms", "p50 ms", "{:.2f}"),
        ("p99_ms", "p99 ms", "{:.2f}"), ("max_ms", "max ms", "{:.1f}"), ("cpu_us_per_event", "CPU µs/event", "{:.1f}"),
        ("peak_rss_mib", "peak RSS MiB", "{:.1f}"), ("events_lost", "events lost", "{:,.0f}"),
        ("client_cpu_share", "client's core use", "{:.0%}"), ("upstream_cpu_share", "upstream's core use", "{:.0%}"),
    ],
    "idle": [
        ("bytes_per_connection", "bytes per idle connection", "{:,.0f}"),
        ("rss_before_mib", "RSS before MiB", "{:.1f}"), ("rss_after_mib", "RSS after MiB", "{:.1f}"),
    ],
}
COLUMNS["workers"] = COLUMNS["throughput"]


def result_stem(directory: Path, day: str) -> Path:
    """``directory/day``, or ``day-2``, ``day-3``... when a result file of that name exists."""
    stem, n = directory / day, 1
    while any(stem.with_suffix(ext).exists() for ext in (".json", ".md", ".png")):
        n += 1
        stem = directory / f"{day}-{n}"
    return stem


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)


def ratio(value: Any, reference: Any) -> float | None:
    """``value / reference``, or None when either is missing, not a number, or the reference is 0."""
    if not is_number(value) or not is_number(reference) or not reference:
        return None
    return float(value / reference)


def fmt(value: Any, spec: str = "{:,.2f}") -> str:
    """A figure formatted by ``spec``; "-" when missing, anything else that is not a number as it is."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return spec.format(value) if is_number(value) else str(value)


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x" if value < 100 else f"{value:,.0f}x"


def markdown_table(headers: list[str], rows: Iterable[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return "\n".join(lines)


def figures_table(rows: Mapping[str, Mapping[str, Any]], columns: list[Column]) -> str:
    """One line per proxy with its median figures; a mark where wrk or the client saw errors."""
    body = []
    for name, row in rows.items():
        median = row["median"]
        mark = " ¹" if median.get("errors") else ""
        body.append([name + mark] + [fmt(median.get(key), spec) for key, _, spec in columns])
    return markdown_table(["proxy"] + [header for _, header, _ in columns], body)


def ratios_table(rows: Mapping[str, Mapping[str, Any]], columns: list[Column], subject: str) -> str:
    """``subject``'s figures divided by each peer's."""
    mine = rows[subject]["median"]
    body = []
    for name, row in rows.items():
        if name == subject:
            continue
        theirs = row["median"]
        body.append([f"{subject} ÷ {name}"] + [fmt_ratio(ratio(mine.get(k), theirs.get(k))) for k, _, _ in columns])
    return markdown_table(["ratio"] + [header for _, header, _ in columns], body)


def scenario_section(scenario: Mapping[str, Any]) -> str:
    """A scenario's heading, note, figures and ratios (or why it was skipped)."""
    parts = [f"### {scenario['title']}", ""]
    if "skipped" in scenario:
        return "\n".join([*parts, f"Skipped: {scenario['skipped']}", ""])
    if scenario.get("note"):
        parts += [scenario["note"], ""]
    rows, columns = scenario["rows"], COLUMNS[scenario["kind"]]
    parts += [figures_table(rows, columns), ""]
    subject = scenario.get("subject")
    if subject in rows and len(rows) > 1:
        parts += [ratios_table(rows, columns, subject), ""]
    errors = [f"{name}: {row['median']['errors']}" for name, row in rows.items() if row["median"].get("errors")]
    if errors:
        parts += ["¹ " + "; ".join(errors), ""]
    parts += [line for line in scenario.get("extra", [])]
    return "\n".join(parts).rstrip() + "\n"


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``{"a / b / c": leaf}``."""
    if not isinstance(tree, Mapping):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix} / {key}" if prefix else str(key)))
    return flat


def micro_section(name: str, result: Mapping[str, Any]) -> str:
    """A micro-benchmark's figures: compiled against pure Python side by side when both are there."""
    if "compiled" in result and "python" in result:
        compiled, pure = flatten(result["compiled"]), flatten(result["python"])
        rows = [[key, fmt(compiled[key], "{:,.1f}"), fmt(pure.get(key), "{:,.1f}"),
                 fmt_ratio(ratio(pure.get(key), compiled[key]))] for key in compiled]
        table = markdown_table(["figure", "compiled", "pure Python", "pure ÷ compiled"], rows)
    else:
        table = markdown_table(["figure", "value"], [[k, fmt(v, "{:,.1f}")] for k, v in flatten(result).items()])
    return f"#### micro_{name}\n\n{table}\n"


SUMMARY_PEERS = (("nginx", "nginx"), ("gateway app on stock uvicorn", "uvicorn app"),
                 ("FastAPI + httpx", "FastAPI + httpx"))


def summary_table(results: Mapping[str, Any]) -> str | None:
    """One line per throughput scenario: the gateway's req/s, p99 and CPU, and its req/s over each peer's."""
    lines = []
    for scenario in results["scenarios"].values():
        rows = scenario.get("rows", {})
        if scenario.get("kind") != "throughput" or "gateway" not in rows:
            continue
        mine = rows["gateway"]["median"]
        ratios = [fmt_ratio(ratio(mine.get("rps"), rows.get(peer, {}).get("median", {}).get("rps")))
                  for peer, _ in SUMMARY_PEERS]
        lines.append([scenario["title"], fmt(mine.get("rps"), "{:,.0f}"), *ratios, fmt(mine.get("p99_ms")),
                      fmt(mine.get("cpu_us_per_request"), "{:.1f}")])
    if not lines:
        return None
    headers = ["scenario", "gateway req/s", *[f"÷ {short}" for _, short in SUMMARY_PEERS], "gateway p99 ms",
               "gateway CPU µs/req"]
    return markdown_table(headers, lines)


def render(results: Mapping[str, Any]) -> str:
    """The whole Markdown report."""
    kind = "quick run" if results["quick"] else "full run"
    parts = [f"## Bench results {results['date']} ({kind})", "", header_line(results), ""]
    summary = summary_table(results)
    if summary:
        parts += ["Summary (the gateway's req/s divided by each peer's, same run):", "", summary, ""]
    parts += [scenario_section(s) for s in results["scenarios"].values()]
    if results.get("micro"):
        parts.append("### Micro-benchmarks: every `_fast` module, compiled against pure Python\n\n"
                     "Units as each figure names them (micro_router: ns per lookup; see each module's docstring).\n")
        parts += [micro_section(name, r) for name, r in results["micro"].items()]
    parts += ["### Targets", "", *[f"- {line}" for line in target_lines(results.get("targets", []))], ""]
    if results.get("skipped"):
        parts += ["### Skipped", "", *[f"- {line}" for line in results["skipped"]], ""]
    return "\n".join(parts).rstrip() + "\n"


def header_line(results: Mapping[str, Any]) -> str:
    machine, run = results["machine"], results["settings"]
    minutes, seconds = divmod(round(results.get("wall_seconds", 0)), 60)
    return (f"{machine['cpu']}, {machine['cores']} cores, Python {machine['python']}. Proxy under test pinned to "
            f"CPU {run['proxy_core']}; wrk, the clients and the upstream ({results['upstream']}) to CPU "
            f"{run['load_core']}. {run['rounds']} round(s) of {run['seconds']} s per proxy, alternating; "
            f"figures are medians of the rounds. Wall time {minutes} min {seconds} s.")


def target_lines(targets: Iterable[Mapping[str, Any]]) -> list[str]:
    """``PASS``/``FAIL``/``INFO`` lines; INFO where a target could not be measured validly."""
    lines = []
    for target in targets:
        verdict = {True: "PASS", False: "FAIL", None: "INFO"}[target["passed"]]
        lines.append(f"{verdict} {target['name']}: {target['detail']}")
    return lines


def clean_json(value: Any) -> Any:
    """JSON-safe: keys as strings, NaN as null."""
    if isinstance(value, Mapping):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def write(results: Mapping[str, Any], stem: Path) -> str:
    """Writes STEM.json and STEM.md; returns the Markdown."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(clean_json(results), indent=1) + "\n")
    markdown = render(results)
    stem.with_suffix(".md").write_text(markdown)
    return markdown


def chart(results: Mapping[str, Any], path: Path) -> str | None:
    """A PNG of req/s and CPU per request per throughput scenario, body MB/s and the streams figures; None, or
    why not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]'): no chart"
    panels = chart_panels(results)
    if not panels:
        return "no scenario with figures to chart"
    names = list(dict.fromkeys(name for _, groups, _ in panels for group in groups.values() for name in group))
    colors = {name: f"C{i}" for i, name in enumerate(names)}
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 5), squeeze=False)
    for axis, (title, groups, log) in zip(axes[0], panels, strict=True):
        bars(axis, groups, names, colors)
        axis.set_title(title)
        if log:
            axis.set_yscale("log")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[name]) for name in names]
    figure.legend(handles, names, loc="lower center", ncol=min(4, len(names)), fontsize=9)
    figure.suptitle(f"gateway bench {results['date']} ({'quick' if results['quick'] else 'full'} run)")
    figure.tight_layout(rect=(0, 0.1, 1, 1))
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return None


Groups = dict[str, dict[str, float | None]]


def chart_panels(results: Mapping[str, Any]) -> list[tuple[str, Groups, bool]]:
    """(title, {group: {proxy: value}}, log scale) for each panel of the chart."""
    throughput = [s for s in results["scenarios"].values() if s.get("kind") == "throughput" and s.get("rows")]
    panels: list[tuple[str, Groups, bool]] = []
    for key, title in (("rps", "req/s (log scale)"), ("cpu_us_per_request", "CPU µs per request (log scale)")):
        groups = {s["short"]: {n: r["median"].get(key) for n, r in s["rows"].items()} for s in throughput}
        if groups:
            panels.append((title, groups, True))
    bodies = results["scenarios"].get("bodies", {})
    if bodies.get("rows"):
        groups = {d: {n: r["median"].get(f"{d}_mb_s") for n, r in bodies["rows"].items()} for d in ("up", "down")}
        panels.append((f"body MB/s ({results['settings']['body_bytes'] / 1e6:,.0f} MB)", groups, False))
    return panels + stream_panels(results)


def stream_panels(results: Mapping[str, Any]) -> list[tuple[str, Groups, bool]]:
    """WebSocket messages/s, and the proxy's CPU per WebSocket message and per SSE event (scenario 5)."""
    echo = results["scenarios"].get("websocket", {}).get("rows")
    events = results["scenarios"].get("sse", {}).get("rows")
    panels: list[tuple[str, Groups, bool]] = []
    if echo:
        panels.append(("WebSocket echo messages/s", {"echo": per_proxy(echo, "messages_per_s")}, False))
    cpu = {label: per_proxy(rows, key) for label, key, rows in (
        ("WebSocket message", "cpu_us_per_message", echo), ("SSE event", "cpu_us_per_event", events)) if rows}
    if cpu:
        panels.append(("streams: CPU µs per message / event", cpu, False))
    return panels


def per_proxy(rows: Mapping[str, Mapping[str, Any]], key: str) -> dict[str, float | None]:
    return {name: row["median"].get(key) for name, row in rows.items()}


def bars(axis: Any, groups: Groups, names: list[str], colors: Mapping[str, str]) -> None:
    """Grouped bars: one group per key of ``groups``, one bar per proxy present, colours fixed per proxy."""
    width = 0.8 / max(1, *(len(group) for group in groups.values()))
    for g, group in enumerate(groups.values()):
        present = [name for name in names if group.get(name)]
        for i, name in enumerate(present):
            axis.bar(g + (i - (len(present) - 1) / 2) * width, group[name], width, color=colors[name])
    axis.set_xticks(range(len(groups)), list(groups))


def main() -> None:
    """``python -m bench.report bench/results/DATE.json``: the target lines evaluated again, then DATE.json,
    DATE.md and DATE.png written again."""
    import sys

    from bench import targets

    for name in sys.argv[1:]:
        stem = Path(name).with_suffix("")
        results = json.loads(Path(name).read_text())
        results["targets"] = targets.evaluate(results)
        write(results, stem)
        print(chart(results, stem.with_suffix(".png")) or f"written: {stem}.md, {stem}.png")


if __name__ == "__main__":
    main()
