"""gateway.config: typed readers that name their key, ${VAR} interpolation and reading YAML files."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, Node, describe, interpolate, load_file

SOURCE = "gateway.yaml"


def node(value: Any, path: str = "server.key") -> Node:
    return Node(value, SOURCE, path)


def failure(read: Callable[[], Any]) -> ConfigError:
    """The ConfigError that ``read`` raises."""
    with pytest.raises(ConfigError) as info:
        read()
    return info.value


# --- ConfigError and describe ------------------------------------------------------------------------


def test_config_error_names_source_path_and_message() -> None:
    error = ConfigError("f.yaml", "routes[3].upstream", "expected a name")
    assert str(error) == "f.yaml: routes[3].upstream: expected a name"
    assert (error.source, error.path, error.message) == ("f.yaml", "routes[3].upstream", "expected a name")


def test_config_error_without_path_leaves_it_out() -> None:
    assert str(ConfigError("f.yaml", "", "cannot read the file")) == "f.yaml: cannot read the file"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ({"a": 1}, "a mapping"),
        ([1, 2], "a list"),
        ("abc", "'abc'"),
        (42, "42"),
        (None, "None"),
        (True, "True"),
    ],
)
def test_describe_names_the_kind_or_the_repr(value: Any, text: str) -> None:
    assert describe(value) == text


def test_describe_keeps_a_value_of_sixty_characters() -> None:
    value = "x" * 58  # its repr, with quotes, is 60 characters
    assert describe(value) == repr(value)


def test_describe_truncates_a_long_value_to_sixty_characters() -> None:
    text = describe("y" * 500)
    assert len(text) == 60
    assert text == "'" + "y" * 56 + "..."


# --- the error message of every reader ---------------------------------------------------------------


@pytest.mark.parametrize(
    "read",
    [
        lambda n: n.string(),
        lambda n: n.integer(),
        lambda n: n.boolean(),
        lambda n: n.choice(("a", "b")),
        lambda n: n.duration(),
        lambda n: n.size(),
        lambda n: n.mapping(),
        lambda n: list(n.elements()),
    ],
    ids=["string", "integer", "boolean", "choice", "duration", "size", "mapping", "elements"],
)
def test_a_reader_error_names_source_key_path_and_what_was_expected(read: Callable[[Node], Any]) -> None:
    error = failure(lambda: read(Node(object(), SOURCE, "upstreams.api.targets[2]")))
    assert error.source == SOURCE
    assert error.path == "upstreams.api.targets[2]"
    assert error.message.startswith("expected ")
    assert str(error).startswith("gateway.yaml: upstreams.api.targets[2]: expected ")
    assert ", got <object object at" in str(error)


# --- string ------------------------------------------------------------------------------------------


def test_string_returns_the_text() -> None:
    assert node("api.example.com").string() == "api.example.com"


@pytest.mark.parametrize(("value", "text"), [(8080, "8080"), (1.5, "1.5"), (0, "0")])
def test_string_accepts_a_number_as_its_text(value: Any, text: str) -> None:
    assert node(value).string() == text


def test_string_rejects_empty_text_unless_allowed() -> None:
    assert "expected a non-empty string, got ''" in str(failure(lambda: node("").string()))
    assert node("").string(nonempty=False) == ""


@pytest.mark.parametrize("value", [True, ["a"], {"a": 1}])
def test_string_rejects_other_types(value: Any) -> None:
    assert "expected a non-empty string" in str(failure(lambda: node(value).string()))


def test_string_default_only_when_absent() -> None:
    assert node(None).string("fallback") == "fallback"
    assert node(None).string(None) is None
    assert "got None" in str(failure(lambda: node(None).string()))


# --- integer -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "number"), [(5, 5), ("5", 5), (" 7 ", 7), ("-3", -3), (0, 0)])
def test_integer_reads_ints_and_digit_strings(value: Any, number: int) -> None:
    assert node(value).integer() == number


@pytest.mark.parametrize("value", [True, False, 1.5, 2.0, "1_000", "5x", "", "0x10", [1]])
def test_integer_rejects_non_integers(value: Any) -> None:
    assert "expected an integer, got " in str(failure(lambda: node(value).integer()))


@pytest.mark.parametrize("value", ["--5", "\u00b2"])
def test_integer_rejects_strings_int_cannot_parse(value: str) -> None:
    assert "expected an integer" in str(failure(lambda: node(value).integer()))


def test_integer_bounds_are_inclusive() -> None:
    assert node(0).integer(minimum=0, maximum=65535) == 0
    assert node(65535).integer(minimum=0, maximum=65535) == 65535


@pytest.mark.parametrize(
    ("value", "bounds", "expected"),
    [
        (65536, {"minimum": 0, "maximum": 65535}, "expected an integer from 0 to 65535, got 65536"),
        ("-1", {"minimum": 0, "maximum": 65535}, "expected an integer from 0 to 65535, got '-1'"),
        (0, {"minimum": 1}, "expected an integer of at least 1, got 0"),
        (11, {"maximum": 10}, "expected an integer of at most 10, got 11"),
        ("x", {"minimum": 1}, "expected an integer of at least 1, got 'x'"),
    ],
)
def test_integer_out_of_bounds_names_the_bounds(value: Any, bounds: dict[str, int], expected: str) -> None:
    assert failure(lambda: node(value).integer(**bounds)).message == expected


def test_integer_default_only_when_absent() -> None:
    assert node(None).integer(3) == 3
    assert node(None).integer(None) is None
    assert "got None" in str(failure(lambda: node(None).integer()))


# --- boolean -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [True, "true", "TRUE", " True ", "1", "yes", "Yes", "on", "ON"])
def test_boolean_true_forms(value: Any) -> None:
    assert node(value).boolean() is True


@pytest.mark.parametrize("value", [False, "false", "False", "0", "no", "NO", "off", " off "])
def test_boolean_false_forms(value: Any) -> None:
    assert node(value).boolean() is False


@pytest.mark.parametrize("value", ["maybe", "", "y", "2", 1, 0, 1.0, ["true"]])
def test_boolean_rejects_other_values(value: Any) -> None:
    assert "expected true or false, got " in str(failure(lambda: node(value).boolean()))


def test_boolean_default_only_when_absent() -> None:
    assert node(None).boolean(False) is False
    assert "expected true or false, got None" in str(failure(lambda: node(None).boolean()))


# --- choice ------------------------------------------------------------------------------------------


def test_choice_is_case_insensitive_and_lower_cases() -> None:
    assert node("WARNING").choice(("info", "warning")) == "warning"
    assert node("info").choice(("info", "warning")) == "info"


@pytest.mark.parametrize("value", ["verbose", "", 1, ["info"]])
def test_choice_rejects_others_and_lists_the_choices(value: Any) -> None:
    error = failure(lambda: node(value).choice(("info", "warning")))
    assert error.message.startswith("expected one of info, warning, got ")


def test_choice_default_only_when_absent() -> None:
    assert node(None).choice(("a", "b"), "b") == "b"


# --- duration ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("250ms", 0.25),
        ("5s", 5.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("10", 10.0),
        (" 3 s ", 3.0),
        (7, 7.0),
        (0.5, 0.5),
    ],
)
def test_duration_units(value: Any, seconds: float) -> None:
    result = node(value).duration()
    assert isinstance(result, float)
    assert result == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    ["5 minutes", "5d", "5S", "-1s", "s", "", "1e3", "1,5s", True, False, [], {"s": 1}, -2, 0, "0s", "0ms"],
)
def test_duration_rejects_bad_and_non_positive_values(value: Any) -> None:
    error = failure(lambda: node(value).duration())
    assert error.message.startswith("expected a duration such as 250ms, 5s, 2m (greater than zero), got ")


def test_duration_zero_allowed_when_not_positive() -> None:
    assert node("0s").duration(positive=False) == 0.0
    assert "(greater than zero)" not in str(failure(lambda: node("soon").duration(positive=False)))


def test_duration_default_only_when_absent() -> None:
    assert node(None).duration(30.0) == 30.0
    assert "got None" in str(failure(lambda: node(None).duration()))


def test_duration_rejects_nan() -> None:
    failure(lambda: node(math.nan).duration())


# --- size --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (65536, 65536),
        (0, 0),
        ("65536", 65536),
        ("3b", 3),
        ("64KiB", 64 * 1024),
        ("64kib", 64 * 1024),
        ("1k", 1024),
        ("2K", 2048),
        ("1KB", 1000),
        ("10MB", 10_000_000),
        ("1MiB", 1024**2),
        ("1m", 1024**2),
        ("1GiB", 1024**3),
        ("2GB", 2_000_000_000),
        ("1g", 1024**3),
        ("1.5KiB", 1536),
        (" 4 KiB ", 4096),
    ],
)
def test_size_units(value: Any, size: int) -> None:
    result = node(value).size()
    assert isinstance(result, int)
    assert result == size


@pytest.mark.parametrize("value", ["10XB", "KiB", "", "-1", -1, "1 000", "ten", True, 1.5, [1], {"a": 1}])
def test_size_rejects_bad_values(value: Any) -> None:
    error = failure(lambda: node(value).size())
    assert error.message.startswith("expected a size such as 65536, 64KiB, 10MB or 1GiB, got ")


def test_size_default_only_when_absent() -> None:
    assert node(None).size(1024) == 1024
    assert "got None" in str(failure(lambda: node(None).size()))


# --- mapping, items, elements, child, required -------------------------------------------------------


def test_mapping_accepts_allowed_keys() -> None:
    n = node({"port": 1, "host": "h"}, "server")
    assert n.mapping(frozenset({"port", "host", "workers"})) is n


def test_mapping_unknown_key_names_the_key_and_the_allowed_ones() -> None:
    error = failure(lambda: node({"port": 1, "prot": 2}, "server").mapping(frozenset({"port", "host"})))
    assert error.path == "server.prot"
    assert error.message == "unknown key; expected one of: host, port"
    assert str(error) == "gateway.yaml: server.prot: unknown key; expected one of: host, port"


def test_mapping_unknown_key_at_the_root_is_the_key_alone() -> None:
    assert failure(lambda: node({"rotes": []}, "").mapping(frozenset({"routes"}))).path == "rotes"


@pytest.mark.parametrize(("value", "got"), [([1], "a list"), ("x", "'x'"), (None, "None")])
def test_mapping_rejects_non_mappings(value: Any, got: str) -> None:
    assert failure(lambda: node(value, "server").mapping()).message == f"expected a mapping, got {got}"


def test_mapping_optional_makes_absent_empty() -> None:
    assert node(None, "server").mapping(optional=True).value == {}
    assert "expected a mapping" in str(failure(lambda: node([], "server").mapping(optional=True)))


def test_items_yield_children_with_their_key_paths() -> None:
    items = list(node({"api": "http://a", "web": "http://b"}, "upstreams").items())
    assert [(key, child.path, child.value) for key, child in items] == [
        ("api", "upstreams.api", "http://a"),
        ("web", "upstreams.web", "http://b"),
    ]


def test_items_reject_non_string_keys() -> None:
    error = failure(lambda: list(node({1: "x"}, "upstreams").items()))
    assert (error.path, error.message) == ("upstreams", "expected string keys, got 1")


def test_elements_yield_children_with_indexed_paths() -> None:
    paths = [(child.path, child.value) for child in node(["a", "b"], "routes").elements()]
    assert paths == [("routes[0]", "a"), ("routes[1]", "b")]


def test_elements_of_a_nested_child_extend_the_path() -> None:
    routes = node([{"methods": ["GET", "POST"]}], "routes")
    methods = next(iter(routes.elements())).child("methods")
    assert [m.path for m in methods.elements()] == ["routes[0].methods[0]", "routes[0].methods[1]"]


def test_elements_reject_non_lists() -> None:
    error = failure(lambda: list(node({"a": 1}, "routes").elements()))
    assert error.message == "expected a list, got a mapping"
    assert failure(lambda: list(node(None, "routes").elements())).message == "expected a list, got None"


def test_elements_optional_absent_is_empty() -> None:
    assert list(node(None, "routes").elements(optional=True)) == []


def test_child_of_absent_key_or_non_mapping_is_missing() -> None:
    assert node({"a": 1}, "server").child("b").missing
    child = node("text", "server").child("port")
    assert child.missing
    assert child.path == "server.port"
    assert Node({}, SOURCE).child("server").path == "server"


def test_required_passes_a_present_value_and_names_a_missing_one() -> None:
    present = node("x", "routes[0].upstream")
    assert present.required() is present
    error = failure(lambda: node(None, "routes[0].upstream").required())
    assert str(error) == "gateway.yaml: routes[0].upstream: expected a value; the key is missing or empty"


# --- interpolate -------------------------------------------------------------------------------------


def test_interpolate_replaces_a_set_variable() -> None:
    assert interpolate("url: ${API}/v1", {"API": "http://a:1"}, SOURCE) == "url: http://a:1/v1"


def test_interpolate_replaces_several_variables_on_one_line() -> None:
    assert interpolate("${A}-${B}-${A}", {"A": "1", "B": "2"}, SOURCE) == "1-2-1"


def test_interpolate_uses_the_default_when_unset() -> None:
    assert interpolate("port: ${PORT:-8080}", {}, SOURCE) == "port: 8080"
    assert interpolate("url: ${URL:-http://h:1/p}", {}, SOURCE) == "url: http://h:1/p"


def test_interpolate_uses_the_default_when_empty() -> None:
    assert interpolate("port: ${PORT:-8080}", {"PORT": ""}, SOURCE) == "port: 8080"


def test_interpolate_empty_default() -> None:
    assert interpolate("a: '${X:-}'", {}, SOURCE) == "a: ''"


def test_interpolate_keeps_an_empty_value_without_default() -> None:
    assert interpolate("a: '${X}'", {"X": ""}, SOURCE) == "a: ''"


def test_interpolate_prefers_the_value_to_the_default() -> None:
    assert interpolate("${PORT:-8080}", {"PORT": "9000"}, SOURCE) == "9000"


def test_interpolate_unset_without_default_names_key_and_variable() -> None:
    error = failure(lambda: interpolate("${BIND_HOST}", {"OTHER": "x"}, SOURCE, "server.host"))
    assert error.source == SOURCE
    assert error.path == "server.host"
    assert "BIND_HOST" in error.message
    assert "${BIND_HOST:-default}" in error.message
    assert str(error).startswith("gateway.yaml: server.host: expected environment variable BIND_HOST to be set")


def test_interpolate_dollar_dollar_is_a_literal_dollar() -> None:
    assert interpolate("price: $$5", {}, SOURCE) == "price: $5"
    assert interpolate("a: $${NOT_A_VAR}", {}, SOURCE) == "a: ${NOT_A_VAR}"


def test_interpolate_leaves_other_dollars_alone() -> None:
    assert interpolate("a: $HOME b: $ c: ${1X}", {"HOME": "/root"}, SOURCE) == "a: $HOME b: $ c: ${1X}"


def test_interpolate_does_not_expand_values_again() -> None:
    assert interpolate("${A}", {"A": "${B}", "B": "no"}, SOURCE) == "${B}"


# --- load_file ---------------------------------------------------------------------------------------


def write(tmp_path: Path, content: str | bytes) -> Path:
    path = tmp_path / "gateway.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def test_load_file_reads_a_mapping_with_interpolation(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  port: ${PORT}\n  host: ${HOST:-127.0.0.1}\n")
    root = load_file(path, {"PORT": "9000"})
    assert root.value == {"server": {"port": "9000", "host": "127.0.0.1"}}  # values stay strings
    assert root.child("server").child("port").integer() == 9000
    assert root.source == str(path)
    assert root.path == ""


def test_load_file_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"
    error = failure(lambda: load_file(path, {}))
    assert error.source == str(path)
    assert str(error) == f"{path}: cannot read the file: No such file or directory"


def test_load_file_directory(tmp_path: Path) -> None:
    assert "cannot read the file" in str(failure(lambda: load_file(tmp_path, {})))


def test_load_file_not_utf8(tmp_path: Path) -> None:
    path = write(tmp_path, b"server:\n  host: \xff\xfe\n")
    assert str(failure(lambda: load_file(path, {}))) == f"{path}: the file is not UTF-8 text"


@pytest.mark.parametrize(
    ("content", "line"),
    [
        ("server:\n  port: 1\n  host: [a, b\nroutes: []\n", "line 4"),
        ("a: 1\nb: 2\n  c: 3\n", "line 3"),
        ("a: 1\n\tb: 2\n", "line 2"),
    ],
)
def test_load_file_invalid_yaml_names_the_line(tmp_path: Path, content: str, line: str) -> None:
    path = write(tmp_path, content)
    error = failure(lambda: load_file(path, {}))
    assert error.path == line
    assert str(error).startswith(f"{path}: {line}: invalid YAML: ")
    assert "\n" not in str(error)


def test_load_file_unset_variable_names_the_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, "routes:\n  - path: /\n    upstream: ${UPSTREAM_URL}\n")
    error = failure(lambda: load_file(path, {}))
    assert (error.source, error.path) == (str(path), "routes[0].upstream")
    assert "UPSTREAM_URL" in error.message


def test_load_file_interpolation_cannot_change_the_structure(tmp_path: Path) -> None:
    path = write(tmp_path, "# ${IN_A_COMMENT} is inert\nserver:\n  host: ${HOST}\n")
    root = load_file(path, {"HOST": "a: b\n  port: 1"})
    assert root.value == {"server": {"host": "a: b\n  port: 1"}}


@pytest.mark.parametrize("content", ["", "\n", "# only a comment\n", "---\n"])
def test_load_file_empty_is_an_empty_mapping(tmp_path: Path, content: str) -> None:
    assert load_file(write(tmp_path, content), {}).value == {}


@pytest.mark.parametrize(
    ("content", "got"), [("- 1\n- 2\n", "a list"), ("just text\n", "'just text'"), ("5\n", "5")]
)
def test_load_file_root_must_be_a_mapping(tmp_path: Path, content: str, got: str) -> None:
    path = write(tmp_path, content)
    assert str(failure(lambda: load_file(path, {}))) == f"{path}: expected a mapping, got {got}"
