"""Cancels reach executors on a core subscription to ``job.*.cancel`` (the stream
republishes each stored event there). A running job's cancel stops it; every cancel
seen lets a later first delivery of that job skip no look-up (``core.CancelWatch``).
After a reconnect, each running job's cancel is looked up, so a cancel sent while the
executor was cut off still stops the job."""

from __future__ import annotations

import contextlib
import logging
from functools import partial

import msgspec
import nats.js.errors
from nats.aio.msg import Msg

from contracts import subjects
from contracts.events import Cancel, decode_event
from services.executor import core
from services.executor.context import ExecutorContext
from services.runtime import connection, failures, jobstream

log = logging.getLogger("domed.executor")


async def watch_cancels(ctx: ExecutorContext, reconnected: bool = False) -> None:
    """Note from which stream sequence on the cancel subscription sees every cancel;
    called at start and after each reconnect, when it also stops the running jobs whose
    cancel came while we were cut off."""
    try:
        await connection.subscriptions_sent(ctx.nc)
        info = await failures.retry_until(
            30, lambda: ctx.js.stream_info(subjects.STREAM), pause_s=0.5
        )
    except failures.UNAVAILABLE_ERRORS + (nats.js.errors.APIError,) as exc:
        log.warning("cannot read the stream's position (%r); looking every job up", exc)
        info = None
    if info is not None:
        ctx.cancel_watch.watching_from(info.state.last_seq)
    if reconnected:
        await catch_missed_cancels(ctx)


async def catch_missed_cancels(ctx: ExecutorContext) -> None:
    for job_id, job in list(ctx.running.items()):
        try:
            found = await failures.retry_until(
                30, partial(jobstream.last_event, ctx.js, job_id, "cancel")
            )
        except failures.UNAVAILABLE_ERRORS as exc:
            log.warning("cannot look for a missed cancel of job %s (%r)", job_id, exc)
            continue
        if found is not None and isinstance(found[1], Cancel) and found[0] > job.started_seq:
            log.info("job %s was canceled while this executor was cut off", job_id)
            job.request_stop(core.StopReason("canceled", None, found[1].reason))


async def on_cancel(ctx: ExecutorContext, msg: Msg) -> None:
    """A stored cancel, republished by the stream."""
    with contextlib.suppress(ValueError):
        job_id, _ = subjects.parse_event_subject(msg.subject)
        ctx.cancel_watch.saw(job_id, int((msg.headers or {}).get("Nats-Sequence", 0)))
    try:
        event = decode_event(msg.data)
    except msgspec.DecodeError:
        return
    if isinstance(event, Cancel) and event.job_id in ctx.running:
        ctx.running[event.job_id].request_stop(core.StopReason("canceled", None, event.reason))
