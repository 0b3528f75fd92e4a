"""What an executor does before it says it is ready: what dead executors left on this
host is dead (their process groups killed, their temp working dirs and cgroups removed), the
terminals a stopped one could not store are stored, and this one becomes the child
subreaper of its jobs' processes."""

from __future__ import annotations

import asyncio
import logging

from services.executor import adopted, records
from services.executor.context import ExecutorContext
from services.executor.terminals import store_kept_terminals

log = logging.getLogger("domed.executor")


async def prepare(ctx: ExecutorContext) -> None:
    await asyncio.to_thread(records.reap_orphans, ctx.records)
    await asyncio.to_thread(ctx.backend.prepare)
    await store_kept_terminals(ctx)
    ctx.subreaper = ctx.settings.adopt_orphans and adopted.become_subreaper()
    if ctx.settings.adopt_orphans and not ctx.subreaper:
        log.warning(
            "cannot become a child subreaper: a job's process that leaves its process "
            "group (setsid) is not killed with the job"
        )
