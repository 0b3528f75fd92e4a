"""Following one job: every stored event, from its first to its terminal, each once and
in stream order, with no gap whatever happens between the calls."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

import msgspec
import nats.errors
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from contracts import subjects
from contracts.events import Event, Terminal, decode_event
from domed import api
from domed.errors import DomedError, NoResponders
from services.runtime import connection

# While following, a quiet live subscription is checked against the stream this often.
FOLLOW_RESYNC_S = 5.0


async def follow_job(
    nc: Nats, job_id: str, idle_timeout: float | None = None
) -> AsyncIterator[tuple[int, Event]]:
    """Every stored event of one job, from its first, live, until its terminal, each once and
    in stream order, with its stream sequence.

    It needs no JetStream rights, so any user who may call ``domed.jobs.events`` and
    subscribe to ``job.>`` can follow (the ``submitter`` of deploy/nats):

    1. subscribe to ``job.<id>.*``, where the stream republishes each stored event with
       its stream sequence in the ``Nats-Sequence`` header;
    2. page the job's history through ``domed.jobs.events`` (the projector reads it from
       the stream) and yield it;
    3. go on with the live messages, dropping any whose sequence was already yielded.

    The subscription exists before the history is read, so an event stored in between is
    in the history, on the subscription or both, and is yielded once. Reads of the history
    past the last yielded event fill in anything the subscription missed: once when the
    first live event arrives (in a cluster a new subscription reaches the stream's leader a
    little later) and whenever the subscription is quiet for ``FOLLOW_RESYNC_S``.

    If no projector answers, it falls back to an ordered consumer on the stream, which
    needs the right to create consumers. ``idle_timeout``: raise ``nats.errors.TimeoutError``
    after that many seconds without a new event.
    """
    live = await nc.subscribe(subjects.job_events_filter(job_id))
    try:
        await connection.subscriptions_sent(nc)
        try:
            first = await _events_page(nc, job_id, 0)
        except nats.errors.NoRespondersError:
            await live.unsubscribe()
            async for item in _follow_with_consumer(nc, job_id, idle_timeout):
                yield item
            return
        last = 0
        last_at = time.monotonic()
        async for seq, event in history(nc, job_id, 0, first):
            last, last_at = seq, time.monotonic()
            yield seq, event
            if _is_terminal(event):
                return
        checked = False
        while True:
            wait = FOLLOW_RESYNC_S
            if idle_timeout is not None:
                left = last_at + idle_timeout - time.monotonic()
                if left <= 0:
                    raise nats.errors.TimeoutError
                wait = min(wait, left)
            try:
                msg = await live.next_msg(timeout=wait)
            except nats.errors.TimeoutError:
                msg = None
            seq = _stored_seq(msg) if msg is not None else 0
            if msg is not None and seq <= last:
                continue  # already yielded from the history, or not a stored event
            if msg is None or not checked:
                # quiet, or the first live event after the history: read the stream from
                # the last yielded event; a live copy of what this yields is dropped above
                checked = checked or msg is not None
                try:
                    async for seq_h, event in history(nc, job_id, last):
                        last, last_at = seq_h, time.monotonic()
                        yield seq_h, event
                        if _is_terminal(event):
                            return
                except (DomedError, nats.errors.Error):
                    pass  # the projector is away for now; the live events still come
                if msg is None or seq <= last:
                    continue
            assert msg is not None
            event = decode_event(msg.data)
            last, last_at = seq, time.monotonic()
            yield seq, event
            if _is_terminal(event):
                return
    finally:
        with contextlib.suppress(Exception):
            await live.unsubscribe()


def _is_terminal(event: Event) -> bool:
    return isinstance(event, Terminal)


def _stored_seq(msg: Msg) -> int:
    """The stream sequence of a republished event; 0 for anything else on ``job.>``
    (nothing the stream stored, e.g. a publish on a server without deploy/nats's permissions)."""
    try:
        return int((msg.headers or {}).get("Nats-Sequence", "0"))
    except ValueError:
        return 0


class _StoredEvent(msgspec.Struct, frozen=True):
    """``contracts.api.StoredEvent`` with its payload left raw, to be decoded once as its
    event class."""

    seq: int
    data: msgspec.Raw


class _EventsPage(msgspec.Struct, frozen=True):
    """The part of ``contracts.api.JobsEventsReply`` a follower reads."""

    events: list[_StoredEvent]
    next: int | None = None


async def _events_page(nc: Nats, job_id: str, after: int, timeout: float = 5.0) -> _EventsPage:
    """One page of ``domed.jobs.events``; raises NoRespondersError if no projector runs."""
    body: dict[str, object] = {"job_id": job_id}
    if after:
        body["after_seq"] = after
    try:
        return await api.request(nc, subjects.JOBS_EVENTS, body, _EventsPage, timeout)
    except NoResponders:
        raise nats.errors.NoRespondersError from None


async def history(
    nc: Nats, job_id: str, after: int = 0, page: _EventsPage | None = None
) -> AsyncIterator[tuple[int, Event]]:
    """The job's stored events after stream sequence ``after``, page by page, in order,
    as far as the stream has them now (``domed.jobs.events``)."""
    while True:
        if page is None:
            page = await _events_page(nc, job_id, after)
        for stored in page.events:
            if stored.seq <= after:
                continue
            after = stored.seq
            yield stored.seq, decode_event(stored.data)
        nxt = page.next
        if nxt is None or nxt <= after and not page.events:
            return
        after = max(after, nxt)
        page = None


async def _follow_with_consumer(
    nc: Nats, job_id: str, idle_timeout: float | None
) -> AsyncIterator[tuple[int, Event]]:
    """Follow by reading the stream with an ordered consumer on ``job.<id>.*`` from the
    first message (needs the right to create a consumer on DOMED_JOBS)."""
    js = nc.jetstream()
    sub = await js.subscribe(
        subjects.job_events_filter(job_id),
        stream=subjects.STREAM,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
        idle_heartbeat=2.0,
    )
    try:
        while True:
            msg = await sub.next_msg(
                timeout=idle_timeout if idle_timeout is not None else 3600 * 24
            )
            event = decode_event(msg.data)
            yield msg.metadata.sequence.stream, event
            if _is_terminal(event):
                return
    finally:
        await sub.unsubscribe()
