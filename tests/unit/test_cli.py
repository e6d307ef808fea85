"""gateway.cli: ``check`` and ``version`` in-process, with a plain dict for the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import __version__
from gateway.cli import EXIT_CONFIG, EXIT_OK, main

VALID = """\
upstreams:
  api: http://127.0.0.1:9001
routes:
  - {name: users, path: /users, upstream: api}
  - {name: rest, prefix: /, upstream: http://127.0.0.1:9002}
"""

MISSING_UPSTREAM = """\
upstreams:
  api: http://127.0.0.1:9001
routes:
  - {path: /users, upstream: nope}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def config_error(capsys: pytest.CaptureFixture[str]) -> str:
    """The one line on stderr of a configuration error (nothing on stdout)."""
    out, err = capsys.readouterr()
    assert out == ""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("gateway: invalid configuration: ")
    return lines[0]


# --- version -----------------------------------------------------------------------------------------


def test_version_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"], environ={}) == EXIT_OK
    assert capsys.readouterr() == (f"gateway {__version__}\n", "")


def test_version_flag_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"], environ={})
    assert info.value.code == 0
    assert capsys.readouterr().out == f"gateway {__version__}\n"


# --- usage -------------------------------------------------------------------------------------------


def test_no_command_prints_usage_and_exits_two(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([], environ={}) == EXIT_CONFIG
    out, err = capsys.readouterr()
    assert out == ""
    assert "usage: gateway" in err


def test_unknown_flag_exits_two(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["check", "--prot", "1"], environ={})
    assert info.value.code == 2
    assert "unrecognized arguments: --prot" in capsys.readouterr().err


# --- check -------------------------------------------------------------------------------------------


def test_check_valid_file_prints_the_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, VALID)
    assert main(["check", "--config", str(path)], environ={}) == EXIT_OK
    out, err = capsys.readouterr()
    assert err == ""
    assert out.splitlines() == [
        f"{path}: valid",
        "upstreams (1):",
        "  api: http://127.0.0.1:9001",
        "routes (2):",
        "  users: path /users methods=* hosts=* -> api",
        "  rest: prefix / methods=* hosts=* -> http://127.0.0.1:9002",
    ]


def test_check_config_from_the_environment(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, VALID)
    assert main(["check"], environ={"GATEWAY_CONFIG": str(path)}) == EXIT_OK
    assert capsys.readouterr().out.startswith(f"{path}: valid\n")


def test_check_quick_mode(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--upstream", "http://127.0.0.1:9000"], environ={}) == EXIT_OK
    assert "  default: http://127.0.0.1:9000" in capsys.readouterr().out.splitlines()


def test_check_invalid_file_is_one_line_naming_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, MISSING_UPSTREAM)
    assert main(["check", "--config", str(path)], environ={}) == EXIT_CONFIG
    line = config_error(capsys)
    assert line.startswith(f"gateway: invalid configuration: {path}: routes[0].upstream: expected ")
    assert line.endswith("got 'nope'")


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("server:\n  port: 99999\n", "server.port: expected an integer from 0 to 65535"),
        ("routes: [\n", "line 2: invalid YAML: "),
        ("upstreams:\n  api: ${API_URL}\n", "upstreams.api: expected environment variable API_URL to be set"),
        ("- a list\n", "expected a mapping, got a list"),
    ],
)
def test_check_other_invalid_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, where: str
) -> None:
    path = write(tmp_path, text)
    assert main(["check", "--config", str(path)], environ={}) == EXIT_CONFIG
    assert config_error(capsys).startswith(f"gateway: invalid configuration: {path}: {where}")


def test_check_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "missing.yaml"
    assert main(["check", "--config", str(path)], environ={}) == EXIT_CONFIG
    assert config_error(capsys) == (
        f"gateway: invalid configuration: {path}: cannot read the file: No such file or directory"
    )


def test_check_without_config_or_upstream(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check"], environ={}) == EXIT_CONFIG
    assert "nothing to proxy" in config_error(capsys)


def test_check_with_config_and_upstream(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, VALID)
    environ = {"GATEWAY_UPSTREAM": "http://127.0.0.1:9000"}
    assert main(["check", "--config", str(path)], environ=environ) == EXIT_CONFIG
    assert "not both" in config_error(capsys)


def test_bad_environment_value_names_the_variable(capsys: pytest.CaptureFixture[str]) -> None:
    environ = {"GATEWAY_UPSTREAM": "http://127.0.0.1:9000", "GATEWAY_WORKERS": "many"}
    assert main(["check"], environ=environ) == EXIT_CONFIG
    assert config_error(capsys) == (
        "gateway: invalid configuration: environment variable GATEWAY_WORKERS: "
        "expected an integer from 1 to 1024, got 'many'"
    )


def test_bad_flag_value_names_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--upstream", "http://127.0.0.1:9000", "--log-level", "loud"], environ={}) == EXIT_CONFIG
    assert config_error(capsys).startswith("gateway: invalid configuration: flag --log-level: expected one of")


def test_an_unparsable_integer_is_a_config_error(capsys: pytest.CaptureFixture[str]) -> None:
    environ = {"GATEWAY_UPSTREAM": "http://127.0.0.1:9000", "GATEWAY_PORT": "--5"}
    assert main(["check"], environ=environ) == EXIT_CONFIG
    assert "environment variable GATEWAY_PORT" in config_error(capsys)


# --- flags override the environment ------------------------------------------------------------------


def test_upstream_flag_overrides_the_environment(capsys: pytest.CaptureFixture[str]) -> None:
    environ = {"GATEWAY_UPSTREAM": "http://10.0.0.1:1"}
    assert main(["check", "--upstream", "http://10.0.0.2:2"], environ=environ) == EXIT_OK
    out = capsys.readouterr().out
    assert "  default: http://10.0.0.2:2" in out.splitlines()
    assert "10.0.0.1" not in out


def test_config_flag_overrides_the_environment(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, VALID)
    environ = {"GATEWAY_CONFIG": str(tmp_path / "missing.yaml")}
    assert main(["check", "--config", str(path)], environ=environ) == EXIT_OK
    assert capsys.readouterr().out.startswith(f"{path}: valid\n")


@pytest.mark.parametrize(
    ("argv", "variable"),
    [
        (["--port", "8081"], "GATEWAY_PORT"),
        (["--workers", "2"], "GATEWAY_WORKERS"),
        (["--access-log"], "GATEWAY_ACCESS_LOG"),
        (["--no-access-log"], "GATEWAY_ACCESS_LOG"),
        (["--drain-timeout", "1s"], "GATEWAY_DRAIN_TIMEOUT"),
    ],
)
def test_a_good_flag_hides_a_bad_environment_value(
    argv: list[str], variable: str, capsys: pytest.CaptureFixture[str]
) -> None:
    environ = {"GATEWAY_UPSTREAM": "http://127.0.0.1:9000", variable: "bad"}
    assert main(["check", *argv], environ=environ) == EXIT_OK
    assert capsys.readouterr().err == ""
    assert main(["check"], environ=environ) == EXIT_CONFIG
    assert f"environment variable {variable}: expected" in config_error(capsys)
