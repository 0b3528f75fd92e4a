"""The retention sweep: finished jobs older than ``--retain-s`` leave the store and the
KV bucket (the rule is ``services.projector.retention``'s).

It runs in the projector's event loop, between commits (SQLite is used from that loop
alone), a batch at a time so queries and the stream keep their turn; a KV that cannot be
reached is tried again on the next round, since the store keeps the ids in ``forgotten``
until their keys are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import nats.js.errors
from nats.aio.client import Client

from services.projector.mirror import KvWriter, purge_forgotten
from services.projector.retention import Retention
from services.projector.store import Store
from services.runtime import failures

log = logging.getLogger("domed.projector")

BATCH = 1000


class Sweeper:
    def __init__(
        self,
        store: Store,
        retention: Retention,
        nc: Client,
        writer: KvWriter,
        *,
        timeout_s: float,
    ) -> None:
        self.store = store
        self.retention = retention
        self.nc = nc
        self.writer = writer
        self.timeout_s = timeout_s
        self.removed = 0  # jobs removed from the store, since the start
        self.purged = 0  # keys purged from the KV (most expire by their TTL instead)

    async def run(self, stop: asyncio.Event) -> None:
        """Sweep every ``retention.sweep_every_s`` until ``stop``."""
        while not stop.is_set():
            await self.sweep_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.retention.sweep_every_s)

    async def sweep_once(self) -> int:
        """Remove what has expired by now; how many jobs left the store."""
        cutoff = self.retention.cutoff(time.time())
        removed = 0
        if cutoff is not None:
            while n := self.store.sweep(cutoff, BATCH):
                removed += n
                await asyncio.sleep(0)
        self.removed += removed
        try:
            purged = await purge_forgotten(
                self.nc, self.writer, self.store, timeout_s=self.timeout_s
            )
        except failures.UNAVAILABLE_ERRORS + (nats.js.errors.APIError,) as exc:
            log.warning("cannot purge removed jobs from the KV yet (%r); retrying later", exc)
            purged = 0
        self.purged += purged
        if removed or purged:
            log.info(
                "retention: %d finished job(s) removed from the store, %d purged from the KV",
                removed,
                purged,
            )
        return removed
