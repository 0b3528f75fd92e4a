"""Executors as real processes: shared concurrency limits, SIGKILL, SIGTERM."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from contracts.events import Retry, Started
from services.runtime.natsserver import NatsServer
from tests.support import (
    Domed,
    ServiceProcess,
    log_lines,
    pid_alive,
    processes_with_env,
    terminal_of,
    wait_until,
)


@pytest.fixture
async def router_projector(fresh_server: NatsServer, ssot: Path, tmp_path: Path):
    async with Domed.running(
        fresh_server.url, ssot, tmp_path / "data", services=("router", "projector"), ack_wait_s=2
    ) as d:
        yield d


def executor(d: Domed, data_dir: Path, *extra: str) -> ServiceProcess:
    return ServiceProcess("executor", d.url, d.ssot, data_dir, "--ack-wait", "2", *extra)


async def running_on_own_executor(
    d: Domed, data_dir: Path, tool: str, params: dict[str, Any]
) -> tuple[ServiceProcess, str, Started]:
    """Start an executor of the test's own, submit a job, and wait until it has started
    there: the executor (to kill or pause), the job id and its ``started`` event."""
    proc = executor(d, data_dir).start()
    await proc.wait_ready()
    job_id = await d.submit(tool, params)
    started = (await d.until_kind(job_id, "started"))[-1].event
    assert isinstance(started, Started)
    return proc, job_id, started


async def gated_job_whose_executor_died(
    d: Domed, tmp_path: Path, tool: str
) -> tuple[str, Path, Path, ServiceProcess]:
    """A job of a gated counter tool (``test.counter_*``) whose attempt 1 is held at its
    gate when its executor is SIGKILLed, and a second executor started: the job id, the
    counter file, the gate (FIFOs ``<gate>.1`` and ``<gate>.2``) and that executor."""
    counter = tmp_path / "count"
    gate = tmp_path / "gate"
    for run in (1, 2):
        os.mkfifo(f"{gate}.{run}")
    first, job_id, _ = await running_on_own_executor(
        d, tmp_path / "x", tool, {"file": str(counter), "gate": str(gate)}
    )
    await d.until_kind(job_id, "log")  # "run 1": the tool runs (its `started` came first)
    first.kill()  # attempt 1 is held at its gate, so it cannot have finished
    return job_id, counter, gate, executor(d, tmp_path / "y").start()


def kill_job_processes(job_id: str) -> None:
    for pid in processes_with_env(f"DOMED_JOB_ID={job_id}"):
        os.kill(pid, signal.SIGKILL)


async def test_concurrency_limit_holds_across_two_executors(
    router_projector: Domed, tmp_path: Path
) -> None:
    d = router_projector
    a = executor(d, tmp_path / "a", "--name", "exec-a").start()
    b = executor(d, tmp_path / "b", "--name", "exec-b").start()
    try:
        await a.wait_ready()
        await b.wait_ready()
        jobs = [await d.submit("test.limited", {"seconds": 0.3}) for _ in range(6)]
        spans = []
        for job_id in jobs:
            events = await d.events(job_id, timeout=60)
            start = next(e for e in events if isinstance(e.event, Started))
            assert terminal_of(events).state == "succeeded"
            spans.append((start.seq, events[-1].seq))
        spans.sort()
        for (_s1, e1), (s2, _) in zip(spans, spans[1:], strict=False):
            assert s2 > e1, f"two limited jobs overlapped: {spans}"
    finally:
        a.kill()
        b.kill()


async def test_a_job_longer_than_ack_wait_keeps_its_delivery_and_publishes_unchecked(
    router_projector: Domed, tmp_path: Path
) -> None:
    """The heartbeat's in-progress acks are answered, so the hold on the delivery keeps
    up (ownership.py): a job that prints only after ack_wait is neither handed to
    another executor nor made to publish checked."""
    d = router_projector
    proc, job_id, _ = await running_on_own_executor(
        d, tmp_path / "x", "test.late", {"quiet": 2.6, "seconds": 0}
    )
    try:
        events = await d.events(job_id)
        assert terminal_of(events).state == "succeeded"
        assert [e.kind for e in events] == ["queued", "started", "log", "terminal"]
        assert log_lines(events) == ["late"]
        assert "ran short" not in proc.log.read_text()
    finally:
        proc.kill()


async def test_executor_sigkill_ends_the_job_lost_and_reaps_its_orphans(
    router_projector: Domed, tmp_path: Path
) -> None:
    d = router_projector
    counter = tmp_path / "count"
    first, job_id, started = await running_on_own_executor(
        d, tmp_path / "x", "test.counter", {"file": str(counter), "seconds": 60}
    )
    pid = started.pid
    await d.until_kind(job_id, "log")  # "run 1": the tool runs (its `started` came first)
    assert pid_alive(pid)
    first.kill()
    assert pid_alive(pid), "the job outlives a SIGKILLed executor until someone reaps it"
    (work_dir,) = Path(tempfile.gettempdir()).glob(f"domed-{job_id}-*")
    second = executor(d, tmp_path / "x").start()  # same host, same data dir: it reaps the orphan
    try:
        await second.wait_ready()
        assert not pid_alive(pid) and processes_with_env(f"DOMED_JOB_ID={job_id}") == []
        assert not work_dir.exists(), "the orphaned job's working dir was left behind"
        events = await d.events(job_id, timeout=30)
        term = terminal_of(events)
        assert (
            term.state == "lost" and term.error is not None and term.error.code == "executor_lost"
        )
        assert counter.read_text() == "1"
        assert (await d.projected(job_id))["state"] == "lost"
    finally:
        second.kill()


@pytest.mark.parametrize(
    "tool",
    [
        "test.counter_idempotent",
        "test.counter_slow_retry",  # its backoff outlasts ack_wait: the delivery is kept meanwhile
    ],
)
async def test_idempotent_tool_is_retried_after_its_executor_vanished(
    router_projector: Domed, tmp_path: Path, tool: str
) -> None:
    d = router_projector
    job_id, counter, gate, second = await gated_job_whose_executor_died(d, tmp_path, tool)
    try:
        await open_gate(f"{gate}.2")  # once attempt 2 waits there
        events = await d.events(job_id, timeout=30)
        term = terminal_of(events)
        assert term.state == "succeeded" and term.attempt == 2
        assert [e.event.attempt for e in events if isinstance(e.event, Started)] == [1, 2]
        [retry] = [e.event for e in events if isinstance(e.event, Retry)]  # announced first
        assert (retry.attempt, retry.next_attempt, retry.outcome.state) == (1, 2, "lost")
        assert retry.outcome.error is not None and retry.outcome.error.code == "executor_lost"
        assert counter.read_text() == "2"
        state = await d.projected(job_id)
        assert state["attempt"] == 2 and state["state"] == "succeeded"
        second.signal(signal.SIGTERM)  # returns once every delivery it holds is settled
        assert second.wait(30) == 0
        assert counter.read_text() == "2", "the tool ran again after its job ended"
        last = await d.nc.jetstream().get_last_msg("DOMED_JOBS", f"job.{job_id}.*")
        assert last.subject == f"job.{job_id}.terminal"
    finally:
        second.kill()
        kill_job_processes(job_id)


async def test_an_executor_stopped_during_a_retrys_backoff_leaves_the_retry_to_another(
    router_projector: Domed, tmp_path: Path
) -> None:
    d = router_projector
    job_id, counter, gate, second = await gated_job_whose_executor_died(
        d, tmp_path, "test.counter_slow_retry"
    )
    third = None
    try:
        await second.wait_ready()
        await wait_until(
            lambda: "attempt 2 starts in" in second.log.read_text(), 30, "the retry's backoff"
        )
        stopping = time.monotonic()
        second.signal(signal.SIGTERM)
        assert second.wait(30) == 0
        assert time.monotonic() - stopping < 3.0, "it waited out the 4.5 s backoff"
        assert counter.read_text() == "1", "it started the retry while stopping"
        third = executor(d, tmp_path / "z").start()
        await open_gate(f"{gate}.2")
        events = await d.events(job_id, timeout=30)
        assert terminal_of(events).state == "succeeded"
        assert [e.event.attempt for e in events if isinstance(e.event, Started)] == [1, 2]
        assert counter.read_text() == "2"
    finally:
        second.kill()
        if third is not None:
            third.kill()
        kill_job_processes(job_id)


async def test_sigterm_drains_then_cancels_with_executor_shutdown(
    router_projector: Domed, tmp_path: Path
) -> None:
    d = router_projector
    # The short job needs 0.3 s of the 3 s drain; the long one outlasts it.
    proc = executor(d, tmp_path / "x", "--drain-timeout", "3").start()
    await proc.wait_ready()
    long_job = await d.submit("test.sleep", {"seconds": 60})
    short_job = await d.submit("test.sleep", {"seconds": 0.3})
    await d.until_kind(long_job, "started")
    await d.until_kind(short_job, "started")
    proc.signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    short = terminal_of(await d.events(short_job, timeout=10))
    assert short.state == "succeeded"
    long = terminal_of(await d.events(long_job, timeout=10))
    assert (
        long.state == "canceled"
        and long.error is not None
        and long.error.code == "executor_shutdown"
    )
    assert processes_with_env(f"DOMED_JOB_ID={long_job}") == []


async def open_gate(path: str, timeout: float = 30) -> None:
    """Release the run waiting on FIFO ``path``: opening it for writing succeeds only once
    a reader (the run) has it open; closing it again ends the reader's read."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            return
        except OSError as exc:
            if exc.errno != errno.ENXIO or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.02)


async def test_a_paused_executor_fences_itself_after_being_presumed_dead(
    router_projector: Domed, tmp_path: Path
) -> None:
    d = router_projector
    # The job prints its first line 0.5 s in, while its executor is paused: that line waits
    # in the pipe, and must never be published once another executor has ended the job.
    first, job_id, started = await running_on_own_executor(
        d, tmp_path / "x", "test.late", {"quiet": 0.5, "seconds": 60}
    )
    pid = started.pid
    first.signal(signal.SIGSTOP)  # a long GC pause or a partition: heartbeats stop
    second = executor(d, tmp_path / "y").start()
    try:
        term = terminal_of(await d.events(job_id, timeout=30))
        assert term.state == "lost"
        first.signal(signal.SIGCONT)
        deadline = time.monotonic() + 10
        while pid_alive(pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not pid_alive(pid), "the superseded attempt's process must be killed"
        js = d.nc.jetstream()
        last = await js.get_last_msg("DOMED_JOBS", f"job.{job_id}.*")
        assert last.subject == f"job.{job_id}.terminal"
        assert [e.kind for e in await d.events(job_id)] == ["queued", "started", "terminal"]
    finally:
        first.kill()
        second.kill()


async def test_a_daemon_that_left_the_jobs_process_group_dies_with_the_job(
    router_projector: Domed, tmp_path: Path
) -> None:
    d = router_projector
    proc = executor(d, tmp_path / "x").start()
    pidfile = tmp_path / "daemon.pid"
    try:
        await proc.wait_ready()
        job_id, events = await d.run("test.escape", {"pidfile": str(pidfile)})
        assert terminal_of(events).state == "succeeded"
        daemon = int(pidfile.read_text())
        session = int(log_lines(events)[0].rsplit(" ", 1)[1])
        assert proc.proc is not None
        assert session != os.getsid(proc.proc.pid), "the daemon left the job's session and group"
        assert not pid_alive(daemon), "the escaped daemon outlived its job"
        assert processes_with_env(f"DOMED_JOB_ID={job_id}") == []
    finally:
        proc.kill()
        if pidfile.exists() and pid_alive(int(pidfile.read_text())):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)


async def test_a_restarted_executor_kills_a_dead_executors_escaped_daemons_too(
    router_projector: Domed, tmp_path: Path
) -> None:
    d = router_projector
    pidfile = tmp_path / "daemon.pid"
    first, job_id, started = await running_on_own_executor(
        d, tmp_path / "x", "test.escape", {"pidfile": str(pidfile), "seconds": 60}
    )
    second = None
    try:
        await d.until_kind(job_id, "log")  # the daemon is up and has left the group
        daemon = int(pidfile.read_text())
        first.kill()
        assert pid_alive(started.pid) and pid_alive(daemon)
        second = executor(d, tmp_path / "x").start()  # same host, same data dir
        await second.wait_ready()
        assert not pid_alive(started.pid) and not pid_alive(daemon)
        assert processes_with_env(f"DOMED_JOB_ID={job_id}") == []
    finally:
        first.kill()
        if second is not None:
            second.kill()
        kill_job_processes(job_id)
