"""Parameters that name files stay inside their manifest's roots: the router refuses the
others with ``invalid_params``, and the executor looks again just before the spawn."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from contracts import subjects
from contracts.events import Terminal
from services.runtime.natsserver import NatsServer
from tests.support import Domed, fresh_dir, log_lines, terminal_of


async def refusal(domed: Domed, tool: str, params: dict[str, Any]) -> dict[str, Any]:
    """The error a submit of ``params`` gets, after checking that explain agrees."""
    reply = await domed.request(subjects.SUBMIT, {"tool": tool, "params": params})
    assert reply.error is not None, f"{tool} accepted {params}: {reply.data}"
    explained = await domed.request(subjects.TOOLS_EXPLAIN, {"tool": tool, "params": params})
    assert explained.error == reply.error
    return reply.error


def outside_file(session_dir: Path) -> Path:
    """A file no shipped root contains, beside the session's projector database."""
    path = session_dir / "outside" / "secret.txt"
    path.parent.mkdir(exist_ok=True)
    path.write_text("not for jobs\n")
    return path


@pytest.fixture
def outside(session_dir: Path) -> Path:
    return outside_file(session_dir).parent


async def test_dotdot_out_of_a_root_is_refused_naming_the_parameter(
    domed: Domed, srv: Path, outside: Path
) -> None:
    escape = f"{srv}/files/../../{outside.name}"
    assert Path(escape).resolve() == outside.resolve()
    error = await refusal(domed, "files.checksum", {"root": escape})
    assert error["code"] == "invalid_params"
    assert "'root'" in error["message"] and "outside its roots" in error["message"]
    assert error["details"] == [{"path": "$.root", "message": error["details"][0]["message"]}]


@pytest.mark.parametrize("path", ["/", "/etc", "/proc/self"])
async def test_an_absolute_path_outside_the_roots_is_refused(domed: Domed, path: str) -> None:
    error = await refusal(domed, "files.checksum", {"root": path})
    assert error["code"] == "invalid_params" and "'root'" in error["message"]


async def test_a_symlink_inside_a_root_pointing_out_is_refused(
    domed: Domed, srv: Path, outside: Path
) -> None:
    link = fresh_dir(srv / "files") / "link"
    link.symlink_to(outside)
    error = await refusal(domed, "files.checksum", {"root": str(link)})
    assert error["code"] == "invalid_params" and "outside its roots" in error["message"]
    error = await refusal(domed, "files.checksum", {"root": f"{link}/."})
    assert error["code"] == "invalid_params"


async def test_a_path_that_must_exist_and_does_not_is_refused(domed: Domed, srv: Path) -> None:
    missing = fresh_dir(srv / "files") / "missing"
    output = fresh_dir(srv / "archives") / "out.tar.gz"
    error = await refusal(domed, "files.archive", {"source": str(missing), "output": str(output)})
    assert error["code"] == "invalid_params"
    assert error["message"] == "parameter 'source' does not exist"


async def test_a_missing_path_outside_the_roots_is_refused_as_outside_not_as_missing(
    domed: Domed, outside: Path
) -> None:
    """A refusal never says whether a file outside the roots exists."""
    for path in (outside, outside / "no-such-dir"):
        error = await refusal(domed, "files.checksum", {"root": str(path)})
        assert "outside its roots" in error["message"]


async def test_archive_output_outside_its_root_is_refused(
    domed: Domed, srv: Path, session_dir: Path, outside: Path
) -> None:
    source = fresh_dir(srv / "files")
    archives = fresh_dir(srv / "archives")
    dangling = archives / "dangling.tar.gz"
    dangling.symlink_to(outside / "planted.tar.gz")
    for output in (
        session_dir / "out.tar.gz",  # beside the projector's database
        source / "out.tar.gz",  # the source root is not the output root
        archives / ".." / ".." / "out.tar.gz",
        dangling,  # writing through it would create a file outside
    ):
        params = {"source": str(source), "output": str(output)}
        error = await refusal(domed, "files.archive", params)
        assert error["code"] == "invalid_params", output
        assert "'output'" in error["message"] and "outside its roots" in error["message"]
    params = {"source": str(source), "output": str(archives / "no-dir" / "out.tar.gz")}
    error = await refusal(domed, "files.archive", params)
    assert error["message"] == "parameter 'output' names a file in a directory that does not exist"
    assert not (outside / "planted.tar.gz").exists()


async def test_the_reported_attacks_are_refused(domed: Domed, srv: Path, session_dir: Path) -> None:
    """Archive the projector's database to a world-readable tarball, list any directory
    with hashes, run pytest on any directory: all refused by the shipped catalogue."""
    database = session_dir / "data"
    assert database.is_dir()
    archives = srv / "archives"
    for params in (
        {"source": str(database), "output": str(session_dir / "db.tar.gz")},
        {"source": f"{srv}/files/../../data", "output": f"{archives}/db.tar.gz"},
        {"source": str(srv / "files"), "output": f"{archives}/../../../stolen.tar.gz"},
    ):
        assert (await refusal(domed, "files.archive", params))["code"] == "invalid_params"
    for root in (str(database), "/", "/home", f"{srv}/files/../.."):
        assert (await refusal(domed, "files.checksum", {"root": root}))["code"] == "invalid_params"
    for path in (str(database), "/tmp", f"{srv}/suites/.."):
        assert (await refusal(domed, "python.pytest", {"path": path}))["code"] == "invalid_params"
    assert not (session_dir / "db.tar.gz").exists() and not (archives / "db.tar.gz").exists()


async def test_a_symlink_swapped_after_the_submit_is_caught_by_the_executor(
    fresh_server: NatsServer, ssot: Path, srv: Path, session_dir: Path, tmp_path: Path
) -> None:
    """The router saw the link point inside; by the spawn it points out: the job fails
    ``spawn_failed`` naming the parameter, and the tool never runs."""
    secret = outside_file(session_dir)
    inner = fresh_dir(srv / "files")
    (inner / "a.txt").write_text("fine\n")
    link = fresh_dir(srv / "files") / "link"
    link.symlink_to(inner)
    async with Domed.running(
        fresh_server.url, ssot, tmp_path / "data", services=("router", "projector")
    ) as d:
        job_id = await d.submit("files.checksum", {"root": str(link)})
        link.unlink()
        link.symlink_to(secret.parent)
        await d.start_service("executor")
        events = await d.events(job_id)
    term = terminal_of(events)
    assert term.state == "failed" and term.error is not None
    assert term.error.code == "spawn_failed"
    assert "parameter 'root' is outside its roots" in term.error.message
    assert [e.kind for e in events] == ["queued", "terminal"]  # never started


async def test_the_executor_gives_the_job_the_resolved_path(domed: Domed, srv: Path) -> None:
    """A link inside the root to another place inside it is followed once, when checked:
    the job gets the place, so changing the link later cannot redirect it."""
    inner = fresh_dir(srv / "suites")
    (inner / "test_where.py").write_text(
        "import os, sys\n\ndef test_where():\n    print('ARG', sys.argv[1])\n    assert 0\n"
    )
    link = fresh_dir(srv / "suites") / "link"
    link.symlink_to(inner)
    job_id, events = await domed.run("python.pytest", {"path": str(link)}, timeout=120)
    term = terminal_of(events)
    assert isinstance(term, Terminal) and term.state == "failed"  # the test asserts 0
    lines = log_lines(events)
    assert any(line.endswith(f"ARG {os.path.realpath(inner)}") for line in lines), lines
