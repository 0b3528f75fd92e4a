"""The executor service (``domed-executor``): takes queued jobs and runs them.

Work comes from one durable pull consumer (``executors``) on ``job.*.queued`` that
every executor shares, so each job is delivered to one executor at a time. While
a job runs its executor marks the delivery in progress and renews the job's hold
(``holds.py``), one heartbeat each; if the executor dies the delivery times out after
``ack_wait`` and another executor picks the job up, sees a ``started`` without a
``terminal`` and, once the hold has lapsed, either ends it ``lost`` or, for an
idempotent tool, runs the next attempt. A delivery that finds the hold renewed
(a stale one, handed back by an executor that was paused) leaves the job alone.

Authority over a job's events comes from compare-and-set on the job's subjects:
``started`` is published only if the job's newest event is still the one we read
(so a racing cancel or another executor wins), and the tool runs only once it is
stored; a terminal written without a run is compare-and-set on the newest event
read, and every other terminal only if the job has none yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from contracts import subjects
from contracts.errors import TerminalErrorCode
from contracts.events import (
    Cancel,
    LineCounts,
    Queued,
    Rusage,
    Started,
    Terminal,
    TerminalError,
    decode_event,
    never_ran,
    now_iso,
)
from contracts.manifest import Manifest
from services.catalogue.loader import Tool, load_catalogue
from services.catalogue.render import (
    child_env,
    fixed_work_dir,
    render_argv,
    secret_values,
)
from services.executor import adopted, core, records, slots
from services.executor.holds import Holds
from services.executor.output import JobOutput
from services.executor.ownership import Ownership
from services.executor.publisher import EventPipeline, Superseded
from services.executor.runner import Exit, JobProcess, rusage_fields
from services.runtime import bus
from services.runtime.endpoints import serve
from services.runtime.lifecycle import VERSION
from services.runtime.settings import Settings

log = logging.getLogger("domed.executor")

DRAIN_PIPES_S = 2.0
STREAM_FULL_RETRY_S = 10.0  # how long a job waits when DOMED_JOBS is at its limits
TERMINAL_TRY_S = 30.0  # a terminal's publish is retried in windows this long (a warning each)
SUPERSEDED = core.StopReason("canceled", None, "superseded")


@dataclass
class RunningJob:
    job_id: str
    attempt: int = 1
    started_seq: int = 0  # where its `started` is stored, once it is
    stop_reason: core.StopReason | None = None
    stop_requested: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    def request_stop(self, reason: core.StopReason) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        if not self.stop_requested.done():
            self.stop_requested.set_result(None)


class Executor:
    def __init__(
        self,
        settings: Settings,
        tools: Mapping[str, Tool],
        nc: Client,
        js: JetStreamContext,
        secrets: KeyValue,
        slots_kv: KeyValue,
        holds: Holds,
    ) -> None:
        self.settings = settings
        self.tools = tools
        self.nc = nc
        self.js = js
        self.secrets = secrets
        self.slots_kv = slots_kv
        self.holds = holds
        self.name = settings.name or f"{socket.gethostname()}-{os.getpid()}"
        self.running: dict[str, RunningJob] = {}
        self.ack_wait_s = settings.stream.ack_wait_s
        self.heartbeat_s = max(0.2, min(self.ack_wait_s, holds.lease_s) / 3)
        self.records = records.records_dir(Path(settings.data_dir), dict(os.environ))
        self.environ = dict(os.environ)
        self.accepting = True
        self.stopping = asyncio.Event()  # set with accepting = False
        self.cancel_watch = core.CancelWatch()
        self.leaders: set[int] = set()  # the running jobs' own processes
        self.subreaper = False

    # ---- the work loop -------------------------------------------------------------------

    async def prepare(self) -> None:
        """Before the executor says it is ready: what dead executors left on this host is
        dead (the kills wait for the processes to exit), the results a stopped one could
        not store are stored, and this one adopts what its own jobs leave behind."""
        await asyncio.to_thread(records.reap_orphans, self.records)
        await self.store_kept_terminals()
        self.subreaper = self.settings.adopt_orphans and adopted.become_subreaper()
        if self.settings.adopt_orphans and not self.subreaper:
            log.warning(
                "cannot become a child subreaper: a job's process that leaves its process "
                "group (setsid) is not killed with the job"
            )

    async def run(self, stop: asyncio.Event) -> None:
        cancel_sub = await self.nc.subscribe("job.*.cancel", cb=self._on_cancel)
        await self.watch_cancels()
        # One pull subscription and worker per slot: a slot that frees up asks for its
        # next job at once (a shared batch fetch made free slots wait for the batch).
        psubs = [
            await self.js.pull_subscribe_bind(subjects.EXECUTORS_CONSUMER, subjects.STREAM)
            for _ in range(self.settings.slots)
        ]
        fetching: dict[int, bool] = {}
        async with asyncio.TaskGroup() as workers:
            tasks = [workers.create_task(self._worker(i, p, fetching)) for i, p in enumerate(psubs)]
            await stop.wait()
            self.accepting = False
            self.stopping.set()
            for i, task in enumerate(tasks):
                if fetching.get(i):  # idle: waiting for work, holding none
                    task.cancel()
            await self._drain()
        await cancel_sub.unsubscribe()
        for psub in psubs:
            with contextlib.suppress(Exception):
                await psub.unsubscribe()

    async def _worker(self, index: int, psub: Any, fetching: dict[int, bool]) -> None:
        while self.accepting:
            fetching[index] = True
            try:
                msgs = await psub.fetch(1, timeout=5.0)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except bus.UNAVAILABLE_ERRORS + (nats.js.errors.APIError,) as exc:
                log.warning("fetch failed: %r", exc)
                await asyncio.sleep(0.5)
                continue
            finally:
                fetching[index] = False
            for msg in msgs:
                await self._job_task(msg)

    async def _drain(self) -> None:
        """Let running jobs finish within the drain timeout, then cancel the rest."""
        if not self.running:
            return
        end = time.monotonic() + self.settings.drain_timeout_s
        while self.running and time.monotonic() < end:
            await asyncio.sleep(0.05)
        for job in list(self.running.values()):
            job.request_stop(
                core.StopReason(
                    "canceled", TerminalErrorCode.EXECUTOR_SHUTDOWN, "executor shut down"
                )
            )

    async def watch_cancels(self, reconnected: bool = False) -> None:
        """Note from which stream sequence on our cancel subscription sees every cancel
        (see ``core.CancelWatch``); called at start and after each reconnect. After a
        reconnect, also stop the running jobs whose cancel came while we were cut off."""
        try:
            await bus.subscriptions_sent(self.nc)
            info = await bus.retry_until(
                30, lambda: self.js.stream_info(subjects.STREAM), pause_s=0.5
            )
        except bus.UNAVAILABLE_ERRORS + (nats.js.errors.APIError,) as exc:
            log.warning("cannot read the stream's position (%r); looking every job up", exc)
            info = None
        if info is not None:
            self.cancel_watch.watching_from(info.state.last_seq)
        if reconnected:
            await self._catch_missed_cancels()

    async def _catch_missed_cancels(self) -> None:
        for job_id, job in list(self.running.items()):
            try:
                found = await bus.retry_until(
                    30, partial(bus.last_event, self.js, job_id, "cancel")
                )
            except bus.UNAVAILABLE_ERRORS as exc:
                log.warning("cannot look for a missed cancel of job %s (%r)", job_id, exc)
                continue
            if found is not None and isinstance(found[1], Cancel) and found[0] > job.started_seq:
                log.info("job %s was canceled while this executor was cut off", job_id)
                job.request_stop(core.StopReason("canceled", None, found[1].reason))

    async def _on_cancel(self, msg: Msg) -> None:
        with contextlib.suppress(ValueError):
            job_id, _ = subjects.parse_event_subject(msg.subject)
            self.cancel_watch.saw(job_id, int((msg.headers or {}).get("Nats-Sequence", 0)))
        try:
            event = decode_event(msg.data)
        except msgspec.DecodeError:
            return
        if isinstance(event, Cancel) and event.job_id in self.running:
            self.running[event.job_id].request_stop(core.StopReason("canceled", None, event.reason))

    async def _job_task(self, msg: Msg) -> None:
        try:
            await self.handle(msg)
        except Exception as exc:
            delay = 1.0
            if bus.is_stream_full(exc):  # not soon over: do not spawn the tool every second
                delay = STREAM_FULL_RETRY_S
                log.error(
                    "the job queued on %s waits %gs: the event stream refuses writes (%s)",
                    msg.subject,
                    delay,
                    exc,
                )
            else:
                log.exception("job delivery failed; it will be redelivered")
            with contextlib.suppress(Exception):
                await msg.nak(delay=delay)

    # ---- one delivery ----------------------------------------------------------------------

    async def handle(self, msg: Msg) -> None:
        try:
            queued = decode_event(msg.data)
        except msgspec.DecodeError as exc:
            queued = None
            log.error("undecodable queued event on %s, set aside: %s", msg.subject, exc)
        if not isinstance(queued, Queued):  # nothing can run from it; never redeliver it
            await msg.term()
            return
        job_id = queued.job_id
        if job_id in self.running:
            # Our delivery expired (we were cut off, or too slow to say we are busy) and came
            # back to us: the job runs here, so nothing else ran it. Keep running it; its
            # in-progress acks and its final ack count for this delivery too (they name the
            # message, not the delivery).
            log.warning("job %s came back while running here; it keeps running", job_id)
            return
        meta = msg.metadata
        queued_seq = meta.sequence.stream
        if self.cancel_watch.needs_lookup(job_id, queued_seq, meta.num_delivered):
            last = await bus.last_event(self.js, job_id)
            assert last is not None
            last_seq, last_ev = last
            if isinstance(last_ev, Terminal):  # e.g. canceled before it started
                await self._settle(msg, job_id, self.tools.get(queued.tool))
                return
        else:  # a first delivery with no cancel since: `queued` is the job's newest event
            last_seq = queued_seq
        tool = self.tools.get(queued.tool)
        # Nothing after `queued` (the usual case): no earlier attempt, no cancel; skip two
        # round trips. The `started` compare-and-set still guards against a racing cancel.
        fresh = last_seq == queued_seq
        prev_started = None if fresh else await bus.last_event(self.js, job_id, "started")
        attempt = 1
        if prev_started is not None:
            assert isinstance(prev_started[1], Started)
            retry = await self._retry(msg, tool, prev_started[1], last_seq)
            if retry is None:
                return
            attempt, last_seq = retry
        if not fresh and await bus.last_event(self.js, job_id, "cancel") is not None:
            await self._canceled_before_start(msg, job_id, attempt, last_seq)
            return
        if tool is None or tool.sha256 != queued.manifest_sha256:
            why = (
                "is not in this executor's catalogue"
                if tool is None
                else "differs from the one the job was queued with"
            )
            message = f"manifest of {queued.tool!r} {why}"
            await self._spawn_failed(msg, job_id, attempt, message, last_seq)
            return
        if not self.accepting:  # shutting down (e.g. during a backoff): another executor runs it
            await msg.nak()
            return
        limit = tool.manifest.limits.concurrency
        slot = await slots.acquire(self.slots_kv, tool.id, limit, job_id) if limit else None
        if limit and slot is None:  # all held: try again soon
            await msg.nak(delay=0.2)
            return
        try:
            await self._run_attempt(msg, tool, queued, attempt, last_seq, slot)
        finally:
            if slot is not None:
                await slots.release(self.slots_kv, slot)

    async def _retry(
        self, msg: Msg, tool: Tool | None, started: Started, last_seq: int
    ) -> tuple[int, int] | None:
        """The job's attempt ``started`` has no terminal. If its hold is renewed, another
        executor runs it: leave the delivery alone (neither ack nor nak: either would
        settle or hand back the message that executor holds). Once the hold has lapsed,
        the attempt lost its executor: end the job ``lost``, unless its tool is idempotent
        with attempts left; then wait the retry's backoff, keeping the delivery, and
        return the next attempt and the job's newest seq. None when there is nothing
        more to do here."""
        job_id = started.job_id
        if not await self.holds.lapsed(job_id, within_s=self.heartbeat_s + 1.0):
            log.info(
                "job %s: attempt %d runs on executor %s (its hold is renewed); "
                "this delivery leaves it alone",
                job_id,
                started.attempt,
                started.executor,
            )
            return None
        retry = tool.manifest.retry if tool else None
        max_attempts = (
            (retry.max_attempts if retry else 3) if tool and tool.manifest.idempotent else 1
        )
        if started.attempt >= max_attempts:
            why = f"executor {started.executor} vanished while running attempt {started.attempt}"
            lost = never_ran(
                job_id=job_id,
                state="lost",
                finished_at=now_iso(),
                attempt=started.attempt,
                started_at=started.started_at,
                error=TerminalError(TerminalErrorCode.EXECUTOR_LOST, why),
            )
            await self._finish_without_run(msg, lost, last_seq)
            return None
        attempt = started.attempt + 1
        backoff = retry.backoff_s if retry else 0
        if not backoff:
            return attempt, last_seq
        log.info("job %s: attempt %d starts in %gs", job_id, attempt, backoff)
        await self._wait_holding(msg, backoff)
        last = await bus.last_event(self.js, job_id)
        assert last is not None
        if isinstance(last[1], Terminal):  # ended while we waited
            await self._settle(msg, job_id, tool)
            return None
        newest = await bus.last_event(self.js, job_id, "started")
        if newest is not None and core.superseded(None, newest[1], started.attempt):
            # Our hold lapsed during the wait and another executor started the retry: the
            # delivery is its own now. Neither ack nor nak it.
            log.warning("job %s was retried by another executor meanwhile", job_id)
            return None
        return attempt, last[0]

    async def _finish_without_run(self, msg: Msg, terminal: Terminal, cas_seq: int) -> None:
        """Store the terminal of a job that this delivery does not run, only while
        ``cas_seq`` is still the job's newest event: what this delivery decided on."""
        headers = bus.cas_headers(terminal.job_id, cas_seq)
        try:
            await bus.retry_until(30, lambda: bus.publish_event(self.js, terminal, headers=headers))
        except nats.js.errors.APIError as exc:
            if not bus.is_wrong_last_sequence(exc):
                raise
            # Someone else moved the job on; look again.
            await self._moved_on(msg, terminal.job_id, cas_seq)
            return
        await self._settle(msg, terminal.job_id)

    async def _moved_on(self, msg: Msg, job_id: str, decided_seq: int) -> None:
        """The job got a newer event than ``decided_seq``, the one this delivery decided
        on. Settle it if it has ended; leave it alone if another executor started an
        attempt since (it holds the delivery too); otherwise (a cancel) hand it back to
        be decided again."""
        if await bus.last_event(self.js, job_id, "terminal") is not None:
            await self._settle(msg, job_id)
            return
        started = await bus.last_event(self.js, job_id, "started")
        if started is not None and started[0] > decided_seq:
            assert isinstance(started[1], Started)
            log.warning(
                "job %s: attempt %d runs on executor %s; this stale delivery leaves it alone",
                job_id,
                started[1].attempt,
                started[1].executor,
            )
            return
        await msg.nak(delay=0.1)

    async def _canceled_before_start(
        self, msg: Msg, job_id: str, attempt: int, newest_seq: int
    ) -> None:
        """End a job ``canceled`` whose ``attempt`` never started; only if ``newest_seq`` is
        still the job's newest event (compare-and-set)."""
        terminal = never_ran(job_id, "canceled", now_iso(), attempt - 1)
        await self._finish_without_run(msg, terminal, cas_seq=newest_seq)

    async def _spawn_failed(
        self, msg: Msg, job_id: str, attempt: int, message: str, last_seq: int
    ) -> None:
        """End a job ``failed`` with ``spawn_failed``: its command could not be started."""
        error = TerminalError(TerminalErrorCode.SPAWN_FAILED, message)
        terminal = never_ran(job_id, "failed", now_iso(), attempt, error)
        await self._finish_without_run(msg, terminal, last_seq)

    async def _settle(self, msg: Msg, job_id: str, tool: Tool | None = None) -> None:
        """The job has ended: forget its secrets, then ack its delivery. In that order, so
        an executor that dies in between leaves them to the redelivery, which finds the
        job ended and settles it again."""
        await self._forget_secrets(job_id, tool)
        await msg.ack()

    async def _forget_secrets(self, job_id: str, tool: Tool | None = None) -> None:
        if tool is not None and not tool.manifest.secrets:
            return
        with contextlib.suppress(Exception):
            await self.secrets.purge(job_id)

    def _work_dir(self, tool: Tool, job_id: str) -> tuple[str, bool]:
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

    async def _run_attempt(
        self,
        msg: Msg,
        tool: Tool,
        queued: Queued,
        attempt: int,
        last_seq: int,
        slot: slots.Slot | None,
    ) -> None:
        job_id = queued.job_id
        manifest = tool.manifest
        params = await self._params(manifest, queued)
        secrets = secret_values(manifest, params)
        job = RunningJob(job_id, attempt)
        self.running[job_id] = job
        work_dir, remove_dir = "", False
        proc: JobProcess | None = None
        pipeline: EventPipeline | None = None
        heartbeat: asyncio.Task[None] | None = None
        first_beat: asyncio.TimerHandle | None = None
        record: Path | None = None
        try:
            try:
                work_dir, remove_dir = self._work_dir(tool, job_id)
                argv = render_argv(
                    manifest, params, tool_dir=tool.tool_dir, job_id=job_id, work_dir=work_dir
                )
                env = child_env(manifest, self.environ, job_id)
            except Exception as exc:
                why = f"could not prepare the job: {exc}"
                await self._spawn_failed(msg, job_id, attempt, why, last_seq)
                return

            output = JobOutput(manifest, secrets)

            started_mono = time.monotonic()
            try:
                # Held at its gate until `started` is stored (open_gate).
                proc = JobProcess.spawn(argv, cwd=work_dir, env=env, on_output=output.on_output)
            except OSError as exc:
                why = f"{argv[0]}: {exc.strerror or exc}"
                await self._spawn_failed(msg, job_id, attempt, why, last_seq)
                return
            self.leaders.add(proc.pid)
            record = records.write(self.records, job_id, proc.pid, work_dir if remove_dir else None)
            # The hold first: whoever sees our `started` also finds it renewed.
            sent, answered = await self._claim(job_id, attempt)
            ownership = Ownership(self.js, job_id, attempt, self.holds.lease_s, claimed_at=sent)
            ownership.renewed(sent, answered)
            started_at = now_iso()
            started = Started(
                job_id=job_id,
                executor=self.name,
                pid=proc.pid,
                attempt=attempt,
                started_at=started_at,
            )
            stored_at = await bus.publish_if_newest(self.js, started, attempt, last_seq)
            if stored_at is None:
                await self._start_refused(msg, proc, job_id, attempt, last_seq)
                return
            job.started_seq = stored_at
            proc.open_gate()

            pipeline = EventPipeline(
                self.js,
                job_id,
                attempt,
                now_iso,
                proc.pause_reading,
                proc.resume_reading,
                ownership,
                on_lost=lambda: job.request_stop(SUPERSEDED),
                stopping=self.stopping,
            )
            output.attach(pipeline)
            proc.resume_reading()

            def beat() -> None:  # the first heartbeat is due after heartbeat_s; most jobs
                nonlocal heartbeat  # have ended by then and never need one
                assert pipeline is not None
                heartbeat = asyncio.create_task(
                    self._heartbeat(msg, slot, job, pipeline, ownership)
                )

            first_beat = asyncio.get_running_loop().call_later(self.heartbeat_s, beat)

            result = await self._until_ended(proc, job, queued.timeout_s, manifest.cancel_grace_s)
            if remove_dir:  # before the terminal, so a client that saw it sees the dir gone
                await remove_tree_async(work_dir)
                remove_dir = False
            output.finish()
            try:
                await pipeline.close()
            except Superseded:
                # Another executor already ended or re-ran this job: publish nothing more, and
                # do not ack (a late ack could settle the other executor's delivery).
                log.warning(
                    "job %s attempt %d was superseded; its output is dropped", job_id, attempt
                )
                return
            except bus.UNAVAILABLE_ERRORS:
                if not self.stopping.is_set():
                    raise
                log.warning("job %s: stopping while NATS is away; its last output is lost", job_id)
            finished_mono = time.monotonic()

            terminal = terminal_of(
                job, result, proc, output, started_at, round(finished_mono - started_mono, 6)
            )
            if await self._store_terminal(terminal):
                await self._settle(msg, job_id, tool)
        finally:
            self.running.pop(job_id, None)
            if proc is not None:
                self.leaders.discard(proc.pid)
            if first_beat is not None:
                first_beat.cancel()
            if heartbeat is not None:
                heartbeat.cancel()
            if proc is not None:
                if proc.popen.returncode is None:
                    proc.signal_group(signal.SIGKILL)
                proc.close()
            if pipeline is not None:
                pipeline.abort()
            if record is not None:
                record.unlink(missing_ok=True)
            if remove_dir and work_dir:
                remove_tree(work_dir)

    async def _params(self, manifest: Manifest, queued: Queued) -> dict[str, Any]:
        """The job's params, with the secret ones back from ``domed-secrets``."""
        params = dict(queued.params)
        if manifest.secrets:
            try:
                entry = await self.secrets.get(queued.job_id)
                if entry.value:
                    params.update(json.loads(entry.value))
            except nats.js.errors.KeyNotFoundError:
                pass
        return params

    async def _until_ended(
        self, proc: JobProcess, job: RunningJob, timeout_s: float, grace_s: float
    ) -> Exit:
        """Wait until the process exits, or stop it (timeout, cancel, shutdown); then see
        that nothing of the job is left running and its pipes are read to the end."""
        exited = proc.exited
        assert exited is not None
        either: set[asyncio.Future[Any]] = {exited, job.stop_requested}
        done, _ = await asyncio.wait(either, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        if not done:
            job.request_stop(core.StopReason("timed_out", None, f"timed out after {timeout_s}s"))
        if not exited.done():
            await proc.stop(grace_s)
        result = await proc.wait_exit()
        if not await proc.drain(DRAIN_PIPES_S):  # something else holds the pipes
            proc.kill_leftovers()
            await self._kill_escaped(job.job_id)
            await proc.drain(DRAIN_PIPES_S)
        proc.kill_leftovers()
        await self._kill_escaped(job.job_id)
        proc.close()
        return result

    async def _start_refused(
        self, msg: Msg, proc: JobProcess, job_id: str, attempt: int, decided_seq: int
    ) -> None:
        """The server refused this attempt's ``started``: a cancel or another executor got
        there first (``decided_seq`` is no longer the job's newest event), and the tool
        never runs (its gate is shut)."""
        proc.shut_gate()
        proc.kill_leftovers()
        await proc.wait_exit()
        latest = await bus.last_event(self.js, job_id)
        assert latest is not None
        started = await bus.last_event(self.js, job_id, "started")
        if isinstance(latest[1], Terminal) or (started is not None and started[0] > decided_seq):
            # Ended, or run by another executor: this delivery is stale (we were paused
            # while it was handed to us). _moved_on neither acks nor naks the message the
            # other executor holds.
            await self._moved_on(msg, job_id, decided_seq)
        elif await bus.last_event(self.js, job_id, "cancel") is not None:
            await self._canceled_before_start(msg, job_id, attempt, latest[0])
        else:
            await msg.nak(delay=0.1)

    async def _store_terminal(self, terminal: Terminal) -> bool:
        """Store a run's terminal however long NATS stays away or the stream stays full:
        only this executor knows how the run ended. Another executor's terminal may get
        there first (it presumed us dead); the server then refuses ours, and theirs stands.
        If the executor must stop first, the terminal is kept on this host, and the next
        executor started here stores it (``store_kept_terminals``); False then."""
        try:
            await bus.retry_until(
                TERMINAL_TRY_S,
                lambda: bus.publish_event(self.js, terminal, headers=bus.FIRST_TERMINAL),
                until=self.stopping,
                what=f"job {terminal.job_id}: its terminal",
                full_pause_s=STREAM_FULL_RETRY_S,
            )
        except bus.UNAVAILABLE_ERRORS as exc:  # only once the executor is stopping
            path = records.keep_terminal(
                self.records, terminal.job_id, msgspec.json.encode(terminal)
            )
            log.warning(
                "job %s: its terminal cannot be stored before the executor stops (%r); "
                "kept in %s for the next executor started on this host",
                terminal.job_id,
                exc,
                path,
            )
            return False
        except nats.js.errors.APIError as exc:
            if not bus.is_wrong_last_sequence(exc):
                raise
            log.warning(
                "job %s already had a terminal; this attempt was superseded", terminal.job_id
            )
        return True

    async def store_kept_terminals(self) -> None:
        """Store the terminals that an executor before this one kept on this host because
        it had to stop while NATS was away: the run's real end, where the job would
        otherwise end ``lost``. One whose job has ended since, or has been run again by a
        newer attempt, is dropped; one that cannot be stored now waits for the next start."""
        for path, data in records.kept_terminals(self.records):
            try:
                terminal = msgspec.json.decode(data, type=Terminal)
                outcome = await self._store_kept(terminal)
            except (msgspec.DecodeError, msgspec.ValidationError):
                outcome = "unreadable, dropped"
            except bus.UNAVAILABLE_ERRORS as exc:
                log.warning("cannot store the kept terminal %s yet (%r)", path, exc)
                continue
            log.warning("the terminal kept in %s: %s", path, outcome)
            path.unlink(missing_ok=True)

    async def _store_kept(self, terminal: Terminal) -> str:
        for _ in range(5):
            last = await bus.last_event(self.js, terminal.job_id)
            if last is None or isinstance(last[1], Terminal):
                return "the job has ended since; dropped"
            started = await bus.last_event(self.js, terminal.job_id, "started")
            ours = (
                started is not None
                and isinstance(started[1], Started)
                and started[1].attempt == terminal.attempt
            )
            if not ours:
                return "a newer attempt has run the job since; dropped"
            if await bus.publish_if_newest(
                self.js, terminal, 0, last[0], self.settings.request_timeout_s
            ):
                return "stored"
        return "the job's events kept changing; dropped"

    async def _wait_holding(self, msg: Msg, seconds: float) -> None:
        """Wait ``seconds`` (a retry's backoff), or until the executor stops, keeping the
        delivery ours with answered in-progress acks, one a heartbeat; a delivery left
        alone would expire and be handed out again, and its new handler would start the
        same retry."""
        end = time.monotonic() + seconds
        while (beat := time.monotonic()) < end and not self.stopping.is_set():
            await self._confirm_progress(msg, self.heartbeat_s / 3)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self.stopping.wait(),
                    max(0.0, min(end, beat + self.heartbeat_s) - time.monotonic()),
                )

    async def _confirm_progress(self, msg: Msg, timeout_s: float) -> None:
        """An in-progress ack sent as a request: the consumer answers once it has reset the
        delivery's timer, so a slow server delays the next heartbeat step no longer than
        ``timeout_s``."""
        with contextlib.suppress(Exception):
            await self.nc.request(msg.reply, b"+WPI", timeout=timeout_s)

    async def _claim(self, job_id: str, attempt: int) -> tuple[float, float]:
        """Write the job's hold for ``attempt``, retrying while NATS is away; returns when
        the write that was stored was sent and answered."""
        return await bus.retry_until(
            30, partial(self.holds.claim, job_id, attempt, self.name), pause_s=0.2
        )

    async def _renew_hold(self, ownership: Ownership, timeout_s: float) -> None:
        """Renew the job's hold; an answer extends ``ownership``. Without one the hold stays
        as it was (the write may still have landed)."""
        try:
            sent, answered = await asyncio.wait_for(
                self.holds.claim(ownership.job_id, ownership.attempt, self.name), timeout_s
            )
        except Exception:
            return
        ownership.renewed(sent, answered)

    async def _kill_escaped(self, job_id: str) -> None:
        """Kill the job's processes that left its process group (see adopted.py)."""
        if self.subreaper:
            await adopted.sweep(job_id, self.leaders)

    async def _heartbeat(
        self,
        msg: Msg,
        slot: slots.Slot | None,
        job: RunningJob,
        pipeline: EventPipeline,
        ownership: Ownership,
    ) -> None:
        """Keep the job's hold, its delivery (and the tool's concurrency slot, which has a
        TTL) alive, and fence ourselves: if the job has a terminal or a newer attempt we
        did not write (we were presumed dead, e.g. after a long pause or partition), stop
        and go quiet. Each confirmed renewal of the hold extends it, which decides how the
        event pipeline publishes (ownership.py)."""
        # Each step is bounded, so the renewals keep their pace even while NATS is slow to
        # answer (a cluster electing a leader): a late one lets the hold lapse. The hold is
        # renewed before the delivery, so a redelivery finds it lapsed without delay.
        bound = self.heartbeat_s / 3
        while True:
            beat = time.monotonic()
            await self._renew_hold(ownership, bound)
            await self._confirm_progress(msg, bound)
            if slot is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(slots.keep(self.slots_kv, slot), bound)
            try:
                lost = await asyncio.wait_for(ownership.lost(), bound)
            except bus.UNAVAILABLE_ERRORS:
                lost = False
            if lost:
                pipeline.silence()
                job.request_stop(SUPERSEDED)
                return
            await asyncio.sleep(max(0.0, self.heartbeat_s - (time.monotonic() - beat)))


def terminal_of(
    job: RunningJob,
    result: Exit,
    proc: JobProcess,
    output: JobOutput,
    started_at: str,
    duration_s: float,
) -> Terminal:
    """The terminal of a run that got to its end: how it ended, and what it printed."""
    verdict = core.outcome(result.returncode, job.stop_reason)
    reason = job.stop_reason
    error = None
    if reason is not None and reason.error_code:
        error = TerminalError(reason.error_code, reason.message or reason.error_code)
    usage = rusage_fields(result.rusage)
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
        rusage=Rusage(*usage) if usage else None,
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


async def run_executor(
    settings: Settings, stop: asyncio.Event, ready: asyncio.Event | None = None
) -> None:
    from dataclasses import replace

    from services.runtime.settings import redact_url

    tools = load_catalogue(settings.ssot)
    # No buffering while reconnecting: a log line held back during an outage could land
    # after another executor declared the job lost. A publish that fails is retried by
    # the pipeline with a compare-and-set that checks we still own the job.
    executor: Executor | None = None
    watching: set[asyncio.Task[None]] = set()

    async def on_disconnect() -> None:
        if executor is not None:
            executor.cancel_watch.lost()

    async def on_reconnect() -> None:
        if executor is not None:
            task = asyncio.create_task(executor.watch_cancels(reconnected=True))
            watching.add(task)
            task.add_done_callback(watching.discard)

    nc = await bus.connect(
        settings,
        settings.name or "domed-executor",
        service="executor",
        pending_size=0,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
    )
    try:
        js = nc.jetstream(timeout=settings.request_timeout_s)
        await bus.ensure_stream(js, settings.stream)
        # The consumer is shared by every executor: look it up, create it only if it is
        # missing (provisioning does that as admin), and never change it. A create on an
        # existing durable would update it for all executors.
        want = bus.executors_consumer_config(settings.stream)
        try:
            have = (await js.consumer_info(subjects.STREAM, subjects.EXECUTORS_CONSUMER)).config
        except nats.js.errors.NotFoundError:
            have = await bus.create_executors_consumer(js, settings.stream)
        if have.deliver_subject or have.ack_policy != want.ack_policy:
            raise bus.ProvisioningError(
                f"consumer {subjects.EXECUTORS_CONSUMER} on {subjects.STREAM} is not a pull "
                f"consumer with explicit acks (deliver_subject={have.deliver_subject!r}, "
                f"ack_policy={have.ack_policy}); executors cannot share it. Recreate it as admin: "
                "deploy/provision.sh"
            )
        differ = bus.executors_consumer_differences(have, want)
        if differ:
            log.warning(
                "consumer %s exists with other settings than this executor's "
                "(setting: consumer's, this executor's): %s; domed does not change a shared "
                "consumer, so this executor uses it as it is (re-provision it as admin to change it)",
                subjects.EXECUTORS_CONSUMER,
                ", ".join(f"{k}: {h} != {w}" for k, (h, w) in differ.items()),
            )
        # Heartbeats (in-progress acks, Executor.heartbeat_s) and slot leases follow the
        # consumer's real ack_wait, not this executor's --ack-wait.
        ack_wait_s = have.ack_wait if have.ack_wait else settings.stream.ack_wait_s
        settings = replace(settings, stream=replace(settings.stream, ack_wait_s=ack_wait_s))
        secrets = await bus.ensure_kv(js, subjects.KV_SECRETS, settings.stream)
        slots_kv = await bus.ensure_kv(
            js, subjects.KV_SLOTS, settings.stream, ttl_s=max(10.0, settings.stream.ack_wait_s * 2)
        )
        holds_kv = await bus.ensure_kv(js, subjects.KV_HOLDS, settings.stream, ttl_s=ack_wait_s)
        lease_s = (await holds_kv.status()).ttl or ack_wait_s  # an existing bucket's own
        holds = Holds(holds_kv, lease_s)
        executor = Executor(settings, tools, nc, js, secrets, slots_kv, holds)
        await executor.prepare()
        service = await serve(
            nc, subjects.SERVICE_EXECUTOR, VERSION, "runs queued jobs as local processes", []
        )
        log.info(
            "executor %s ready: %d slots, ack_wait %gs, NATS %s",
            executor.name,
            settings.slots,
            ack_wait_s,
            redact_url(settings.nats_url),
        )
        if ready is not None:
            ready.set()
        await executor.run(stop)
        for task in watching:
            task.cancel()
        await service.stop()
    finally:
        await bus.disconnect(nc)
