"""One delivery of a queued job, from the message to its ack (or to leaving it alone):
what the delivery says, the look-ups ``decide`` asks for, and doing what it decided.
Running the job is ``attempt.py``'s."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import replace

import msgspec
import nats.js.errors
from nats.aio.msg import Msg

from contracts.errors import TerminalErrorCode
from contracts.events import (
    Queued,
    Started,
    Terminal,
    TerminalError,
    decode_event,
    never_ran,
    now_iso,
)
from services.catalogue.loader import Tool
from services.executor import decide as d
from services.executor import slots
from services.executor.attempt import Attempt, CouldNotStart, Finished, Refused, first_hold_window
from services.executor.context import ExecutorContext
from services.executor.heartbeat import confirm_progress
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
    for _ in range(MAX_DECISIONS):
        facts = replace(facts, accepting=ctx.accepting)  # it changes during a backoff
        action = d.decide(facts)
        if isinstance(action, d.LookUp):
            facts = await look_up(ctx, facts, action.fact)
            continue
        if isinstance(action, d.WaitBackoff):
            log.info(
                "job %s: attempt %d starts in %gs", queued.job_id, action.attempt, action.seconds
            )
            await wait_holding(ctx, msg, action.seconds)
            facts = await look_up(ctx, facts, "after_backoff")
            continue
        again = await act(ctx, msg, queued, tool, action)
        if again is None:
            return
        facts = again
    await msg.nak(delay=0.1)


def first_facts(ctx: ExecutorContext, msg: Msg, queued: Queued, tool: Tool | None) -> d.Facts:
    """What the delivery itself says about the job."""
    meta = msg.metadata
    retry = tool.manifest.retry if tool else None
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
        max_attempts=d.default_max_attempts(
            bool(tool and tool.manifest.idempotent), retry.max_attempts if retry else None
        ),
        backoff_s=retry.backoff_s if retry else 0.0,
    )


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
        why = f"executor {prev.executor} vanished while running attempt {prev.attempt}"
        terminal = never_ran(
            job_id=job_id,
            state="lost",
            finished_at=now_iso(),
            attempt=prev.attempt,
            started_at=prev.started_at,
            error=TerminalError(TerminalErrorCode.EXECUTOR_LOST, why),
        )
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
    if isinstance(outcome, CouldNotStart):
        return await spawn_failed(
            ctx, msg, queued, tool, action.attempt, outcome.message, action.last_seq
        )
    if isinstance(outcome, Refused):
        return await moved_on(ctx, msg, queued, tool, outcome.decided_seq)
    if isinstance(outcome, Finished) and outcome.stored:
        await settle(ctx, msg, queued.job_id, tool)
    return None


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


async def wait_holding(ctx: ExecutorContext, msg: Msg, seconds: float) -> None:
    """Wait ``seconds`` (a retry's backoff), or until the executor stops, keeping the
    delivery ours with answered in-progress acks, one a heartbeat; a delivery left alone
    would expire and be handed out again, and its new handler would start the same retry."""
    end = time.monotonic() + seconds
    while (beat := time.monotonic()) < end and not ctx.stopping.is_set():
        await confirm_progress(ctx.nc, msg, ctx.heartbeat_s / 3)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                ctx.stopping.wait(), max(0.0, min(end, beat + ctx.heartbeat_s) - time.monotonic())
            )
