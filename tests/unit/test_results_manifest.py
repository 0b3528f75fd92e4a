"""What a manifest may say about a job's result and artifacts, checked at load; and how
an artifact glob matches paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.catalogue.loader import load_file
from services.executor.workfiles import glob_regex

BASE = """\
id: t.leaves
version: 1
entrypoint: ["true"]
"""


def problems(tmp_path: Path, extra: str) -> list[tuple[str, str]]:
    path = tmp_path / "tools" / "t.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(BASE + extra)
    tool, found = load_file(path, tmp_path)
    assert (tool is None) == bool(found)
    return [(p.field, p.reason) for p in found]


@pytest.mark.parametrize("glob", ["../x", "out/../../x", "/etc/*", ""])
def test_an_artifact_glob_that_could_leave_the_working_dir_is_refused(
    tmp_path: Path, glob: str
) -> None:
    [(field, message)] = problems(tmp_path, f'artifacts: ["{glob}"]\n')
    assert field == "artifacts" and "could leave the working dir" in message


def test_artifacts_need_a_working_dir_of_the_jobs_own(tmp_path: Path) -> None:
    [(field, message)] = problems(tmp_path, 'artifacts: ["*.xml"]\nworking_dir_policy: tool_dir\n')
    assert field == "artifacts" and "working_dir_policy: temp" in message


def test_a_result_schema_must_be_a_json_schema(tmp_path: Path) -> None:
    [(field, message)] = problems(tmp_path, "result_schema: {type: 12}\n")
    assert field.startswith("result_schema") and "not a valid JSON Schema" in message


def test_a_valid_result_schema_and_artifacts_load(tmp_path: Path) -> None:
    assert problems(tmp_path, 'result_schema: {type: object}\nartifacts: ["out/**"]\n') == []


@pytest.mark.parametrize(
    ("glob", "path", "matches"),
    [
        ("*.txt", "a.txt", True),
        ("*.txt", "sub/a.txt", False),
        ("out/**", "out/a/b/c.bin", True),
        ("out/**", "outer/a", False),
        ("**/*.xml", "report.xml", True),
        ("**/*.xml", "a/b/report.xml", True),
        ("report-?.json", "report-1.json", True),
        ("report-?.json", "report-10.json", False),
        ("a.b", "axb", False),
    ],
)
def test_artifact_globs(glob: str, path: str, matches: bool) -> None:
    assert bool(glob_regex(glob).match(path)) is matches


def test_retrying_lost_jobs_needs_an_idempotent_tool(tmp_path: Path) -> None:
    [(field, message)] = problems(tmp_path, "retry: {when: [failed, lost]}\n")
    assert field == "retry.when" and "idempotent" in message
    [(field, _)] = problems(tmp_path, "retry: {max_attempts: 2}\n")  # `when` defaults to lost
    assert field == "retry"
    assert problems(tmp_path, "retry: {when: [failed, timed_out]}\n") == []
    assert problems(tmp_path, "idempotent: true\nretry: {when: [lost, failed]}\n") == []


def test_a_stop_signal_is_one_of_the_few_a_tool_may_ask_for(tmp_path: Path) -> None:
    [(field, _)] = problems(tmp_path, "stop_signal: KILL\n")
    assert field == "stop_signal"
    assert problems(tmp_path, "stop_signal: INT\nqueue_timeout_s: 30\n") == []
