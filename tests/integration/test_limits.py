"""Per-job resource limits (manifest ``limits``): a job that goes past one is stopped and
ends ``failed`` with ``limit_exceeded`` naming it, its peak usage in ``rusage``, while the
executor and the other jobs go on; the limits hold while no executor runs; and where no
cgroup can be had, rlimits still bound each process.

``test.limits`` has memory_mb 64, pids 16, cpu_s 1 and open_files 32; ``test.bigfile``
file_size_mb 2 (tests/ssot/tools/test).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from contracts.events import Terminal
from services.executor import cgroups
from services.runtime.natsserver import NatsServer
from tests.support import (
    Domed,
    ServiceProcess,
    fresh_dir,
    log_lines,
    pid_alive,
    processes_with_env,
    terminal_of,
    wait_until,
)

MIB = 1024 * 1024


def cgroup_mode() -> str:
    """The cgroup mode this machine offers the executor, or skip saying why."""
    try:
        hierarchy, reasons = cgroups.find("auto")
    except cgroups.CgroupError as exc:  # pragma: no cover - auto never raises
        pytest.skip(str(exc))
    if hierarchy is None:
        pytest.skip(f"no usable cgroup on this machine ({'; '.join(reasons)})")
    return hierarchy.mode


@contextlib.asynccontextmanager
async def limited_by(tmp: Path, ssot: Path, mode: str) -> AsyncIterator[Domed]:
    """domed on a server of its own, its executor enforcing limits by ``mode``."""
    server = NatsServer(store_dir=tmp / "nats").start()
    try:
        async with Domed.running(server.url, ssot, tmp / "data", services=()) as d:
            for name in ("router", "projector"):
                await d.start_service(name)
            await d.start_service("executor", limits=mode)
            yield d
    finally:
        server.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def confined(tmp_path_factory: pytest.TempPathFactory, ssot: Path) -> AsyncIterator[Domed]:
    """domed whose executor puts every job in a cgroup (v2 where delegated, else v1)."""
    mode = cgroup_mode()
    async with limited_by(tmp_path_factory.mktemp("limits-cgroup"), ssot, mode) as d:
        yield d


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def rlimited(tmp_path_factory: pytest.TempPathFactory, ssot: Path) -> AsyncIterator[Domed]:
    """domed whose executor has no cgroup: per-process rlimits only."""
    async with limited_by(tmp_path_factory.mktemp("limits-rlimit"), ssot, "rlimit") as d:
        yield d


async def running_beside(d: Domed) -> str:
    """A job that runs until it is asked to stop, once it has started."""
    job_id = await d.submit("test.graceful", {})
    await d.until_kind(job_id, "log")
    return job_id


async def still_healthy(d: Domed, job_id: str) -> None:
    """The job beside a limited one ran on: asked to stop, it stops cleanly."""
    await d.request("domed.jobs.cancel", {"job_id": job_id})
    events = await d.events(job_id)
    assert log_lines(events) == ["running", "got INT, stopping cleanly"]
    assert terminal_of(events).exit_code == 0


def stopped_for(term: Terminal, limit: str) -> None:
    assert term.state == "failed", term
    assert term.error is not None and term.error.code == "limit_exceeded", term
    assert term.error.limit == limit, term


async def test_a_memory_hog_is_stopped_at_its_limit_and_others_run_on(confined: Domed) -> None:
    beside = await running_beside(confined)
    _, events = await confined.run("test.limits", {"mode": "memory", "amount": 400})
    term = terminal_of(events)
    stopped_for(term, "memory")
    assert "64 MiB" in term.error.message  # type: ignore[union-attr]
    assert term.rusage is not None and term.rusage.memory_peak_kb is not None
    assert 32 * 1024 < term.rusage.memory_peak_kb <= 64 * 1024, term.rusage
    held = [int(line.split()[1]) for line in log_lines(events, "stdout")]
    assert held and max(held) < 64, held  # it never held what it asked for
    await still_healthy(confined, beside)


async def test_a_job_under_its_memory_limit_runs_to_its_end(confined: Domed) -> None:
    _, events = await confined.run("test.limits", {"mode": "memory", "amount": 16})
    term = terminal_of(events)
    assert term.state == "succeeded" and term.error is None, term
    assert log_lines(events, "stdout")[-1] == "holding 16 MiB"
    assert term.rusage is not None and term.rusage.memory_peak_kb is not None
    assert term.rusage.memory_peak_kb >= 16 * 1024


async def test_a_fork_bomb_is_stopped_at_its_pids_limit(confined: Domed) -> None:
    beside = await running_beside(confined)
    job_id, events = await confined.run(
        "test.limits", {"mode": "pids", "amount": 400, "hold": True}
    )
    term = terminal_of(events)
    stopped_for(term, "pids")
    assert "16 processes" in term.error.message  # type: ignore[union-attr]
    assert processes_with_env(f"DOMED_JOB_ID={job_id}") == []  # the whole tree is gone
    await still_healthy(confined, beside)


async def test_a_cpu_spinner_is_stopped_once_its_tree_used_its_cpu_seconds(
    confined: Domed,
) -> None:
    # two spinning processes: neither alone reaches cpu_s before the tree does
    beside = await running_beside(confined)
    _, events = await confined.run("test.limits", {"mode": "cpu", "amount": 2, "hold": True})
    term = terminal_of(events)
    stopped_for(term, "cpu")
    assert term.rusage is not None and term.rusage.user_s + term.rusage.sys_s >= 1.0
    assert term.signals_sent == ["TERM", "KILL"] or term.signal == "XCPU", term
    await still_healthy(confined, beside)


async def test_open_files_are_bounded_per_process(confined: Domed) -> None:
    _, events = await confined.run("test.limits", {"mode": "files", "amount": 100})
    term = terminal_of(events)
    assert term.state == "failed" and term.exit_code == 3, term
    [line] = log_lines(events, "stdout")
    opened = int(line.split()[2].rstrip(":"))
    assert 20 <= opened < 32, line  # 32 descriptors, a few already open
    assert "Too many open files" in line


async def test_a_file_past_its_size_limit_stops_the_job(confined: Domed) -> None:
    _, events = await confined.run("test.bigfile", {"mb": 8})
    term = terminal_of(events)
    stopped_for(term, "file_size")
    assert term.signal == "XFSZ", term


async def test_the_executor_is_healthy_after_every_limit(confined: Domed) -> None:
    for tool, params in (
        ("test.limits", {"mode": "memory", "amount": 400}),
        ("test.limits", {"mode": "pids", "amount": 400, "hold": True}),
    ):
        await confined.submit(tool, params)
    _, events = await confined.run("demo.echo", {"text": "still here"})
    assert terminal_of(events).state == "succeeded"
    assert log_lines(events) == ["still here"]


def cgroup_dir(events: list[Any]) -> Path:
    """The dir of the cgroup a ``test.limits`` job ran in (v1: its memory one)."""
    [line] = [x for x in log_lines(events, "stderr") if x.startswith("cgroup ")]
    return memory_cgroup(line.removeprefix("cgroup "))


def memory_cgroup(path: str) -> Path:
    """The dir of cgroup ``path`` (as /proc/<pid>/cgroup names it) in the memory hierarchy."""
    mount2, mounts1 = cgroups.parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    mount = mounts1.get("memory", mount2)
    assert mount is not None
    return Path(mount) / path.lstrip("/")


async def test_a_job_cgroup_whose_job_hit_a_limit_is_removed(confined: Domed) -> None:
    _, events = await confined.run("test.limits", {"mode": "pids", "amount": 400, "hold": True})
    stopped_for(terminal_of(events), "pids")
    place = cgroup_dir(events)
    assert place.name.startswith(cgroups.PREFIX), place
    await wait_until(lambda: not place.exists(), 10, "the job's cgroup removed")


async def test_a_reused_job_cgroup_counts_only_its_own_job(confined: Domed) -> None:
    """A cgroup whose job ended within its limits serves the next job (cgroup v1): what
    the last job used is not counted again."""
    _, big = await confined.run("test.limits", {"mode": "memory", "amount": 40})
    _, small = await confined.run("test.limits", {"mode": "memory", "amount": 1})
    if cgroup_mode() == "cgroup1":
        assert cgroup_dir(small) == cgroup_dir(big)
    peaks = [terminal_of(events).rusage for events in (big, small)]
    assert peaks[0] is not None and peaks[0].memory_peak_kb is not None
    assert peaks[1] is not None and peaks[1].memory_peak_kb is not None
    assert peaks[0].memory_peak_kb >= 40 * 1024, peaks
    assert peaks[1].memory_peak_kb < 32 * 1024, peaks  # its own: about 10 MiB of Python
    assert terminal_of(small).state == "succeeded"


async def test_job_cgroups_kept_for_reuse_are_few_and_empty(confined: Domed) -> None:
    jobs = [
        await confined.submit("test.limits", {"mode": "memory", "amount": 1}) for _ in range(12)
    ]
    places = {cgroup_dir(await confined.events(job_id)) for job_id in jobs}
    assert len(places) <= 8, places  # at most one a slot
    for place in places:
        if place.exists():
            assert not (place / "cgroup.procs").read_text().split(), place


# Without a cgroup: rlimits bound each process; only limits that end a process by a
# signal (CPU, file size) are told apart from a failure.


async def test_without_a_cgroup_a_cpu_spinner_ends_by_its_rlimit(rlimited: Domed) -> None:
    _, events = await rlimited.run("test.limits", {"mode": "cpu", "amount": 1, "hold": True})
    term = terminal_of(events)
    stopped_for(term, "cpu")
    assert term.signal in ("XCPU", "KILL"), term


async def test_without_a_cgroup_memory_is_bounded_per_process(rlimited: Domed) -> None:
    _, events = await rlimited.run("test.limits", {"mode": "memory", "amount": 400})
    term = terminal_of(events)
    assert term.state == "failed", term
    assert any("MemoryError" in line for line in log_lines(events, "stderr"))
    held = [int(line.split()[1]) for line in log_lines(events, "stdout")]
    assert max(held, default=0) < 64, held


async def test_without_a_cgroup_the_file_size_limit_holds(rlimited: Domed) -> None:
    _, events = await rlimited.run("test.bigfile", {"mb": 8})
    stopped_for(terminal_of(events), "file_size")


async def test_a_limited_job_stays_bounded_while_its_executor_is_down(
    fresh_server: NatsServer, ssot: Path, tmp_path: Path
) -> None:
    mode = cgroup_mode()
    async with Domed.running(
        fresh_server.url, ssot, tmp_path / "data", services=("router", "projector")
    ) as d:
        executor = ServiceProcess(
            "executor", d.url, d.ssot, tmp_path / "x", "--limits", mode
        ).start()
        try:
            await executor.wait_ready()
            job_id = await d.submit("test.limits", {"mode": "memory", "amount": 16, "hold": True})
            await d.events(job_id, stop_at="log")
            [pid] = processes_with_env(f"DOMED_JOB_ID={job_id}")
            path2, paths1 = cgroups.parse_proc_cgroup(Path(f"/proc/{pid}/cgroup").read_text())
            place = memory_cgroup(paths1.get("memory") or path2 or "")
            # a job that ended meanwhile: its cgroup (v1) waits idle for the next job
            _, beside = await d.run("test.limits", {"mode": "memory", "amount": 1})
            idle = cgroup_dir(beside)
            assert idle.exists() == (mode == "cgroup1"), idle
            executor.kill()
            # the kernel, not the executor, holds the limit
            assert pid_alive(pid)
            assert limit_of(pid) == 64 * MIB
        finally:
            executor.kill()
        again = ServiceProcess("executor", d.url, d.ssot, tmp_path / "x", "--limits", mode)
        again.start()
        try:
            await again.wait_ready()
            assert not pid_alive(pid)  # reaped at start, with its cgroup
            assert not place.exists(), place
            assert not idle.exists(), idle  # a dead executor's idle cgroups go too
        finally:
            again.signal(signal.SIGTERM)
            again.wait()


def limit_of(pid: int) -> int:
    """The memory limit of the cgroup ``pid`` is in (v1 or v2)."""
    mount2, mounts1 = cgroups.parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    path2, paths1 = cgroups.parse_proc_cgroup(Path(f"/proc/{pid}/cgroup").read_text())
    if "memory" in mounts1:
        cg = Path(mounts1["memory"]) / paths1["memory"].lstrip("/")
        return int((cg / "memory.limit_in_bytes").read_text())
    assert mount2 is not None and path2 is not None
    return int((Path(mount2) / path2.lstrip("/") / "memory.max").read_text())


async def test_a_shipped_tool_runs_under_the_default_limits(confined: Domed, srv: Path) -> None:
    """python.pytest sets no limits of its own: a suite that takes 3 GiB is stopped at the
    default 2048 MiB, and the executor goes on."""
    suite = fresh_dir(srv / "suites")
    (suite / "test_hog.py").write_text(
        "def test_hog():\n    held = b'x' * (3 * 1024**3)\n    assert held\n"
    )
    _, events = await confined.run("python.pytest", {"path": str(suite)}, timeout=120)
    term = terminal_of(events)
    stopped_for(term, "memory")
    assert "2048 MiB" in term.error.message  # type: ignore[union-attr]
    _, after = await confined.run("demo.echo", {"text": "fine"})
    assert log_lines(after) == ["fine"]
