"""services.catalogue.loader: every manifest problem is reported at once, with where and why."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from services.catalogue.loader import CatalogueError, Problem, load_catalogue, load_file

ROOT = Path(__file__).resolve().parents[2]

# A valid manifest; line numbers below are counted from this text.
VALID = """\
id: t.echo
version: 1
entrypoint: ["echo", "{text}"]
parameters:
  type: object
  properties:
    text: {type: string}
  additionalProperties: false
"""
VALID_LINES = VALID.count("\n")


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "tools" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def problems_of(root: Path) -> list[Problem]:
    with pytest.raises(CatalogueError) as info:
        load_catalogue(root)
    return info.value.problems


def only_problem(root: Path) -> Problem:
    problems = problems_of(root)
    assert len(problems) == 1, problems
    return problems[0]


def test_valid_manifest_loads_with_its_path_hash_and_tool_dir(tmp_path: Path) -> None:
    write_tree(tmp_path, {"demo/echo.yaml": VALID})
    tools = load_catalogue(tmp_path)
    assert list(tools) == ["t.echo"]
    tool = tools["t.echo"]
    path = tmp_path / "tools" / "demo" / "echo.yaml"
    assert tool.path == path.resolve()
    assert tool.tool_dir == path.parent.resolve()
    assert tool.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert tool.manifest.entrypoint == ["echo", "{text}"]


def test_validator_checks_params_against_the_manifest_schema(tmp_path: Path) -> None:
    write_tree(tmp_path, {"echo.yaml": VALID})
    validator = load_catalogue(tmp_path)["t.echo"].validator
    assert validator.is_valid({"text": "hi"})
    assert not validator.is_valid({"text": 5})
    assert not validator.is_valid({"text": "hi", "extra": 1})


def test_yml_extension_and_nested_folders_are_found(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {"a/b/c/one.yml": VALID, "two.yaml": VALID.replace("t.echo", "t.two")},
    )
    assert sorted(load_catalogue(tmp_path)) == ["t.echo", "t.two"]


def test_missing_ssot_directory_is_a_catalogue_error(tmp_path: Path) -> None:
    problem = only_problem(tmp_path / "nope")
    assert "not found" in problem.reason


@pytest.mark.parametrize(
    ("text", "field", "line", "reason_part"),
    [
        pytest.param(VALID + "bogus: 1\n", "bogus", VALID_LINES + 1, "Extra", id="unknown-field"),
        pytest.param(
            VALID.replace("version: 1\n", ""), "version", None, "required", id="missing-field"
        ),
        pytest.param(
            VALID + "timeout_s: -1\n",
            "timeout_s",
            VALID_LINES + 1,
            "greater than 0",
            id="neg-timeout",
        ),
        pytest.param(
            VALID + "timeout_s: 0\n",
            "timeout_s",
            VALID_LINES + 1,
            "greater than 0",
            id="zero-timeout",
        ),
        pytest.param(
            VALID + "cancel_grace_s: -1\n",
            "cancel_grace_s",
            VALID_LINES + 1,
            "greater than or equal",
            id="neg-grace",
        ),
        pytest.param(
            VALID + "working_dir_policy: fixed:relative/dir\n",
            "working_dir_policy",
            VALID_LINES + 1,
            "absolute",
            id="fixed-not-absolute",
        ),
        pytest.param(
            VALID + "working_dir_policy: fixed:/srv/../etc\n",
            "working_dir_policy",
            VALID_LINES + 1,
            "..",
            id="fixed-with-dotdot",
        ),
        pytest.param(
            VALID + "working_dir_policy: somewhere\n",
            "working_dir_policy",
            VALID_LINES + 1,
            "temp",
            id="unknown-policy",
        ),
        pytest.param(
            VALID.replace("t.echo", "Bad Id"), "id", 1, "pattern", id="id-not-matching-pattern"
        ),
        pytest.param(
            VALID + "env_allowlist: [PATH, 'NOT-A-NAME']\n",
            "env_allowlist",
            VALID_LINES + 1,
            "NOT-A-NAME",
            id="bad-env-name",
        ),
        pytest.param(
            VALID + "env_allowlist: [PATH, NATS_URL]\n",
            "env_allowlist",
            VALID_LINES + 1,
            "NATS_URL",
            id="nats-credentials-allowlisted",
        ),
        pytest.param(
            VALID + "env_allowlist: [DOMED_NATS_URL]\n",
            "env_allowlist",
            VALID_LINES + 1,
            "DOMED_NATS_URL",
            id="domed-settings-allowlisted",
        ),
        pytest.param(
            VALID + "progress: {regex: '(?P<speed>\\d+)'}\n",
            "progress.regex",
            VALID_LINES + 1,
            "speed",
            id="progress-unknown-group",
        ),
        pytest.param(
            VALID + "progress: {regex: '(unclosed'}\n",
            "progress.regex",
            VALID_LINES + 1,
            "regular expression",
            id="progress-bad-regex",
        ),
        pytest.param(
            VALID + "limits: {max_line_bytes: 10}\n",
            "limits.max_line_bytes",
            VALID_LINES + 1,
            "greater than or equal",
            id="line-limit-too-small",
        ),
        pytest.param(
            VALID.replace('["echo", "{text}"]', "[]"),
            "entrypoint",
            3,
            "at least 1",
            id="empty-argv",
        ),
    ],
)
def test_field_problem_names_file_field_line_and_reason(
    tmp_path: Path, text: str, field: str, line: int | None, reason_part: str
) -> None:
    write_tree(tmp_path, {"group/tool.yaml": text})
    problem = only_problem(tmp_path)
    assert problem.file == "tools/group/tool.yaml"
    assert problem.field == field
    assert problem.line == line
    assert reason_part in problem.reason
    assert problem.file in str(problem) and field in str(problem)


def test_yaml_syntax_error_is_reported_with_its_line(tmp_path: Path) -> None:
    write_tree(tmp_path, {"broken.yaml": "id: t.x\nversion: 1\nentrypoint: [echo, \n  : :\n"})
    problem = only_problem(tmp_path)
    assert problem.file == "tools/broken.yaml"
    assert problem.reason.startswith("YAML syntax")
    assert problem.line is not None and problem.line >= 3


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_document_that_is_not_a_mapping_is_refused(tmp_path: Path, text: str) -> None:
    write_tree(tmp_path, {"list.yaml": text})
    assert "mapping" in only_problem(tmp_path).reason


@pytest.mark.parametrize(
    ("schema_yaml", "field_part"),
    [
        ("{type: object, properties: {text: {type: strang}}}", "parameters.properties.text.type"),
        ("{type: object, properties: {text: {type: string, minLength: -1}}}", "minLength"),
        ("{type: 5}", "parameters"),
    ],
)
def test_parameters_that_are_not_a_json_schema_are_refused(
    tmp_path: Path, schema_yaml: str, field_part: str
) -> None:
    text = f"id: t.x\nversion: 1\nentrypoint: [echo]\nparameters: {schema_yaml}\n"
    write_tree(tmp_path, {"x.yaml": text})
    problem = only_problem(tmp_path)
    assert problem.field.startswith("parameters")
    assert field_part in problem.field
    assert "not a valid JSON Schema" in problem.reason
    assert problem.line == 4


@pytest.mark.parametrize(
    ("extra", "reason_part"),
    [
        pytest.param("", "{nope}", id="placeholder-names-no-parameter"),
        pytest.param("secrets: {token: {env: T}}\n", "'token'", id="secret-not-a-parameter"),
        pytest.param("retry: {max_attempts: 2}\n", "idempotent", id="retry-without-idempotent"),
        pytest.param(
            "idempotent: false\nretry: {max_attempts: 2}\n", "idempotent", id="retry-not-idempotent"
        ),
    ],
)
def test_cross_field_problem_is_refused_with_its_reason(
    tmp_path: Path, extra: str, reason_part: str
) -> None:
    text = VALID + extra
    if not extra:
        text = text.replace('"{text}"', '"--x={nope}"')
    write_tree(tmp_path, {"x.yaml": text})
    problem = only_problem(tmp_path)
    assert problem.file == "tools/x.yaml"
    assert reason_part in problem.reason


def test_a_secret_placeholder_in_the_entrypoint_is_refused_at_load(tmp_path: Path) -> None:
    """argv is readable by every local user (/proc/<pid>/cmdline, ps): a secret never goes
    there, whatever the manifest says."""
    write_tree(tmp_path, {"x.yaml": VALID + "secrets: {text: {env: TEXT}}\n"})
    problem = only_problem(tmp_path)
    assert (problem.file, problem.field) == ("tools/x.yaml", "entrypoint.1")
    assert "would put a secret in argv" in problem.reason and problem.line == 3


@pytest.mark.parametrize(
    ("extra", "reason_part"),
    [
        ("secrets: {text: {env: T}}\n", "{secret_file:text} names no secret with `file: true`"),
        ("secrets: [text]\n", "valid dictionary"),
        ("secrets: {text: {env: T, file: true}}\n", "exactly one"),
        ("secrets: {text: {}}\n", "exactly one"),
        ("secrets: {text: {env: 'A B'}}\n", "pattern"),
    ],
)
def test_secret_delivery_problems_are_refused(tmp_path: Path, extra: str, reason_part: str) -> None:
    text = VALID.replace('"{text}"', '"--key={secret_file:text}"') + extra
    write_tree(tmp_path, {"x.yaml": text})
    reasons = " | ".join(p.reason for p in problems_of(tmp_path))
    assert reason_part in reasons


def test_secrets_by_env_and_by_file_load(tmp_path: Path) -> None:
    text = (
        VALID.replace('"{text}"', '"--key={secret_file:key}"').replace(
            "text: {type: string}", "text: {type: string}\n    key: {type: string}"
        )
        + "secrets: {text: {env: TEXT}, key: {file: true}}\n"
    )
    write_tree(tmp_path, {"x.yaml": text})
    tool = load_catalogue(tmp_path)["t.echo"]
    assert tool.manifest.secrets["text"].env == "TEXT" and tool.manifest.secrets["key"].file


@pytest.mark.parametrize(
    ("extra", "field", "reason_part"),
    [
        ("paths: {nope: {roots: [/srv]}}\n", "paths.nope", "'nope' is not a parameter"),
        ("paths: {n: {roots: [/srv]}}\n", "paths.n", "`type: string`"),
        ("paths: {text: {roots: []}}\n", "paths.text.roots", "at least 1 item"),
        ("paths: {text: {roots: [srv/data]}}\n", "paths.text.roots", "neither absolute"),
        ("paths: {text: {roots: ['{tool_dir}x']}}\n", "paths.text.roots", "neither absolute"),
        ('paths: {text: {roots: ["/srv\\0"]}}\n', "paths.text.roots", "NUL"),
        ("paths: {text: {roots: [/srv], extra: 1}}\n", "paths.text.extra", "not permitted"),
        ("paths: {text: {roots: /srv}}\n", "paths.text.roots", "valid list"),
    ],
)
def test_path_rules_are_refused_at_load(
    tmp_path: Path, extra: str, field: str, reason_part: str
) -> None:
    text = VALID.replace("text: {type: string}", "text: {type: string}\n    n: {type: integer}")
    write_tree(tmp_path, {"x.yaml": text + extra})
    problem = only_problem(tmp_path)
    assert problem.field == field and reason_part in problem.reason, problem


def test_a_secret_cannot_name_a_file(tmp_path: Path) -> None:
    text = VALID.replace('"{text}"', '"hi"') + (
        "secrets: {text: {env: TEXT}}\npaths: {text: {roots: [/srv]}}\n"
    )
    write_tree(tmp_path, {"x.yaml": text})
    problem = only_problem(tmp_path)
    assert problem.field == "paths.text" and "is a secret" in problem.reason


def test_every_path_rule_problem_is_reported_with_the_field_problems(tmp_path: Path) -> None:
    text = VALID + "timeout_s: -1\npaths: {nope: {roots: [rel]}, text: {roots: ['{tool_dir}']}}\n"
    write_tree(tmp_path, {"x.yaml": text})
    fields = {p.field for p in problems_of(tmp_path)}
    assert fields == {"timeout_s", "paths.nope.roots", "paths.nope"}, fields


def test_path_rules_load_with_their_defaults(tmp_path: Path) -> None:
    extra = "paths: {text: {roots: [/srv/data, '{tool_dir}/samples', '{tool_dir}']}}\n"
    write_tree(tmp_path, {"x.yaml": VALID + extra})
    rule = load_catalogue(tmp_path)["t.echo"].manifest.paths["text"]
    assert rule.roots == ["/srv/data", "{tool_dir}/samples", "{tool_dir}"] and rule.must_exist


@pytest.mark.parametrize(
    ("extra", "field", "line"),
    [
        ("secrets: {token: {env: T}}\n", "secrets", VALID_LINES + 1),
        ("retry: {max_attempts: 2}\n", "retry", VALID_LINES + 1),
    ],
)
def test_cross_field_problem_names_its_field_and_line(
    tmp_path: Path, extra: str, field: str, line: int
) -> None:
    write_tree(tmp_path, {"x.yaml": VALID + extra})
    problem = only_problem(tmp_path)
    assert (problem.field.split(".")[0], problem.line) == (field, line)


def test_every_cross_field_problem_of_one_file_is_reported(tmp_path: Path) -> None:
    text = (
        VALID.replace('"{text}"', '"{nope}"')
        + "secrets: {token: {env: T}}\nretry: {max_attempts: 2}\n"
    )
    write_tree(tmp_path, {"x.yaml": text})
    reasons = " | ".join(p.reason for p in problems_of(tmp_path))
    assert "{nope}" in reasons
    assert "'token'" in reasons
    assert "idempotent" in reasons


def test_properties_that_is_not_a_mapping_is_reported_not_raised(tmp_path: Path) -> None:
    text = "id: t.x\nversion: 1\nentrypoint: [echo, '{n}']\nparameters: {type: object, properties: 5}\n"
    write_tree(tmp_path, {"x.yaml": text})
    problems = problems_of(tmp_path)
    assert any(p.field == "parameters.properties" and "mapping" in p.reason for p in problems)


def test_field_problems_of_one_file_are_all_reported(tmp_path: Path) -> None:
    text = VALID + "bogus: 1\ntimeout_s: -1\nworking_dir_policy: fixed:rel\n"
    write_tree(tmp_path, {"x.yaml": text})
    fields = {p.field for p in problems_of(tmp_path)}
    assert fields == {"bogus", "timeout_s", "working_dir_policy"}


def test_problems_across_files_are_all_reported_at_once(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "a_ok.yaml": VALID,
            "b_syntax.yaml": "id: [\n",
            "c_unknown.yaml": VALID.replace("t.echo", "t.c") + "colour: red\n",
            "d_secret.yaml": VALID.replace("t.echo", "t.d") + "secrets: {nope: {env: T}}\n",
            "e_schema.yaml": VALID.replace("t.echo", "t.e").replace("string", "strang"),
            "f_dup.yaml": VALID,
        },
    )
    problems = problems_of(tmp_path)
    by_file = {p.file: p for p in problems}
    assert sorted(by_file) == [
        "tools/b_syntax.yaml",
        "tools/c_unknown.yaml",
        "tools/d_secret.yaml",
        "tools/e_schema.yaml",
        "tools/f_dup.yaml",
    ]
    assert by_file["tools/b_syntax.yaml"].reason.startswith("YAML syntax")
    assert by_file["tools/c_unknown.yaml"].field == "colour"
    assert "'nope'" in by_file["tools/d_secret.yaml"].reason
    assert by_file["tools/e_schema.yaml"].field.startswith("parameters")
    assert by_file["tools/f_dup.yaml"].field == "id"


def test_duplicate_id_across_files_names_both_files(tmp_path: Path) -> None:
    write_tree(tmp_path, {"one/a.yaml": VALID, "two/b.yaml": VALID})
    problem = only_problem(tmp_path)
    assert problem.file == "tools/two/b.yaml"
    assert problem.field == "id"
    assert "t.echo" in problem.reason
    assert "tools/one/a.yaml" in problem.reason


def test_catalogue_error_message_lists_every_problem(tmp_path: Path) -> None:
    write_tree(tmp_path, {"a.yaml": VALID + "x: 1\n", "b.yaml": VALID + "y: 1\n"})
    with pytest.raises(CatalogueError) as info:
        load_catalogue(tmp_path)
    message = str(info.value)
    assert f"tools/a.yaml:{VALID_LINES + 1}: x:" in message
    assert f"tools/b.yaml:{VALID_LINES + 1}: y:" in message


def test_load_file_returns_problems_instead_of_raising(tmp_path: Path) -> None:
    write_tree(tmp_path, {"x.yaml": VALID + "timeout_s: -5\n"})
    tool, problems = load_file(tmp_path / "tools" / "x.yaml", tmp_path)
    assert tool is None
    assert [p.field for p in problems] == ["timeout_s"]


@pytest.mark.parametrize("ssot", ["ssot", "tests/ssot"])
def test_repo_catalogue_loads_cleanly(ssot: str) -> None:
    tools = load_catalogue(ROOT / ssot)
    assert tools
    for tool_id, tool in tools.items():
        assert tool.id == tool_id
        assert tool.path.is_file()


def test_repo_and_test_catalogues_share_no_ids(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "ssot" / "tools", tmp_path / "tools" / "real")
    shutil.copytree(ROOT / "tests" / "ssot" / "tools", tmp_path / "tools" / "test")
    combined = load_catalogue(tmp_path)
    assert len(combined) == len(load_catalogue(ROOT / "ssot")) + len(
        load_catalogue(ROOT / "tests" / "ssot")
    )
