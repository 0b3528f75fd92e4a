"""What ``domed projector --rebuild`` reports: one JSON object a line on stdout.

A rebuild discards the store and replays the stream from seq 1; every job is then put
into the KV mirror once more (a repair, after the store has it). It writes two lines,
each a whole :class:`RebuildReport`, and nothing else on stdout (its log goes to stderr):

1. ``"stage": "store"`` once the store holds the stream as it was when the projector
   started, with how long that took and what it cost;
2. ``"stage": "kv"`` once the KV mirror has caught up too: the same figures, plus the
   ``kv_*`` ones (null in the first line).

For example (one line each)::

    {"stage":"store","events":200065,"to_seq":200065,"store_s":0.93,"events_per_s":215124.7,
     "cpu_us_per_event":4.21,"kv_s":null,"kv_jobs_put":null,"kv_jobs_right":null}
    {"stage":"kv","events":200065,"to_seq":200065,"store_s":0.93,"events_per_s":215124.7,
     "cpu_us_per_event":4.21,"kv_s":2.72,"kv_jobs_put":0,"kv_jobs_right":41651}

Decode a line with ``msgspec.json.decode(line, type=RebuildReport)``; the bench does.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Literal, TextIO

import msgspec

from services.projector.follow import Follower
from services.projector.mirror import KvMirror

log = logging.getLogger("domed.projector")


class RebuildReport(msgspec.Struct, frozen=True, kw_only=True):
    """How a rebuild went, as far as ``stage`` (see the module doc)."""

    stage: Literal["store", "kv"]
    events: int  # applied to the store (skipped ones not counted)
    to_seq: int  # the stream's last seq when the projector started: where the rebuild ends
    store_s: float  # wall time from the projector being ready to the store reaching to_seq
    events_per_s: float  # events / store_s
    # The projector's CPU time per event while filling the store; it says more than the
    # rate on a busy machine (the rate moves with the load).
    cpu_us_per_event: float
    kv_s: float | None = None  # after store_s, until the KV mirror caught up
    kv_jobs_put: int | None = None  # jobs put into domed-jobs by the repair
    kv_jobs_right: int | None = None  # jobs the repair found right in the bucket already


def decode_report(line: str | bytes) -> RebuildReport:
    """One line of a rebuild's stdout as a report; msgspec's errors for anything else."""
    return msgspec.json.decode(line, type=RebuildReport)


async def report_rebuild(follower: Follower, mirror: KvMirror, out: TextIO | None = None) -> None:
    """Write the store line once the store is rebuilt, then the KV line once the mirror
    has caught up, to ``out`` (stdout unless given)."""
    out = out if out is not None else sys.stdout
    projection = follower.projection
    target = projection.catch_up_to
    start, cpu_start = time.monotonic(), time.process_time()
    async with follower.committed:
        await follower.committed.wait_for(lambda: projection.committed_seq >= target)
    took = (follower.caught_up_at or time.monotonic()) - start
    events = projection.events_applied
    store = RebuildReport(
        stage="store",
        events=events,
        to_seq=target,
        store_s=round(took, 6),
        events_per_s=round(events / took, 1) if took > 0 else 0.0,
        cpu_us_per_event=round((time.process_time() - cpu_start) * 1e6 / max(1, events), 3),
    )
    _write(out, store)  # before the log line: a reader of the log finds the report written
    log.info(
        "rebuild: %d events to seq %d in %.2fs (%.0f events/s)",
        events,
        target,
        took,
        store.events_per_s,
    )
    await mirror.caught_up.wait()
    kv = msgspec.structs.replace(
        store,
        stage="kv",
        kv_s=round(time.monotonic() - start - took, 6),
        kv_jobs_put=mirror.repair.jobs_put,
        kv_jobs_right=mirror.repair.already_right,
    )
    _write(out, kv)
    log.info(
        "rebuild: KV mirror caught up %.2fs later: %d jobs put, %d already right",
        kv.kv_s,
        kv.kv_jobs_put,
        kv.kv_jobs_right,
    )


def _write(out: TextIO, report: RebuildReport) -> None:
    out.write(msgspec.json.encode(report).decode() + "\n")
    out.flush()
