"""An executor paused while a job was delivered to it, and resumed after another
executor took the job over: the stale delivery must neither run the tool nor end the
healthy job ``lost``, and nothing may be stored for the job after its terminal."""

from __future__ import annotations

import signal
from pathlib import Path

from contracts import subjects
from contracts.events import Started
from services.runtime.natsserver import NatsServer
from tests.support import Domed, ServiceProcess, terminal_of, wait_until

ACK_WAIT = "2"


def executor(d: Domed, data_dir: Path, name: str, *extra: str) -> ServiceProcess:
    return ServiceProcess(
        "executor", d.url, d.ssot, data_dir, "--ack-wait", ACK_WAIT, "--name", name, *extra
    )


async def consumer_state(d: Domed) -> tuple[int, int]:
    """The executors consumer's (waiting pull requests, deliveries not yet acked)."""
    info = await d.nc.jetstream().consumer_info(subjects.STREAM, subjects.EXECUTORS_CONSUMER)
    return info.num_waiting or 0, info.num_ack_pending or 0


async def test_a_resumed_executor_leaves_a_job_another_executor_runs_alone(
    fresh_server: NatsServer, ssot: Path, tmp_path: Path
) -> None:
    async with Domed.running(
        fresh_server.url, ssot, tmp_path / "data", services=("router", "projector"), ack_wait_s=2
    ) as d:
        paused = executor(d, tmp_path / "b", "exec-b").start()
        healthy = None
        try:
            await paused.wait_ready()
            waiting = 0

            async def has_waiting_pulls() -> None:
                nonlocal waiting
                waiting, _ = await consumer_state(d)

            while waiting == 0:
                await has_waiting_pulls()
            paused.signal(signal.SIGSTOP)
            counter = tmp_path / "count"
            job_id = await d.submit("test.counter", {"file": str(counter), "seconds": 6})
            pending = 0
            while pending == 0:  # handed to the paused executor's outstanding pull request
                _, pending = await consumer_state(d)
            # The delivery expires after ack_wait; the healthy executor gets it and runs it. With
            # one slot, busy with this job, it asks for no more work: whatever the resumed
            # executor hands back to the consumer goes to the resumed executor again.
            healthy = executor(d, tmp_path / "a", "exec-a", "--slots", "1").start()
            started = (await d.until_kind(job_id, "started"))[-1].event
            assert isinstance(started, Started) and started.executor == "exec-a"
            await wait_until(counter.exists, 10, "the healthy executor's run")
            paused.signal(signal.SIGCONT)  # it now reads the stale delivery it was handed
            events = await d.events(job_id, timeout=30)
            term = terminal_of(events)
            assert term.state == "succeeded", term
            assert term.attempt == 1
            for proc in (paused, healthy):
                proc.signal(signal.SIGTERM)
                assert proc.wait(30) == 0
            assert counter.read_text() == "1", "the tool ran twice"
            last = await d.nc.jetstream().get_last_msg(subjects.STREAM, f"job.{job_id}.*")
            assert last.subject == f"job.{job_id}.terminal", (
                "an event was stored after the terminal"
            )
            kinds = [e.kind for e in await d.events(job_id)]
            assert kinds.count("started") == 1 and kinds.count("terminal") == 1, kinds
            assert (await d.projected(job_id))["state"] == "succeeded"
        finally:
            paused.signal(signal.SIGCONT) if paused.proc and paused.proc.poll() is None else None
            paused.kill()
            if healthy is not None:
                healthy.kill()
