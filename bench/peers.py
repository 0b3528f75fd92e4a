"""Case 7: domed against what a user would pick instead, Celery with Redis, and the bare
runner, in the same run: the same closed loop (``true`` jobs, a fixed number in flight)
for every system, taken by turns (the order rotates each turn) and repeated, so a
change in the machine's speed falls on every system alike. Figures are medians over
the turns; a ratio is the median of the ratios within each turn.

Systems: the bare asyncio runner; domed with nats-server's ``sync_interval: always``
(as ``domed up`` runs it) and with nats-server's default sync (a second nats-server
and set of services, started for this case); Celery + Redis with Redis's defaults and
with an fsynced append-only file (``appendfsync always``, like for like with
``sync_interval: always``). Celery and Redis are started afresh for each of their
runs and stopped after it. And domed's floor (``floor.py``): the guarantees' own work
for each job, in the bench's process with no service in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import nats
from nats.aio.client import Client

from bench import celery_world
from bench.cases import LoopResult, Sizes, TerminalWatch, bare_true, domed_true, settle
from bench.floor import Floor, closing, floor_true, floor_world
from bench.harness import RssSampler, Stack
from bench.limits import finite_median, limit_s, ratio, rounded
from bench.report import Row

CASE = "7 peers"
BARE = "bare runner"
CELERY = "Celery + Redis"
CELERY_DURABLE = "Celery + Redis, appendfsync always"
# A system slower than this share of the bare runner is broken, not slow: its limit.
MIN_SHARE_OF_BARE = 0.025


# Whose waited-for children the jobs' own processes are, by system.
JOBS_CPU_NOTES = {
    "bare runner": "the bench's children: `true`",
    "domed": "the executor's children: each job's gate (`/bin/sh`) and the tool it becomes",
    "Celery + Redis": "the pool processes' children: the task's `subprocess.run`",
    "domed's floor": "the bench's children: each job's gate (`/bin/sh`) and the tool it becomes",
}


def domed_label(sync: str) -> str:
    return f"domed, nats sync {sync}"


def floor_label(sync: str) -> str:
    return f"domed's floor, nats sync {sync}"


@dataclass
class Measured:
    """One system's run in one turn."""

    loop: LoopResult
    cpu_ms_per_job: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    # Proportional set size at the end of the run: a prefork pool's processes share most
    # of their pages, which RSS counts once in each of them.
    pss_mb: dict[str, float] = field(default_factory=dict)
    # CPU of the jobs' own processes, per job: what the system's processes waited for
    jobs_cpu_ms: float = math.nan
    problem: str = ""


@dataclass
class DomedTarget:
    stack: Stack
    nc: Client
    watch: TerminalWatch


def _per_job(cpu_s: dict[str, float], jobs: int, names: dict[str, str]) -> dict[str, float]:
    """CPU ms per job for each named process; ``names`` maps sampler names to report names
    (several sampler names may share one report name: a worker's pool processes)."""
    out: dict[str, float] = {}
    for name, secs in cpu_s.items():
        label = names.get(name)
        if label is not None and jobs:
            out[label] = out.get(label, 0.0) + secs / jobs * 1000
    return {k: round(v, 3) for k, v in out.items()}


def _children_per_job(children_cpu_s: dict[str, float], jobs: int, names: list[str]) -> float:
    """CPU ms per job of the children that ``names`` waited for (the jobs' processes)."""
    if not jobs or not any(name in children_cpu_s for name in names):
        return math.nan
    return round(sum(children_cpu_s.get(name, 0.0) for name in names) / jobs * 1000, 3)


def pss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _pss(pids: dict[str, int], names: dict[str, str]) -> dict[str, float]:
    return _rss({n: kb for n, pid in pids.items() if (kb := pss_kb(pid)) is not None}, names)


def _rss(peak_kb: dict[str, int], names: dict[str, str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, kb in peak_kb.items():
        label = names.get(name)
        if label is not None:
            out[label] = out.get(label, 0.0) + kb / 1024
    return {k: round(v, 1) for k, v in out.items()}


class Turns:
    """Runs each system once per turn and keeps what each run measured."""

    def __init__(self, sizes: Sizes, bare_rate: float, keep: bool) -> None:
        self.sizes = sizes
        self.bare_rate = bare_rate  # the latest bare runner rate: the limits follow it
        self.keep = keep
        self.runs: dict[str, list[Measured]] = {}

    def run_limit_s(self, jobs: int) -> float:
        return limit_s(jobs, self.bare_rate * MIN_SHARE_OF_BARE, margin=1.0, floor_s=20.0)

    async def bare(self) -> Measured:
        n, c = self.sizes.jobs, self.sizes.concurrency
        await bare_true(self.sizes.warmup_jobs, c, time.monotonic() + self.run_limit_s(n))
        with RssSampler({}) as s:
            loop = await bare_true(n, c, time.monotonic() + self.run_limit_s(n))
        if loop.done == n and math.isfinite(loop.rate):
            self.bare_rate = loop.rate
        jobs_ms = _children_per_job(s.children_cpu_s, loop.done, ["bench"])
        return Measured(
            loop, _per_job(s.cpu_s, loop.done, {"bench": "client"}), jobs_cpu_ms=jobs_ms
        )

    async def domed(self, target: DomedTarget) -> Measured:
        n, c = self.sizes.jobs, self.sizes.concurrency
        await settle(target.nc)
        warm_limit = self.run_limit_s(self.sizes.warmup_jobs)
        await domed_true(
            target.nc, target.watch, self.sizes.warmup_jobs, c, time.monotonic() + warm_limit
        )
        await settle(target.nc)
        pids = target.stack.pids()
        with RssSampler(pids) as s:
            loop = await domed_true(
                target.nc, target.watch, n, c, time.monotonic() + self.run_limit_s(n)
            )
        names = {name: name for name in pids} | {"bench": "client"}
        return Measured(
            loop,
            _per_job(s.cpu_s, loop.done, names),
            _rss(s.peak_kb, names),
            _pss(pids, names),
            jobs_cpu_ms=_children_per_job(s.children_cpu_s, loop.done, ["executor"]),
        )

    async def floor(self, floor: Floor, server_pid: int) -> Measured:
        """bench/floor.py's jobs: the guarantees' own work, in the bench's process."""
        n, c = self.sizes.jobs, self.sizes.concurrency
        warm = self.sizes.warmup_jobs
        await floor_true(floor, warm, c, time.monotonic() + self.run_limit_s(warm))
        with RssSampler({"nats-server": server_pid}) as s:
            loop = await floor_true(floor, n, c, time.monotonic() + self.run_limit_s(n))
        names = {"bench": "bench process (all of the floor)", "nats-server": "nats-server"}
        return Measured(
            loop,
            _per_job(s.cpu_s, loop.done, names),
            jobs_cpu_ms=_children_per_job(s.children_cpu_s, loop.done, ["bench"]),
        )

    async def celery(self, durable: bool) -> Measured:
        n, w, c = self.sizes.jobs, self.sizes.warmup_jobs, self.sizes.concurrency
        # The worker's start-up (imports, forking its pool) counts against the warm-up.
        warm_limit = self.run_limit_s(w) + 30.0
        with celery_world.celery_redis(
            durable=durable, concurrency=c, start_limit_s=20.0, keep=self.keep
        ) as world:
            client = await asyncio.create_subprocess_exec(
                *world.client_argv(n, w, warm_limit, self.run_limit_s(n)),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                cwd=celery_world.ROOT,
                env=world.env,
                start_new_session=True,
            )
            try:
                return await self._drive_client(world, client, warm_limit, n)
            finally:
                if client.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        client.kill()
                await client.wait()

    async def _drive_client(
        self,
        world: celery_world.CeleryRedis,
        client: asyncio.subprocess.Process,
        warm_limit: float,
        n: int,
    ) -> Measured:
        assert client.stdin is not None and client.stdout is not None
        warm = await _read_json_line(client, warm_limit + 5, "warm-up")
        if warm is None or warm.get("warm", {}).get("done", 0) < self.sizes.warmup_jobs:
            worker_log = world.log_tail("worker.log")
            raise RuntimeError(f"Celery warm-up did not finish: {warm}; worker: {worker_log}")
        world.find_pool()
        pids = world.pids()
        names = {"redis-server": "redis-server", "celery worker": "celery worker"}
        names |= {name: f"celery pool ({len(world.pool)})" for name in pids if "pool" in name}
        with RssSampler(pids) as s:
            client.stdin.write(b"go\n")
            await client.stdin.drain()
            out = await _read_json_line(client, self.run_limit_s(n) + 10, "the measured jobs")
        pss = _pss(pids, names)
        if out is None:
            raise RuntimeError("the Celery client wrote no result")
        loop = LoopResult(int(out["done"]), float(out["wall_s"]), out["latencies_s"], out["errors"])
        cpu = _per_job(s.cpu_s, loop.done, names)
        if loop.done:
            cpu["client"] = round(float(out["cpu_s"]) / loop.done * 1000, 3)
        pool = [name for name in pids if "pool" in name]
        jobs_ms = _children_per_job(s.children_cpu_s, loop.done, pool)
        return Measured(loop, cpu, _rss(s.peak_kb, names), pss, jobs_cpu_ms=jobs_ms)


async def _read_json_line(
    client: asyncio.subprocess.Process, timeout_s: float, what: str
) -> dict[str, Any] | None:
    assert client.stdout is not None
    try:
        line = await asyncio.wait_for(client.stdout.readline(), timeout_s)
    except TimeoutError:
        raise TimeoutError(f"the Celery client: {what} not done within {timeout_s:.1f} s") from None
    if not line:
        return None
    return dict(json.loads(line))


async def measured(run: Callable[[], Awaitable[Measured]]) -> Measured:
    """A run's figures, or an empty result that names what went wrong: one system's
    failure leaves the others' figures standing."""
    try:
        return await run()
    except Exception as exc:
        return Measured(LoopResult(0, 0.0), problem=f"{type(exc).__name__}: {exc}"[:300])


@contextlib.asynccontextmanager
async def second_domed(
    make_stack: Callable[[], contextlib.AbstractContextManager[Stack]], slots: int
) -> Any:
    """domed under the other sync setting: its own nats-server, services and watcher."""
    with make_stack() as st:
        st.start_services(slots=slots)
        nc = await nats.connect(st.url, name="bench-peers", max_reconnect_attempts=3)
        try:
            watch = await TerminalWatch().start(nc)
            yield DomedTarget(st, nc, watch)
            await watch.stop()
        finally:
            await nc.close()


async def case_peers(
    main: DomedTarget,
    main_sync: str,
    make_other_stack: Callable[[], contextlib.AbstractContextManager[Stack]],
    sizes: Sizes,
    bare_rate: float,
    keep: bool,
) -> tuple[list[Row], dict[str, Any]]:
    absent = celery_world.missing()
    if absent:
        return [
            Row(CASE, "Celery + Redis beside domed", math.nan, "", note=f"skipped: {absent}")
        ], {"skipped": absent}
    other_sync = "default" if main_sync == "always" else "always"
    turns = Turns(sizes, bare_rate, keep)
    floor = await floor_world(main.nc.jetstream(timeout=10.0), sizes.concurrency)
    async with closing(floor):
        async with second_domed(make_other_stack, sizes.concurrency) as other:
            server_pid = main.stack.server_pid
            systems: list[tuple[str, Callable[[], Awaitable[Measured]]]] = [
                (BARE, turns.bare),
                (domed_label(main_sync), lambda: turns.domed(main)),
                (domed_label(other_sync), lambda: turns.domed(other)),
                (floor_label(main_sync), lambda: turns.floor(floor, server_pid)),
                (CELERY, lambda: turns.celery(False)),
                (CELERY_DURABLE, lambda: turns.celery(True)),
            ]
            for turn in range(sizes.peer_turns):
                for label, run in rotated(systems, turn):
                    turns.runs.setdefault(label, []).append(await measured(run))
    return peer_rows(turns.runs, sizes), peer_details(turns.runs, sizes)


def rotated(items: list[Any], turn: int) -> list[Any]:
    k = turn % len(items) if items else 0
    return items[k:] + items[:k]


# ---- the rows -----------------------------------------------------------------------------


def per_turn_ratios(
    runs: dict[str, list[Measured]], a: str, b: str, figure: Callable[[Measured], float]
) -> list[float]:
    return [
        ratio(figure(x), figure(y))
        for x, y in zip(runs.get(a, []), runs.get(b, []), strict=False)
        if not x.problem and not y.problem
    ]


def _rate(m: Measured) -> float:
    return m.loop.rate if not m.problem and m.loop.done else math.nan


def _p(m: Measured, p: float) -> float:
    return m.loop.ms(p) if not m.problem else math.nan


def _median_dict(
    dicts: list[dict[str, float]], reduce: Callable[[list[float]], float]
) -> dict[str, float]:
    keys = sorted({k for d in dicts for k in d})
    return {k: round(reduce([d[k] for d in dicts if k in d]), 3) for k in keys}


def _runs_note(values: list[float], fmt: str) -> str:
    return "runs: " + " / ".join(format(v, fmt) if math.isfinite(v) else "—" for v in values)


def peer_rows(runs: dict[str, list[Measured]], sizes: Sizes) -> list[Row]:
    rows: list[Row] = []
    bare = runs.get(BARE, [])
    bare_rate = finite_median(_rate(m) for m in bare)
    bare_p50 = finite_median(_p(m, 50) for m in bare)
    bare_p99 = finite_median(_p(m, 99) for m in bare)
    for label, ms in runs.items():
        problems = sorted({m.problem for m in ms if m.problem})
        rates = [_rate(m) for m in ms]
        incomplete = [m for m in ms if not m.problem and m.loop.done < sizes.jobs]
        note = _runs_note(rates, ",.0f")
        if incomplete:
            note += f"; {len(incomplete)} run(s) short of {sizes.jobs} jobs: {incomplete[0].loop.errors[:2]}"
        if problems:
            note += "; failed: " + "; ".join(problems)
        is_bare = label == BARE
        rows.append(
            Row(
                CASE,
                f"{label}: `true` jobs/s, {sizes.jobs} jobs, {sizes.concurrency} in flight",
                finite_median(rates),
                "jobs/s",
                None if is_bare else bare_rate,
                ratio=None if is_bare else finite_median(per_turn_ratios(runs, label, BARE, _rate)),
                note=note,
            )
        )
        rows.append(
            Row(
                CASE,
                f"{label}: p50",
                finite_median(_p(m, 50) for m in ms),
                "ms",
                None if is_bare else bare_p50,
            )
        )
        rows.append(
            Row(
                CASE,
                f"{label}: p99",
                finite_median(_p(m, 99) for m in ms),
                "ms",
                None if is_bare else bare_p99,
            )
        )
        cpu = _median_dict([m.cpu_ms_per_job for m in ms if not m.problem], finite_median)
        rows.append(
            Row(
                CASE,
                f"{label}: CPU ms per job, its processes and the client",
                sum(cpu.values()) if cpu else math.nan,
                "ms",
                note=", ".join(f"{k} {v}" for k, v in cpu.items()),
            )
        )
        rows.append(
            Row(
                CASE,
                f"{label}: CPU ms per job of the jobs' own processes",
                finite_median(m.jobs_cpu_ms for m in ms if not m.problem),
                "ms",
                note=JOBS_CPU_NOTES.get(label.split(",")[0], ""),
            )
        )
        if not is_bare and any(m.peak_rss_mb for m in ms):
            rss = _median_dict(
                [m.peak_rss_mb for m in ms if not m.problem], lambda v: max(v, default=math.nan)
            )
            pss = _median_dict([m.pss_mb for m in ms if not m.problem], finite_median)
            rows.append(
                Row(
                    CASE,
                    f"{label}: peak RSS, its processes",
                    sum(rss.values()) if rss else math.nan,
                    "MB",
                    note=", ".join(f"{k} {v}" for k, v in rss.items())
                    + f"; PSS at the end, {sum(pss.values()):.1f} MB in all: "
                    + ", ".join(f"{k} {v}" for k, v in pss.items()),
                )
            )
    rows += comparison_rows(runs)
    return rows


def comparison_rows(runs: dict[str, list[Measured]]) -> list[Row]:
    """domed ÷ Celery, within each turn, with the targets domed is held to."""
    domed_always, domed_default = domed_label("always"), domed_label("default")
    floor = floor_label("always")
    rows = []
    for domed, celery, target in (
        (domed_always, CELERY, 1.5),
        (domed_always, CELERY_DURABLE, 2.0),
        (domed_default, CELERY, None),
        (floor, CELERY, None),
        (floor, CELERY_DURABLE, None),
        (domed_always, floor, None),
    ):
        if domed not in runs or celery not in runs:
            continue
        per_turn = per_turn_ratios(runs, domed, celery, _rate)
        r = finite_median(per_turn)
        rows.append(
            Row(
                CASE,
                f"{domed} ÷ {celery}, jobs/s",
                finite_median(_rate(m) for m in runs[domed]),
                "jobs/s",
                finite_median(_rate(m) for m in runs[celery]),
                f"ratio ≥ {target}" if target else "",
                (r >= target if math.isfinite(r) else False) if target else None,
                _runs_note(per_turn, ".2f") + " (ratio within each turn)",
                ratio=r,
            )
        )
    if domed_always in runs and CELERY in runs:
        mine = finite_median(_p(m, 50) for m in runs[domed_always])
        theirs = finite_median(_p(m, 50) for m in runs[CELERY])
        rows.append(
            Row(
                CASE,
                f"{domed_always} p50 against {CELERY} p50",
                mine,
                "ms",
                theirs,
                "below Celery's",
                (mine < theirs) if math.isfinite(mine) and math.isfinite(theirs) else False,
            )
        )
    return rows


def peer_details(runs: dict[str, list[Measured]], sizes: Sizes) -> dict[str, Any]:
    def one(m: Measured) -> dict[str, Any]:
        return {
            "done": m.loop.done,
            "wall_s": rounded(m.loop.wall_s, 4),
            "rate_per_s": rounded(m.loop.rate, 1),
            "p50_ms": rounded(m.loop.ms(50), 3),
            "p99_ms": rounded(m.loop.ms(99), 3),
            "cpu_ms_per_job": m.cpu_ms_per_job,
            "peak_rss_mb": m.peak_rss_mb,
            "pss_mb_at_end": m.pss_mb,
            "jobs_cpu_ms_per_job": rounded(m.jobs_cpu_ms, 3),
            "errors": m.loop.errors[:5],
            "problem": m.problem,
        }

    return {
        "jobs": sizes.jobs,
        "concurrency": sizes.concurrency,
        "turns": sizes.peer_turns,
        "redis": celery_world.version_of_redis(),
        "celery": celery_world.version_of_celery(),
        "runs": {label: [one(m) for m in ms] for label, ms in runs.items()},
    }
