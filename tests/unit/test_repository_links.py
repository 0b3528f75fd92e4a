"""The repository stands on its own: no tracked file refers to a file outside it, every
relative link in the docs leads to a file that exists, and the README stays short and
names the test command CI runs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Documents that live outside the repository and that users never see.
OUTSIDE = re.compile(r"\.\./shared|\b(?:SPEC|RELIABILITY|PERFORMANCE)\.md\b")
# A markdown link or image: [text](target) ; the target up to a space or ")".
MD_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def tracked_text_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    files = []
    for name in listed:
        path = ROOT / name.decode()
        if not name or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary
        files.append(path)
    return files


def test_git_lists_the_repository() -> None:
    files = tracked_text_files()
    assert ROOT / "README.md" in files and len(files) > 50


def test_no_tracked_file_names_a_document_outside_the_repository() -> None:
    offenders = []
    for path in tracked_text_files():
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert not offenders, "references to files outside the repository:\n" + "\n".join(offenders)


HISTORY = re.compile(r"\bstop \d+\b", re.IGNORECASE)


def test_no_change_history_outside_the_benchmark_history() -> None:
    """Comments and docs say why a thing is so, with its figure, not which round of work
    changed it: that history is in git and in docs/benchmarks-history.md."""
    offenders = []
    for path in tracked_text_files():
        if path == ROOT / "docs" / "benchmarks-history.md":
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if HISTORY.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert not offenders, "change history in the code or docs:\n" + "\n".join(offenders)


def _relative_targets(path: Path) -> list[str]:
    targets = []
    in_code = False
    for line in path.read_text(errors="replace").splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
            continue
        if in_code:
            continue
        for target in MD_LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # a URL, or an anchor on the same page
            targets.append(target.split("#", 1)[0])
    return targets


def test_markdown_links_stay_inside_the_repository_and_lead_somewhere() -> None:
    outside, broken = [], []
    for path in tracked_text_files():
        if path.suffix != ".md":
            continue
        for target in _relative_targets(path):
            resolved = (ROOT / target.lstrip("/")) if target.startswith("/") else None
            resolved = resolved or (path.parent / target)
            resolved = resolved.resolve()
            where = f"{path.relative_to(ROOT)} -> {target}"
            if not resolved.is_relative_to(ROOT):
                outside.append(where)
            elif not resolved.exists():
                broken.append(where)
    assert not outside, f"links that leave the repository: {outside}"
    assert not broken, f"links to files that do not exist: {broken}"


@pytest.mark.parametrize(
    ("text", "leaves"),
    [
        ("see [the notes](../elsewhere/notes.md)", True),
        ("see [ops](docs/../../etc/passwd)", True),
        ("see [api](reference/api.md#errors)", False),
        ("see [site](https://nats.io/)", False),
    ],
)
def test_the_link_check_sees_what_leaves(tmp_path: Path, text: str, leaves: bool) -> None:
    page = ROOT / "README.md"
    fake = tmp_path / "page.md"
    fake.write_text(text + "\n")
    targets = _relative_targets(fake)
    resolved = [(page.parent / t).resolve() for t in targets]
    assert any(not r.is_relative_to(ROOT) for r in resolved) == leaves


def test_readme_is_short_and_names_the_ci_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 120
    ci = (ROOT / ".ci" / "run").read_text()
    assert "just test" in ci
    assert "just test" in readme
