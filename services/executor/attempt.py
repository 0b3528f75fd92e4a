"""One attempt of a job on this executor, and everything it holds while it runs: its
working dir, its process (through the backend), its record, its hold, its event
pipeline and its heartbeat. ``Attempt.run`` releases all of them on every way out, and
says how the attempt ended; what that means for the delivery is ``delivery.py``'s.

The order matters: the process is spawned held at its gate, ``started`` is stored only
if the job's newest event is still the one the delivery decided on, and only then does
the gate open and the tool run. The job's hold is written from the first heartbeat on.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import nats.js.errors
from nats.aio.msg import Msg

from contracts.errors import TerminalErrorCode
from contracts.events import (
    Artifact,
    LineCounts,
    Queued,
    Rusage,
    Started,
    Terminal,
    TerminalError,
    now_iso,
)
from services.catalogue.loader import Tool
from services.catalogue.paths import confined_params
from services.catalogue.render import child_env, fixed_work_dir, render_argv, secret_values
from services.executor import adopted, artifacts, core, decide, limits, records, secrets, slots
from services.executor.backend import JobHandle, SpawnRequest
from services.executor.context import ExecutorContext, RunningJob
from services.executor.heartbeat import SUPERSEDED, heartbeat
from services.executor.output import JobOutput
from services.executor.ownership import Ownership
from services.executor.publisher import EventPipeline, Superseded
from services.executor.results import InvalidResult, read_result, result_name
from services.executor.runner import Exit, rusage_fields
from services.executor.terminals import store_terminal
from services.runtime import failures, jobstream
from services.runtime.sealing import SealingError

log = logging.getLogger("domed.executor")

DRAIN_PIPES_S = 2.0
# How often a running job's cgroup counters are read: CPU time may overrun `cpu_s` by
# up to this much per core. Jobs shorter than it are never polled.
LIMIT_POLL_S = 0.25
SPAWNS = itertools.count()


@dataclass(frozen=True)
class Finished:
    """The run ended and its terminal is stored (``stored``), or kept on this host for the
    next executor because this one is stopping while NATS is away."""

    stored: bool


@dataclass(frozen=True)
class Refused:
    """The server refused ``started``: the job's newest event is no longer ``decided_seq``.
    The tool never ran."""

    decided_seq: int


@dataclass(frozen=True)
class CouldNotStart:
    """The job's command could not be prepared or started; nothing was published."""

    message: str


@dataclass(frozen=True)
class Retrying:
    """The run ended in a state its manifest retries, with attempts left: ``terminal`` is
    what it would have stored; the next attempt is due ``delay_s`` later. Nothing about
    the end was published yet."""

    terminal: Terminal
    started: decide.Attempted
    delay_s: float


@dataclass(frozen=True)
class Replaced:
    """Another executor ended or re-ran the job meanwhile: nothing more was published."""


Outcome = Finished | Retrying | Refused | CouldNotStart | Replaced


class Attempt:
    def __init__(
        self,
        ctx: ExecutorContext,
        msg: Msg,
        tool: Tool,
        queued: Queued,
        attempt: int,
        last_seq: int,
        slot: slots.Slot | None,
    ) -> None:
        self.ctx = ctx
        self.msg = msg
        self.tool = tool
        self.queued = queued
        self.job = RunningJob(queued.job_id, attempt, tool=queued.tool)
        self.last_seq = last_seq
        self.slot = slot
        self.work_dir = ""
        self.remove_dir = False
        self.secrets = secrets.Delivery()
        self.limits = limits.JobLimits.of(tool.manifest.limits)

    @property
    def job_id(self) -> str:
        return self.job.job_id

    async def run(self) -> Outcome:
        ctx = self.ctx
        with contextlib.ExitStack() as cleanup:
            ctx.running[self.job_id] = self.job
            cleanup.callback(ctx.running.pop, self.job_id, None)
            cleanup.callback(self._remove_work_dir)
            manifest = self.tool.manifest
            try:
                params = await self._params()
            except SealingError as exc:
                return CouldNotStart(str(exc))
            try:
                request = self._request(params)
            except Exception as exc:
                return CouldNotStart(f"could not prepare the job: {exc}")
            output = JobOutput(manifest, secret_values(manifest, params))
            started_mono = time.monotonic()
            try:
                proc = ctx.backend.spawn(request, output.on_output)
            except OSError as exc:
                return CouldNotStart(f"{request.argv[0]}: {exc.strerror or exc}")
            self._own_process(cleanup, proc)
            started = Started(
                job_id=self.job_id,
                executor=ctx.name,
                pid=proc.pid,
                attempt=self.job.attempt,
                started_at=now_iso(),
            )
            sent = time.monotonic()
            stored_at = await jobstream.publish_if_newest(
                ctx.js, started, started.attempt, self.last_seq
            )
            if stored_at is None:
                proc.shut_gate()
                proc.kill_leftovers()
                await proc.wait_exit()
                return Refused(self.last_seq)
            self.job.started_seq = stored_at
            proc.open_gate()
            ownership = Ownership(
                ctx.js,
                self.job_id,
                started.attempt,
                ctx.holds.lease_s,
                started_at=sent,
                first_window_s=first_hold_window(ctx.heartbeat_s),
            )
            pipeline = self._pipeline(proc, ownership)
            cleanup.callback(pipeline.abort)
            output.attach(pipeline)
            proc.resume_reading()
            self._heartbeat_later(cleanup, pipeline, ownership)
            self._watch_limits_later(cleanup, proc)
            result = await self._until_ended(proc)
            left = await self._left_behind()
            await self._remove_work_dir_async()  # before the terminal: a reader sees it gone
            output.finish()
            if not await self._output_stored(pipeline):
                return Replaced()
            duration = round(time.monotonic() - started_mono, 6)
            terminal = terminal_of(
                self.job, result, proc, output, started.started_at, duration, left
            )
            if (delay := self._retry_delay(terminal)) is not None:
                at = decide.Attempted(stored_at, started.attempt, ctx.name, started.started_at)
                return Retrying(terminal, at, delay)
            return Finished(await store_terminal(ctx, terminal))

    def _retry_delay(self, terminal: Terminal) -> float | None:
        """How long until the next attempt, if the manifest retries how this one ended
        (never one the executor stopped for a cancel or its shutdown) and attempts are
        left; else None."""
        manifest = self.tool.manifest
        retry = manifest.retry
        if retry is None or self.ctx.stopping.is_set():
            return None
        allowed = decide.attempts_after(
            retry.retried(), retry.max_attempts, manifest.idempotent, terminal.state
        )
        if terminal.attempt >= allowed:
            return None
        return decide.backoff_delay(
            retry.backoff_s, retry.backoff_max_s, terminal.attempt, random.random()
        )

    async def _output_stored(self, pipeline: EventPipeline) -> bool:
        """Wait until the attempt's last events are stored; False if it was superseded
        (then it publishes nothing more, and does not ack: a late ack could settle the
        other executor's delivery)."""
        try:
            await pipeline.close()
        except Superseded:
            log.warning(
                "job %s attempt %d was superseded; its output is dropped",
                self.job_id,
                self.job.attempt,
            )
            return False
        except failures.UNAVAILABLE_ERRORS:
            if not self.ctx.stopping.is_set():
                raise
            log.warning("job %s: stopping while NATS is away; its last output is lost", self.job_id)
        return True

    async def _params(self) -> dict[str, Any]:
        """The job's params, with the secret ones back from ``domed-secrets``."""
        params = dict(self.queued.params)
        if self.tool.manifest.secrets:
            try:
                entry = await self.ctx.secrets.get(self.job_id)
                if entry.value:
                    params.update(secrets.open_params(self.ctx.settings, entry.value))
            except nats.js.errors.KeyNotFoundError:
                pass
        return params

    def _request(self, params: dict[str, Any]) -> SpawnRequest:
        """The working dir (made now for ``temp``), argv and environment of the job.

        Path parameters are checked last, right before the caller spawns: the less time
        between the look and the spawn, the less a swapped symlink can do. The job is given
        the resolved paths."""
        self.work_dir, self.remove_dir = work_dir_for(self.tool, self.job_id)
        manifest = self.tool.manifest
        self.secrets = secrets.deliver(manifest, params, self.job_id)
        env = child_env(manifest, self.ctx.environ, self.job_id) | self.secrets.env
        env["DOMED_RESULT"] = os.path.join(self.work_dir, result_name(self.job_id))
        owned = [*self._made_dirs(), *self.secrets.files.values()]
        argv = render_argv(
            manifest,
            confined_params(manifest, params, self.tool.tool_dir),
            tool_dir=self.tool.tool_dir,
            job_id=self.job_id,
            work_dir=self.work_dir,
            secret_files=self.secrets.files,
        )
        return SpawnRequest(
            argv,
            self.work_dir,
            env,
            owned=tuple(owned),
            limits=self.limits,
            # two executors on one host may both hold a delivery of the same attempt (one of
            # them stale): each job cgroup is its own, or one's cleanup would kill the other's
            name=f"{self.job_id}-{self.job.attempt}-{os.getpid()}-{next(SPAWNS)}",
        )

    def _made_dirs(self) -> list[str]:
        """The dirs made for this job alone: its ``temp`` working dir, its secret files'."""
        made = [self.work_dir] if self.remove_dir else []
        return made + ([self.secrets.dir] if self.secrets.dir is not None else [])

    def _own_process(self, cleanup: contextlib.ExitStack, proc: JobHandle) -> None:
        """Record the process (so an executor started after our death reaps it), and see
        that it is dead and its pipes closed when the attempt is left, record last."""
        ctx = self.ctx
        ctx.leaders.add(proc.pid)
        record = records.write(
            ctx.records, self.job_id, proc.pid, self._made_dirs(), proc.confined_in
        )

        def release() -> None:
            ctx.leaders.discard(proc.pid)
            if not proc.has_exited():
                proc.kill_leftovers()
            proc.close()
            proc.discard()
            record.unlink(missing_ok=True)

        cleanup.callback(release)

    def _pipeline(self, proc: JobHandle, ownership: Ownership) -> EventPipeline:
        return EventPipeline(
            self.ctx.js,
            self.job_id,
            self.job.attempt,
            now_iso,
            proc.pause_reading,
            proc.resume_reading,
            ownership,
            on_lost=lambda: self.job.request_stop(SUPERSEDED),
            stopping=self.ctx.stopping,
        )

    def _heartbeat_later(
        self, cleanup: contextlib.ExitStack, pipeline: EventPipeline, ownership: Ownership
    ) -> None:
        """The first heartbeat (the first write of the job's hold) is due half a heartbeat
        after `started`; most jobs have ended by then and never need one."""
        tasks: list[asyncio.Task[None]] = []

        def beat() -> None:
            tasks.append(
                asyncio.create_task(
                    heartbeat(self.ctx, self.msg, self.slot, self.job, pipeline, ownership)
                )
            )

        timer = asyncio.get_running_loop().call_later(self.ctx.heartbeat_s / 2, beat)

        def stop() -> None:
            timer.cancel()
            for task in tasks:
                task.cancel()

        cleanup.callback(stop)

    async def _left_behind(self) -> LeftBehind:
        """The job's result and artifacts, read from its working dir once it has ended by
        itself (a job the executor stopped has neither); stops the job's ``failed`` with
        why when either is not what it may give."""
        job, manifest = self.job, self.tool.manifest
        if job.stop_reason is not None:
            return LeftBehind()
        owner = self.ctx.job_user.uid if self.ctx.job_user else None
        # the terminal, and the job's state in the KV and in replies, must fit in a message
        cap = min(manifest.limits.max_result_bytes, self.ctx.nc.max_payload // 2)
        try:
            written, value = read_result(
                self.work_dir, self.job_id, cap, manifest.result_schema, owner
            )
        except InvalidResult as exc:
            job.request_stop(core.StopReason("failed", TerminalErrorCode.INVALID_RESULT, str(exc)))
            return LeftBehind()
        stored = None
        if manifest.artifacts and self.ctx.artifacts is not None:
            try:
                files = await asyncio.to_thread(
                    artifacts.collect,
                    self.work_dir,
                    manifest.artifacts,
                    manifest.limits.max_artifact_bytes,
                    owner,
                )
                stored = await artifacts.store(self.ctx.js, self.ctx.artifacts, self.job_id, files)
            except artifacts.ArtifactFailed as exc:
                job.request_stop(
                    core.StopReason("failed", TerminalErrorCode.ARTIFACT_FAILED, str(exc))
                )
        return LeftBehind(written, value, stored)

    def _watch_limits_later(self, cleanup: contextlib.ExitStack, proc: JobHandle) -> None:
        """Read the job's cgroup counters every ``LIMIT_POLL_S`` from then on, and stop
        the job once it went past a limit (memory and pids are enforced by the kernel;
        this tells the job's end apart from a failure and ends the rest of its tree)."""
        if not proc.confined_in:
            return
        job, lim = self.job, self.limits

        async def watch() -> None:
            while job.stop_reason is None:
                if (hit := proc.breach()) is not None:
                    job.request_stop(limit_stop(hit, lim))
                    return
                await asyncio.sleep(LIMIT_POLL_S)

        tasks: list[asyncio.Task[None]] = []
        timer = asyncio.get_running_loop().call_later(
            LIMIT_POLL_S, lambda: tasks.append(asyncio.create_task(watch()))
        )

        def stop() -> None:
            timer.cancel()
            for task in tasks:
                task.cancel()

        cleanup.callback(stop)

    async def _until_ended(self, proc: JobHandle) -> Exit:
        """Wait until the process exits, or stop it (timeout, cancel, shutdown); then see
        that nothing of the job is left running and its pipes are read to the end."""
        job, manifest = self.job, self.tool.manifest
        exited = asyncio.ensure_future(proc.wait_exit())
        either: set[asyncio.Future[Any]] = {exited, job.stop_requested}
        done, _ = await asyncio.wait(
            either, timeout=self.queued.timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        if not done:
            reason = f"timed out after {self.queued.timeout_s}s"
            job.request_stop(core.StopReason("timed_out", None, reason))
        if not exited.done():
            over_limit = job.stop_reason is not None and job.stop_reason.limit is not None
            await proc.stop(0 if over_limit else manifest.cancel_grace_s, manifest.stop_signal)
        result = await proc.wait_exit()
        if not await proc.drain(DRAIN_PIPES_S):  # something else holds the pipes
            proc.kill_leftovers()
            await self._kill_escaped()
            await proc.drain(DRAIN_PIPES_S)
        proc.kill_leftovers()
        await self._kill_escaped()
        await proc.reap_tree(DRAIN_PIPES_S)
        if job.stop_reason is None and (hit := proc.breach()) is not None:
            job.request_stop(limit_stop(hit, self.limits))
        proc.close()
        return result

    async def _kill_escaped(self) -> None:
        """Kill the job's processes that left its process group (see adopted.py)."""
        if self.ctx.subreaper:
            await adopted.sweep(self.job_id, self.ctx.leaders)

    def _remove_work_dir(self) -> None:
        self.secrets.remove()
        if self.remove_dir and self.work_dir:
            remove_tree(self.work_dir)
            self.remove_dir = False

    async def _remove_work_dir_async(self) -> None:
        self.secrets.remove()
        if self.remove_dir and self.work_dir:
            await remove_tree_async(self.work_dir)
            self.remove_dir = False


@dataclass(frozen=True)
class LeftBehind:
    """What a job that ended by itself gives back: its result (if it wrote one) and the
    artifacts stored for it."""

    has_result: bool = False
    result: Any = None
    artifacts: list[Artifact] | None = None


def first_hold_window(heartbeat_s: float) -> float:
    """How long after its `started` an attempt's hold may still be unwritten: another
    executor that finds the hold absent watches this long for it before it declares
    the job lost. The first write is due at half a heartbeat; the rest is slack for a
    slow answer."""
    return heartbeat_s + 1.0


def work_dir_for(tool: Tool, job_id: str) -> tuple[str, bool]:
    """The job's working dir by its manifest's policy, and whether it is ours to remove."""
    policy = tool.manifest.working_dir_policy
    if policy == "temp":
        return tempfile.mkdtemp(prefix=f"domed-{job_id}-"), True
    if policy == "tool_dir":
        return os.path.realpath(tool.tool_dir), False
    path = fixed_work_dir(tool.manifest)
    assert path is not None
    if not os.path.isdir(path):
        raise NotADirectoryError(f"fixed working dir {path} does not exist")
    return path, False


def terminal_of(
    job: RunningJob,
    result: Exit,
    proc: JobHandle,
    output: JobOutput,
    started_at: str,
    duration_s: float,
    left: LeftBehind | None = None,
) -> Terminal:
    """The terminal of a run that got to its end: how it ended, what it printed, and
    what it left (a failed result or artifact upload ends it ``failed``)."""
    left = left or LeftBehind()
    verdict = core.outcome(result.returncode, job.stop_reason)
    reason = job.stop_reason
    error = None
    if reason is not None and reason.error_code:
        error = TerminalError(
            reason.error_code,
            reason.message or reason.error_code,
            limit=reason.limit,  # type: ignore[arg-type]
        )
    usage = rusage_of(result, proc)
    return Terminal(
        job_id=job.job_id,
        state=verdict.state,  # type: ignore[arg-type]
        exit_code=verdict.exit_code,
        signal=verdict.signal,
        started_at=started_at,
        finished_at=now_iso(),
        duration_s=duration_s,
        error=error,
        lines=LineCounts(output.counts.stdout, output.counts.stderr),
        truncated=output.budget.truncated,
        signals_sent=list(proc.signals_sent),
        attempt=job.attempt,
        rusage=usage,
        result=left.result if left.has_result else None,
        artifacts=left.artifacts,
    )


def rusage_of(result: Exit, proc: JobHandle) -> Rusage | None:
    """The job's usage: its first process's from ``wait4``, with the CPU times and the
    memory peak of its whole tree where a cgroup counted them."""
    fields = rusage_fields(result.rusage)
    tree = proc.tree_usage()
    if fields is None:
        return None
    max_rss_kb, user_s, sys_s = fields
    if tree is None:
        return Rusage(max_rss_kb, user_s, sys_s)
    peak = tree.memory_peak_bytes // 1024 if tree.memory_peak_bytes is not None else None
    return Rusage(
        max_rss_kb,
        max(user_s, round(tree.user_s, 6)),
        max(sys_s, round(tree.sys_s, 6)),
        memory_peak_kb=peak,
    )


def limit_stop(hit: str, lim: limits.JobLimits) -> core.StopReason:
    """How a job that went past resource limit ``hit`` ends."""
    return core.StopReason(
        "failed",
        TerminalErrorCode.LIMIT_EXCEEDED,
        limits.describe(hit, lim),  # type: ignore[arg-type]
        limit=hit,
    )


def remove_tree(path: str) -> None:
    """Remove a job's temp dir; most are empty, and rmdir is much cheaper than rmtree."""
    try:
        os.rmdir(path)
    except OSError:
        shutil.rmtree(path, ignore_errors=True)


async def remove_tree_async(path: str) -> None:
    """``remove_tree`` that leaves the event loop free while a job's files are deleted:
    an empty dir (most) goes at once; a full tree, which may take long, in a thread, so
    every other job's heartbeat goes on meanwhile."""
    try:
        os.rmdir(path)
    except OSError:
        await asyncio.to_thread(shutil.rmtree, path, ignore_errors=True)
