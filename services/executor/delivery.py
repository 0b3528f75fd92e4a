"""One delivery of a queued job, from the message to its ack (or to leaving it alone):
what the delivery says, the look-ups ``decide`` asks for, and doing what it decided.
Running the job is ``attempt.py``'s."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import replace
from typing import Any

import msgspec
import nats.js.errors
from nats.aio.msg import Msg

from contracts.errors import TerminalErrorCode
from contracts.events import (
    Cancel,
    Outcome,
    Queued,
    Retry,
    Started,
    Terminal,
    TerminalError,
    decode_event,
    never_ran,
    now_iso,
    queue_timed_out,
    timestamp,
)
from services.catalogue.loader import Tool
from services.executor import decide as d
from services.executor import slots
from services.executor.attempt import (
    Attempt,
    CouldNotStart,
    Finished,
    Refused,
    Retrying,
    first_hold_window,
)
from services.executor.context import ExecutorContext, RunningJob
from services.executor.heartbeat import confirm_progress
from services.executor.terminals import store_terminal
from services.runtime import failures, jobstream

log = logging.getLogger("domed.executor")

MAX_DECISIONS = 12  # a job whose events keep changing under us is handed back


async def handle(ctx: ExecutorContext, msg: Msg) -> None:
    try:
        queued = decode_event(msg.data)
    except msgspec.DecodeError as exc:
        queued = None
        log.error("undecodable queued event on %s, set aside: %s", msg.subject, exc)
    if not isinstance(queued, Queued):  # nothing can run from it; never redeliver it
        await msg.term()
        return
    tool = ctx.tools.get(queued.tool)
    facts = first_facts(ctx, msg, queued, tool)
    decisions = 0  # since the last attempt ran: each retry starts a new count
    while decisions < MAX_DECISIONS:
        decisions += 1
        facts = replace(facts, accepting=ctx.accepting)  # it changes during a backoff
        action = d.decide(facts)
        if isinstance(action, d.LookUp):
            facts = await look_up(ctx, facts, action.fact)
            continue
        if isinstance(action, d.WaitBackoff):
            log.info(
                "job %s: attempt %d starts in %gs", queued.job_id, action.attempt, action.seconds
            )
            await wait_out_backoff(ctx, msg, queued.job_id, action)
            facts = await look_up(ctx, facts, "after_backoff")
            continue
        if isinstance(action, d.Run):
            decisions = 0
        again = await act(ctx, msg, queued, tool, action)
        if again is None:
            return
        facts = again
    await msg.nak(delay=0.1)


def first_facts(ctx: ExecutorContext, msg: Msg, queued: Queued, tool: Tool | None) -> d.Facts:
    """What the delivery itself says about the job."""
    meta = msg.metadata
    manifest = tool.manifest if tool else None
    retry = manifest.retry if manifest else None
    problem = None
    if tool is None:
        problem = f"manifest of {queued.tool!r} is not in this executor's catalogue"
    elif tool.sha256 != queued.manifest_sha256:
        problem = f"manifest of {queued.tool!r} differs from the one the job was queued with"
    return d.Facts(
        job_id=queued.job_id,
        queued_seq=meta.sequence.stream,
        running_here=queued.job_id in ctx.running,
        needs_lookup=ctx.cancel_watch.needs_lookup(
            queued.job_id, meta.sequence.stream, meta.num_delivered
        ),
        accepting=ctx.accepting,
        tool_problem=problem,
        max_attempts=d.attempts_after(
            retry.retried() if retry else (),
            retry.max_attempts if retry else 1,
            bool(manifest and manifest.idempotent),
            "lost",
        ),
        backoff_s=retry.backoff_s if retry else 0.0,
        backoff_max_s=retry.backoff_max_s if retry else 0.0,
        jitter=random.random(),
        queue_expired=queue_expired(queued, time.time()),
    )


def queue_expired(queued: Queued, now: float) -> bool:
    """Whether the job waited to start longer than its queue timeout (wall clocks: the
    router's at submit, ours now)."""
    if queued.queue_timeout_s is None:
        return False
    return now - timestamp(queued.submitted_at) > queued.queue_timeout_s


async def look_up(ctx: ExecutorContext, facts: d.Facts, fact: d.Fact) -> d.Facts:
    job_id = facts.job_id
    if fact == "newest" or fact == "after_backoff":
        last = await jobstream.last_event(ctx.js, job_id)
        assert last is not None  # at least its `queued`
        facts = replace(facts, newest_seq=last[0], ended=isinstance(last[1], Terminal))
        if fact == "newest":
            return facts
        assert facts.started is not None
        facts = replace(facts, waited_from=facts.started.attempt, started_known=False)
        return await look_up(ctx, facts, "started")
    if fact == "started":
        found = await jobstream.last_event(ctx.js, job_id, "started")
        started = None
        if found is not None and isinstance(found[1], Started):
            ev = found[1]
            started = d.Attempted(found[0], ev.attempt, ev.executor, ev.started_at)
        return replace(facts, started=started, started_known=True)
    if fact == "retry":
        found = await jobstream.last_event(ctx.js, job_id, "retry")
        announced = None
        if found is not None and isinstance(found[1], Retry):
            retry = found[1]
            left = timestamp(retry.ts) + retry.delay_s - time.time()
            announced = d.Announced(found[0], retry.attempt, max(0.0, min(left, retry.delay_s)))
        return replace(facts, announced=announced, announced_known=True)
    if fact == "hold":
        lapsed = await ctx.holds.lapsed(job_id, within_s=first_hold_window(ctx.heartbeat_s))
        return replace(facts, hold_lapsed=lapsed)
    canceled = await jobstream.last_event(ctx.js, job_id, "cancel") is not None
    return replace(facts, canceled=canceled)


async def act(
    ctx: ExecutorContext, msg: Msg, queued: Queued, tool: Tool | None, action: d.Action
) -> d.Facts | None:
    """Do what was decided; facts to decide on again (from scratch) when the job moved on
    under us, else None."""
    job_id = queued.job_id
    if isinstance(action, d.LeaveAlone):
        if job_id not in ctx.running:
            log.warning("job %s: %s; this delivery leaves it alone", job_id, action.why)
        else:
            # Our delivery expired (we were cut off, or too slow to say we are busy) and came
            # back to us: its in-progress acks and final ack count for it too.
            log.warning("job %s came back while running here; it keeps running", job_id)
        return None
    if isinstance(action, d.Settle):
        await settle(ctx, msg, job_id, tool)
        return None
    if isinstance(action, d.Redeliver):
        if action.delay_s:
            await msg.nak(delay=action.delay_s)
        else:
            await msg.nak()
        return None
    if isinstance(action, d.EndLost):
        prev = action.started
        terminal = never_ran(
            job_id=job_id,
            state="lost",
            finished_at=now_iso(),
            attempt=prev.attempt,
            started_at=prev.started_at,
            error=vanished(prev),
        )
        return await finish_without_run(ctx, msg, queued, tool, terminal, action.cas_seq)
    if isinstance(action, d.AnnounceRetry):
        lost = Outcome("lost", error=vanished(action.started))
        announced = await announce_retry(ctx, msg, queued, tool, lost, action)
        if announced is None:
            return await moved_on(ctx, msg, queued, tool, action.cas_seq)
        return announced
    if isinstance(action, d.EndQueueTimeout):
        assert queued.queue_timeout_s is not None  # decide ends only a job that has one
        terminal = queue_timed_out(job_id, queued.queue_timeout_s)
        return await finish_without_run(ctx, msg, queued, tool, terminal, action.cas_seq)
    if isinstance(action, d.EndCanceled):
        terminal = never_ran(job_id, "canceled", now_iso(), action.attempt - 1)
        return await finish_without_run(ctx, msg, queued, tool, terminal, action.cas_seq)
    if isinstance(action, d.SpawnFailed):
        return await spawn_failed(
            ctx, msg, queued, tool, action.attempt, action.message, action.cas_seq
        )
    assert isinstance(action, d.Run) and tool is not None
    return await run(ctx, msg, queued, tool, action)


async def run(
    ctx: ExecutorContext, msg: Msg, queued: Queued, tool: Tool, action: d.Run
) -> d.Facts | None:
    """Run the attempt within the tool's concurrency limit."""
    limit = tool.manifest.limits.concurrency
    slot = await slots.acquire(ctx.slots_kv, tool.id, limit, queued.job_id) if limit else None
    if limit and slot is None:  # all held: try again soon
        await msg.nak(delay=0.2)
        return None
    try:
        attempt = Attempt(ctx, msg, tool, queued, action.attempt, action.last_seq, slot)
        outcome = await attempt.run()
    finally:
        if slot is not None:
            await slots.release(ctx.slots_kv, slot)
    if isinstance(outcome, Retrying):
        return await retry_after_run(ctx, msg, queued, tool, outcome)
    if isinstance(outcome, CouldNotStart):
        return await spawn_failed(
            ctx, msg, queued, tool, action.attempt, outcome.message, action.last_seq
        )
    if isinstance(outcome, Refused):
        return await moved_on(ctx, msg, queued, tool, outcome.decided_seq)
    if isinstance(outcome, Finished) and outcome.stored:
        await settle(ctx, msg, queued.job_id, tool)
    return None


async def retry_after_run(
    ctx: ExecutorContext, msg: Msg, queued: Queued, tool: Tool, outcome: Retrying
) -> d.Facts | None:
    """An attempt ended in a state its manifest retries: announce the next attempt (a
    ``retry`` event, stored only while the attempt's own events are the job's newest) and
    decide again, which waits out the backoff and runs it. A cancel that came meanwhile
    wins: the attempt's terminal is stored instead."""
    job_id, term = queued.job_id, outcome.terminal
    last = await jobstream.last_event(ctx.js, job_id)
    assert last is not None
    seq, newest = last
    if isinstance(newest, Terminal) or (
        isinstance(newest, Started) and newest.attempt != term.attempt
    ):
        log.warning("job %s: attempt %d was superseded; no retry", job_id, term.attempt)
        return None
    if isinstance(newest, Cancel):
        if await store_terminal(ctx, term):
            await settle(ctx, msg, job_id, tool)
        return None
    ended = Outcome(term.state, term.exit_code, term.signal, term.error)  # type: ignore[arg-type]
    plan = d.AnnounceRetry(outcome.started, outcome.delay_s, seq)
    announced = await announce_retry(ctx, msg, queued, tool, ended, plan)
    if announced is None:  # a cancel landed in between: decide again from scratch
        return replace(first_facts(ctx, msg, queued, tool), needs_lookup=True)
    log.info(
        "job %s: attempt %d ended %s; attempt %d in %gs",
        job_id,
        term.attempt,
        term.state,
        term.attempt + 1,
        outcome.delay_s,
    )
    return announced


def vanished(prev: d.Attempted) -> TerminalError:
    """Why an attempt whose executor stopped renewing its hold ended."""
    why = f"executor {prev.executor} vanished while running attempt {prev.attempt}"
    return TerminalError(TerminalErrorCode.EXECUTOR_LOST, why)


async def announce_retry(
    ctx: ExecutorContext,
    msg: Msg,
    queued: Queued,
    tool: Tool | None,
    outcome: Outcome,
    plan: d.AnnounceRetry,
) -> d.Facts | None:
    """Store the ``retry`` event for the attempt ``plan`` names; the facts to decide on
    next (the backoff to wait, then the next attempt), or None if the job moved on since
    ``plan.cas_seq``."""
    job_id, attempt = queued.job_id, plan.started.attempt
    event = Retry(
        job_id=job_id,
        attempt=attempt,
        outcome=outcome,
        next_attempt=attempt + 1,
        delay_s=plan.delay_s,
        ts=now_iso(),
    )
    try:
        ack = await failures.retry_until(
            30,
            lambda: jobstream.publish_event(
                ctx.js, event, attempt, headers=jobstream.cas_headers(job_id, plan.cas_seq)
            ),
        )
    except nats.js.errors.APIError as exc:
        if not failures.is_wrong_last_sequence(exc):
            raise
        return None
    return replace(
        first_facts(ctx, msg, queued, tool),
        newest_seq=ack.seq,
        ended=False,
        started=plan.started,
        started_known=True,
        announced=d.Announced(ack.seq, attempt, plan.delay_s),
        announced_known=True,
    )


async def spawn_failed(
    ctx: ExecutorContext,
    msg: Msg,
    queued: Queued,
    tool: Tool | None,
    attempt: int,
    message: str,
    cas_seq: int,
) -> d.Facts | None:
    """End a job ``failed`` with ``spawn_failed``: its command could not be started."""
    error = TerminalError(TerminalErrorCode.SPAWN_FAILED, message)
    terminal = never_ran(queued.job_id, "failed", now_iso(), attempt, error)
    return await finish_without_run(ctx, msg, queued, tool, terminal, cas_seq)


async def finish_without_run(
    ctx: ExecutorContext,
    msg: Msg,
    queued: Queued,
    tool: Tool | None,
    terminal: Terminal,
    cas_seq: int,
) -> d.Facts | None:
    """Store the terminal of a job this delivery does not run, only while ``cas_seq`` is
    still the job's newest event: what the delivery decided on."""
    headers = jobstream.cas_headers(terminal.job_id, cas_seq)
    try:
        await failures.retry_until(
            30, lambda: jobstream.publish_event(ctx.js, terminal, headers=headers)
        )
    except nats.js.errors.APIError as exc:
        if not failures.is_wrong_last_sequence(exc):
            raise
        return await moved_on(ctx, msg, queued, tool, cas_seq)
    await settle(ctx, msg, terminal.job_id, tool)
    return None


async def moved_on(
    ctx: ExecutorContext, msg: Msg, queued: Queued, tool: Tool | None, decided_seq: int
) -> d.Facts | None:
    """The server refused a write: the job got a newer event than ``decided_seq``."""
    job_id = queued.job_id
    ended = await jobstream.last_event(ctx.js, job_id, "terminal") is not None
    started = None if ended else await jobstream.last_event(ctx.js, job_id, "started")
    canceled = False
    if not ended and not (started is not None and started[0] > decided_seq):
        canceled = await jobstream.last_event(ctx.js, job_id, "cancel") is not None
    found = d.AfterRefusal(decided_seq, ended, started[0] if started else None, canceled)
    action = d.after_refusal(found)
    if isinstance(action, d.LookUp):  # decide again, looking everything up
        return replace(first_facts(ctx, msg, queued, tool), needs_lookup=True)
    await act(ctx, msg, queued, tool, action)
    return None


async def settle(ctx: ExecutorContext, msg: Msg, job_id: str, tool: Tool | None = None) -> None:
    """The job has ended: forget its secrets, then ack its delivery. In that order, so an
    executor that dies in between leaves them to the redelivery, which finds the job
    ended and settles it again."""
    if tool is None or tool.manifest.secrets:
        with contextlib.suppress(Exception):
            await ctx.secrets.purge(job_id)
    await msg.ack()


async def wait_out_backoff(
    ctx: ExecutorContext, msg: Msg, job_id: str, action: d.WaitBackoff
) -> None:
    """Wait a retry's backoff, or until the job is canceled (the cancel subscription stops
    it as a running job) or the executor stops, keeping the delivery ours with answered
    in-progress acks, one a heartbeat; a delivery left alone would expire and be handed
    out again, and its new handler would start the same retry."""
    waiting = RunningJob(job_id, action.attempt)
    ctx.running[job_id] = waiting
    try:
        end = time.monotonic() + action.seconds
        while (beat := time.monotonic()) < end and not ctx.stopping.is_set():
            if waiting.stop_requested.done():
                return
            await confirm_progress(ctx.nc, msg, ctx.heartbeat_s / 3)
            stopping: asyncio.Future[Any] = asyncio.ensure_future(ctx.stopping.wait())
            wake: set[asyncio.Future[Any]] = {stopping, waiting.stop_requested}
            await asyncio.wait(
                wake,
                timeout=max(0.0, min(end, beat + ctx.heartbeat_s) - time.monotonic()),
                return_when=asyncio.FIRST_COMPLETED,
            )
            stopping.cancel()
    finally:
        if ctx.running.get(job_id) is waiting:
            del ctx.running[job_id]
