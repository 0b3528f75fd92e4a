"""Run every case in order against one nats-server and print one table.

Order: services up → a short bare-runner run that measures the machine's pace (every
case's time limit is scaled by it) → case 1 and 3 under the RSS sampler (case 2
between them) → case 7 (Celery + Redis and domed by turns) → executor and projector stopped → case 5 (router alone, so executions do not
compete for the two cores) → router stopped → case 4 (synthetic events, then a
``projector --rebuild``) → case 6 rows from the samples taken during 1 and 3.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import platform
import sys
import time
import traceback
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import nats

from bench import cases, peers
from bench.harness import (
    ROOT,
    RssSampler,
    Stack,
    git_commit,
    loadavg,
    nats_server_version,
    read_status_kb,
    stack,
)
from bench.limits import REFERENCE_SPAWN_RATE, slowdown
from bench.profile import profiled, py_spy, summarize
from bench.report import Row, table, write_json

DEFAULT_JSON = ROOT / "bench" / "results" / "latest.json"

# Seconds each case may take before it is cut short, on this machine in a quick spell
# (full run; --quick uses a third). Each is multiplied by the run's measured slowdown.
BUDGET_S = {"1": 60.0, "2": 45.0, "3": 40.0, "5": 45.0, "4": 75.0}
ALL_CASES = "1,2,3,4,5,6,7"

T = TypeVar("T")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench", description="domed benchmarks (not part of the tests)"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        default=os.environ.get("QUICK", "") not in ("", "0"),
        help="a short run (< 1 minute); also env QUICK=1",
    )
    p.add_argument(
        "--json",
        type=Path,
        default=DEFAULT_JSON,
        help=f"where to write the results (default {DEFAULT_JSON.relative_to(ROOT)})",
    )
    p.add_argument(
        "--only",
        default=ALL_CASES,
        help="comma-separated cases to run (default all; 6 needs 1 or 3)",
    )
    p.add_argument(
        "--keep", action="store_true", help="keep the temp dir (server store, service logs)"
    )
    p.add_argument(
        "--nats-sync",
        choices=("always", "default"),
        default="always",
        help="nats-server file store sync: 'always' (fsync every write, as `domed up` "
        "runs it; the default) or nats-server's own default (every 2 minutes)",
    )
    p.add_argument(
        "--ref",
        default="",
        metavar="COMMIT",
        help="run the services from `git archive COMMIT` (e.g. HEAD) instead of the working "
        "tree, so concurrent edits do not change what is measured",
    )
    p.add_argument(
        "--profile",
        default="",
        metavar="SERVICES",
        help="comma-separated services (router,executor,projector) to record with py-spy "
        "during each case they take part in (projector: also the rebuild of case 4); "
        "the profiles and their summaries go next to the JSON file",
    )
    return p.parse_args(argv)


class Run:
    """One bench run: the rows, the details, and what went wrong."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.sizes = cases.Sizes.quick() if args.quick else cases.Sizes()
        self.scale = 1 / 3 if args.quick else 1.0
        self.budget = {k: v * self.scale for k, v in BUDGET_S.items()}
        self.pace_rate = float("nan")  # the bare runner at the start of the run, jobs/s
        self.slowdown = 1.0
        self.only = set(args.only.split(","))
        self.rows: list[Row] = []
        self.details: dict[str, Any] = {}
        self.failures: list[str] = []
        self.started = time.monotonic()
        self.profile_names = {n for n in args.profile.split(",") if n}
        self.profile_dir: Path = args.json.parent
        self.summaries: list[str] = []
        self.peaks: dict[str, int] = {}
        self.hwm: dict[str, int | None] = {}
        if self.profile_names and py_spy() is None:
            raise SystemExit(
                "--profile needs py-spy: pip install py-spy (not a project dependency)"
            )

    def record(self, name: str, rows: list[Row], details: dict[str, Any]) -> None:
        self.rows.extend(rows)
        self.details[name] = details
        print(f"  case {name} done at {time.monotonic() - self.started:5.1f}s", file=sys.stderr)

    async def guarded(self, case: str, coro: Awaitable[T]) -> T | None:
        """Run one case; an exception is recorded (traceback on stderr) and shown as the
        case's row in the table, never raised."""
        try:
            return await coro
        except Exception as exc:
            traceback.print_exc()
            reason = f"{type(exc).__name__}: {exc}"[:500]
            self.failures.append(f"case {case}: {reason}")
            self.rows.append(
                Row(case, "no figures: the case failed", float("nan"), "", ok=False, note=reason)
            )
            return None

    async def measure_pace(self) -> None:
        """The bare runner for a moment: how slow the machine is now against a quick
        spell; every case's budget is scaled by it, so a slow spell is measured too."""
        sizes = self.sizes
        limit = time.monotonic() + 60
        await cases.bare_true(sizes.warmup_jobs, sizes.concurrency, limit)
        pace = await cases.bare_true(max(200, sizes.jobs // 5), sizes.concurrency, limit)
        self.pace_rate = pace.rate
        self.slowdown = slowdown(pace.rate, REFERENCE_SPAWN_RATE)
        self.budget = {k: v * self.scale * self.slowdown for k, v in BUDGET_S.items()}

    @contextlib.contextmanager
    def profiling(self, st: Stack, case: str) -> Iterator[None]:
        outs: list[Path | None] = []
        with contextlib.ExitStack() as es:
            for name in sorted(self.profile_names):
                if name in st.services:
                    out = self.profile_dir / f"profile-{name}-case{case}.txt"
                    outs.append(es.enter_context(profiled(st.services[name].pid, out)))
            yield
        self.summaries.extend(summarize(o) for o in outs if o is not None)

    def profile_path(self, name: str, case: str) -> Path | None:
        if name not in self.profile_names:
            return None
        return self.profile_dir / f"profile-{name}-case{case}.txt"

    async def run(self) -> int:
        args, sizes = self.args, self.sizes
        meta: dict[str, Any] = {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "commit": git_commit(args.ref),
            "source": f"git archive {args.ref}" if args.ref else "working tree",
            "quick": args.quick,
            "sizes": dict(sizes.__dict__),
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "nats_server": nats_server_version(),
            "nats_sync": args.nats_sync,
            "loadavg_start": loadavg(),
        }
        await self.measure_pace()
        meta["pace_bare_jobs_per_s"] = round(self.pace_rate, 1)
        meta["slowdown"] = round(self.slowdown, 2)
        with stack(keep=args.keep, sync_always=args.nats_sync == "always", ref=args.ref) as st:
            print(
                f"bench: nats-server {st.url}, temp dir {st.root}, services from {meta['source']}",
                file=sys.stderr,
            )
            try:
                st.start_services(slots=sizes.concurrency)
            except (RuntimeError, TimeoutError) as exc:
                print(f"bench: the services did not start: {exc}", file=sys.stderr)
                return 2
            await self._cases(st)

        meta["loadavg_end"] = loadavg()
        meta["wall_s"] = round(time.monotonic() - self.started, 1)
        meta["failures"] = self.failures
        rows = sorted(self.rows, key=lambda r: r.case[0])
        print()
        print(
            f"domed bench — {meta['date']} — commit {meta['commit']} — "
            f"{'quick' if args.quick else 'full'} run, {meta['wall_s']}s — "
            f"nats sync {args.nats_sync} — "
            f"pace: bare runner {self.pace_rate:,.0f} jobs/s, limits × {self.slowdown:.2f} — "
            f"load avg {meta['loadavg_start'][0]} → {meta['loadavg_end'][0]} on {meta['cpus']} CPUs"
        )
        print()
        print(table(rows))
        for r in rows:
            if r.note:
                print(f"  {r.case} / {r.metric}: {r.note}")
        for f in self.failures:
            print(f"  FAILED: {f}")
        for s in self.summaries:
            print()
            print(s)
        write_json(args.json, meta, rows, self.details)
        print(f"\nresults: {args.json}")
        return 1 if self.failures else 0

    async def _cases(self, st: Stack) -> None:
        nc = await nats.connect(st.url, name="bench", max_reconnect_attempts=3)
        try:
            await self._live_cases(st, nc)
        finally:
            await nc.close()
        # Case 4 restarts nats-server, so it runs with connections of its own.
        if "4" in self.only:
            out4 = await self.guarded(
                "4",
                cases.case_rebuild(
                    st,
                    self.sizes,
                    self.budget["4"],
                    self.profile_path("projector", "4"),
                    self.slowdown,
                ),
            )
            if out4:
                self.record("4_rebuild", *out4)
                prof = self.profile_path("projector", "4")
                if prof is not None:
                    self.summaries.append(summarize(prof))
        if "6" in self.only and self.peaks:
            base_kb = cases.idle_client_rss_kb(st.url)
            self.record("6_memory", *cases.rss_rows(self.peaks, self.hwm, base_kb))

    async def _live_cases(self, st: Stack, nc: nats.NATS) -> None:
        sizes, budget, only = self.sizes, self.budget, self.only
        watch = await cases.TerminalWatch().start(nc)
        peaks = self.peaks
        bare: cases.LoopResult | None = None
        if "1" in only:
            self.details["settle_s_before_1"] = await cases.settle(nc)
            with self.profiling(st, "1"), RssSampler(st.pids()) as s1:
                out1 = await self.guarded(
                    "1",
                    cases.case_closed_loop(
                        nc,
                        watch,
                        sizes,
                        budget["1"],
                        url=st.url,
                        monitor_url=st.server.monitor_url,
                    ),
                )
            if out1:
                rows, d, bare = out1
                d["cpu_s_by_process"] = s1.cpu_s
                d["sampled_wall_s"] = round(s1.wall_s, 3)
                jobs = d.get("domed_jobs_total", sizes.jobs + sizes.warmup_jobs)
                d["cpu_ms_per_job"] = {
                    k: round(v / jobs * 1000, 3) for k, v in s1.cpu_s.items() if k != "bench"
                }
                if "executor" in s1.children_cpu_s:
                    d["jobs_cpu_ms_per_job"] = round(s1.children_cpu_s["executor"] / jobs * 1000, 3)
                steps = d.get("domed_breakdown_p50_ms", {})
                if rows and not rows[0].note:
                    rows[0].note = (
                        "p50 steps (ms): "
                        + ", ".join(f"{k} {v}" for k, v in steps.items())
                        + "; CPU ms/job: "
                        + ", ".join(f"{k} {v}" for k, v in d["cpu_ms_per_job"].items())
                        + (
                            f"; the jobs' own processes (gate and tool) {jobs_ms}"
                            if (jobs_ms := d.get("jobs_cpu_ms_per_job")) is not None
                            else ""
                        )
                    )
                self.record("1_closed_loop", rows, d)
            merge_peaks(peaks, s1.peak_kb)
        if "2" in only:
            if bare is None:
                bare = await cases.bare_true(sizes.jobs, sizes.concurrency, time.monotonic() + 30)
            self.details["settle_s_before_2"] = await cases.settle(nc)
            with self.profiling(st, "2"):
                out2 = await self.guarded(
                    "2", cases.case_backlog(nc, watch, sizes, bare, budget["2"])
                )
            if out2:
                self.record("2_backlog", *out2)
        if "3" in only:
            self.details["settle_s_before_3"] = await cases.settle(nc)
            with self.profiling(st, "3"), RssSampler(st.pids()) as s3:
                out3 = await self.guarded("3", cases.case_log_stream(nc, sizes, budget["3"]))
            if out3:
                out3[1]["cpu_s_by_process"] = s3.cpu_s
                out3[1]["sampled_wall_s"] = round(s3.wall_s, 3)
                self.record("3_log_stream", *out3)
            merge_peaks(peaks, s3.peak_kb)
        self.hwm = {name: read_status_kb(pid, "VmHWM") for name, pid in st.pids().items()}
        if "7" in only:
            self.details["settle_s_before_7"] = await cases.settle(nc)
            args = self.args
            out7 = await self.guarded(
                "7",
                peers.case_peers(
                    peers.DomedTarget(st, nc, watch),
                    args.nats_sync,
                    lambda: stack(
                        keep=args.keep, sync_always=args.nats_sync != "always", ref=args.ref
                    ),
                    sizes,
                    self.pace_rate,
                    args.keep,
                ),
            )
            if out7:
                self.record("7_peers", *out7)
        await watch.stop()
        self.details["terminal_states_seen"] = dict(watch.states)

        # Case 5 measures the router alone: no executions competing for the two cores.
        if "5" in only:
            self.details["settle_s_before_5"] = await cases.settle(nc)
        st.stop_service("executor")
        st.stop_service("projector")
        if "5" in only:
            with self.profiling(st, "5"):
                out5 = await self.guarded("5", cases.case_router(nc, st.url, sizes, budget["5"]))
            if out5:
                self.record("5_router", *out5)
        st.stop_service("router")


def merge_peaks(into: dict[str, int], new: dict[str, int]) -> None:
    for name, kb in new.items():
        into[name] = max(into.get(name, 0), kb)


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(Run(parse_args(argv)).run())
