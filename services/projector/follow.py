"""Following ``DOMED_JOBS``: read from the checkpoint, fold, commit rows and checkpoint together.

The stream is read with an ordered consumer that hands each event over raw
(``services.runtime.ordered``: nats-py's own ordered consumer costs more per message
than the whole fold) into the projection (``projection.Projection.on_event``). Every
``COMMIT_S`` the changed jobs and the position are committed in one SQLite
transaction (batching is what makes a rebuild fast: docs/benchmarks.md, case 4), then handed to
the KV mirror. A projector never dies of an outage: it reads on from where it was once
JetStream answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import nats.js.errors
from nats.js import JetStreamContext

from contracts import subjects
from services.projector.mirror import KvMirror
from services.projector.projection import Projection
from services.projector.retention import Retention
from services.projector.store import Store
from services.runtime import failures
from services.runtime.ordered import OrderedReader, RawClient

log = logging.getLogger("domed.projector")

COMMIT_S = 0.02
# The stream's deliveries carry a heartbeat this often when idle; two missed mean the
# consumer is gone (its server restarted, or in a cluster the node that held it).
READ_HEARTBEAT_S = 5.0


class Follower:
    """Keeps the store (and through ``mirror`` the KV) up to date with the stream.

    ``reconnected`` is set by the connection's reconnect callback: the server may have
    lost the consumer. ``committed`` is notified after every commit, and
    ``caught_up_at`` notes when the store first reached ``projection.catch_up_to``.
    """

    def __init__(
        self,
        nc: RawClient,
        js: JetStreamContext,
        store: Store,
        projection: Projection,
        mirror: KvMirror,
        reconnected: asyncio.Event,
    ) -> None:
        self.nc = nc
        self.js = js
        self.store = store
        self.projection = projection
        self.mirror = mirror
        self.reconnected = reconnected
        self.wake = asyncio.Event()
        projection.hurry = self.wake.set
        self.committed = asyncio.Condition()
        self.indexes_deferred = False
        self.caught_up_at: float | None = None
        self.retention = Retention()

    async def read_stream_bounds(self) -> None:
        """Learn where the stream ends (how far a catch-up goes) and say so when its
        retention removed events this projection never read.

        The position moves past such a gap at once: with nothing left to read there, the
        projection has caught up as far as it ever can (``projected_seq`` says so).
        """
        info = await self.js.stream_info(subjects.STREAM)
        projection = self.projection
        projection.catch_up_to = info.state.last_seq
        if projection.fresh and projection.catch_up_to > 0:
            self.store.defer_indexes()  # built once caught up: commit()
            self.indexes_deferred = True
        gap = projection.skip_removed(info.state.first_seq)
        if gap is not None:
            log.warning(
                "events %d..%d were removed by the stream's retention before this projection "
                "read them; the jobs already projected are kept, those events cannot be replayed",
                *gap,
            )
            await self.commit()

    async def follow(self, stop: asyncio.Event) -> None:
        """Keep the store and KV up to date until ``stop``; commits every ``COMMIT_S``."""
        await self.mirror.repair_to_store()
        reader = OrderedReader(
            self.nc,
            self.js,
            subjects.STREAM,
            subjects.STORED_SUBJECTS,
            self.projection.on_event,
            heartbeat_s=READ_HEARTBEAT_S,
        )
        await self._start_until(reader, stop)
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), COMMIT_S)
                self.wake.clear()
                await self.commit()
                if self.reconnected.is_set() or reader.needs_restart():
                    # A restarted server may have lost our ephemeral consumer, or the
                    # deliveries broke order: read on with a new one from where we are.
                    self.reconnected.clear()
                    await self._start_until(reader, stop)
        finally:
            await reader.close()
            await self.commit(final=True)

    async def _start_until(self, reader: OrderedReader, stop: asyncio.Event) -> None:
        """Start reading after the last event applied, retrying while JetStream is
        unreachable (e.g. a cluster electing a leader)."""
        while True:
            try:
                return await reader.start(self.projection.applied_seq + 1)
            except failures.UNAVAILABLE_ERRORS + (nats.js.errors.APIError,) as exc:
                if stop.is_set():
                    raise
                log.warning("cannot read the stream yet (%r); retrying", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)

    async def commit(self, *, final: bool = False) -> None:
        """Commit what was applied since the last commit (rows and position in one
        transaction), then let the KV mirror follow."""
        projection = self.projection
        if projection.uncommitted:
            states, seq, skipped = projection.take_commit()
            cutoff = self.retention.cutoff(time.time())
            self.store.commit(states, seq, skipped, cutoff)
            projection.committed(states, seq)
            if projection.caught_up:
                if self.indexes_deferred:
                    self.store.build_indexes()
                    self.indexes_deferred = False
                if self.caught_up_at is None:
                    self.caught_up_at = time.monotonic()
            async with self.committed:
                self.committed.notify_all()
            self.mirror.committed(states)
        await self.mirror.flush(final)
