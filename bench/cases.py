"""The benchmark cases. Each one measures domed and its baseline in the same run and
returns table rows plus a dict of details for the JSON file. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy
from ulid import ULID

from bench.budget import Snapshot, budget_of, budget_row, read_snapshot
from bench.harness import ROOT, RssSampler, ServiceProcess, Stack, percentile, read_status_kb
from bench.limits import (
    REFERENCE_READ_RATE,
    finite_median,
    limit_s,
    rebuild_limits,
    rounded,
)
from bench.profile import profiled
from bench.report import Row, at_least, at_most
from contracts import subjects
from contracts.events import (
    Cancel,
    Event,
    LineCounts,
    Log,
    Progress,
    Queued,
    Rusage,
    Started,
    Terminal,
    decode_event,
    encode_event,
)
from services.projector.rebuild import RebuildReport, decode_report

ERROR_HEADER = "Nats-Service-Error"
SETTLE_LIMIT_S = 20.0
_json = msgspec.json.Encoder()


@dataclass
class Sizes:
    """How much work each case does (``--quick`` shrinks it)."""

    jobs: int = 2000
    concurrency: int = 8
    log_lines: int = 200_000
    rebuild_events: int = 200_000
    router_seq: int = 2000
    router_conc_total: int = 6400
    router_concurrency: int = 64
    warmup_jobs: int = 24
    # This machine's speed drifts by 10-15% within minutes: a rebuild's rate is the
    # median of this many runs, each shown.
    rebuild_runs: int = 3
    # Case 7 takes every system once per turn; its figures are medians over the turns.
    peer_turns: int = 3

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            jobs=300,
            log_lines=50_000,
            rebuild_events=50_000,
            router_seq=300,
            router_conc_total=1280,
            warmup_jobs=16,
            rebuild_runs=1,
            peer_turns=1,
        )


class BenchError(Exception):
    """A case could not produce its figure (a timeout, a refused request, a gap)."""


# ---- talking to domed ---------------------------------------------------------------------


async def submit(nc: Client, tool: str, params: dict[str, Any], timeout_s: float = 10) -> str:
    msg = await nc.request(
        subjects.SUBMIT, _json.encode({"tool": tool, "params": params}), timeout=timeout_s
    )
    if msg.headers and ERROR_HEADER in msg.headers:
        raise BenchError(f"submit refused: {msg.data[:300]!r}")
    return str(json.loads(msg.data)["job_id"])


class TerminalWatch:
    """One core subscription on ``job.*.terminal`` (the stream republishes stored events
    there) that resolves a future per job; terminals that arrive before the job is
    expected are kept, so a fast job never goes unseen."""

    def __init__(self) -> None:
        self.waiters: dict[str, asyncio.Future[float]] = {}
        self.early: dict[str, float] = {}
        self.states: dict[str, int] = {}
        self.marks: dict[str, dict[str, float]] = {}
        self.sub: Any = None
        self.marks_sub: Any = None

    async def start(self, nc: Client) -> TerminalWatch:
        self.sub = await nc.subscribe(
            "job.*.terminal",
            cb=self._on_terminal,
            pending_msgs_limit=1_000_000,
            pending_bytes_limit=512 * 1024 * 1024,
        )
        return self

    async def _on_terminal(self, msg: Msg) -> None:
        now = time.perf_counter()
        job_id = msg.subject.split(".")[1]
        try:
            state = msgspec.json.decode(msg.data)["state"]
        except (msgspec.DecodeError, KeyError, TypeError):
            state = "undecodable"
        self.states[state] = self.states.get(state, 0) + 1
        fut = self.waiters.pop(job_id, None)
        if fut is not None and not fut.done():
            fut.set_result(now)
        else:
            self.early[job_id] = now

    async def mark(self, nc: Client) -> None:
        """Also note when each job's ``queued`` and ``started`` are seen (latency breakdown)."""

        async def on_event(msg: Msg) -> None:
            now = time.perf_counter()
            _, job_id, kind = msg.subject.split(".")
            self.marks.setdefault(job_id, {}).setdefault(kind, now)

        self.marks_sub = await nc.subscribe(
            "job.*.*",
            cb=on_event,
            pending_msgs_limit=1_000_000,
            pending_bytes_limit=512 * 1024 * 1024,
        )

    async def unmark(self) -> None:
        if self.marks_sub is not None:
            with contextlib.suppress(Exception):
                await self.marks_sub.unsubscribe()
            self.marks_sub = None

    def expect(self, job_id: str) -> asyncio.Future[float]:
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        seen = self.early.pop(job_id, None)
        if seen is not None:
            fut.set_result(seen)
        else:
            self.waiters[job_id] = fut
        return fut

    async def stop(self) -> None:
        if self.sub is not None:
            with contextlib.suppress(Exception):
                await self.sub.unsubscribe()


# ---- case 1: closed loop ------------------------------------------------------------------


@dataclass
class LoopResult:
    done: int
    wall_s: float
    latencies_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.done / self.wall_s if self.wall_s > 0 else float("nan")

    def ms(self, p: float) -> float:
        return percentile(self.latencies_s, p) * 1000


async def closed_loop(
    n: int, concurrency: int, one: Any, deadline: float, max_errors: int = 20
) -> LoopResult:
    """Run ``one()`` ``n`` times with exactly ``concurrency`` in flight; each returns its latency."""
    counter = iter(range(n))
    result = LoopResult(0, 0.0)

    async def worker() -> None:
        for _ in counter:
            if time.monotonic() > deadline or len(result.errors) >= max_errors:
                return
            try:
                result.latencies_s.append(await one())
                result.done += 1
            except (BenchError, TimeoutError, nats.errors.Error) as exc:
                result.errors.append(repr(exc))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.wall_s = time.perf_counter() - start
    return result


async def bare_true(n: int, concurrency: int, deadline: float) -> LoopResult:
    """Baseline: asyncio spawning ``true`` with the same concurrency, no bus."""

    async def one() -> float:
        t0 = time.perf_counter()
        proc = await asyncio.create_subprocess_exec("true")
        await proc.wait()
        return time.perf_counter() - t0

    return await closed_loop(n, concurrency, one, deadline)


async def domed_true(
    nc: Client,
    watch: TerminalWatch,
    n: int,
    concurrency: int,
    deadline: float,
    starts: dict[str, tuple[float, float]] | None = None,
) -> LoopResult:
    async def one() -> float:
        t0 = time.perf_counter()
        job_id = await submit(nc, "bench.true", {})
        if starts is not None:
            starts[job_id] = (t0, time.perf_counter())
        remaining = max(0.1, deadline - time.monotonic())
        t_end = await asyncio.wait_for(watch.expect(job_id), remaining)
        return t_end - t0

    return await closed_loop(n, concurrency, one, deadline)


async def case_closed_loop(
    nc: Client,
    watch: TerminalWatch,
    sizes: Sizes,
    budget_s: float,
    *,
    url: str = "",
    monitor_url: str | None = None,
) -> tuple[list[Row], dict[str, Any], LoopResult]:
    """With ``url`` and ``monitor_url`` (nats-server's and its monitoring's) it also counts
    the messages of the measured run."""
    deadline = time.monotonic() + budget_s
    # Warm-up: the first jobs pay for imports, consumer creation and page faults.
    await domed_true(nc, watch, sizes.warmup_jobs, sizes.concurrency, deadline)
    await bare_true(sizes.warmup_jobs, sizes.concurrency, deadline)
    bare = await bare_true(sizes.jobs, sizes.concurrency, deadline)
    # The waits for the projector run on a connection of their own, so that their
    # requests are not counted as the bench client's.
    waiter = await nats.connect(url, name="bench-settle") if url and monitor_url else None
    try:
        before = await settled_counters(waiter, monitor_url)
        dom = await domed_true(nc, watch, sizes.jobs, sizes.concurrency, deadline)
        after = await settled_counters(waiter, monitor_url)
    finally:
        if waiter is not None:
            await waiter.close()
    messages = budget_of(before, after, dom.done)
    # The step breakdown needs every event of every job, so it comes from a shorter run of
    # its own: the subscription that watches them costs CPU the measured run should not pay.
    starts: dict[str, tuple[float, float]] = {}
    await watch.mark(nc)
    try:
        breakdown_n = max(100, sizes.jobs // 5)
        await domed_true(nc, watch, breakdown_n, sizes.concurrency, deadline, starts)
    finally:
        await watch.unmark()
    # One job at a time: the latency of a job's critical path on an otherwise idle machine
    # (with 8 in flight the two CPUs are saturated and every step also waits its turn).
    solo_n = max(50, sizes.jobs // 10)
    bare_solo = await bare_true(solo_n, 1, deadline)
    dom_solo = await domed_true(nc, watch, solo_n, 1, deadline)
    complete = dom.done == sizes.jobs and not dom.errors
    note = "" if complete else f"only {dom.done}/{sizes.jobs} jobs ended in time; {dom.errors[:3]}"
    ratio = dom.rate / bare.rate if bare.rate else float("nan")
    rows = [
        Row(
            "1 closed loop",
            f"`true` jobs/s, {sizes.jobs} jobs, {sizes.concurrency} in flight",
            dom.rate,
            "jobs/s",
            bare.rate,
            "ratio ≥ 0.6",
            (ratio >= 0.6) if complete else False,
            note,
        ),
        Row(
            "1 closed loop",
            "submit→terminal p50",
            dom.ms(50),
            "ms",
            bare.ms(50),
            "≤ 5 ms",
            at_most(dom.ms(50), 5.0) if complete else False,
        ),
        Row(
            "1 closed loop",
            "submit→terminal p99",
            dom.ms(99),
            "ms",
            bare.ms(99),
            "≤ 10 ms",
            at_most(dom.ms(99), 10.0) if complete else False,
        ),
    ]
    rows += [
        Row(
            "1 closed loop",
            f"submit→terminal p50, 1 in flight ({solo_n} jobs)",
            dom_solo.ms(50),
            "ms",
            bare_solo.ms(50),
        ),
        Row(
            "1 closed loop",
            f"submit→terminal p99, 1 in flight ({solo_n} jobs)",
            dom_solo.ms(99),
            "ms",
            bare_solo.ms(99),
        ),
        budget_row(messages),
    ]
    details = {
        "jobs": sizes.jobs,
        "concurrency": sizes.concurrency,
        "domed": loop_details(dom),
        "bare": loop_details(bare),
        "domed_1_in_flight": loop_details(dom_solo),
        "bare_1_in_flight": loop_details(bare_solo),
        "domed_breakdown_p50_ms": breakdown(starts, watch.marks),
        "domed_breakdown_jobs": breakdown_n,
        # messages per job of the measured run (8 in flight), by nats-server's counters
        "budget": messages,
        # every domed job of the case, warm-up included (CPU per job divides by this)
        "domed_jobs_total": sizes.warmup_jobs + sizes.jobs + breakdown_n + solo_n,
    }
    return rows, details, bare


async def settled_counters(nc: Client | None, monitor_url: str | None) -> Snapshot | str:
    """nats-server's message counters once the projector has applied the whole stream
    and no job is pending, or why there are none."""
    if nc is None or monitor_url is None:
        return "nats-server's monitoring was not given to the case"
    waited, done = await settled(nc)
    if not done:
        return f"the projector or the executor had not caught up within {waited:.0f} s"
    try:
        return await asyncio.to_thread(read_snapshot, monitor_url)
    except (OSError, ValueError, KeyError, TypeError, http.client.HTTPException) as exc:
        return f"nats-server's monitoring not read: {type(exc).__name__}: {exc}"[:300]


def breakdown(
    starts: dict[str, tuple[float, float]], marks: dict[str, dict[str, float]]
) -> dict[str, float]:
    """Median time of each step of a job, as a subscriber sees the stored events."""
    steps: dict[str, list[float]] = {
        "submit_reply": [],
        "submit_to_queued_seen": [],
        "queued_to_started": [],
        "started_to_terminal": [],
    }
    for job_id, (t0, t_reply) in starts.items():
        m = marks.get(job_id, {})
        steps["submit_reply"].append(t_reply - t0)
        if "queued" in m:
            steps["submit_to_queued_seen"].append(m["queued"] - t0)
        if "queued" in m and "started" in m:
            steps["queued_to_started"].append(m["started"] - m["queued"])
        if "started" in m and "terminal" in m:
            steps["started_to_terminal"].append(m["terminal"] - m["started"])
    return {k: round(percentile(v, 50) * 1000, 3) for k, v in steps.items() if v}


def loop_details(r: LoopResult) -> dict[str, Any]:
    return {
        "done": r.done,
        "wall_s": round(r.wall_s, 4),
        "rate_per_s": round(r.rate, 1),
        "p50_ms": round(r.ms(50), 3),
        "p90_ms": round(r.ms(90), 3),
        "p99_ms": round(r.ms(99), 3),
        "max_ms": round(max(r.latencies_s, default=float("nan")) * 1000, 3),
        "errors": r.errors[:5],
    }


# ---- case 2: backlog ----------------------------------------------------------------------


async def case_backlog(
    nc: Client, watch: TerminalWatch, sizes: Sizes, bare: LoopResult, budget_s: float
) -> tuple[list[Row], dict[str, Any]]:
    deadline = time.monotonic() + budget_s
    n = sizes.jobs
    t0 = time.perf_counter()

    async def one() -> asyncio.Future[float]:
        return watch.expect(await submit(nc, "bench.true", {}, timeout_s=max(1.0, budget_s / 2)))

    submitted = await asyncio.wait_for(
        asyncio.gather(*(one() for _ in range(n)), return_exceptions=True),
        max(1.0, deadline - time.monotonic()),
    )
    t_submitted = time.perf_counter()
    futures = [f for f in submitted if isinstance(f, asyncio.Future)]
    errors = [repr(f) for f in submitted if not isinstance(f, asyncio.Future)]
    ends: list[float] = []
    with contextlib.suppress(TimeoutError):
        for fut in futures:
            ends.append(await asyncio.wait_for(fut, max(0.1, deadline - time.monotonic())))
    wall = (max(ends) - t0) if ends else float("nan")
    rate = len(ends) / wall if ends else float("nan")
    complete = len(ends) == n
    ratio = rate / bare.rate if bare.rate else float("nan")
    note = "" if complete else f"only {len(ends)}/{n} jobs ended in time; {errors[:3]}"
    rows = [
        Row(
            "2 backlog",
            f"`true` jobs/s, {n} submitted at once",
            rate,
            "jobs/s",
            bare.rate,
            "",
            None if complete else False,
            note or f"no target set; ratio {ratio:.2f} of the bare runner",
        ),
        Row(
            "2 backlog",
            "submit rate while the backlog builds",
            n / (t_submitted - t0),
            "req/s",
            None,
            "",
            None,
        ),
    ]
    details = {
        "jobs": n,
        "ended": len(ends),
        "submit_phase_s": round(t_submitted - t0, 4),
        "first_submit_to_last_terminal_s": round(wall, 4),
        "rate_per_s": round(rate, 1),
        "errors": errors[:5],
    }
    return rows, details


# ---- case 3: log streaming ----------------------------------------------------------------


async def bare_lines(n: int, deadline: float) -> tuple[int, float]:
    """Baseline: the same child's output read line by line with asyncio, no bus."""
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec("seq", str(n), stdout=subprocess.PIPE)
    assert proc.stdout is not None
    count = 0
    async for _ in proc.stdout:
        count += 1
        if count % 8192 == 0 and time.monotonic() > deadline:
            proc.kill()
            break
    await proc.wait()
    return count, time.perf_counter() - t0


async def case_log_stream(
    nc: Client, sizes: Sizes, budget_s: float
) -> tuple[list[Row], dict[str, Any]]:
    deadline = time.monotonic() + budget_s
    n = sizes.log_lines
    # Warm the page cache and the code paths once.
    await bare_lines(1000, deadline)
    bare_count, bare_s = await bare_lines(n, deadline)
    bare_rate = bare_count / bare_s

    logs: dict[str, list[tuple[int, int]]] = {}
    terminals: dict[str, tuple[float, Terminal]] = {}
    got_terminal = asyncio.Event()
    first_log: dict[str, float] = {}

    async def on_event(msg: Msg) -> None:
        job_id, kind = msg.subject.split(".")[1:3]
        if kind == "log":
            ev = decode_event(msg.data)
            assert isinstance(ev, Log)
            first_log.setdefault(job_id, time.perf_counter())
            logs.setdefault(job_id, []).append((ev.seq, len(ev.lines)))
        elif kind == "terminal":
            ev = decode_event(msg.data)
            assert isinstance(ev, Terminal)
            terminals[job_id] = (time.perf_counter(), ev)
            got_terminal.set()

    sub = await nc.subscribe(
        "job.*.*",
        cb=on_event,
        pending_msgs_limit=1_000_000,
        pending_bytes_limit=1024 * 1024 * 1024,
    )
    try:
        t0 = time.perf_counter()
        job_id = await submit(nc, "bench.lines", {"n": n})
        t_submitted = time.perf_counter()
        while job_id not in terminals:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            got_terminal.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(got_terminal.wait(), min(remaining, 1.0))
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()

    problems: list[str] = []
    expected = 0
    for seq, count in logs.get(job_id, []):
        if seq != expected:
            problems.append(f"seq {seq} where {expected} was expected")
        expected = max(expected, seq + count)
    seen_lines = sum(c for _, c in logs.get(job_id, []))
    term = terminals.get(job_id)
    if term is None:
        problems.append(f"no terminal within {budget_s}s; saw {seen_lines} lines")
        wall = float("nan")
    else:
        t_term, ev = term
        wall = t_term - t0
        if ev.state != "succeeded":
            problems.append(f"job ended {ev.state}")
        total = ev.lines.stdout + ev.lines.stderr
        if total != n or seen_lines != n:
            problems.append(f"terminal counts {total} lines, subscriber saw {seen_lines}, want {n}")
    rate = n / wall if not problems else float("nan")
    events = len(logs.get(job_id, []))
    rows = [
        Row(
            "3 log stream",
            f"lines/s, {n:,} lines, submit → all seq + terminal seen",
            rate,
            "lines/s",
            bare_rate,
            "≥ 1,000,000 lines/s",
            at_least(rate, 1_000_000) if not problems else False,
            "; ".join(problems[:3]) or f"gap-free; {events} log events",
        ),
    ]
    details = {
        "lines": n,
        "log_events": events,
        "lines_per_event": round(seen_lines / events, 1) if events else None,
        "submit_reply_ms": round((t_submitted - t0) * 1000, 3),
        "submit_to_first_log_ms": round((first_log[job_id] - t0) * 1000, 3)
        if job_id in first_log
        else None,
        "wall_s": round(wall, 4),
        "rate_lines_per_s": round(rate, 0) if rate == rate else None,
        "bare_lines": bare_count,
        "bare_wall_s": round(bare_s, 4),
        "bare_rate_lines_per_s": round(bare_rate, 0),
        "problems": problems,
        "job_id": job_id,
    }
    return rows, details


# ---- case 5: router submit latency --------------------------------------------------------


async def request_loop(
    nc: Client, subject: str, payload: bytes, n: int, concurrency: int, deadline: float
) -> LoopResult:
    async def one() -> float:
        t0 = time.perf_counter()
        msg = await nc.request(subject, payload, timeout=5)
        if msg.headers and ERROR_HEADER in msg.headers:
            raise BenchError(f"error reply: {msg.data[:300]!r}")
        return time.perf_counter() - t0

    return await closed_loop(n, concurrency, one, deadline)


async def case_router(
    nc: Client, url: str, sizes: Sizes, budget_s: float
) -> tuple[list[Row], dict[str, Any]]:
    deadline = time.monotonic() + budget_s
    submit_body = _json.encode({"tool": "bench.echo", "params": {"text": "hello"}})
    responder = await nats.connect(url, name="bench-echo")
    try:

        async def echo(msg: Msg) -> None:
            await msg.respond(msg.data)

        await responder.subscribe("bench.echo", cb=echo)
        # Twice: nats-py's first PING can overtake the SUB (services/runtime/connection.py, subscriptions_sent).
        await responder.flush()
        await responder.flush()
        results: dict[str, LoopResult] = {}
        for label, subject in (("echo", "bench.echo"), ("router", subjects.SUBMIT)):
            await request_loop(nc, subject, submit_body, 50, 1, deadline)  # warm-up
            results[f"{label}_seq"] = await request_loop(
                nc, subject, submit_body, sizes.router_seq, 1, deadline
            )
            results[f"{label}_conc"] = await request_loop(
                nc,
                subject,
                submit_body,
                sizes.router_conc_total,
                sizes.router_concurrency,
                deadline,
            )
    finally:
        await responder.close()

    rs, es = results["router_seq"], results["echo_seq"]
    rc, ec = results["router_conc"], results["echo_conc"]
    complete = all(r.done and not r.errors for r in results.values())
    added = rs.ms(50) - es.ms(50)
    c = sizes.router_concurrency
    rows = [
        Row("5 router", "submit p50, sequential", rs.ms(50), "ms", es.ms(50)),
        Row(
            "5 router",
            "router's added p50 (submit p50 − echo p50)",
            added,
            "ms",
            None,
            "≤ 1 ms",
            at_most(added, 1.0) if complete else False,
            "" if complete else f"errors: {[r.errors[:2] for r in results.values()]}",
        ),
        Row("5 router", "submit p99, sequential", rs.ms(99), "ms", es.ms(99)),
        Row("5 router", "submits/s, sequential", rs.rate, "req/s", es.rate),
        Row("5 router", f"submits/s, {c} concurrent", rc.rate, "req/s", ec.rate),
        Row("5 router", f"submit p50, {c} concurrent", rc.ms(50), "ms", ec.ms(50)),
        Row("5 router", f"submit p99, {c} concurrent", rc.ms(99), "ms", ec.ms(99)),
    ]
    details = {name: loop_details(r) for name, r in results.items()}
    return rows, details


# ---- case 4: projection rebuild -----------------------------------------------------------


def _ts(i: int) -> str:
    return f"2025-01-01T00:{(i // 60) % 60:02d}:{i % 60:02d}.{i % 1_000_000:06d}Z"


def synthetic_job(rng: random.Random, i: int) -> list[Event]:
    """One job's events: mostly small jobs, some chatty ones with log batches and progress,
    a few failed or canceled; every event a valid contracts.events value."""
    job_id = str(ULID())
    ts = _ts(i)
    roll = rng.random()
    queued = Queued(
        job_id=job_id,
        tool="bench.echo" if roll < 0.5 else "bench.lines",
        tool_version=1,
        manifest_sha256="0" * 64,
        params={"text": f"job {i}"} if roll < 0.5 else {"n": i},
        submitted_at=ts,
        timeout_s=30.0,
        labels={"team": f"t{i % 7}"} if i % 3 == 0 else {},
        idempotency_key=None,
    )
    if roll < 0.03:  # canceled before it started
        return [
            queued,
            Cancel(job_id=job_id, requested_at=ts, reason="bench"),
            Terminal(
                job_id=job_id,
                state="canceled",
                finished_at=ts,
                attempt=0,
                lines=LineCounts(),
                truncated=False,
                signals_sent=[],
            ),
        ]
    started = Started(job_id=job_id, executor="bench-0", pid=1000 + i, attempt=1, started_at=ts)
    if roll < 0.90:  # small: one log batch
        n_logs, per, progress_every = 1, rng.randint(1, 4), 0
    elif roll < 0.99:  # medium
        n_logs, per, progress_every = 10, 16, 5
    else:  # chatty
        n_logs, per, progress_every = 100, 32, 5
    events: list[Event] = [queued, started]
    seq = 0
    for k in range(n_logs):
        lines = [f"{seq + j:07d} bench output line" for j in range(per)]
        events.append(Log(job_id=job_id, attempt=1, stream="stdout", seq=seq, lines=lines, ts=ts))
        seq += per
        if progress_every and k % progress_every == progress_every - 1:
            events.append(Progress(job_id=job_id, attempt=1, ts=ts, current=k + 1, total=n_logs))
    failed = roll > 0.95
    events.append(
        Terminal(
            job_id=job_id,
            state="failed" if failed else "succeeded",
            finished_at=ts,
            attempt=1,
            exit_code=1 if failed else 0,
            started_at=ts,
            duration_s=0.01,
            lines=LineCounts(stdout=seq),
            truncated=False,
            signals_sent=[],
            rusage=Rusage(max_rss_kb=2048, user_s=0.001, sys_s=0.001),
        )
    )
    return events


def synthetic_stream(target: int, seed: int = 1) -> list[Event]:
    """At least ``target`` events, eight jobs at a time interleaved as running jobs are."""
    rng = random.Random(seed)
    out: list[Event] = []
    i = 0
    while len(out) < target:
        group = [synthetic_job(rng, i + k) for k in range(8)]
        i += 8
        longest = max(len(g) for g in group)
        for step in range(longest):
            for g in group:
                if step < len(g):
                    out.append(g[step])
    return out


async def publish_synthetic(nc: Client, events: list[Event], deadline: float) -> dict[str, Any]:
    """Publish through the ingest subjects with the headers the services use."""
    js = nc.jetstream(publish_async_max_pending=4000)
    counters: dict[str, int] = {}
    futures = []
    t0 = time.perf_counter()
    nbytes = 0
    for ev in events:
        kind = type(ev).__struct_config__.tag
        assert isinstance(kind, str)
        n = counters.get(ev.job_id + kind, 0)
        counters[ev.job_id + kind] = n + 1
        headers = {"Nats-Msg-Id": subjects.msg_id(ev.job_id, kind, n)}
        if kind == "terminal":
            headers["Nats-Expected-Last-Subject-Sequence"] = "0"
        payload = encode_event(ev)
        nbytes += len(payload)
        futures.append(
            await js.publish_async(
                subjects.ingest_subject(ev.job_id, kind),
                payload,
                headers=headers,
                wait_stall=max(0.1, deadline - time.monotonic()),
            )
        )
    done, pending = await asyncio.wait(futures, timeout=max(0.1, deadline - time.monotonic()))
    failed = sum(1 for f in done if f.exception() is not None)
    for f in pending:
        f.cancel()
    took = time.perf_counter() - t0
    return {
        "events": len(events),
        "bytes": nbytes,
        "failed": failed + len(pending),
        "publish_s": round(took, 3),
        "publish_rate_per_s": round(len(events) / took, 0),
    }


async def read_stream_discarding(nc: Client, messages: int, deadline: float) -> tuple[int, float]:
    """Baseline: an ordered consumer from seq 1 with a callback that discards."""
    js = nc.jetstream()
    count = 0
    done = asyncio.Event()

    async def discard(msg: Msg) -> None:
        nonlocal count
        count += 1
        if count >= messages:
            done.set()

    t0 = time.perf_counter()
    sub = await js.subscribe(
        subjects.STORED_SUBJECTS,
        stream=subjects.STREAM,
        cb=discard,
        ordered_consumer=True,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        pending_msgs_limit=-1,
        pending_bytes_limit=256 * 1024 * 1024,
    )
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), max(0.1, deadline - time.monotonic()))
    finally:
        took = time.perf_counter() - t0
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return count, took


async def case_rebuild(
    stack: Stack,
    sizes: Sizes,
    budget_s: float,
    profile_out: Path | None = None,
    slow: float = 1.0,
) -> tuple[list[Row], dict[str, Any]]:
    """``slow`` is the run's measured slowdown (bench.limits): the limits of the steps
    before the stream's own baseline read is taken follow it; the rebuilds' limits
    follow that baseline read."""
    sync_always = stack.server.sync_always
    # Preparing the stream is not what is measured: write it with nats-server's default
    # sync (fsync every two minutes), then restart the server as configured to measure.
    if sync_always:
        await asyncio.to_thread(stack.restart_server, False)
    nc = await nats.connect(stack.url, name="bench-prepare")
    try:
        js = nc.jetstream()
        before = (await js.stream_info(subjects.STREAM)).state
        need = max(0, sizes.rebuild_events - int(before.messages))
        t_gen = time.perf_counter()
        events = synthetic_stream(need) if need else []
        gen_s = time.perf_counter() - t_gen
        # ~77k/s windowed in a quick spell; a quarter of that, times the run's slowdown.
        publish_limit = limit_s(need, 20_000 / slow, margin=4.0, floor_s=min(20.0, budget_s))
        published = await publish_synthetic(nc, events, time.monotonic() + publish_limit)
        published["generate_s"] = round(gen_s, 3)
        del events
    finally:
        await nc.close()
    if sync_always:
        await asyncio.to_thread(stack.restart_server, True)
    nc = await nats.connect(stack.url, name="bench-rebuild")
    try:
        return await _rebuild(stack, nc, before, published, slow, profile_out, sizes.rebuild_runs)
    finally:
        await nc.close()


async def _rebuild(
    stack: Stack,
    nc: Client,
    before: Any,
    published: dict[str, Any],
    slow: float,
    profile_out: Path | None,
    runs: int = 1,
) -> tuple[list[Row], dict[str, Any]]:
    js = nc.jetstream()
    info = (await js.stream_info(subjects.STREAM)).state
    last_seq = int(info.last_seq)
    total = int(info.messages)

    async def baseline() -> tuple[int, float, float]:
        """A discarding read of the whole stream: (events, s, events/s)."""
        read_limit = limit_s(total, REFERENCE_READ_RATE / slow, margin=4.0, floor_s=15.0)
        count, took = await read_stream_discarding(nc, total, time.monotonic() + read_limit)
        return count, took, count / took if took > 0 else float("nan")

    base_count, base_s, base_rate = await baseline()
    store_limit, kv_limit = rebuild_limits(total, base_rate)

    proj = ServiceProcess(
        "projector", stack.url, stack.ssot, stack.data_dir, ("--rebuild",), stack.src
    ).start()
    t_launch = time.monotonic()
    problems: list[str] = []
    sampler = RssSampler({"projector": proj.pid, "nats-server": stack.server_pid})
    with sampler, profiled(proj.pid if profile_out else None, profile_out or Path()):
        try:
            await wait_for_report(proj, "store", store_limit)
            # Done when the KV mirror has caught up too (each job is put into it once more).
            await wait_for_report(proj, "kv", kv_limit)
            t_done = time.monotonic()
        except (TimeoutError, RuntimeError) as exc:
            problems.append(str(exc)[:300])
            t_done = float("nan")
        # Check from outside that the projection reached the stream's end.
        projected = await projected_seq(nc)
    hwm = read_status_kb(proj.pid, "VmHWM")
    await asyncio.to_thread(proj.stop)
    if projected is not None and projected < last_seq:
        problems.append(f"projected_seq {projected} < last seq {last_seq}")
    wall = t_done - t_launch
    first = rebuild_report(proj.log_text())
    kv_repair = kv_repair_of(first)
    rates = [first.events_per_s if first else float("nan")]
    cpus = [first.cpu_us_per_event if first else float("nan")]
    bases = [base_rate]
    intact: tuple[RebuildReport, float] | None = None  # and its peak RSS, MB
    for i in range(1, runs):  # the store only, but the last one repairs the KV as well
        _, _, again_base = await baseline()
        bases.append(again_base)
        again = await _rebuild_again(
            stack, *rebuild_limits(total, again_base), with_kv=i == runs - 1
        )
        if isinstance(again, str):
            problems.append(f"rebuild {i + 1} of {runs}: {again}")
            break
        rates.append(again[0].events_per_s)
        cpus.append(again[0].cpu_us_per_event)
        if i == runs - 1:
            intact = again
    rate, cpu_us = finite_median(rates), finite_median(cpus)
    base_rate = finite_median(bases)
    runs_note = (
        f"median of {len(rates)} rebuilds: "
        + " / ".join(f"{r:,.0f}" if r == r else "—" for r in rates)
        + " events/s at "
        + " / ".join(f"{c:.2f}" if c == c else "—" for c in cpus)
        + " µs of CPU per event; "
        if len(rates) > 1
        else ""
    )
    rows = [
        Row(
            "4 rebuild",
            f"events/s, `projector --rebuild` of {total:,} events (as it reports)",
            rate,
            "events/s",
            base_rate,
            "≥ 200,000 events/s",
            at_least(rate, 200_000) if not problems else False,
            "".join(f"{p}; " for p in problems)
            + runs_note
            + f"{published['events']:,} synthetic + {int(before.messages):,} real events"
            + (f"; the projector's CPU: {cpu_us:.2f} µs per event" if cpu_us == cpu_us else ""),
        ),
        Row(
            "4 rebuild",
            "events/s, process launch → store and KV rebuilt",
            total / wall if wall == wall else float("nan"),
            "events/s",
            base_rate,
            "",
            None,
            "includes interpreter start, provisioning and the KV repair",
        ),
        Row(
            "4 rebuild",
            "peak RSS projector, rebuild and KV repair",
            sampler.peak_kb["projector"] / 1024,
            "MB",
            None,
            "≤ 60 MB",
            at_most(sampler.peak_kb["projector"] / 1024, 60.0),
            "sampled every 20 ms from /proc/<pid>/status",
        ),
        Row(
            "4 rebuild",
            "KV repair after the store is rebuilt, s",
            kv_repair[0] if kv_repair else float("nan"),
            "s",
            None,
            "",
            None,
            f"{kv_repair[1]:,} jobs put into domed-jobs, {kv_repair[2]:,} found right already"
            if kv_repair
            else "",
        ),
    ]
    if intact is not None:
        intact_kv, intact_peak_mb = kv_repair_of(intact[0]), intact[1]
        rows.append(
            Row(
                "4 rebuild",
                "peak RSS projector, rebuild over an intact KV and its repair",
                intact_peak_mb,
                "MB",
                None,
                "≤ 60 MB",
                at_most(intact_peak_mb, 60.0),
                (
                    f"the repair read the bucket back in {intact_kv[0]:.2f} s: "
                    f"{intact_kv[1]:,} jobs put, {intact_kv[2]:,} found right"
                )
                if intact_kv
                else "",
            )
        )
    details = {
        "stream_messages": total,
        "stream_bytes": int(info.bytes),
        "last_seq": last_seq,
        "real_events_before": int(before.messages),
        "synthetic": published,
        "reported_events": first.events if first else None,
        "reported_s": first.store_s if first else None,
        "projector_cpu_us_per_event": rounded(cpu_us, 3),
        "rebuild_rates": [rounded(r) for r in rates],
        "intact_kv_peak_rss_mb": round(intact[1], 1) if intact else None,
        "intact_kv_repair": kv_repair_of(intact[0]) if intact else None,
        "rebuild_cpu_us_per_event": cpus,
        "baseline_rates": [rounded(b) for b in bases],
        "limits_s": {"store": round(store_limit, 1), "kv": round(kv_limit, 1)},
        "launch_to_done_s": round(wall, 3) if wall == wall else None,
        "projected_seq": projected,
        "baseline_events": base_count,
        "baseline_s": round(base_s, 3),
        "projector_peak_rss_mb": round(sampler.peak_kb["projector"] / 1024, 1),
        "cpu_s_by_process": sampler.cpu_s,
        "sampled_wall_s": round(sampler.wall_s, 3),
        "projector_vmhwm_mb": round(hwm / 1024, 1) if hwm else None,
        "problems": problems,
    }
    return rows, details


def rebuild_report(text: str) -> RebuildReport | None:
    """The furthest report of a ``projector --rebuild`` whose output is ``text``: the JSON
    lines it writes on stdout (services.projector.rebuild); its log lines are not JSON."""
    reports = {}
    for line in text.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(msgspec.DecodeError):
                report = decode_report(line)
                reports[report.stage] = report
    return reports.get("kv") or reports.get("store")


def kv_repair_of(report: RebuildReport | None) -> tuple[float, int, int] | None:
    """(s after the store, jobs put, jobs already right) once a report says the KV caught up."""
    if report is None or report.kv_s is None:
        return None
    return report.kv_s, report.kv_jobs_put or 0, report.kv_jobs_right or 0


async def wait_for_report(proj: ServiceProcess, stage: str, timeout_s: float) -> None:
    """Until the rebuilding projector has reported ``stage`` (``store``, then ``kv``);
    TimeoutError after ``timeout_s``."""
    reached = ("store", "kv") if stage == "store" else ("kv",)  # the kv line comes last

    def reported(text: str) -> bool:
        report = rebuild_report(text)
        return report is not None and report.stage in reached

    await asyncio.to_thread(
        proj.wait_for_log,
        reported,
        f"the rebuild's {stage} report",
        round(timeout_s, 1),
    )


async def _rebuild_again(
    stack: Stack, store_limit_s: float, kv_limit_s: float, *, with_kv: bool = False
) -> tuple[RebuildReport, float] | str:
    """One more ``projector --rebuild`` and its peak RSS in MB, or why it gave none. It
    is stopped once the store is rebuilt, or, with ``with_kv``, once it has also
    repaired the KV, which the first rebuild left intact: the repair then reads the
    whole bucket back and puts what differs."""
    proj = ServiceProcess(
        "projector", stack.url, stack.ssot, stack.data_dir, ("--rebuild",), stack.src
    ).start()
    sampler = RssSampler({"projector": proj.pid})
    try:
        with sampler:
            await wait_for_report(proj, "store", store_limit_s)
            if with_kv:
                await wait_for_report(proj, "kv", kv_limit_s)
    except (TimeoutError, RuntimeError) as exc:
        return str(exc)[:300]
    finally:
        await asyncio.to_thread(proj.stop)
    report = rebuild_report(proj.log_text())
    if report is None or report.store_s <= 0:
        return "no report with a positive store time"
    return report, sampler.peak_kb["projector"] / 1024


async def projected_seq(nc: Client) -> int | None:
    """``projected_seq`` from any projector reply (an unknown job's error carries it too)."""
    try:
        msg = await nc.request(subjects.JOBS_LIST, b'{"limit": 1}', timeout=5)
        return int(json.loads(msg.data)["projected_seq"])
    except (nats.errors.Error, TimeoutError, KeyError, ValueError):
        return None


async def settle(nc: Client, timeout_s: float = SETTLE_LIMIT_S) -> float:
    """Wait until the previous case's work is done: the projector has applied the whole
    stream and no queued job is pending, so cases do not measure each other's tails."""
    return (await settled(nc, timeout_s))[0]


async def settled(nc: Client, timeout_s: float = SETTLE_LIMIT_S) -> tuple[float, bool]:
    """``settle``: the seconds it waited, and whether the work was done by then."""
    js = nc.jetstream()
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        try:
            last = (await js.stream_info(subjects.STREAM)).state.last_seq
            consumer = await js.consumer_info(subjects.STREAM, subjects.EXECUTORS_CONSUMER)
        except (nats.errors.Error, TimeoutError):
            await asyncio.sleep(0.1)
            continue
        projected = await projected_seq(nc)
        if (
            projected is not None
            and projected >= last
            and not consumer.num_pending
            and not consumer.num_ack_pending
        ):
            await asyncio.sleep(0.2)  # the KV mirror follows each commit
            return round(time.monotonic() - t0, 3), True
        await asyncio.sleep(0.05)
    return round(time.monotonic() - t0, 3), False


# ---- case 6: memory -----------------------------------------------------------------------


def idle_client_rss_kb(url: str) -> int:
    """Baseline: RSS of a Python process that imports nats-py, connects and idles."""
    code = (
        "import asyncio, nats, os\n"
        "async def main():\n"
        f"    nc = await nats.connect({url!r})\n"
        "    await nc.flush()\n"
        "    print('ready', flush=True)\n"
        "    await asyncio.sleep(30)\n"
        "asyncio.run(main())\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, cwd=ROOT, stdin=subprocess.DEVNULL
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        time.sleep(0.2)
        return read_status_kb(proc.pid, "VmRSS") or 0
    finally:
        proc.kill()
        proc.wait(5)


def rss_rows(
    peaks: dict[str, int], hwm: dict[str, int | None], baseline_kb: int
) -> tuple[list[Row], dict[str, Any]]:
    rows = []
    for name, kb in peaks.items():
        mb = kb / 1024
        if name == "nats-server":
            rows.append(Row("6 memory", "peak RSS nats-server", mb, "MB", None, "", None))
        else:
            rows.append(
                Row(
                    "6 memory",
                    f"peak RSS {name}",
                    mb,
                    "MB",
                    baseline_kb / 1024,
                    "≤ 60 MB",
                    at_most(mb, 60.0),
                    "baseline: an idle Python process with nats-py connected",
                )
            )
    details = {
        "peak_rss_mb_sampled": {k: round(v / 1024, 1) for k, v in peaks.items()},
        "vmhwm_mb_after_case3": {k: round(v / 1024, 1) if v else None for k, v in hwm.items()},
        "baseline_idle_nats_py_client_mb": round(baseline_kb / 1024, 1),
    }
    return rows, details
