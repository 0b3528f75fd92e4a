"""A running attempt's heartbeat: every ``heartbeat_s`` it renews the job's hold, marks
the delivery in progress, keeps the tool's concurrency slot, and looks the job up, so an
attempt that another executor replaced (we were presumed dead after a pause or a
partition) goes quiet and its process is stopped."""

from __future__ import annotations

import asyncio
import contextlib
import time

from nats.aio.client import Client
from nats.aio.msg import Msg

from services.executor import slots
from services.executor.context import ExecutorContext, RunningJob
from services.executor.core import StopReason
from services.executor.ownership import Ownership
from services.executor.publisher import EventPipeline
from services.runtime import failures

SUPERSEDED = StopReason("canceled", None, "superseded")


async def confirm_progress(nc: Client, msg: Msg, timeout_s: float) -> None:
    """An in-progress ack sent as a request: the consumer answers once it has reset the
    delivery's timer, so a slow server delays the caller no longer than ``timeout_s``."""
    with contextlib.suppress(Exception):
        await nc.request(msg.reply, b"+WPI", timeout=timeout_s)


async def renew_hold(ctx: ExecutorContext, ownership: Ownership, timeout_s: float) -> None:
    """Renew the job's hold; an answer extends ``ownership``. Without one the hold stays
    as it was (the write may still have landed)."""
    try:
        sent, answered = await asyncio.wait_for(
            ctx.holds.claim(ownership.job_id, ownership.attempt, ctx.name), timeout_s
        )
    except Exception:
        return
    ownership.renewed(sent, answered)


async def heartbeat(
    ctx: ExecutorContext,
    msg: Msg,
    slot: slots.Slot | None,
    job: RunningJob,
    pipeline: EventPipeline,
    ownership: Ownership,
) -> None:
    """Beat until cancelled, or until the attempt is found superseded: then silence its
    events and ask it to stop."""
    # Each step is bounded, so the renewals keep their pace even while NATS is slow to
    # answer (a cluster electing a leader): a late one lets the hold lapse. The hold is
    # renewed before the delivery, so a redelivery finds it lapsed without delay.
    bound = ctx.heartbeat_s / 3
    while True:
        beat = time.monotonic()
        await renew_hold(ctx, ownership, bound)
        await confirm_progress(ctx.nc, msg, bound)
        if slot is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(slots.keep(ctx.slots_kv, slot), bound)
        try:
            lost = await asyncio.wait_for(ownership.lost(), bound)
        except failures.UNAVAILABLE_ERRORS:
            lost = False
        if lost:
            pipeline.silence()
            job.request_stop(SUPERSEDED)
            return
        await asyncio.sleep(max(0.0, ctx.heartbeat_s - (time.monotonic() - beat)))
