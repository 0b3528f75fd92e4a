"""The executor's work loop: one pull subscription and worker per slot on the shared
``executors`` consumer, each handling one delivery at a time; on stop, idle workers end
at once and running jobs get the drain timeout before they are canceled."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from functools import partial
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg

from contracts import subjects
from contracts.errors import TerminalErrorCode
from services.executor import cancels, core, delivery
from services.executor.context import ExecutorContext
from services.executor.terminals import STREAM_FULL_RETRY_S
from services.runtime import failures

log = logging.getLogger("domed.executor")

FETCH_WAIT_S = 5.0


async def run(ctx: ExecutorContext, stop: asyncio.Event) -> None:
    cancel_sub = await ctx.nc.subscribe("job.*.cancel", cb=partial(cancels.on_cancel, ctx))
    await cancels.watch_cancels(ctx)
    # One pull subscription and worker per slot: a slot that frees up asks for its next
    # job at once (a shared batch fetch made free slots wait for the batch).
    psubs = [
        await ctx.js.pull_subscribe_bind(subjects.EXECUTORS_CONSUMER, subjects.STREAM)
        for _ in range(ctx.settings.slots)
    ]
    fetching: dict[int, bool] = {}
    async with asyncio.TaskGroup() as workers:
        tasks = [workers.create_task(_worker(ctx, i, p, fetching)) for i, p in enumerate(psubs)]
        await stop.wait()
        ctx.stop_accepting()
        for i, task in enumerate(tasks):
            if fetching.get(i):  # idle: waiting for work, holding none
                task.cancel()
        await _drain(ctx)
    await cancel_sub.unsubscribe()
    for psub in psubs:
        with contextlib.suppress(Exception):
            await psub.unsubscribe()


async def _worker(ctx: ExecutorContext, index: int, psub: Any, fetching: dict[int, bool]) -> None:
    while ctx.accepting:
        fetching[index] = True
        try:
            msgs = await psub.fetch(1, timeout=FETCH_WAIT_S)
        except (TimeoutError, nats.errors.TimeoutError):
            continue
        except failures.UNAVAILABLE_ERRORS + (nats.js.errors.APIError,) as exc:
            log.warning("fetch failed: %r", exc)
            await asyncio.sleep(0.5)
            continue
        finally:
            fetching[index] = False
        for msg in msgs:
            await _handle(ctx, msg)


async def _handle(ctx: ExecutorContext, msg: Msg) -> None:
    """One delivery; an error hands it back (a job of a stream refusing writes later)."""
    try:
        await delivery.handle(ctx, msg)
    except Exception as exc:
        delay = 1.0
        if failures.is_stream_full(exc):  # not soon over: do not spawn the tool every second
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


async def _drain(ctx: ExecutorContext) -> None:
    """Let running jobs finish within the drain timeout, then cancel the rest."""
    if not ctx.running:
        return
    end = time.monotonic() + ctx.settings.drain_timeout_s
    while ctx.running and time.monotonic() < end:
        await asyncio.sleep(0.05)
    for job in list(ctx.running.values()):
        job.request_stop(
            core.StopReason("canceled", TerminalErrorCode.EXECUTOR_SHUTDOWN, "executor shut down")
        )
