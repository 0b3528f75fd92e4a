"""The KV mirror: every job's state in the bucket ``domed-jobs``, following the store.

After each commit the changed jobs are put into the bucket, at most every
``KV_MIRROR_S``. The store keeps the KV's position (``kv_seq``) next to its own, so a
mirror that lagged (the bucket was unreachable, the projector stopped between a commit
and its puts) is repaired from the store: on start, on the next commit, or once a
catch-up is over. The KV is never ahead of the store, and never read by the projector's
own queries.

Retention (``services.projector.retention``): a finished job is put with a per-key TTL
that ends when it expires, so the server itself removes it; an expired job is not put at
all; and the keys of jobs the store removed (``Store.forgotten``) are purged by
``purge_forgotten`` if they are still there, the purge marker itself with a TTL, so
nothing is left behind in the bucket.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable
from datetime import datetime

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.kv import KV_DEL, KV_OP, KV_PURGE, KeyValue

from contracts import subjects
from contracts.api import JobState
from services.projector.projection import Projection
from services.projector.retention import Retention, finished_ts
from services.projector.store import Store
from services.runtime import directget, failures, provisioning

log = logging.getLogger("domed.projector")

KV_MIRROR_S = 0.1
KV_PUTS_IN_FLIGHT = 256
REPAIR_PAGE = 500
# Read the KV before repairing it only when that many jobs would be put, and the KV holds
# at most KV_READ_PER_PUT values per job to put (reading it then costs less than the puts).
REPAIR_READ_FIRST = 1000
KV_READ_PER_PUT = 8

# A purge marker stays this long, so a watcher that reconnects within it learns the job
# is gone; then it expires too.
PURGE_MARKER_TTL_S = 3600

_enc = msgspec.json.Encoder()
_PREFIX = provisioning.kv_prefix(subjects.KV_JOBS)

Put = tuple[str, bytes, int | None]
"""``(job_id, doc, ttl)``: a job's value and its per-key TTL in seconds (None: none)."""


class KvWriter:
    """Puts and purges in ``domed-jobs``, with per-key TTLs when the bucket allows them
    (``ttl_allowed``; every bucket domed creates does)."""

    def __init__(
        self,
        js: JetStreamContext,
        retention: Retention,
        ttl_allowed: bool,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.js = js
        self.retention = retention
        self.ttl_allowed = ttl_allowed
        self.clock = clock

    def puts(self, docs: list[tuple[str, bytes, float | None]]) -> list[Put]:
        """``(job_id, doc, finished_ts)`` as puts, leaving out the expired jobs."""
        now = self.clock()
        out: list[Put] = []
        for job_id, doc, finished in docs:
            if self.retention.expired(finished, now):
                continue
            ttl = self.retention.kv_ttl(finished, now) if self.ttl_allowed else None
            out.append((job_id, doc, ttl))
        return out

    async def put(self, job_id: str, doc: bytes, ttl: int | None) -> None:
        await self.js.publish(_PREFIX + job_id, doc, msg_ttl=ttl)

    async def purge(self, job_id: str) -> None:
        headers = {KV_OP: KV_PURGE, "Nats-Rollup": "sub"}
        ttl = PURGE_MARKER_TTL_S if self.ttl_allowed else None
        await self.js.publish(_PREFIX + job_id, b"", headers=headers, msg_ttl=ttl)


async def put_all(kv: KvWriter, docs: list[Put]) -> bool:
    """Put each ``(job_id, doc, ttl)`` into the bucket, ``KV_PUTS_IN_FLIGHT`` at a time;
    False (and a warning) when the bucket could not be reached."""
    if not docs:
        return True
    sem = asyncio.Semaphore(KV_PUTS_IN_FLIGHT)

    async def put(job_id: str, doc: bytes, ttl: int | None) -> None:
        async with sem:
            await kv.put(job_id, doc, ttl)

    try:
        await asyncio.gather(*(put(*d) for d in docs))
    except failures.UNAVAILABLE_ERRORS as exc:
        log.warning("KV mirror lags (%r); it is repaired on the next commit or restart", exc)
        return False
    return True


class KvRepair:
    """Brings the KV up to the store: every job changed since the KV's position is put,
    a page at a time (memory stays flat however many there are).

    When the KV is small next to what would be put (after a rebuild, every job), it is
    read first and only the values that differ are put: a read costs far less than a
    put, which the server fsyncs. ``jobs_put`` and ``already_right`` count what the
    repairs did.
    """

    def __init__(
        self, nc: Client, kv: KeyValue, writer: KvWriter, store: Store, *, timeout_s: float
    ) -> None:
        self.nc = nc
        self.kv = kv
        self.writer = writer
        self.store = store
        self.timeout_s = timeout_s
        self.readable = True  # False once the bucket refused a direct get
        self.jobs_put = 0
        self.already_right = 0

    async def run(self, since: int) -> bool:
        """Put the jobs changed after stream seq ``since``; False when the KV could not be
        reached (nothing is lost: the next repair starts from the same position)."""
        put_before, right_before = self.jobs_put, self.already_right
        try:
            matched = await self._match_first(since)
        except failures.UNAVAILABLE_ERRORS as exc:
            log.warning("cannot read the KV mirror (%r); it is repaired later", exc)
            self.store.end_kv_match()
            return False
        try:
            after = ""
            while page := self.store.changed_since(
                since, after_id=after, limit=REPAIR_PAGE, unmatched=matched
            ):
                after = page[-1][0]
                finished = self.store.finished_at_of([job_id for job_id, _ in page])
                puts = self.writer.puts([(j, doc, finished.get(j)) for j, doc in page])
                self.jobs_put += len(puts)
                if not await put_all(self.writer, puts):
                    return False
        finally:
            self.store.end_kv_match()
        put, right = self.jobs_put - put_before, self.already_right - right_before
        if put or right:
            log.info("KV repaired: %d jobs put, %d already right", put, right)
        return True

    async def _match_first(self, since: int) -> bool:
        """Read the KV and note the jobs changed after ``since`` that it already holds
        right, when that is cheaper than putting them all; False if it did not read.

        It reads by direct get, a page at a time: no consumer (the projector's user may
        not create one on a KV stream) and flat memory however big the bucket is."""
        stale = self.store.count_changed_since(since)
        if stale < REPAIR_READ_FIRST or not self.readable:
            return False
        status = await self.kv.status()
        if status.values > KV_READ_PER_PUT * stale:
            return False
        self.store.start_kv_match()
        prefix = provisioning.kv_prefix(subjects.KV_JOBS)
        try:
            async for page in directget.read_batches(
                self.nc,
                provisioning.kv_stream(subjects.KV_JOBS),
                prefix + ">",
                batch=REPAIR_PAGE,
                timeout_s=self.timeout_s,
            ):
                values = [(m.subject[len(prefix) :], m.data) for m in page if not m.removed]
                self.already_right += self.store.match_kv_values(values)
        except directget.DirectGetError as exc:
            log.warning("cannot read the KV bucket (%s); putting every job instead", exc)
            self.readable = False
            return False
        return True


class KvMirror:
    """Keeps ``domed-jobs`` following the store's commits.

    ``committed(states)`` notes what a commit changed; ``flush`` puts it, at most every
    ``KV_MIRROR_S`` unless ``final``: a short job's intermediate states then cost no KV
    write (each is an fsynced message). During a catch-up nothing is put until it is
    over; then one repair puts only what the KV lacks. ``caught_up`` is set once the KV
    has reached the stream's end as it was when the projector started.
    """

    def __init__(
        self, kv: KvWriter, store: Store, projection: Projection, repair: KvRepair
    ) -> None:
        self.kv = kv
        self.store = store
        self.projection = projection
        self.repair = repair
        self.kv_seq = store.position()[1]
        self.pending: dict[str, JobState] = {}
        self.needs_repair = False
        self.last_flush = 0.0
        self.caught_up = asyncio.Event()

    def committed(self, states: list[JobState]) -> None:
        """The store just committed ``states``: they are to be mirrored."""
        if self.kv_seq < self.projection.catch_up_to:
            # Catching up (a restart or a rebuild): mirror once at the end, by a repair,
            # which puts only what the KV lacks.
            self.needs_repair = True
        else:
            self.pending.update((s.job_id, s) for s in states)

    async def flush(self, final: bool = False) -> None:
        """Put what the commits since the last flush changed (or repair), unless the last
        flush was less than ``KV_MIRROR_S`` ago and this is not the ``final`` one."""
        seq = self.projection.committed_seq
        if self.kv_seq >= seq or seq < self.projection.catch_up_to:
            return
        now = time.monotonic()
        if not final and now - self.last_flush < KV_MIRROR_S:
            return
        self.last_flush = now
        if self.needs_repair:
            self.pending.clear()
            self.needs_repair = not await self.repair_to_store()
        else:
            states = list(self.pending.values())
            self.pending.clear()
            self.needs_repair = not await self._put(states, seq)

    async def repair_to_store(self) -> bool:
        """Put every job the store changed since the KV's position; False when the KV
        could not be reached (a later flush repairs again)."""
        seq = self.projection.committed_seq
        if not await self.repair.run(self.kv_seq):
            return False
        self._reached(seq)
        return True

    async def _put(self, states: list[JobState], seq: int) -> bool:
        docs = [(s.job_id, _enc.encode(s), finished_ts(s)) for s in states]
        if not await put_all(self.kv, self.kv.puts(docs)):
            return False
        self._reached(seq)
        return True

    def _reached(self, seq: int) -> None:
        if seq > self.kv_seq:
            self.kv_seq = seq
            self.store.set_kv_seq(seq)
        if self.kv_seq >= self.projection.catch_up_to:
            self.caught_up.set()


async def purge_forgotten(
    nc: Client, writer: KvWriter, store: Store, *, timeout_s: float, page: int = REPAIR_PAGE
) -> int:
    """Purge from ``domed-jobs`` the keys of the jobs the store removed that would stay
    there: a value put without a TTL (before retention was on) or with one that ends
    later than ``TTL_SLACK_S`` from now (a longer retention then). A value whose TTL is
    about to end is left to the server, so the usual case costs a read, no write. The
    store forgets the ids once done; raises what NATS raised otherwise. How many were
    purged."""
    purged = 0
    sem = asyncio.Semaphore(KV_PUTS_IN_FLIGHT)

    async def one(job_id: str) -> bool:
        async with sem:
            if not await _stays(nc, job_id, writer.clock(), timeout_s):
                return False
            await writer.purge(job_id)
            return True

    while ids := store.forgotten(page):
        done = await asyncio.gather(*(one(j) for j in ids))
        purged += sum(done)
        store.drop_forgotten(ids)
    return purged


# A key whose TTL ends within this is left to expire by itself.
TTL_SLACK_S = 2.0
_STAMP = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$")


async def _stays(nc: Client, job_id: str, now: float, timeout_s: float) -> bool:
    """Whether ``domed-jobs`` holds a value at ``job_id`` that its TTL does not remove
    within ``TTL_SLACK_S`` (read by direct get, which also gives its TTL and time)."""
    body = json.dumps({"last_by_subj": _PREFIX + job_id}).encode()
    stream = provisioning.kv_stream(subjects.KV_JOBS)
    try:
        msg = await nc.request(f"$JS.API.DIRECT.GET.{stream}", body, timeout=timeout_s)
    except nats.errors.NoRespondersError:
        return False
    headers = msg.headers or {}
    if headers.get("Status") or headers.get(KV_OP) in (KV_DEL, KV_PURGE):
        return False  # no such key (404), or only its marker
    ttl = headers.get("Nats-TTL")
    if ttl is None:
        return True
    try:
        expires = _stamp(headers.get("Nats-Time-Stamp", "")) + _ttl_s(ttl)
    except ValueError:
        return True
    return expires > now + TTL_SLACK_S


def _stamp(text: str) -> float:
    """A NATS message time (RFC 3339, nanoseconds) as epoch seconds."""
    m = _STAMP.match(text)
    if m is None:
        raise ValueError(f"not a time: {text!r}")
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    return datetime.fromisoformat(m.group(1) + (m.group(2) or "")[:7] + zone).timestamp()


def _ttl_s(text: str) -> float:
    """A ``Nats-TTL`` value: whole seconds, or a duration in seconds (``90s``)."""
    return float(text[:-1] if text.endswith("s") else text)
