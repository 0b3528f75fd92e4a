"""services.executor.records: a private runtime dir for records, and reaping by record."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from services.executor import records


def test_records_live_in_a_private_runtime_dir_keyed_by_the_data_dir(tmp_path: Path) -> None:
    env = {"XDG_RUNTIME_DIR": str(tmp_path / "run")}
    one = records.records_dir(tmp_path / "a", env)
    two = records.records_dir(tmp_path / "b", env)
    assert (
        one != two and one.is_relative_to(tmp_path / "run") and two.is_relative_to(tmp_path / "run")
    )
    assert records.records_dir(tmp_path / "a", env) == one
    for path in (one, one.parent):
        assert path.stat().st_mode & 0o777 == 0o700


def test_a_runtime_dir_open_to_others_or_a_symlink_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    assert not records.private_dir(shared)
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(target)
    assert not records.private_dir(link)
    assert records.private_dir(target)


def test_an_unusable_runtime_dir_falls_back_to_the_data_dir(tmp_path: Path) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir()
    data = tmp_path / "data"
    name = records.runtime_candidates(data, {"XDG_RUNTIME_DIR": str(runtime)})[0].parent.name
    (runtime / name).mkdir(mode=0o755)
    (runtime / name).chmod(0o755)  # someone made it readable by others
    chosen = records.records_dir(data, {"XDG_RUNTIME_DIR": str(runtime)})
    assert not chosen.is_relative_to(runtime / name)


def test_reaping_kills_only_groups_that_carry_their_jobs_mark(tmp_path: Path) -> None:
    marked = subprocess.Popen(
        ["sleep", "60"], env={"PATH": os.environ["PATH"], "DOMED_JOB_ID": "J1"}, process_group=0
    )
    unmarked = subprocess.Popen(["sleep", "60"], process_group=0)
    try:
        dead_owner = subprocess.Popen(["true"])
        dead_owner.wait()
        for job_id, proc in (("J1", marked), ("J2", unmarked)):
            (tmp_path / job_id).write_text(
                f'{{"job_id": "{job_id}", "pid": {proc.pid}, "executor_pid": {dead_owner.pid}}}'
            )
        (tmp_path / "garbage").write_text("not json")
        assert records.reap_orphans(tmp_path) == ["J1"]
        assert marked.poll() == -signal.SIGKILL, "reaping returns once the group is dead"
        assert unmarked.poll() is None, "a reused pid without the job's mark is left alone"
        assert list(tmp_path.iterdir()) == []
    finally:
        for proc in (marked, unmarked):
            proc.kill()
            proc.wait()


def test_kept_terminals_are_private_whole_and_only_those(tmp_path: Path) -> None:
    running = records.records_dir(tmp_path / "data", {"XDG_RUNTIME_DIR": str(tmp_path / "run")})
    assert records.kept_terminals(running) == []
    path = records.keep_terminal(running, "01JOBA", b'{"kind":"terminal"}')
    (path.parent / ".01JOBB.partial").write_bytes(b'{"kin')  # a crash while writing
    assert records.kept_terminals(running) == [(path, b'{"kind":"terminal"}')]
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert list(running.iterdir()) == []  # not taken for a running job's record
