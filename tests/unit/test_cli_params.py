"""services.cli.params: `-p key=value` pairs become typed params by the tool's schema."""

from __future__ import annotations

from typing import Any

import pytest

from services.cli.params import ParamError, parse_params

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "n": {"type": "integer"},
        "x": {"type": "number"},
        "flag": {"type": "boolean"},
        "text": {"type": "string"},
        "names": {"type": "array", "items": {"type": "string"}},
        "counts": {"type": "array", "items": {"type": "integer"}},
        "opts": {"type": "object"},
        "maybe": {"type": ["integer", "string"]},
        "anything": {},
    },
}


@pytest.mark.parametrize(
    ("pair", "expected"),
    [
        ("n=5", {"n": 5}),
        ("n=-3", {"n": -3}),
        ("n=0", {"n": 0}),
        ("x=5", {"x": 5}),
        ("x=2.5", {"x": 2.5}),
        ("x=-1e3", {"x": -1000.0}),
        ("x=1E2", {"x": 100.0}),
        ("flag=true", {"flag": True}),
        ("flag=TRUE", {"flag": True}),
        ("flag=yes", {"flag": True}),
        ("flag=on", {"flag": True}),
        ("flag=1", {"flag": True}),
        ("flag=false", {"flag": False}),
        ("flag=No", {"flag": False}),
        ("flag=off", {"flag": False}),
        ("flag=0", {"flag": False}),
        ("text=hello world", {"text": "hello world"}),
        ("text=5", {"text": "5"}),
        ("text=true", {"text": "true"}),
        ("text=a=b=c", {"text": "a=b=c"}),
        ("text=", {"text": ""}),
        ("text=[1, 2]", {"text": "[1, 2]"}),
        ("names=a,b,c", {"names": ["a", "b", "c"]}),
        ("names=single", {"names": ["single"]}),
        ("names=", {"names": []}),
        ('names=["a,b", "c"]', {"names": ["a,b", "c"]}),
        ("counts=1,2,3", {"counts": [1, 2, 3]}),
        ("counts=[4, 5]", {"counts": [4, 5]}),
        ('opts={"a": 1, "b": [true]}', {"opts": {"a": 1, "b": [True]}}),
        ("maybe=7", {"maybe": 7}),
        ("anything=raw", {"anything": "raw"}),
        ("unknown=raw", {"unknown": "raw"}),
    ],
)
def test_pair_becomes_a_typed_param(pair: str, expected: dict[str, Any]) -> None:
    result = parse_params([pair], None, SCHEMA)
    assert result == expected
    assert [type(v) for v in result.values()] == [type(v) for v in expected.values()]


@pytest.mark.parametrize(
    "pair",
    [
        "n=five",
        "n=5.0",
        "n=",
        "x=abc",
        "x=",
        "flag=maybe",
        "flag=",
        "counts=1,two",
        "counts=[1,",
        "opts={not json}",
        "opts=",
        "no-equals-sign",
    ],
)
def test_bad_value_raises_param_error(pair: str) -> None:
    with pytest.raises(ParamError):
        parse_params([pair], None, SCHEMA)


def test_param_error_names_the_param_and_expected_type() -> None:
    with pytest.raises(ParamError, match=r"-p n=five: expected integer"):
        parse_params(["n=five"], None, SCHEMA)


def test_params_json_is_merged_and_pairs_win() -> None:
    result = parse_params(["n=5", "text=b"], '{"n": 1, "flag": true, "text": "a"}', SCHEMA)
    assert result == {"n": 5, "flag": True, "text": "b"}


def test_list_pairs_extend_a_list_from_params_json_and_each_other() -> None:
    result = parse_params(["names=b", "names=c,d"], '{"names": ["a"]}', SCHEMA)
    assert result == {"names": ["a", "b", "c", "d"]}


def test_repeated_scalar_pair_keeps_the_last_value() -> None:
    assert parse_params(["n=1", "n=2"], None, SCHEMA) == {"n": 2}


@pytest.mark.parametrize("params_json", ["not json", "[1, 2]", '"text"', "5"])
def test_params_json_must_be_a_json_object(params_json: str) -> None:
    with pytest.raises(ParamError, match="--params-json"):
        parse_params([], params_json, SCHEMA)


def test_no_pairs_and_no_json_is_empty() -> None:
    assert parse_params([], None, SCHEMA) == {}


def test_without_a_schema_every_value_stays_a_string() -> None:
    assert parse_params(["n=5", "flag=true"], None, {}) == {"n": "5", "flag": "true"}


def test_union_type_accepts_a_value_of_any_of_its_types() -> None:
    assert parse_params(["maybe=abc"], None, SCHEMA) == {"maybe": "abc"}
