"""Every runnable example in examples/ is a valid configuration on its defaults (what `gateway check` says)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.loader import load

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_is_valid(path: Path) -> None:
    config = load({}, {"config": str(path)})
    assert config.routes


def test_the_examples_the_issues_name_exist() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"quickstart.yaml", "observability.yaml", "upstreams.yaml"} <= names
