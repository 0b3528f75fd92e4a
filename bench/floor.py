"""domed's floor: what a job costs with its guarantees' own work and nothing else, for
case 7 to set beside domed and Celery.

Per job, in the bench's own process and in the order domed does it: the ``queued``
event stored (awaited, as the router awaits it); the job's temp working dir made and its
gated process spawned into a pooled cgroup with its rlimits, by the executor's own
backend; ``started`` stored with its compare-and-set on the job's newest event
(awaited: only then does the gate open); the process waited for and its cgroup emptied;
the working dir removed; ``terminal`` stored with its first-terminal check (awaited);
the job's state put in a KV bucket (awaited, as the projector's mirror does). The same
four stored messages a job of domed's costs, each fsynced under ``sync_interval:
always``, and the same process handling, with no service in between: no request to a
router, no work-queue fetch or ack, no events read back by a projector or a client.

The gap between domed and its floor is what the services add; the floor against Celery
is what the guarantees leave for them. The floor has a stream and a bucket of its own
(``BENCH_FLOOR``, ``bench-floor``) on the same nats-server, so no domed service sees its
jobs.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig
from nats.js.kv import KeyValue
from ulid import ULID

from bench.cases import LoopResult, closed_loop
from contracts.events import LineCounts, Queued, Started, Terminal, now_iso
from contracts.headers import (
    EXPECTED_LAST_SUBJECT_SEQUENCE,
    EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT,
    MSG_ID,
)
from contracts.subjects import msg_id
from services.executor.attempt import rusage_of
from services.executor.backend import LocalBackend, SpawnRequest
from services.executor.cgroups import find
from services.executor.limits import JobLimits
from services.runtime.jobstream import FIRST_TERMINAL, encode_event

STREAM = "BENCH_FLOOR"
BUCKET = "bench-floor"
# bench.true's limits: the manifest defaults (limits.memory_mb 2048, pids 1024,
# open_files 4096)
LIMITS = JobLimits(memory_bytes=2048 * 1024 * 1024, pids=1024, open_files=4096)
TRUE = "/usr/bin/true" if os.path.exists("/usr/bin/true") else "/bin/true"


@dataclass
class Floor:
    js: JetStreamContext
    kv: KeyValue
    backend: LocalBackend

    async def one(self) -> float:
        """One job, from its ``queued`` publish to its state in the KV; its latency in s."""
        t0 = time.perf_counter()
        job_id = str(ULID())
        queued = Queued(
            job_id=job_id,
            tool="bench.true",
            tool_version=1,
            manifest_sha256="0" * 64,
            params={},
            submitted_at=now_iso(),
            timeout_s=60,
            labels={},
        )
        ack = await self._store(queued, {MSG_ID: msg_id(job_id, "queued")})
        work_dir = tempfile.mkdtemp(prefix=f"domed-{job_id}-")
        request = SpawnRequest(
            [TRUE],
            work_dir,
            {"PATH": os.defpath, "DOMED_JOB_ID": job_id},
            limits=LIMITS,
            name=job_id,
        )
        proc = self.backend.spawn(request, lambda _stream, _data: None)
        try:
            started = Started(
                job_id=job_id, executor="floor", pid=proc.pid, attempt=1, started_at=now_iso()
            )
            await self._store(
                started,
                {
                    MSG_ID: msg_id(job_id, "started", 1),
                    EXPECTED_LAST_SUBJECT_SEQUENCE: str(ack.seq),
                    EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT: f"floor.{job_id}.*",
                },
            )
            proc.open_gate()
            proc.resume_reading()
            exit_ = await proc.wait_exit()
            await proc.drain(2.0)
            proc.kill_leftovers()
            await proc.reap_tree(2.0)
            os.rmdir(work_dir)
            terminal = Terminal(
                job_id=job_id,
                state="succeeded" if exit_.returncode == 0 else "failed",
                exit_code=exit_.returncode,
                started_at=started.started_at,
                finished_at=now_iso(),
                lines=LineCounts(0, 0),
                truncated=False,
                signals_sent=[],
                attempt=1,
                rusage=rusage_of(exit_, proc),
            )
            await self._store(terminal, {MSG_ID: msg_id(job_id, "terminal"), **FIRST_TERMINAL})
            await self.kv.put(job_id, encode_event(terminal))
        finally:
            proc.close()
            proc.discard()
        return time.perf_counter() - t0

    async def _store(self, event: Any, headers: dict[str, str]) -> Any:
        kind = type(event).__struct_config__.tag
        return await self.js.publish(
            f"floor.{event.job_id}.{kind}", encode_event(event), headers=headers, timeout=5.0
        )


async def floor_world(js: JetStreamContext, slots: int) -> Floor:
    """The floor's stream and bucket (made afresh), and an executor backend of its own."""
    with contextlib.suppress(Exception):
        await js.delete_stream(STREAM)
    with contextlib.suppress(Exception):
        await js.delete_key_value(BUCKET)
    await js.add_stream(
        StreamConfig(
            name=STREAM,
            subjects=["floor.>"],
            storage=StorageType.FILE,
            duplicate_window=120.0,
        )
    )
    kv = await js.create_key_value(bucket=BUCKET, storage=StorageType.FILE)
    hierarchy, _ = find("auto")
    return Floor(js, kv, LocalBackend(cgroups=hierarchy, slots=slots))


@contextlib.asynccontextmanager
async def closing(floor: Floor) -> AsyncIterator[Floor]:
    """The floor, then its cgroups, stream and bucket removed."""
    try:
        yield floor
    finally:
        floor.backend.close()
        with contextlib.suppress(Exception):
            await floor.js.delete_stream(STREAM)
        with contextlib.suppress(Exception):
            await floor.js.delete_key_value(BUCKET)


async def floor_true(floor: Floor, n: int, concurrency: int, deadline: float) -> LoopResult:
    return await closed_loop(n, concurrency, floor.one, deadline)
