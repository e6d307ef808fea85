"""The README stays true: its settings table is the one the code generates, its commands exist."""

from pathlib import Path

from gateway.settings import SETTINGS, markdown_table

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_settings_table_matches_the_code():
    assert markdown_table() in README, "regenerate with: python -m gateway.settings --markdown"


def test_every_environment_variable_is_documented():
    for setting in SETTINGS:
        assert setting.env in README


def test_the_two_commands_exist_and_ci_calls_the_test_command():
    assert "./scripts/quickstart" in README
    assert "./scripts/test" in README
    for script in ("scripts/quickstart", "scripts/test", ".ci/run"):
        path = ROOT / script
        assert path.exists() and path.stat().st_mode & 0o111, script
    assert "scripts/test" in (ROOT / ".ci/run").read_text()
