"""gateway.settings: the settings table and their precedence, flag > environment > file > default."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import pytest

from gateway.config import ConfigError, Node
from gateway.settings import (
    SETTINGS,
    SETTINGS_BY_NAME,
    ServerSettings,
    default_workers,
    markdown_table,
    replace,
    resolve,
)

SOURCE = "gateway.yaml"


def section(values: dict[str, Any] | None) -> Node:
    """The file's ``server:`` section."""
    return Node({"server": values}, SOURCE).child("server")


def failure(file: dict[str, Any] | None = None, environ: dict[str, str] | None = None,
            flags: dict[str, Any] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        resolve(None if file is None else section(file), environ or {}, flags or {})
    return info.value


# --- defaults ----------------------------------------------------------------------------------------


def test_defaults_without_file_environment_or_flags() -> None:
    settings = resolve(None, {}, {})
    assert settings == ServerSettings(workers=default_workers())
    assert (settings.host, settings.port) == ("0.0.0.0", 8080)
    assert (settings.admin_host, settings.admin_port) == ("127.0.0.1", 9901)
    assert settings.access_log is True
    assert settings.log_level == "info"
    assert (settings.drain_timeout, settings.keepalive_timeout, settings.header_timeout) == (30.0, 60.0, 10.0)
    assert (settings.max_header_bytes, settings.max_body_bytes) == (65536, 1024**3)
    assert settings.backlog == 2048
    assert (settings.config, settings.upstream, settings.redis_url) == (None, None, None)


def test_an_absent_server_section_gives_the_defaults() -> None:
    assert resolve(section(None), {}, {}) == resolve(None, {}, {})


def test_the_table_and_the_dataclass_agree() -> None:
    fields = {f.name: f.default for f in dataclasses.fields(ServerSettings)}
    assert list(fields) == [s.name for s in SETTINGS]
    for setting in SETTINGS:
        if setting.name != "workers":  # its default is computed: the CPU count
            assert fields[setting.name] == setting.default, setting.name


def test_workers_default_is_the_cpu_count_this_process_may_use(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve(None, {}, {}).workers == len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5})
    assert default_workers() == 3
    assert resolve(None, {}, {}).workers == 3


def test_setting_names_map_to_env_and_flag() -> None:
    setting = SETTINGS_BY_NAME["max_body_bytes"]
    assert setting.env == "GATEWAY_MAX_BODY_BYTES"
    assert setting.flag == "--max-body-bytes"


# --- precedence --------------------------------------------------------------------------------------


PRECEDENCE = [
    # name, file value, environment value, flag value, then what each of them resolves to
    ("port", 1000, "2000", "3000", (1000, 2000, 3000)),
    ("host", "10.0.0.1", "10.0.0.2", "10.0.0.3", ("10.0.0.1", "10.0.0.2", "10.0.0.3")),
    ("workers", 2, "3", "4", (2, 3, 4)),
    ("log_level", "debug", "WARNING", "error", ("debug", "warning", "error")),
    ("drain_timeout", "5s", "250ms", "1m", (5.0, 0.25, 60.0)),
    ("max_body_bytes", "1KiB", "2MB", "0", (1024, 2_000_000, 0)),
    ("access_log", False, "yes", False, (False, True, False)),
    ("redis_url", "redis://a", "redis://b", "redis://c", ("redis://a", "redis://b", "redis://c")),
]


@pytest.mark.parametrize(
    ("name", "file", "env", "flag", "expected"), PRECEDENCE, ids=[p[0] for p in PRECEDENCE]
)
def test_file_then_environment_then_flag(
    name: str, file: Any, env: str, flag: Any, expected: tuple[Any, ...]
) -> None:
    variable = SETTINGS_BY_NAME[name].env
    from_file = resolve(section({name: file}), {}, {})
    from_env = resolve(section({name: file}), {variable: env}, {})
    from_flag = resolve(section({name: file}), {variable: env}, {name: flag})
    assert (getattr(from_file, name), getattr(from_env, name), getattr(from_flag, name)) == expected


def test_flag_beats_file_without_environment() -> None:
    assert resolve(section({"port": 1000}), {}, {"port": "3000"}).port == 3000


def test_an_empty_environment_variable_is_unset() -> None:
    assert resolve(section({"port": 1000}), {"GATEWAY_PORT": ""}, {}).port == 1000


def test_a_flag_of_none_is_not_given() -> None:
    assert resolve(None, {"GATEWAY_PORT": "2000"}, {"port": None}).port == 2000


def test_a_false_flag_beats_a_true_environment() -> None:
    assert resolve(None, {"GATEWAY_ACCESS_LOG": "true"}, {"access_log": False}).access_log is False


def test_a_good_flag_hides_a_bad_environment_value() -> None:
    assert resolve(None, {"GATEWAY_PORT": "not a port"}, {"port": "81"}).port == 81


def test_other_environment_variables_are_ignored() -> None:
    assert resolve(None, {"PORT": "1", "GATEWAY_PROT": "2", "gateway_port": "3"}, {}).port == 8080


@pytest.mark.parametrize(
    ("text", "value"),
    [("1", True), ("true", True), ("True", True), ("yes", True), ("on", True),
     ("0", False), ("false", False), ("FALSE", False), ("no", False), ("off", False)],
)
def test_boolean_environment_forms(text: str, value: bool) -> None:
    assert resolve(None, {"GATEWAY_ACCESS_LOG": text}, {}).access_log is value


# --- errors name where the value came from -----------------------------------------------------------


def test_bad_environment_value_names_the_variable() -> None:
    error = failure(environ={"GATEWAY_PORT": "eighty"})
    assert error.source == "environment variable GATEWAY_PORT"
    assert str(error) == (
        "environment variable GATEWAY_PORT: expected an integer from 0 to 65535, got 'eighty'"
    )


def test_bad_flag_value_names_the_flag() -> None:
    error = failure(flags={"port": "70000"})
    assert str(error) == "flag --port: expected an integer from 0 to 65535, got '70000'"


def test_a_flag_with_underscores_is_named_with_dashes() -> None:
    assert str(failure(flags={"max_body_bytes": "lots"})).startswith("flag --max-body-bytes: expected a size")


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("GATEWAY_ACCESS_LOG", "maybe", "expected true or false"),
        ("GATEWAY_LOG_LEVEL", "loud", "expected one of debug, info, warning, error, critical"),
        ("GATEWAY_DRAIN_TIMEOUT", "0s", "expected a duration"),
        ("GATEWAY_WORKERS", "0", "expected an integer from 1 to 1024"),
        ("GATEWAY_BACKLOG", "0", "expected an integer of at least 1"),
        ("GATEWAY_MAX_HEADER_BYTES", "1XB", "expected a size"),
    ],
)
def test_each_kind_of_bad_environment_value(variable: str, value: str, expected: str) -> None:
    assert str(failure(environ={variable: value})).startswith(f"environment variable {variable}: {expected}")


def test_an_environment_value_of_two_minus_signs_is_a_config_error() -> None:
    assert "environment variable GATEWAY_PORT" in str(failure(environ={"GATEWAY_PORT": "--5"}))


def test_bad_file_value_names_the_file_and_key() -> None:
    error = failure(file={"port": "eighty"})
    assert str(error) == "gateway.yaml: server.port: expected an integer from 0 to 65535, got 'eighty'"


def test_unknown_key_in_server_section() -> None:
    error = failure(file={"port": 1, "prot": 2})
    assert error.path == "server.prot"
    assert str(error).startswith("gateway.yaml: server.prot: unknown key; expected one of: access_log, ")


@pytest.mark.parametrize("key", ["config", "upstream"])
def test_command_line_only_settings_are_unknown_in_the_file(key: str) -> None:
    error = failure(file={key: "x"})
    assert error.path == f"server.{key}"
    assert key not in error.message.split("one of: ")[1].split(", ")


def test_server_section_must_be_a_mapping() -> None:
    assert str(failure(file=["port"])) == "gateway.yaml: server: expected a mapping, got a list"  # type: ignore[arg-type]


# --- the upstream setting (quick mode) ---------------------------------------------------------------


def test_upstream_setting_accepts_an_http_url() -> None:
    assert resolve(None, {"GATEWAY_UPSTREAM": "http://127.0.0.1:9000"}, {}).upstream == "http://127.0.0.1:9000"
    assert resolve(None, {}, {"upstream": "http://h/base"}).upstream == "http://h/base"


@pytest.mark.parametrize(
    "url", ["127.0.0.1:9000", "ftp://h", "https://h", "http://", "http://h:99999", "http://u:p@h", "http://h/?q"]
)
def test_upstream_setting_validates_the_url(url: str) -> None:
    error = failure(environ={"GATEWAY_UPSTREAM": url})
    assert str(error).startswith("environment variable GATEWAY_UPSTREAM: expected an upstream URL like http://")
    assert str(failure(flags={"upstream": url})).startswith("flag --upstream: expected an upstream URL")


# --- replace and the reference table -----------------------------------------------------------------


def test_replace_returns_a_changed_copy() -> None:
    settings = ServerSettings()
    changed = replace(settings, port=1, workers=4)
    assert (changed.port, changed.workers, settings.port) == (1, 4, 8080)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.port = 2  # type: ignore[misc]


def test_markdown_table_lists_every_variable_and_flag() -> None:
    table = markdown_table()
    lines = table.splitlines()
    assert len(lines) == len(SETTINGS) + 2
    assert lines[0].startswith("| setting (file key under `server:`) | environment variable | flag |")
    for setting, line in zip(SETTINGS, lines[2:], strict=True):
        assert f"`{setting.env}`" in line
        assert f"`{setting.flag}`" in line
        assert setting.doc in line


def test_markdown_table_details() -> None:
    rows = {line.split(" | ")[1].strip("`"): line for line in markdown_table().splitlines()[2:]}
    assert "`--no-access-log`" in rows["GATEWAY_ACCESS_LOG"]
    assert "(not in the file)" in rows["GATEWAY_CONFIG"]
    assert "(not in the file)" in rows["GATEWAY_UPSTREAM"]
    assert "CPU count" in rows["GATEWAY_WORKERS"]
    assert "`8080`" in rows["GATEWAY_PORT"]
    assert "`64KiB`" in rows["GATEWAY_MAX_HEADER_BYTES"]


def test_settings_module_prints_the_readme_table(capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.settings import _main, markdown_table

    assert _main(["settings", "--markdown"]) == 0
    assert capsys.readouterr().out.strip() == markdown_table()
    assert _main(["settings"]) == 2
