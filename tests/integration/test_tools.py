"""Every real tool in ssot/tools, run through the whole pipeline."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

from contracts import subjects
from contracts.events import Progress
from tests.support import Domed, fresh_dir, log_lines, terminal_of


async def test_python_script_gets_its_arguments_verbatim(domed: Domed) -> None:
    args = ["plain", "two words", "$(id)", "--flag"]
    _, events = await domed.run("python.script", {"script": "argv.py", "args": args})
    assert terminal_of(events).state == "succeeded"
    assert [json.loads(line) for line in log_lines(events)] == args
    _, events = await domed.run("python.script", {"script": "wordcount.py", "args": ["a b", "c"]})
    assert log_lines(events) == ["3"]


async def test_python_script_cannot_escape_its_scripts_dir(domed: Domed) -> None:
    r = await domed.request(
        "domed.jobs.submit", {"tool": "python.script", "params": {"script": "../run_script.py"}}
    )
    assert r.error["code"] == "invalid_params"
    _, events = await domed.run("python.script", {"script": "missing.py"})
    term = terminal_of(events)
    assert term.state == "failed" and term.exit_code == 2
    assert log_lines(events, "stderr") == ["no such script: missing.py"]


def _tree(root: Path) -> dict[str, bytes]:
    files = {"a.txt": b"alpha\n", "sub/b.bin": bytes(range(256)), "sub/deeper/c.txt": b"c" * 10_000}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


async def test_checksum_lists_every_file_with_progress(domed: Domed, srv: Path) -> None:
    data = fresh_dir(srv / "files")
    files = _tree(data)
    _, events = await domed.run("files.checksum", {"root": str(data)})
    assert terminal_of(events).state == "succeeded"
    digests = [line for line in log_lines(events) if not line.startswith("#")]
    assert digests == [f"{hashlib.sha256(files[r]).hexdigest()}  {r}" for r in sorted(files)]
    progress = [e.event for e in events if isinstance(e.event, Progress)]
    assert progress[-1].current == 3 and progress[-1].total == 3
    term = terminal_of(events)
    sums = "".join(f"{line}\n" for line in digests).encode()
    assert term.result == {
        "root": str(data.resolve()),
        "count": 3,
        "sha256sums": hashlib.sha256(sums).hexdigest(),
        "files": {r: hashlib.sha256(files[r]).hexdigest() for r in files},
    }
    [artifact] = term.artifacts or []
    assert (artifact.name, artifact.sha256) == ("SHA256SUMS", hashlib.sha256(sums).hexdigest())


async def test_archive_writes_a_tarball_of_the_directory(domed: Domed, srv: Path) -> None:
    data = fresh_dir(srv / "files")
    files = _tree(data)
    out = fresh_dir(srv / "archives") / "out.tar.gz"
    _, events = await domed.run("files.archive", {"source": str(data), "output": str(out)})
    assert terminal_of(events).state == "succeeded"
    with tarfile.open(out) as tar:
        names = sorted(m.name for m in tar.getmembers())
        assert names == sorted(f"{data.name}/{r}" for r in files)
        member = tar.extractfile(f"{data.name}/sub/b.bin")
        assert member is not None and member.read() == files["sub/b.bin"]
    assert log_lines(events)[-1] == f"archived 3 files to {out}"
    tarball = out.read_bytes()
    assert terminal_of(events).result == {
        "output": str(out),
        "size": len(tarball),
        "sha256": hashlib.sha256(tarball).hexdigest(),
        "files": 3,
    }


async def test_pytest_tool_reports_progress_per_test_and_fails_on_a_failure(
    domed: Domed, srv: Path
) -> None:
    suite = fresh_dir(srv / "suites")
    (suite / "test_sample.py").write_text(
        "def test_one():\n    assert 1\n\ndef test_two():\n    assert 2\n\ndef test_three():\n    assert 0, 'boom'\n"
    )
    job_id, events = await domed.run("python.pytest", {"path": str(suite)}, timeout=120)
    term = terminal_of(events)
    assert term.state == "failed" and term.exit_code == 1
    progress = [e.event for e in events if isinstance(e.event, Progress)]
    assert progress[-1].current == 3 and progress[-1].total == 3
    assert "test_three failed" in (progress[-1].message or "")
    assert any("1 failed, 2 passed" in line for line in log_lines(events))
    assert term.result == {
        "passed": 2,
        "failed": 1,
        "errors": 0,
        "skipped": 0,
        "exit_code": 1,
        "failing": ["test_sample.py::test_three"],
    }
    [junit] = term.artifacts or []
    bucket = await domed.nc.jetstream().object_store(subjects.OBJ_ARTIFACTS)
    report = (await bucket.get(junit.object)).data or b""
    assert junit.name == "junit.xml" and b'failures="1"' in report
    assert hashlib.sha256(report).hexdigest() == junit.sha256
