"""The projector service (``domed-projector``): queryable job state, rebuilt from the stream.

It reads ``DOMED_JOBS`` from its checkpoint with an ordered consumer that hands each
event over raw (``services.runtime.ordered``: nats-py's own ordered consumer costs more
per message than the whole fold), folds each event into job state (``fold.apply``),
and commits dirty rows plus the checkpoint in one SQLite transaction every
``COMMIT_S`` (batching is what makes a rebuild fast: PERFORMANCE.md). After each
commit it mirrors the changed jobs into the KV bucket ``domed-jobs``; a KV position is
kept too, so a restart repairs a KV that lagged behind the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.kv import KeyValue

from contracts import subjects
from contracts.api import (
    JobsEventsReply,
    JobsEventsRequest,
    JobsGetReply,
    JobsGetRequest,
    JobsListReply,
    JobsListRequest,
    JobState,
    StoredEvent,
)
from contracts.errors import DomedError, ErrorCode
from contracts.events import TERMINAL_STATES, Queued, decode_event
from contracts.subjects import job_of_event_subject
from services.projector.fold import apply
from services.projector.store import Store, decode_cursor, encode_cursor
from services.runtime import bus, directget
from services.runtime.endpoints import Endpoint, serve
from services.runtime.lifecycle import VERSION
from services.runtime.ordered import OrderedReader, RawClient
from services.runtime.settings import Settings, redact_url

log = logging.getLogger("domed.projector")

COMMIT_S = 0.02
# The stream's deliveries carry a heartbeat this often when idle; two missed mean the
# consumer is gone (its server restarted, or in a cluster the node that held it).
READ_HEARTBEAT_S = 5.0
KV_MIRROR_S = 0.1
COMMIT_MAX_DIRTY = 20_000
# Live jobs kept in memory (the rest are read from the store when an event comes).
CACHE_MAX = 2_000
KV_PUTS_IN_FLIGHT = 256
REPAIR_PAGE = 500
# Read the KV before repairing it only when that many jobs would be put, and the KV holds
# at most KV_READ_PER_PUT values per job to put (reading it then costs less than the puts).
REPAIR_READ_FIRST = 1000
KV_READ_PER_PUT = 8
LIST_LIMIT_DEFAULT = 50
LIST_LIMIT_MAX = 500
EVENTS_LIMIT_DEFAULT = 1000
EVENTS_LIMIT_MAX = 10_000

_enc = msgspec.json.Encoder()
_raw = msgspec.json.Decoder()


class Projector:
    def __init__(
        self, settings: Settings, nc: RawClient, js: JetStreamContext, kv: KeyValue, store: Store
    ) -> None:
        self.settings = settings
        self.nc = nc
        self.js = js
        self.kv = kv
        self.store = store
        seq, kv_seq, _ = store.position()
        self.applied_seq = seq
        self.committed_seq = seq
        self.kv_seq = kv_seq
        self.cache: dict[str, JobState] = {}  # live jobs, oldest first, at most CACHE_MAX
        self.dirty: dict[str, JobState] = {}  # changed since the last commit (newer than cache)
        self.skipped = 0
        self.events_applied = 0
        self.wake = asyncio.Event()
        self.reconnected = asyncio.Event()
        self.gap: tuple[int, int] | None = None
        self.fresh_store = seq == 0
        self.indexes_deferred = False
        self.kv_pending: dict[str, JobState] = {}
        self.kv_repair = False
        self.last_mirror = 0.0
        self.catch_up_to = 0
        self.committed = asyncio.Condition()
        self.caught_up_at: float | None = None  # when the store reached catch_up_to
        self.kv_caught_up = asyncio.Event()  # the KV mirror reached catch_up_to
        self.kv_repaired = 0  # jobs put into the KV by repairs
        self.kv_already_right = 0  # jobs a repair found right in the KV already
        self.kv_readable = True  # False once the bucket refused a direct get

    # ---- reading the stream ---------------------------------------------------------------

    def on_event(self, subject: bytes, seq: int, data: bytes) -> None:
        if seq <= self.applied_seq:
            return
        if seq == self.catch_up_to:  # caught up: the store says so now, not a window later
            self.wake.set()
        try:
            job_id = job_of_event_subject(subject)
            event = decode_event(data)
        except (ValueError, msgspec.ValidationError, msgspec.DecodeError):
            log.warning("skipping undecodable event at seq %d on %r", seq, subject)
            self.applied_seq = seq
            self.skipped += 1
            return
        before = self.dirty.get(job_id) or self.cache.get(job_id)
        # A job's first event, when the store started empty: the store cannot know the job.
        if before is None and not (self.fresh_store and isinstance(event, Queued)):
            before = self.store.get(job_id)
        after = apply(before, seq, event)
        self.applied_seq = seq
        self.events_applied += 1
        if after is None:
            self.skipped += 1
        elif after is not before:
            self.dirty[job_id] = after
            if len(self.dirty) >= COMMIT_MAX_DIRTY:
                self.wake.set()

    async def follow(self, stop: asyncio.Event) -> None:
        """Keep the store and KV up to date until ``stop``; commits every ``COMMIT_S``."""
        await self.repair_kv()
        reader = OrderedReader(
            self.nc,
            self.js,
            subjects.STREAM,
            subjects.STORED_SUBJECTS,
            self.on_event,
            heartbeat_s=READ_HEARTBEAT_S,
        )
        await self._start_until(reader, stop, self.applied_seq + 1)
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
                    await self._start_until(reader, stop, self.applied_seq + 1)
        finally:
            await reader.close()
            await self.commit(final=True)

    async def read_stream_bounds(self) -> None:
        """Learn where the stream ends (how far a catch-up goes) and say so when its
        retention removed events this projection never read.

        The jobs already projected are kept; events that are gone cannot be replayed, so
        a job whose ``queued`` is gone is skipped (counted in the store's position). The
        position moves past the gap at once: with nothing left to read there, the
        projection has caught up as far as it ever can (``projected_seq`` says so).
        """
        info = await self.js.stream_info(subjects.STREAM)
        self.catch_up_to = info.state.last_seq
        if self.fresh_store and self.catch_up_to > 0:
            self.store.defer_indexes()  # built once caught up: commit()
            self.indexes_deferred = True
        first = info.state.first_seq
        if first > self.applied_seq + 1:
            self.gap = (self.applied_seq + 1, first - 1)
            log.warning(
                "events %d..%d were removed by the stream's retention before this projection "
                "read them; the jobs already projected are kept, those events cannot be replayed",
                *self.gap,
            )
            self.applied_seq = first - 1
            await self.commit()

    async def _start_until(self, reader: OrderedReader, stop: asyncio.Event, seq: int) -> None:
        """Start reading at ``seq``, retrying while JetStream is unreachable (e.g. a cluster
        electing a leader); a projector never dies of an outage."""
        while True:
            try:
                return await reader.start(seq)
            except bus.UNAVAILABLE_ERRORS + (nats.js.errors.APIError,) as exc:
                if stop.is_set():
                    raise
                log.warning("cannot read the stream yet (%r); retrying", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)

    async def commit(self, *, final: bool = False) -> None:
        if self.applied_seq != self.committed_seq:
            dirty = list(self.dirty.values())
            self.dirty = {}
            self.store.commit(dirty, self.applied_seq, self.skipped)
            self.skipped = 0
            self.committed_seq = self.applied_seq
            if self.committed_seq >= self.catch_up_to:
                if self.indexes_deferred:
                    self.store.build_indexes()
                    self.indexes_deferred = False
                if self.caught_up_at is None:
                    self.caught_up_at = time.monotonic()
            self._keep_live(dirty)
            async with self.committed:
                self.committed.notify_all()
            if self.kv_seq < self.catch_up_to:
                # Catching up (a restart or a rebuild): mirror once at the end, by repair_kv,
                # which puts only what the KV lacks.
                self.kv_repair = True
            else:
                self.kv_pending.update((s.job_id, s) for s in dirty)
        await self.mirror_pending(final)

    def _keep_live(self, committed: list[JobState]) -> None:
        """Keep the live jobs just committed in memory (the next event of a job is
        most likely one of theirs); finished ones are read from the store if ever needed."""
        cache = self.cache
        for state in committed:
            if state.state in TERMINAL_STATES:
                cache.pop(state.job_id, None)
            else:
                cache[state.job_id] = state
        while len(cache) > CACHE_MAX:  # a backlog of queued jobs must not fill memory
            cache.pop(next(iter(cache)))

    async def mirror_pending(self, final: bool = False) -> None:
        """Mirror changed jobs into the KV at most every ``KV_MIRROR_S``: a short job's
        intermediate states then cost no KV write (each is an fsynced message)."""
        if self.kv_seq >= self.committed_seq or self.committed_seq < self.catch_up_to:
            return
        now = time.monotonic()
        if not final and now - self.last_mirror < KV_MIRROR_S:
            return
        self.last_mirror = now
        if self.kv_repair:
            self.kv_pending.clear()
            self.kv_repair = not await self.repair_kv()
        else:
            states = list(self.kv_pending.values())
            self.kv_pending.clear()
            self.kv_repair = not await self.mirror(states, self.committed_seq)

    async def mirror(self, states: list[JobState], seq: int) -> bool:
        """Put each changed job into the KV bucket (pipelined), then record how far the KV got."""
        if not await self._put_all([(s.job_id, _enc.encode(s)) for s in states]):
            return False
        self._kv_reached(seq)
        return True

    async def _put_all(self, docs: list[tuple[str, bytes]]) -> bool:
        if not docs:
            return True
        sem = asyncio.Semaphore(KV_PUTS_IN_FLIGHT)

        async def put(job_id: str, doc: bytes) -> None:
            async with sem:
                await self.kv.put(job_id, doc)

        try:
            await asyncio.gather(*(put(job_id, doc) for job_id, doc in docs))
        except bus.UNAVAILABLE_ERRORS as exc:
            log.warning("KV mirror lags (%r); it is repaired on the next commit or restart", exc)
            return False
        return True

    def _kv_reached(self, seq: int) -> None:
        if seq > self.kv_seq:
            self.kv_seq = seq
            self.store.set_kv_seq(seq)
        if self.kv_seq >= self.catch_up_to:
            self.kv_caught_up.set()

    async def repair_kv(self) -> bool:
        """Bring the KV up to the store: put every job changed since the KV's position,
        a page at a time (memory stays flat however many there are).

        When the KV is small next to what would be put (after a rebuild, every job), it is
        read first and only the values that differ are put: a read costs far less than a
        put, which the server fsyncs.
        """
        seq = self.committed_seq
        put_before, right_before = self.kv_repaired, self.kv_already_right
        try:
            matched = await self._match_kv_first(self.kv_seq)
        except bus.UNAVAILABLE_ERRORS as exc:
            log.warning("cannot read the KV mirror (%r); it is repaired later", exc)
            self.store.end_kv_match()
            return False
        try:
            after = ""
            while page := self.store.changed_since(
                self.kv_seq, after_id=after, limit=REPAIR_PAGE, unmatched=matched
            ):
                after = page[-1][0]
                self.kv_repaired += len(page)
                if not await self._put_all(page):
                    return False
        finally:
            self.store.end_kv_match()
        put, right = self.kv_repaired - put_before, self.kv_already_right - right_before
        if put or right:
            log.info("KV repaired: %d jobs put, %d already right", put, right)
        self._kv_reached(seq)
        return True

    async def _match_kv_first(self, since: int) -> bool:
        """Read the KV and note the jobs changed after ``since`` that it already holds
        right, when that is cheaper than putting them all; False if it did not read.

        It reads by direct get, a page at a time: no consumer (the projector's user may
        not create one on a KV stream) and flat memory however big the bucket is."""
        stale = self.store.count_changed_since(since)
        if stale < REPAIR_READ_FIRST or not self.kv_readable:
            return False
        status = await self.kv.status()
        if status.values > KV_READ_PER_PUT * stale:
            return False
        self.store.start_kv_match()
        prefix = bus.kv_prefix(subjects.KV_JOBS)
        try:
            async for page in directget.read_batches(
                self.nc,
                bus.kv_stream(subjects.KV_JOBS),
                prefix + ">",
                batch=REPAIR_PAGE,
                timeout_s=self.settings.request_timeout_s,
            ):
                values = [(m.subject[len(prefix) :], m.data) for m in page if not m.removed]
                self.kv_already_right += self.store.match_kv_values(values)
        except directget.DirectGetError as exc:
            log.warning("cannot read the KV bucket (%s); putting every job instead", exc)
            self.kv_readable = False
            return False
        return True

    # ---- endpoints ----------------------------------------------------------------------

    async def get(self, req: JobsGetRequest) -> JobsGetReply:
        state = self.store.get(req.job_id)
        if state is None:
            details: dict[str, Any] = {"projected_seq": self.committed_seq}
            hint = ""
            if self.gap is not None:
                details["retention_gap"] = list(self.gap)
                hint = f" (events {self.gap[0]}..{self.gap[1]} were removed by retention unread)"
            raise DomedError(ErrorCode.UNKNOWN_JOB, f"no job has id {req.job_id!r}{hint}", details)
        return JobsGetReply(**msgspec.structs.asdict(state), projected_seq=self.committed_seq)

    async def list_jobs(self, req: JobsListRequest) -> JobsListReply:
        limit = req.limit if req.limit is not None else LIST_LIMIT_DEFAULT
        if limit < 1:
            raise DomedError(ErrorCode.INVALID_REQUEST, "limit must be at least 1")
        limit = min(limit, LIST_LIMIT_MAX)
        try:
            before = decode_cursor(req.cursor) if req.cursor else None
        except (ValueError, UnicodeDecodeError):
            raise DomedError(
                ErrorCode.INVALID_REQUEST, "cursor is not one this service issued"
            ) from None
        jobs = self.store.list_jobs(
            state=req.state, tool=req.tool, label=req.label, limit=limit, before=before
        )
        next_cursor = encode_cursor(jobs[-1].job_id) if len(jobs) == limit else None
        return JobsListReply(jobs=jobs, projected_seq=self.committed_seq, next_cursor=next_cursor)

    async def events(self, req: JobsEventsRequest) -> JobsEventsReply:
        """A job's events in stream order, read from the stream itself, one page at a time."""
        if not subjects.is_job_id(req.job_id):
            raise DomedError(ErrorCode.UNKNOWN_JOB, f"no job has id {req.job_id!r}")
        after = req.after_seq or 0
        limit = min(max(1, req.limit or EVENTS_LIMIT_DEFAULT), EVENTS_LIMIT_MAX)
        try:
            last = await bus.last_event(self.js, req.job_id)
        except bus.UNAVAILABLE_ERRORS as exc:
            raise bus.unavailable(exc) from None
        if last is None:
            raise DomedError(ErrorCode.UNKNOWN_JOB, f"no job has id {req.job_id!r}")
        last_seq, last_ev = last
        ended = last_ev.__struct_config__.tag == "terminal"
        if last_seq <= after:
            return JobsEventsReply(events=[], complete=ended, projected_seq=self.committed_seq)
        budget = max(64 * 1024, self.nc.max_payload - 64 * 1024)
        events: list[StoredEvent] = []
        size = 0
        reached = after
        cfg = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after + 1
        )
        sub = await self.js.subscribe(
            subjects.job_events_filter(req.job_id),
            stream=subjects.STREAM,
            ordered_consumer=True,
            config=cfg,
        )
        try:
            while reached < last_seq and len(events) < limit:
                msg = await sub.next_msg(timeout=self.settings.request_timeout_s)
                seq = msg.metadata.sequence.stream
                if size + len(msg.data) + 128 > budget and events:
                    break
                events.append(StoredEvent(subject=msg.subject, seq=seq, data=_raw.decode(msg.data)))
                size += len(msg.data) + 128
                reached = seq
        except (TimeoutError, nats.errors.TimeoutError) as exc:
            raise bus.unavailable(exc) from None
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        more = reached < last_seq
        return JobsEventsReply(
            events=events,
            complete=ended and not more,
            projected_seq=self.committed_seq,
            next=reached if more else None,
        )

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("jobs-get", subjects.JOBS_GET, JobsGetRequest, self.get),
            Endpoint("jobs-list", subjects.JOBS_LIST, JobsListRequest, self.list_jobs),
            Endpoint(
                "jobs-events", subjects.JOBS_EVENTS, JobsEventsRequest, self.events, concurrent=True
            ),
        ]


def discard_store(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def store_path(settings: Settings) -> Path:
    return Path(settings.data_dir) / "projector" / "jobs.sqlite3"


async def run_projector(
    settings: Settings, stop: asyncio.Event, ready: asyncio.Event | None = None
) -> None:
    path = store_path(settings)
    if settings.rebuild:
        discard_store(path)
    store = Store(path)
    reconnected = asyncio.Event()

    async def on_reconnect() -> None:
        reconnected.set()

    nc = await bus.connect(
        settings,
        settings.name or "domed-projector",
        service="projector",
        reconnected_cb=on_reconnect,
    )
    try:
        js = nc.jetstream(timeout=settings.request_timeout_s)
        await bus.ensure_stream(js, settings.stream)
        kv = await bus.ensure_kv(js, subjects.KV_JOBS, settings.stream, direct=True)
        projector = Projector(settings, nc, js, kv, store)
        projector.reconnected = reconnected
        await projector.read_stream_bounds()
        service = await serve(
            nc,
            subjects.SERVICE_PROJECTOR,
            VERSION,
            "job state projected from the DOMED_JOBS stream",
            projector.endpoints(),
        )
        log.info(
            "projector ready at seq %d, NATS %s",
            projector.committed_seq,
            redact_url(settings.nats_url),
        )
        if ready is not None:
            ready.set()
        reporter = asyncio.create_task(report_rebuild(projector)) if settings.rebuild else None
        await projector.follow(stop)
        if reporter is not None:
            reporter.cancel()
        await service.stop()
    finally:
        await bus.disconnect(nc)
        store.close()


async def report_rebuild(projector: Projector) -> None:
    """Print how fast the store was rebuilt, then how long the KV mirror took to catch up
    (every job is put into the KV once more, after the store has it)."""
    target = projector.catch_up_to
    start, cpu_start = time.monotonic(), time.process_time()
    async with projector.committed:
        await projector.committed.wait_for(lambda: projector.committed_seq >= target)
    took = (projector.caught_up_at or time.monotonic()) - start
    rate = projector.events_applied / took if took > 0 else float("inf")
    # CPU per event says more than the rate on a busy machine (the rate moves with it).
    cpu_us = (time.process_time() - cpu_start) * 1e6 / max(1, projector.events_applied)
    log.info(
        "rebuild: %d events to seq %d in %.2fs (%.0f events/s)",
        projector.events_applied,
        target,
        took,
        rate,
    )
    print(
        f"rebuild: {projector.events_applied} events in {took:.3f}s ({rate:,.0f} events/s) "
        f"into the store, {cpu_us:.2f} µs of CPU per event",
        flush=True,
    )
    await projector.kv_caught_up.wait()
    print(
        f"rebuild: KV mirror repaired {time.monotonic() - start - took:.2f}s later: "
        f"{projector.kv_repaired} jobs put, {projector.kv_already_right} already right",
        flush=True,
    )
