from __future__ import annotations

import math
from collections.abc import Mapping

import pytest

from wsproxy.yamldata import UNRESOLVED, ComposeError, Problems, join, read


def read_ok(text: str, env: Mapping[str, str] | None = None) -> object:
    problems: list[str] = []
    data = read(text, env or {}, problems)
    assert problems == []
    return data


def read_with_problems(text: str, env: Mapping[str, str] | None = None) -> tuple[object, list[str]]:
    problems: list[str] = []
    data = read(text, env or {}, problems)
    assert problems
    return data, problems


def value_of(scalar: str, env: Mapping[str, str] | None = None) -> object:
    data = read_ok(f"v: {scalar}\n", env)
    assert isinstance(data, dict)
    return data["v"]


# ---------------------------------------------------------------------------- the document


def test_yamldata_reads_plain_data() -> None:
    text = """\
listen: [{address: 127.0.0.1:0}]
pools:
  main:
    servers:
      - ws://127.0.0.1:9001
      - {url: ws://b, weight: 2}
    retries: 0.5
empty:
"""
    assert read_ok(text) == {
        "listen": [{"address": "127.0.0.1:0"}],
        "pools": {
            "main": {
                "servers": ["ws://127.0.0.1:9001", {"url": "ws://b", "weight": 2}],
                "retries": 0.5,
            }
        },
        "empty": None,
    }


@pytest.mark.parametrize("text", ["---\n", "~", "null\n", "--- ~\n"])
def test_yamldata_empty_document_reads_as_none(text: str) -> None:
    assert read_ok(text) is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "the file is empty"),
        ("# nothing but a comment\n", "the file is empty"),
        ("a: b: c", "line 1, column 5: mapping values are not allowed here"),
        (
            "listen: [",
            "line 1, column 10: while parsing a flow node, expected the node content, "
            "but found '<stream end>'",
        ),
        (
            "--- {}\n--- {}",
            "line 2, column 1: expected a single document in the stream, "
            "but found another document",
        ),
        ("a: *nope", "line 1, column 4: found undefined alias 'nope'"),
        (
            "listen: []\n\x07",
            "line 2, column 1: character #x0007: special characters are not allowed",
        ),
        (
            "\tlisten: []",
            "line 1, column 1: a tab character where YAML allows none: "
            "indent with spaces, not tabs",
        ),
    ],
)
def test_yamldata_not_one_document_is_one_problem_with_its_place(text: str, problem: str) -> None:
    problems: list[str] = []
    with pytest.raises(ComposeError) as caught:
        read(text, {}, problems)
    assert caught.value.problem == problem
    assert str(caught.value) == problem
    assert problems == []


# ---------------------------------------------------------------------------- keys


def test_yamldata_duplicate_keys_are_problems() -> None:
    text = "security:\n  max_connections: 10\n  max_connections: 20\nsecurity: {}\n"
    data, problems = read_with_problems(text)
    assert problems == [
        "security.max_connections: duplicate key (first on line 2)",
        "security: duplicate key (first on line 1)",
    ]
    assert data == {"security": {"max_connections": 10}}


def test_yamldata_duplicate_keys_inside_a_list_have_its_index() -> None:
    text = "listen:\n  - address: 127.0.0.1:0\n    address: 127.0.0.1:1\n"
    data, problems = read_with_problems(text)
    assert problems == ["listen[0].address: duplicate key (first on line 2)"]
    assert data == {"listen": [{"address": "127.0.0.1:0"}]}


def test_yamldata_keys_must_be_plain_names() -> None:
    data, problems = read_with_problems("a: 1\n? [a, b]\n: 1\nb:\n  ? {x: 1}\n  : 2\n")
    assert problems == [
        "the key on line 2 is not a plain name",
        "b: the key on line 5 is not a plain name",
    ]
    assert data == {"a": 1, "b": {}}


# ---------------------------------------------------------------------------- YAML 1.2 scalars


@pytest.mark.parametrize("word", ["yes", "no", "on", "off", "y", "n", "Yes", "OFF"])
def test_yamldata_yes_and_no_are_strings(word: str) -> None:
    assert value_of(word) == word


@pytest.mark.parametrize(
    ("scalar", "expected"),
    [
        ("true", True),
        ("True", True),
        ("TRUE", True),
        ("false", False),
        ("False", False),
        ("FALSE", False),
        ("!!bool true", True),
        ("'false'", "false"),
    ],
)
def test_yamldata_booleans_are_yaml_1_2(scalar: str, expected: object) -> None:
    assert value_of(scalar) == expected
    assert type(value_of(scalar)) is type(expected)


@pytest.mark.parametrize(
    ("scalar", "expected"), [("1:30", "1:30"), ("2001-12-14", "2001-12-14"), ("1_000", "1_000")]
)
def test_yamldata_sexagesimal_dates_and_underscores_are_strings(scalar: str, expected: str) -> None:
    assert value_of(scalar) == expected


@pytest.mark.parametrize(
    ("scalar", "expected"),
    [
        ("0x10", 16),
        ("0o17", 15),
        ("+12", 12),
        ("-3", -3),
        ("012", 12),
        ("!!int '7'", 7),
        ("!!str 9", "9"),
        ("'9'", "9"),
    ],
)
def test_yamldata_integers_are_yaml_1_2(scalar: str, expected: object) -> None:
    assert value_of(scalar) == expected
    assert type(value_of(scalar)) is type(expected)


@pytest.mark.parametrize(
    ("scalar", "expected"),
    [
        ("1.5", 1.5),
        (".5", 0.5),
        ("1e1", 10.0),
        ("!!float 2", 2.0),
        ("3.", 3.0),
        ("-2.5E-1", -0.25),
        (".inf", math.inf),
        ("-.Inf", -math.inf),
        ("+.INF", math.inf),
    ],
)
def test_yamldata_floats_are_yaml_1_2(scalar: str, expected: float) -> None:
    value = value_of(scalar)
    assert isinstance(value, float)
    assert value == expected


@pytest.mark.parametrize("scalar", [".nan", ".NaN", ".NAN"])
def test_yamldata_nan_is_a_float(scalar: str) -> None:
    value = value_of(scalar)
    assert isinstance(value, float)
    assert math.isnan(value)


@pytest.mark.parametrize("scalar", ["", "~", "null", "Null", "NULL", "!!null ''"])
def test_yamldata_nulls_are_yaml_1_2(scalar: str) -> None:
    assert value_of(scalar) is None


@pytest.mark.parametrize(
    ("scalar", "problem"),
    [
        ("!!int 1.5", "'1.5' is not a valid !!int"),
        ("!!bool yes", "'yes' is not a valid !!bool"),
        ("!!float x", "'x' is not a valid !!float"),
        ("!!binary aGk=", "the YAML tag !!binary is not supported here"),
        ("!!timestamp 2001-12-14", "the YAML tag !!timestamp is not supported here"),
        (
            "!!python/object/apply:os.getcwd []",
            "the YAML tag !!python/object/apply:os.getcwd is not supported here",
        ),
        ("!env HOME", "the YAML tag !env is not supported here"),
        ("!!set {a, b}", "the YAML tag !!set is not supported here"),
        ("!!omap [a: 1]", "the YAML tag !!omap is not supported here"),
        ("!!map [a]", "the YAML tag !!map is not supported here"),
    ],
)
def test_yamldata_scalars_and_tags_that_are_refused(scalar: str, problem: str) -> None:
    data, problems = read_with_problems(f"timeouts:\n  idle: {scalar}\n")
    assert problems == [f"timeouts.idle: {problem}"]
    assert data == {"timeouts": {"idle": UNRESOLVED}}


def test_yamldata_never_builds_python_objects() -> None:
    data, problems = read_with_problems("log: !!python/object/new:os.system [echo hacked]\n")
    assert problems == ["log: the YAML tag !!python/object/new:os.system is not supported here"]
    assert data == {"log": UNRESOLVED}


# ---------------------------------------------------------------------------- aliases


def test_yamldata_aliases_are_read_as_copies() -> None:
    data = read_ok("a: {servers: &backends [ws://a, ws://b]}\nb: {servers: *backends}\n")
    assert data == {"a": {"servers": ["ws://a", "ws://b"]}, "b": {"servers": ["ws://a", "ws://b"]}}
    assert isinstance(data, dict)
    assert data["a"]["servers"] is not data["b"]["servers"]


def test_yamldata_alias_that_contains_itself_is_a_problem() -> None:
    data, problems = read_with_problems("log: &log {level: *log}\n")
    assert problems == ["log.level: an alias refers to the value that contains it"]
    assert data == {"log": {"level": UNRESOLVED}}


def test_yamldata_aliases_may_not_expand_without_bound() -> None:
    """Ten lists of ten, five deep: the one problem is reported where the count runs out."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 6)]
    data, problems = read_with_problems("\n".join(lines))
    assert problems == ["a4[7][8][8][8][9]: the file holds more than 100000 values"]
    assert isinstance(data, dict)
    assert data["a5"] is UNRESOLVED


# ---------------------------------------------------------------------------- ${ENV}


@pytest.mark.parametrize(
    ("value", "env", "expected"),
    [
        ("${ADDR}", {"ADDR": "127.0.0.1:7000"}, "127.0.0.1:7000"),
        ("'${ADDR}'", {"ADDR": "127.0.0.1:7000"}, "127.0.0.1:7000"),
        ("${ADDR:-127.0.0.1:0}", {}, "127.0.0.1:0"),
        ("${ADDR:-127.0.0.1:0}", {"ADDR": ""}, "127.0.0.1:0"),
        ("${ADDR:-127.0.0.1:0}", {"ADDR": "[::1]:1"}, "[::1]:1"),
        ("${ADDR:-}", {}, ""),
        ("${HOST}:${PORT}", {"HOST": "localhost", "PORT": "99"}, "localhost:99"),
        ("${HOST}${EMPTY}:80", {"HOST": "localhost", "EMPTY": ""}, "localhost:80"),
    ],
)
def test_yamldata_env_substitution(value: str, env: dict[str, str], expected: str) -> None:
    assert value_of(value, env) == expected


@pytest.mark.parametrize(
    ("scalar", "env", "expected"),
    [("${MAX}", {"MAX": "50"}, "50"), ("${REQ:-false}", {}, "false"), ("${N:-~}", {}, "~")],
)
def test_yamldata_env_values_are_always_strings(
    scalar: str, env: dict[str, str], expected: str
) -> None:
    assert value_of(scalar, env) == expected


def test_yamldata_env_unset_is_a_problem_at_its_path() -> None:
    data, problems = read_with_problems("listen:\n  - address: ${HOST}:${PORT}\n")
    assert problems == [
        "listen[0].address: environment variable HOST is not set",
        "listen[0].address: environment variable PORT is not set",
    ]
    assert data == {"listen": [{"address": UNRESOLVED}]}


def test_yamldata_env_top_level_unset() -> None:
    data, problems = read_with_problems("${CONFIG}")
    assert problems == ["environment variable CONFIG is not set"]
    assert data is UNRESOLVED


def test_yamldata_env_malformed_reference() -> None:
    data, problems = read_with_problems("address: ${1HOST}:80\n")
    assert problems == ["address: a '${' that is neither ${NAME} nor ${NAME:-default}"]
    assert data == {"address": UNRESOLVED}


def test_yamldata_env_value_that_looks_like_yaml_stays_a_string() -> None:
    env = {"ORIGINS": '["*"]', "POOL": "{servers: [ws://evil:1]}", "PATH_": "/[a,b]: {x: 1}"}
    text = "origins: ${ORIGINS}\nservers: ['${POOL}']\npath: '${PATH_}'\n"
    assert read_ok(text, env) == {
        "origins": '["*"]',
        "servers": ["{servers: [ws://evil:1]}"],
        "path": "/[a,b]: {x: 1}",
    }


def test_yamldata_env_value_is_not_substituted_again() -> None:
    assert value_of("'/${P}'", {"P": "${OTHER}"}) == "/${OTHER}"


def test_yamldata_env_keys_and_plain_dollars_are_left_alone() -> None:
    assert read_ok("${KEY}: /$x/$\n", {"KEY": "log"}) == {"${KEY}": "/$x/$"}


# ---------------------------------------------------------------------------- paths


def test_yamldata_join_and_problems_lead_with_the_path() -> None:
    assert join("", "listen") == "listen"
    assert join("pools", "main") == "pools.main"
    problems: list[str] = []
    Problems(problems).problem("", "at the top")
    Problems(problems).problem("log.level", "inside")
    assert problems == ["at the top", "log.level: inside"]
