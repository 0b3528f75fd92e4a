"""A seeded chaos run: two executors as real processes, paused for longer than the lease,
SIGKILLed and restarted, while jobs run and some are canceled. Whatever the seed:

- every job has exactly one terminal, and nothing is stored for it after;
- no job ends ``lost`` unless the executor running its last attempt was paused or killed;
- a tool that is not safe to re-run never runs twice (a side-effect counter);
- no job's process and no job's temp working dir is left once the executors stopped.

The seed is printed (``-s`` shows it; a failure message repeats it); set
``DOMED_CHAOS_SEED`` to replay one run's plan.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from contracts import subjects
from contracts.events import Started
from services.runtime.natsserver import NatsServer
from tests.support import Domed, ServiceProcess, processes_with_env, terminal_of

ACK_WAIT = 2.0
JOBS = 36
RUN_S = 14.0  # jobs are submitted over this long, faults happen meanwhile


@dataclass
class Executor:
    """One executor slot of the run; each incarnation has a name of its own."""

    label: str
    data_dir: Path
    work_root: Path
    incarnation: int = 0
    proc: ServiceProcess | None = None
    faulted: set[str] = field(default_factory=set)  # incarnation names paused or killed

    @property
    def name(self) -> str:
        return f"exec-{self.label}{self.incarnation}"

    async def start(self, d: Domed) -> None:
        self.incarnation += 1
        self.proc = ServiceProcess(
            "executor",
            d.url,
            d.ssot,
            self.data_dir,
            "--ack-wait",
            str(ACK_WAIT),
            "--name",
            self.name,
            "--slots",
            "4",
            env={"TMPDIR": str(self.work_root)},
        ).start()
        await self.proc.wait_ready()

    async def pause(self, seconds: float) -> None:
        assert self.proc is not None
        self.faulted.add(self.name)
        self.proc.signal(signal.SIGSTOP)
        await asyncio.sleep(seconds)  # the fault itself: a pause this long
        self.proc.signal(signal.SIGCONT)

    async def kill_and_restart(self, d: Domed, down_s: float) -> None:
        assert self.proc is not None
        self.faulted.add(self.name)
        self.proc.kill()
        await asyncio.sleep(down_s)  # the fault itself: down this long
        await self.start(d)

    def stop(self) -> None:
        if self.proc is not None and self.proc.proc is not None:
            if self.proc.proc.poll() is None:
                self.proc.signal(signal.SIGCONT)
                self.proc.signal(signal.SIGTERM)
                assert self.proc.wait(30) == 0, self.proc.log.read_text()[-3000:]


async def faults(d: Domed, rng: random.Random, executors: list[Executor], plan: list[str]) -> None:
    """Two pauses longer than the lease and one SIGKILL with a restart, in a seeded order."""
    kinds = ["pause", "pause", "kill"]
    rng.shuffle(kinds)
    for kind in kinds:
        await asyncio.sleep(rng.uniform(1.0, 3.0))
        target = rng.choice(executors)
        if kind == "pause":
            seconds = rng.uniform(ACK_WAIT * 1.5, ACK_WAIT * 2.5)
            plan.append(f"pause {target.name} {seconds:.1f}s")
            await target.pause(seconds)
        else:
            down = rng.uniform(0.2, 1.0)
            plan.append(f"kill {target.name}, restart after {down:.1f}s")
            await target.kill_and_restart(d, down)


async def workload(
    d: Domed, rng: random.Random, tmp: Path, jobs: dict[str, tuple[str, Path]]
) -> None:
    cancels: set[asyncio.Task[None]] = set()
    for i in range(JOBS):
        tool = rng.choice(["test.counter", "test.counter", "test.counter_idempotent"])
        counter = tmp / f"count-{i}"
        job_id = await d.submit(tool, {"file": str(counter), "seconds": rng.uniform(0.1, 2.5)})
        jobs[job_id] = (tool, counter)
        if rng.random() < 0.2:
            task = asyncio.create_task(cancel_later(d, job_id, rng.uniform(0.0, 2.0)))
            cancels.add(task)
        await asyncio.sleep(rng.uniform(0.0, 2 * RUN_S / JOBS))
    await asyncio.gather(*cancels)


async def cancel_later(d: Domed, job_id: str, delay: float) -> None:
    await asyncio.sleep(delay)
    reply = await d.request(subjects.CANCEL, {"job_id": job_id, "reason": "chaos"})
    assert reply.error is None or reply.error["code"] == "already_terminal", reply.data


async def test_chaos_two_executors_pauses_kills_and_cancels(
    fresh_server: NatsServer, ssot: Path, tmp_path: Path
) -> None:
    seed = int(os.environ.get("DOMED_CHAOS_SEED") or random.randrange(2**32))
    print(f"chaos seed {seed} (DOMED_CHAOS_SEED={seed} replays it)")
    rng = random.Random(seed)
    work_root = tmp_path / "work"
    work_root.mkdir()
    executors = [
        Executor("a", tmp_path / "a", work_root),
        Executor("b", tmp_path / "b", work_root),
    ]
    plan: list[str] = []
    jobs: dict[str, tuple[str, Path]] = {}
    async with Domed.running(
        fresh_server.url, ssot, tmp_path / "data", services=("router", "projector"), ack_wait_s=2
    ) as d:
        try:
            for ex in executors:
                await ex.start(d)
            began = time.monotonic()
            await asyncio.gather(workload(d, rng, tmp_path, jobs), faults(d, rng, executors, plan))
            why = f"seed {seed}, faults {plan}"
            faulted = set().union(*(ex.faulted for ex in executors))
            states: dict[str, int] = {}
            for job_id, (tool, counter) in jobs.items():
                events = await d.events(job_id, timeout=60)
                term = terminal_of(events)
                states[term.state] = states.get(term.state, 0) + 1
                last = await d.nc.jetstream().get_last_msg(subjects.STREAM, f"job.{job_id}.*")
                assert last.seq == events[-1].seq, f"{job_id}: stored after its terminal; {why}"
                starts = [e.event for e in events if isinstance(e.event, Started)]
                runs = int(counter.read_text()) if counter.exists() else 0
                if term.state == "lost":
                    ran_on = starts[-1].executor if starts else None
                    assert ran_on in faulted, f"{job_id} lost on healthy {ran_on}; {why}"
                if tool == "test.counter":
                    assert runs <= 1, f"{job_id} ran {runs} times; {why}"
                else:
                    assert runs <= len(starts), f"{job_id} ran {runs} times; {why}"
                if not {s.executor for s in starts} & faulted and term.state == "succeeded":
                    assert runs == 1, f"{job_id}: {runs} runs without a fault; {why}"
            print(f"chaos run {time.monotonic() - began:.1f}s: {plan}; terminals {states}")
        finally:
            for ex in executors:
                ex.stop()
        for job_id in jobs:
            assert processes_with_env(f"DOMED_JOB_ID={job_id}") == [], f"{job_id}; {why}"
        left = sorted(p.name for p in work_root.iterdir())
        assert left == [], f"working dirs left behind: {left}; {why}"
