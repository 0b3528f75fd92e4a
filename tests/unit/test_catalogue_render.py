"""services.catalogue.render: argv, masking and the child's environment, built from rules."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from contracts.errors import DomedError, ErrorCode
from contracts.manifest import Manifest
from services.catalogue.render import (
    MASK,
    child_env,
    env_names,
    fixed_work_dir,
    mask_params,
    mask_text,
    param_errors,
    render_argv,
    secret_values,
    with_defaults,
)


def manifest(
    entrypoint: list[str], properties: dict[str, Any] | None = None, **kw: Any
) -> Manifest:
    props = properties if properties is not None else {"v": {"type": "string"}}
    return Manifest(
        id="t.tool",
        version=1,
        entrypoint=entrypoint,
        parameters={"type": "object", "properties": props},
        **kw,
    )


def render(m: Manifest, params: dict[str, Any], **kw: Any) -> list[str]:
    return render_argv(m, params, tool_dir="/tools/t", job_id="01JOB", work_dir="/work/j", **kw)


def render_error(m: Manifest, params: dict[str, Any], **kw: Any) -> DomedError:
    with pytest.raises(DomedError) as info:
        render(m, params, **kw)
    assert info.value.code is ErrorCode.INVALID_PARAMS
    return info.value


HOSTILE = [
    "; rm -rf / #",
    "$(id)",
    "`id`",
    "a b c",
    "*",
    "?",
    "~",
    "${HOME}",
    "|| true",
    "> /etc/passwd",
    "a\nb",
    "'\"\\",
    "",
    "  leading and trailing  ",
    "é ü 漢字 🚀",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_value_arrives_as_exactly_one_literal_element(value: str) -> None:
    assert render(manifest(["echo", "{v}"]), {"v": value}) == ["echo", value]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_value_in_a_partial_placeholder_stays_inside_its_element(value: str) -> None:
    assert render(manifest(["echo", "--text={v}"]), {"v": value}) == ["echo", f"--text={value}"]


@pytest.mark.parametrize(
    ("element", "params", "expected"),
    [
        ("x{v}y", {"v": "MID"}, "xMIDy"),
        ("{a}{b}", {"a": "A", "b": "B"}, "AB"),
        ("{a}-{a}", {"a": "A", "b": "B"}, "A-A"),
        ("--out={a}/{b}.txt", {"a": "dir", "b": "f"}, "--out=dir/f.txt"),
        ("--name={a}", {"a": "-starts-with-dash", "b": "B"}, "--name=-starts-with-dash"),
    ],
)
def test_partial_placeholder_fills_part_of_one_element(
    element: str, params: dict[str, Any], expected: str
) -> None:
    m = manifest(["prog", element], {"a": {"type": "string"}, "b": {"type": "string"}, "v": {}})
    assert render(m, params) == ["prog", expected]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (5, "5"),
        (0, "0"),
        (1.5, "1.5"),
        (True, "true"),
        (False, "false"),
        ({"b": 1, "a": [1, 2]}, '{"a":[1,2],"b":1}'),
    ],
)
def test_scalar_values_render_as_their_text(value: Any, text: str) -> None:
    m = manifest(["prog", "{v}", "--v={v}"], {"v": {}})
    assert render(m, {"v": value}) == ["prog", text, f"--v={text}"]


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        (["a", "b c", "; rm"], ["a", "b c", "; rm"]),
        ([], []),
        (["only"], ["only"]),
        ([1, True], ["1", "true"]),
    ],
)
def test_list_standing_alone_expands_to_one_element_per_item(
    items: list[Any], expected: list[str]
) -> None:
    m = manifest(["prog", "{args}", "end"], {"args": {"type": "array"}})
    assert render(m, {"args": items}) == ["prog", *expected, "end"]


@pytest.mark.parametrize("element", ["--files={args}", "x{args}", "{args}{args}"])
def test_list_inside_a_larger_element_is_an_error(element: str) -> None:
    m = manifest(["prog", element], {"args": {"type": "array"}})
    error = render_error(m, {"args": ["a", "b"]})
    assert error.details == [{"path": "$.args", "message": error.details[0]["message"]}]
    assert "list" in error.message


def test_builtins_fill_tool_dir_job_id_and_work_dir() -> None:
    m = manifest(["python3", "{tool_dir}/run.py", "--job", "{job_id}", "--cwd={work_dir}"], {})
    assert render(m, {}) == ["python3", "/tools/t/run.py", "--job", "01JOB", "--cwd=/work/j"]


def test_builtins_win_over_a_param_of_the_same_name() -> None:
    m = manifest(["prog", "{job_id}"], {"job_id": {"type": "string"}})
    assert render(m, {"job_id": "spoofed"}) == ["prog", "01JOB"]


@pytest.mark.parametrize("element", ["{v}", "--v={v}"])
def test_placeholder_with_no_value_is_invalid_params_not_empty(element: str) -> None:
    error = render_error(manifest(["prog", element]), {})
    assert error.details[0]["path"] == "$.v"


@pytest.mark.parametrize("element", ["{v}", "--v={v}"])
def test_null_value_is_invalid_params_not_empty(element: str) -> None:
    error = render_error(manifest(["prog", element], {"v": {}}), {"v": None})
    assert error.details[0]["path"] == "$.v"


def test_nul_byte_in_a_value_is_refused() -> None:
    render_error(manifest(["prog", "{v}"]), {"v": "a\x00b"})


def test_schema_default_fills_an_absent_param() -> None:
    m = manifest(
        ["prog", "--interval", "{i}", "{args}"],
        {"i": {"type": "number", "default": 0.1}, "args": {"type": "array", "default": []}},
    )
    assert render(m, {}) == ["prog", "--interval", "0.1"]
    assert render(m, {"i": 2, "args": ["x"]}) == ["prog", "--interval", "2", "x"]


def test_with_defaults_adds_only_absent_top_level_defaults() -> None:
    m = manifest(
        ["prog"],
        {"a": {"default": 1}, "b": {"default": 2}, "c": {"type": "string"}},
    )
    assert with_defaults(m, {"b": 5}) == {"a": 1, "b": 5}


@pytest.mark.parametrize("value", ["-rf", "--help", "-", "--"])
def test_value_starting_with_dash_in_its_own_element_is_refused(value: str) -> None:
    error = render_error(manifest(["rm", "{v}"]), {"v": value})
    assert error.details[0]["path"] == "$.v"
    assert "option" in error.message


def test_list_item_starting_with_dash_is_refused() -> None:
    m = manifest(["rm", "{files}"], {"files": {"type": "array"}})
    render_error(m, {"files": ["ok", "-rf"]})


@pytest.mark.parametrize("value", ["-rf", "--help", ["a", "-b"]])
def test_value_starting_with_dash_is_allowed_after_a_double_dash_element(value: Any) -> None:
    m = manifest(["rm", "--", "{v}"], {"v": {}})
    items = value if isinstance(value, list) else [value]
    assert render(m, {"v": value}) == ["rm", "--", *items]


def test_double_dash_after_the_value_does_not_protect_it() -> None:
    render_error(manifest(["rm", "{v}", "--"]), {"v": "-rf"})


def test_double_dash_from_a_param_value_does_not_unlock_later_values() -> None:
    m = manifest(["prog", "{a}", "{b}"], {"a": {}, "b": {}})
    render_error(m, {"a": "--", "b": "-x"})


@pytest.mark.parametrize("value", [-5, -1, -9, -1.5, -0.0])
def test_negative_number_in_its_own_element_is_refused(value: float) -> None:
    render_error(manifest(["prog", "{v}"], {"v": {}}), {"v": value})
    assert render(manifest(["prog", "--", "{v}"], {"v": {}}), {"v": value})[2] == str(value)
    assert render(manifest(["prog", "--n={v}"], {"v": {}}), {"v": value})[1] == f"--n={value}"


@pytest.mark.parametrize(
    ("entrypoint", "params"),
    [
        (["prog", "{prefix}{value}"], {"prefix": "", "value": "--evil-option"}),
        (["prog", "{prefix}{value}"], {"prefix": "-", "value": "x"}),
        (["prog", "{prefix}{value}.txt"], {"prefix": "", "value": "-rf"}),
        (["prog", "{items}"], {"items": ["ok", "--evil"]}),
    ],
)
def test_a_rendered_element_that_starts_with_a_value_dash_is_refused(
    entrypoint: list[str], params: dict[str, Any]
) -> None:
    m = manifest(entrypoint, {"prefix": {}, "value": {}, "items": {}})
    render_error(m, params)


@pytest.mark.parametrize(
    ("entrypoint", "params", "expected"),
    [
        (["prog", "--text={value}"], {"value": "-x"}, "--text=-x"),
        (["prog", "-{value}"], {"value": "-x"}, "--x"),
        (["prog", "{prefix}{value}"], {"prefix": "a", "value": "-x"}, "a-x"),
        (["prog", "--", "{prefix}{value}"], {"prefix": "", "value": "--x"}, "--x"),
    ],
)
def test_a_dash_the_manifest_wrote_or_after_double_dash_is_allowed(
    entrypoint: list[str], params: dict[str, Any], expected: str
) -> None:
    m = manifest(entrypoint, {"prefix": {}, "value": {}})
    assert render(m, params)[-1] == expected


def test_secret_file_placeholders_render_the_given_path() -> None:
    m = manifest(
        ["prog", "--key={secret_file:key}"],
        {"key": {"type": "string"}},
        secrets={"key": {"file": True}},
    )
    files = {"key": "/run/domed/s/key"}
    assert render(m, {"key": "k"}, secret_files=files) == ["prog", "--key=/run/domed/s/key"]
    assert render(m, {"key": "k"}) == ["prog", "--key=<secret_file:key>"]
    render_error(m, {}, secret_files={})


def test_partial_placeholder_at_element_start_cannot_make_an_option() -> None:
    render_error(manifest(["rm", "{v}.txt"]), {"v": "-rf"})


def test_masked_names_render_as_stars_whole_and_partial() -> None:
    m = manifest(
        ["prog", "{token}", "--token={token}", "{user}"],
        {"token": {"type": "string"}, "user": {"type": "string"}},
    )
    params = {"token": "s3cret", "user": "bob"}
    assert render(m, params, masked=["token"]) == ["prog", MASK, f"--token={MASK}", "bob"]
    assert render(m, params) == ["prog", "s3cret", "--token=s3cret", "bob"]


def test_masked_list_renders_one_mask_per_item() -> None:
    m = manifest(["prog", "{keys}"], {"keys": {"type": "array"}})
    assert render(m, {"keys": ["k1", "k2"]}, masked=["keys"]) == ["prog", MASK, MASK]


def test_masking_does_not_skip_the_leading_dash_check() -> None:
    m = manifest(["prog", "{token}"], {"token": {"type": "string"}})
    render_error(m, {"token": "-x"}, masked=["token"])


def test_mask_params_hides_only_secret_values() -> None:
    m = manifest(
        ["prog"],
        {"token": {}, "user": {}, "other": {}},
        secrets={"token": {"env": "T"}, "other": {"env": "O"}},
    )
    assert mask_params(m, {"token": "s3cret", "user": "bob"}) == {"token": MASK, "user": "bob"}


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"a": "abc", "b": "abcdef"}, ["abcdef", "abc"]),
        ({"a": ["k1", "longer-k2"], "b": None}, ["longer-k2", "k1"]),
        ({"a": 1234}, ["1234"]),
        ({"a": "", "user": "bob"}, []),
        ({"a": "same", "b": "same"}, ["same"]),
        ({}, []),
    ],
)
def test_secret_values_are_the_literal_secret_strings_longest_first(
    params: dict[str, Any], expected: list[str]
) -> None:
    m = manifest(
        ["prog"], {"a": {}, "b": {}, "user": {}}, secrets={"a": {"env": "A"}, "b": {"env": "B"}}
    )
    assert secret_values(m, params) == expected


@pytest.mark.parametrize(
    ("line", "secrets", "expected"),
    [
        ("token=s3cret and s3cret again", ["s3cret"], f"token={MASK} and {MASK} again"),
        ("xabcdefx abc", ["abcdef", "abc"], f"x{MASK}x {MASK}"),
        ("nothing here", ["s3cret"], "nothing here"),
        ("s3cret", [], "s3cret"),
    ],
)
def test_mask_line_replaces_every_occurrence(line: str, secrets: list[str], expected: str) -> None:
    assert mask_text(line, secrets) == expected


def test_mask_line_with_secret_values_never_leaks_part_of_a_longer_secret() -> None:
    m = manifest(["prog"], {"a": {}, "b": {}}, secrets={"a": {"env": "A"}, "b": {"env": "B"}})
    secrets = secret_values(m, {"a": "abc", "b": "abcdef"})
    assert mask_text("key abcdef", secrets) == f"key {MASK}"


def test_child_env_is_allowlist_then_fixed_env_then_job_id_and_nothing_else() -> None:
    m = manifest(
        ["prog"],
        {},
        env_allowlist=["PATH", "LANG", "NOT_SET"],
        env={"PYTHONUNBUFFERED": "1", "LANG": "C.UTF-8", "DOMED_JOB_ID": "fake"},
    )
    environ = {
        "PATH": "/usr/bin",
        "LANG": "en_US.UTF-8",
        "HOME": "/root",
        "AWS_SECRET_ACCESS_KEY": "leak",
        "NATS_CREDS": "/creds",
        "DOMED_JOB_ID": "parent",
    }
    assert child_env(m, environ, "01JOB") == {
        "PATH": "/usr/bin",
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "DOMED_JOB_ID": "01JOB",
    }


def test_child_env_with_empty_allowlist_has_only_the_job_id() -> None:
    assert child_env(manifest(["prog"], {}), {"PATH": "/bin", "HOME": "/h"}, "J") == {
        "DOMED_JOB_ID": "J"
    }


def test_env_names_lists_every_name_the_child_can_see() -> None:
    m = manifest(["prog"], {}, env_allowlist=["PATH", "LANG"], env={"A": "1", "PATH": "x"})
    assert env_names(m) == ["A", "DOMED_JOB_ID", "DOMED_RESULT", "LANG", "PATH"]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("temp", None), ("tool_dir", None), ("fixed:/", "/")],
)
def test_fixed_work_dir_only_for_fixed_policy(policy: str, expected: str | None) -> None:
    assert fixed_work_dir(manifest(["prog"], {}, working_dir_policy=policy)) == expected


PARAM_SCHEMA = {
    "type": "object",
    "properties": {
        "n": {"type": "integer"},
        "items": {"type": "array", "items": {"type": "string"}},
        "o": {"type": "object", "properties": {"deep": {"type": "integer", "minimum": 0}}},
    },
    "required": ["n", "must"],
    "additionalProperties": False,
}


def test_param_errors_lists_every_failure_with_its_json_path() -> None:
    validator = jsonschema.Draft202012Validator(PARAM_SCHEMA)
    failures = param_errors(
        validator, {"n": "x", "items": ["a", 1, "b", 2], "extra": 1, "o": {"deep": -1}}
    )
    assert [f["path"] for f in failures] == [
        "$",
        "$",
        "$.items[1]",
        "$.items[3]",
        "$.n",
        "$.o.deep",
    ]
    messages = " | ".join(f["message"] for f in failures)
    for part in ("'must' is a required", "'extra' was unexpected", "-1 is less than"):
        assert part in messages


def test_param_errors_is_empty_for_valid_params() -> None:
    validator = jsonschema.Draft202012Validator(PARAM_SCHEMA)
    assert param_errors(validator, {"n": 1, "must": 1}) == [
        {"path": "$", "message": "Additional properties are not allowed ('must' was unexpected)"}
    ]
    schema = {**PARAM_SCHEMA, "additionalProperties": True}
    assert param_errors(jsonschema.Draft202012Validator(schema), {"n": 1, "must": 1}) == []


def test_param_errors_orders_array_indexes_numerically() -> None:
    schema = {
        "type": "object",
        "properties": {"xs": {"type": "array", "items": {"type": "string"}}},
    }
    validator = jsonschema.Draft202012Validator(schema)
    failures = param_errors(validator, {"xs": ["a"] * 2 + [2] + ["a"] * 7 + [10]})
    assert [f["path"] for f in failures] == ["$.xs[2]", "$.xs[10]"]
