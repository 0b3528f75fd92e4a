"""A seeded soak: a few hundred mixed jobs while executors and the projector are
SIGKILLed at random moments. Afterwards domed's guarantees hold:
one terminal per job and last (I1), projection == replay (I2), gap-free log seqs
(I3), every accepted submission stored (I4), no orphan processes (I5)."""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from pathlib import Path

import msgspec
import nats.errors
from nats.js.api import DeliverPolicy

from contracts import subjects
from contracts.events import Log, Terminal, decode_event
from services.projector.app import store_path
from services.projector.store import Store
from services.runtime.natsserver import NatsServer
from services.runtime.settings import Settings
from tests.support import Domed, ServiceProcess, processes_with_env

SEED = 20261125
JOBS = 240
SUBMIT_WINDOW_S = 15.0


def assert_gap_free(job_id: str, events: list) -> None:
    by_attempt: dict[int, list[Log]] = defaultdict(list)
    for ev in events:
        if isinstance(ev, Log):
            by_attempt[ev.attempt].append(ev)
    for attempt, logs in by_attempt.items():
        expected = 0
        for ev in sorted(logs, key=lambda e: e.seq):
            assert ev.seq == expected, (job_id, attempt, ev.seq, expected)
            expected += len(ev.lines)


def workload(rng: random.Random, tmp: Path) -> list[tuple[str, dict, dict]]:
    out = []
    for i in range(JOBS):
        pick = rng.random()
        if pick < 0.25:
            out.append(("test.true", {}, {}))
        elif pick < 0.45:
            out.append(
                (
                    "test.spew",
                    {"lines": rng.randint(100, 5000), "stderr_every": rng.randint(0, 9)},
                    {},
                )
            )
        elif pick < 0.55:
            out.append(("test.exit", {"code": rng.randint(0, 3)}, {}))
        elif pick < 0.75:
            out.append(("test.sleep", {"seconds": round(rng.uniform(0.1, 1.5), 2)}, {}))
        elif pick < 0.85:
            out.append(
                ("test.counter_idempotent", {"file": str(tmp / f"c{i}"), "seconds": 0.5}, {})
            )
        elif pick < 0.93:
            out.append(("test.sleep", {"seconds": 5}, {"timeout_s": 0.5}))
        else:
            out.append(("demo.echo", {"text": f"job {i}"}, {}))
    return out


async def scan_stream(nc) -> dict[str, list[tuple[int, str, object]]]:
    """Every stored event, grouped by job, in stream order."""
    js = nc.jetstream()
    info = await js.stream_info(subjects.STREAM)
    by_job: dict[str, list[tuple[int, str, object]]] = defaultdict(list)
    sub = await js.subscribe(
        "job.*.*", stream=subjects.STREAM, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
    )
    try:
        seen = 0
        while seen < info.state.messages:
            msg = await sub.next_msg(timeout=10)
            seen += 1
            job_id, kind = subjects.parse_event_subject(msg.subject)
            by_job[job_id].append((msg.metadata.sequence.stream, kind, decode_event(msg.data)))
    finally:
        await sub.unsubscribe()
    return by_job


async def test_soak_with_random_kills_loses_nothing(
    fresh_server: NatsServer, ssot: Path, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    jobs_spec = workload(rng, tmp_path)
    kill_times = sorted(rng.uniform(2, SUBMIT_WINDOW_S - 2) for _ in range(4))
    victims = ["executor-a", "projector", "executor-b", "executor-a"]

    async with Domed.running(
        fresh_server.url, ssot, tmp_path / "d", services=("router",), ack_wait_s=2
    ) as d:
        procs: dict[str, ServiceProcess] = {}

        try:

            def spawn(name: str) -> None:
                kind = "projector" if name == "projector" else "executor"
                extra = ("--ack-wait", "2", "--name", name) if kind == "executor" else ()
                procs[name] = ServiceProcess(kind, d.url, ssot, tmp_path / name, *extra).start()

            for name in ("executor-a", "executor-b", "projector"):
                spawn(name)
            for p in procs.values():
                await p.wait_ready()

            accepted: list[str] = []
            unknown = 0
            start = time.monotonic()
            pending_kills = list(zip(kill_times, victims, strict=True))
            for i, (tool, params, extra) in enumerate(jobs_spec):
                target = start + SUBMIT_WINDOW_S * i / len(jobs_spec)
                if (delay := target - time.monotonic()) > 0:
                    await asyncio.sleep(delay)
                while pending_kills and time.monotonic() - start >= pending_kills[0][0]:
                    _, victim = pending_kills.pop(0)
                    procs[victim].kill()
                    spawn(victim)
                try:
                    r = await d.request(
                        subjects.SUBMIT, {"tool": tool, "params": params, **extra}, timeout=5
                    )
                    assert r.error is None, r.data
                    accepted.append(r.data["job_id"])
                except nats.errors.TimeoutError:
                    unknown += 1
                if i % 40 == 39:
                    victim_job = accepted[-1]
                    await d.request(subjects.CANCEL, {"job_id": victim_job}, timeout=5)
            for p in procs.values():
                await p.wait_ready()

            # Quiescence: every accepted job ends (bounded).
            js = d.nc.jetstream()
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                info = await js.stream_info(subjects.STREAM, subjects_filter="job.*.terminal")
                if len(info.state.subjects or {}) >= len(accepted):
                    break
                await asyncio.sleep(0.25)
            by_job = await scan_stream(d.nc)

            # I4: every accepted submission is stored; I1: exactly one terminal, and it is last.
            assert unknown == 0
            states: dict[str, str] = {}
            for job_id in accepted:
                events = by_job[job_id]
                kinds = [k for _, k, _ in events]
                assert kinds[0] == "queued", (job_id, kinds)
                assert kinds.count("terminal") == 1, (job_id, kinds)
                assert kinds[-1] == "terminal", (job_id, kinds)
                term = events[-1][2]
                assert isinstance(term, Terminal)
                states[job_id] = term.state
                # I3: per attempt, log seqs have no gaps and no repeats (a publish retried after
                # a fault may be stored out of order; a reader orders by seq).
                assert_gap_free(job_id, [ev for _, _, ev in events])
            # I5: nothing any job started is still running.
            for job_id in accepted:
                assert processes_with_env(f"DOMED_JOB_ID={job_id}") == [], job_id

            # The live projection converges on the stream...
            last_seq = (await js.stream_info(subjects.STREAM)).state.last_seq
            live_path = store_path(Settings(data_dir=tmp_path / "projector"))
            deadline = time.monotonic() + 30
            while Store(live_path).position()[0] < last_seq and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
        finally:  # every process this test started is gone, however it ends
            for p in procs.values():
                p.kill()
        live = {s.job_id: msgspec.to_builtins(s) for s in Store(live_path).all_jobs()}
        for job_id in accepted:
            assert live[job_id]["state"] == states[job_id]
        # ...and (I2) equals a replay from zero into a fresh store.
        await d.start_service("projector", data_dir=tmp_path / "replay", rebuild=True)
        replay_path = store_path(Settings(data_dir=tmp_path / "replay"))
        deadline = time.monotonic() + 60
        while Store(replay_path).position()[0] < last_seq and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await d.stop_service("projector")
        replay = {s.job_id: msgspec.to_builtins(s) for s in Store(replay_path).all_jobs()}
        assert live == replay
        print(
            f"soak: {len(accepted)} jobs, states {sorted(set(states.values()))}, "
            f"{sum(1 for s in states.values() if s == 'lost')} lost to executor kills, kills at {kill_times}"
        )
