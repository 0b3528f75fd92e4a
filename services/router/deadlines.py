"""Queue deadlines: the jobs this router queued with a ``queue_timeout_s``, soonest first.
At its deadline a job that is still only ``queued`` ends ``timed_out`` (``queue_timeout``);
the compare-and-set on its ``queued`` event makes that lose to a ``started`` or a
``cancel`` stored first. Executors check the deadline too when a delivery comes, so a job
queued by a router that has since stopped still never starts late."""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger("domed.router.deadlines")

Expire = Callable[[str, int, float], Awaitable[None]]


class QueueDeadlines:
    def __init__(self) -> None:
        self._due: list[tuple[float, str, int, float]] = []  # (monotonic, job, seq, timeout)
        self._changed = asyncio.Event()

    def add(self, job_id: str, queued_seq: int, timeout_s: float) -> None:
        heapq.heappush(self._due, (time.monotonic() + timeout_s, job_id, queued_seq, timeout_s))
        self._changed.set()

    def __len__(self) -> int:
        return len(self._due)

    async def run(self, stop: asyncio.Event, expire: Expire) -> None:
        """Call ``expire`` for each job at its deadline, until ``stop``."""
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                self._changed.clear()
                wait = self._due[0][0] - time.monotonic() if self._due else None
                if wait is None or wait > 0:
                    changed = asyncio.ensure_future(self._changed.wait())
                    await asyncio.wait(
                        {stopping, changed}, timeout=wait, return_when=asyncio.FIRST_COMPLETED
                    )
                    changed.cancel()
                    continue
                _, job_id, seq, timeout_s = heapq.heappop(self._due)
                try:
                    await expire(job_id, seq, timeout_s)
                except Exception:
                    log.exception("job %s: could not end it at its queue deadline", job_id)
        finally:
            stopping.cancel()
