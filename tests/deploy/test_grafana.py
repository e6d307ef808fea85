"""deploy/grafana/gateway.json: importable, every PromQL expression parses (promtool) and uses only the
metrics and labels of the contract, every panel follows the data source and instance/route/upstream
variables, and the dashboard covers every metric the gateway serves."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.promql import (
    CONTRACT,
    DEPLOY,
    RESERVED,
    SAMPLES,
    check_expressions_parse,
    metric_names,
    unknown_references,
)

DASHBOARD_PATH = DEPLOY / "grafana" / "gateway.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$")
# the variable that filters each label, and the selector text that applies it
FILTERS = {"instance": 'instance=~"$instance"', "route": 'route=~"$route"', "upstream": 'upstream=~"$upstream"'}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD_PATH.read_text()))


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows keep their panels inside


def expressions(dashboard: dict[str, Any]) -> dict[str, str]:
    """Every PromQL expression: panel targets and annotations, keyed by where it is."""
    found = {}
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            found[f"panel {panel['id']} {panel['title']!r} target {target['refId']}"] = target["expr"]
    for annotation in dashboard["annotations"]["list"]:
        if "expr" in annotation:
            found[f"annotation {annotation['name']!r}"] = annotation["expr"]
    return found


def variable_selectors(dashboard: dict[str, Any]) -> dict[str, str]:
    """The series selector of every ``label_values(selector, label)`` variable query."""
    found = {}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            match = LABEL_VALUES.match(query)
            assert match, f"variable {variable['name']}: {query!r} is not label_values(selector, label)"
            assert match["label"] in SAMPLES[metric_names(match["selector"]).pop()]
            found[f"variable {variable['name']!r}"] = match["selector"]
    return found


def test_it_is_an_importable_dashboard(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] and dashboard["title"]
    assert "id" not in dashboard or dashboard["id"] is None  # Grafana assigns it on import
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_panels_do_not_overlap(dashboard: dict[str, Any]) -> None:
    taken: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & taken, f"{panel['title']!r} overlaps another panel"
        taken |= cells


def test_data_source_and_filter_variables(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in FILTERS:
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"] == DATASOURCE
        assert variables[name]["multi"] and variables[name]["includeAll"]
    for panel in panels(dashboard):
        if panel["type"] != "row":
            assert panel["datasource"] == DATASOURCE, panel["title"]
            assert all(t["datasource"] == DATASOURCE for t in panel["targets"]), panel["title"]


def test_every_expression_parses(dashboard: dict[str, Any], tmp_path: Path) -> None:
    exprs = {**expressions(dashboard), **variable_selectors(dashboard)}
    assert len(exprs) > 30
    result = check_expressions_parse(exprs, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_expressions_use_only_the_contract(dashboard: dict[str, Any]) -> None:
    exprs = {**expressions(dashboard), **variable_selectors(dashboard)}
    problems = {where: unknown_references(expr) for where, expr in exprs.items()}
    assert {where: p for where, p in problems.items() if p} == {}


def test_every_selector_follows_the_variables(dashboard: dict[str, Any]) -> None:
    """A panel that ignored the instance, route or upstream picker would show the wrong numbers."""
    for where, expr in expressions(dashboard).items():
        for selector in re.findall(r"gateway_\w+\{[^}]*\}", expr):
            name = selector.split("{")[0]
            for label, matcher in FILTERS.items():
                if label in SAMPLES[name]:
                    assert matcher in selector, f"{where}: {selector} ignores ${label}"


def test_the_dashboard_covers_every_metric(dashboard: dict[str, Any]) -> None:
    used = set().union(*(metric_names(expr) for expr in expressions(dashboard).values()))
    bases = {re.sub(r"_(bucket|sum|count)$", "", name) for name in used}
    assert set(CONTRACT) | set(RESERVED) <= bases | used


@pytest.mark.parametrize("quantile", ["0.5", "0.9", "0.99"])
@pytest.mark.parametrize("histogram", ["gateway_request_duration_seconds", "gateway_added_latency_seconds"])
def test_latency_percentiles(dashboard: dict[str, Any], histogram: str, quantile: str) -> None:
    assert any(f"histogram_quantile({quantile}, sum by (le) (rate({histogram}_bucket{{" in expr
               for expr in expressions(dashboard).values())


def test_metric_names_leaves_out_functions_labels_and_durations() -> None:
    expr = ('histogram_quantile(0.99, sum by (job, le) (rate(a_bucket{le="0.5", x=~"$v"}[$__rate_interval]))) '
            '/ on (job) group_left(version) b offset 5m > bool 1e-3 and ignoring(x) c:rec unless count(d) by (y)')
    assert metric_names(expr) == {"a_bucket", "b", "c:rec", "d"}
    assert unknown_references('gateway_requests_total{status="5xx"}') == [
        "gateway_requests_total has no label ['status']"]
    assert unknown_references("gateway_request_total") == ["unknown metric gateway_request_total"]
