"""The projector's queries: ``domed.jobs.get``, ``domed.jobs.list``, ``domed.jobs.events``
and ``domed.jobs.artifact``.

``get`` and ``list`` answer from the store; every reply carries ``projected_seq`` (the
last stream seq the store holds) so a caller can wait for its own writes. ``events``
reads a job's events from the stream itself, one page at a time, so its answer is
complete even before the projection has caught up. ``artifact`` reads one stored chunk of
an artifact the job lists from the Object Store: clients whose NATS account has no
JetStream of domed's (deploy/nats) read artifacts through it, with the same permissions
as every other job query.
"""

from __future__ import annotations

import base64
import contextlib
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from contracts import subjects
from contracts.api import (
    JobsArtifactReply,
    JobsArtifactRequest,
    JobsEventsReply,
    JobsEventsRequest,
    JobsGetReply,
    JobsGetRequest,
    JobsListReply,
    JobsListRequest,
    StoredEvent,
)
from contracts.errors import DomedError, ErrorCode
from contracts.events import Terminal
from services.projector.projection import Projection
from services.projector.store import Store, decode_cursor, encode_cursor
from services.runtime import failures, jobstream
from services.runtime.endpoints import Endpoint

LIST_LIMIT_DEFAULT = 50
LIST_LIMIT_MAX = 500
EVENTS_LIMIT_DEFAULT = 1000
EVENTS_LIMIT_MAX = 10_000

_raw = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


class Queries:
    """Answers the job queries; ``projection`` says how far the store got."""

    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        store: Store,
        projection: Projection,
        *,
        timeout_s: float,
    ) -> None:
        self.nc = nc
        self.js = js
        self.store = store
        self.projection = projection
        self.timeout_s = timeout_s

    def endpoints(self) -> list[Endpoint]:
        """The projector service's endpoints (``events`` may run concurrently: it waits on
        the stream, not the store)."""
        return [
            Endpoint("jobs-get", subjects.JOBS_GET, JobsGetRequest, self.get),
            Endpoint("jobs-list", subjects.JOBS_LIST, JobsListRequest, self.list_jobs),
            Endpoint(
                "jobs-events", subjects.JOBS_EVENTS, JobsEventsRequest, self.events, concurrent=True
            ),
            Endpoint(
                "jobs-artifact",
                subjects.JOBS_ARTIFACT,
                JobsArtifactRequest,
                self.artifact,
                concurrent=True,
            ),
        ]

    async def artifact(self, req: JobsArtifactRequest) -> JobsArtifactReply:
        """One stored chunk of an artifact the job's terminal lists."""
        if not subjects.is_job_id(req.job_id):
            raise DomedError(ErrorCode.UNKNOWN_JOB, f"no job has id {req.job_id!r}")
        # the terminal as the stream has it: the store may not have projected it yet
        try:
            found = await jobstream.last_event(self.js, req.job_id, "terminal")
        except failures.UNAVAILABLE_ERRORS as exc:
            raise failures.unavailable(exc) from None
        if found is None or not isinstance(found[1], Terminal):
            raise DomedError(
                ErrorCode.UNKNOWN_JOB, f"job {req.job_id!r} has not ended (or does not exist)"
            )
        listed = {a.name: a for a in found[1].artifacts or []}
        entry = listed.get(req.name)
        if entry is None:
            raise DomedError(
                ErrorCode.INVALID_REQUEST,
                f"job {req.job_id} lists no artifact {req.name!r}",
                {"listed": sorted(listed)},
            )
        gone = DomedError(
            ErrorCode.INVALID_REQUEST,
            f"artifact {req.name!r} of job {req.job_id} is no longer stored (it expired)",
            {"missing": True, "bucket": entry.bucket, "object": entry.object},
        )
        try:
            bucket = await self.js.object_store(entry.bucket)
            info = await bucket.get_info(entry.object)
            chunks = int(info.chunks or 0)
            if req.chunk >= max(chunks, 1):
                raise DomedError(
                    ErrorCode.INVALID_REQUEST, f"chunk {req.chunk} is past the last ({chunks})"
                )
            data, seq = b"", req.after_seq
            if chunks:
                msg = await self.js.get_msg(
                    f"OBJ_{entry.bucket}",
                    seq=req.after_seq + 1,
                    subject=f"$O.{entry.bucket}.C.{info.nuid}",
                    next=True,
                )
                data, seq = msg.data or b"", int(msg.seq or 0)
        except (nats.js.errors.NotFoundError, nats.js.errors.BucketNotFoundError):
            raise gone from None
        except failures.UNAVAILABLE_ERRORS as exc:
            raise failures.unavailable(exc) from None
        return JobsArtifactReply(
            name=entry.name,
            size=entry.size,
            sha256=entry.sha256,
            chunks=chunks,
            chunk=req.chunk,
            seq=seq,
            data=base64.b64encode(data).decode(),
        )

    async def get(self, req: JobsGetRequest) -> JobsGetReply:
        """One job's state; ``unknown_job`` says when retention removed events unread."""
        state = self.store.get(req.job_id)
        projected = self.projection.committed_seq
        if state is None:
            details: dict[str, Any] = {"projected_seq": projected}
            hint = ""
            gap = self.projection.gap
            if gap is not None:
                details["retention_gap"] = list(gap)
                hint = f" (events {gap[0]}..{gap[1]} were removed by retention unread)"
            raise DomedError(ErrorCode.UNKNOWN_JOB, f"no job has id {req.job_id!r}{hint}", details)
        return JobsGetReply(**msgspec.structs.asdict(state), projected_seq=projected)

    async def list_jobs(self, req: JobsListRequest) -> JobsListReply:
        """A page of jobs, newest first, filtered by state, tool, label and submitter."""
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
            state=req.state,
            tool=req.tool,
            label=req.label,
            limit=limit,
            before=before,
            submitted_by=req.submitted_by,
        )
        full = len(jobs) == limit
        # Budgeted by bytes, like events: whatever the jobs hold, the page fits in one reply.
        budget = self._page_budget()
        size = 0
        for n, job in enumerate(jobs):
            size += len(_encoder.encode(job)) + 1
            if size > budget and n > 0:
                jobs, full = jobs[:n], True
                break
        next_cursor = encode_cursor(jobs[-1].job_id) if full and jobs else None
        return JobsListReply(
            jobs=jobs, projected_seq=self.projection.committed_seq, next_cursor=next_cursor
        )

    def _page_budget(self) -> int:
        """Bytes a page's items may take: the server's max payload less room for the rest."""
        return max(64 * 1024, self.nc.max_payload - 64 * 1024)

    async def events(self, req: JobsEventsRequest) -> JobsEventsReply:
        """A job's events in stream order, read from the stream itself, one page at a time."""
        if not subjects.is_job_id(req.job_id):
            raise DomedError(ErrorCode.UNKNOWN_JOB, f"no job has id {req.job_id!r}")
        after = req.after_seq or 0
        limit = min(max(1, req.limit or EVENTS_LIMIT_DEFAULT), EVENTS_LIMIT_MAX)
        try:
            last = await jobstream.last_event(self.js, req.job_id)
        except failures.UNAVAILABLE_ERRORS as exc:
            raise failures.unavailable(exc) from None
        if last is None:
            raise DomedError(ErrorCode.UNKNOWN_JOB, f"no job has id {req.job_id!r}")
        last_seq, last_ev = last
        ended = last_ev.__struct_config__.tag == "terminal"
        if last_seq <= after:
            return JobsEventsReply(
                events=[], complete=ended, projected_seq=self.projection.committed_seq
            )
        budget = self._page_budget()
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
                msg = await sub.next_msg(timeout=self.timeout_s)
                seq = msg.metadata.sequence.stream
                if size + len(msg.data) + 128 > budget and events:
                    break
                events.append(StoredEvent(subject=msg.subject, seq=seq, data=_raw.decode(msg.data)))
                size += len(msg.data) + 128
                reached = seq
        except (TimeoutError, nats.errors.TimeoutError) as exc:
            raise failures.unavailable(exc) from None
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        more = reached < last_seq
        return JobsEventsReply(
            events=events,
            complete=ended and not more,
            projected_seq=self.projection.committed_seq,
            next=reached if more else None,
        )
