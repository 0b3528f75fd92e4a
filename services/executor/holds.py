"""Each running attempt's hold on its job: the key ``<job_id>`` in the KV bucket
``domed-holds``, whose entries expire one lease (the consumer's ``ack_wait``) after
their last write.

An attempt writes its hold from its first heartbeat on (half a heartbeat after its
``started`` is stored; most jobs have ended by then and never write one) and renews it
with every heartbeat. A job is declared ``lost`` only once its hold is gone, and stays
gone for longer than an attempt takes to write its first one: the attempt's executor
stopped renewing it. A redelivery alone proves nothing, because an
executor that was paused while a job was delivered to it hands back, when it resumes,
a delivery that another executor has long been running.

The value says who holds it, for people reading the bucket; the decision only asks
whether the key is there and renewed.
"""

from __future__ import annotations

import asyncio
import time

import nats.js.errors
from nats.js.kv import KeyValue

from services.runtime import jobstream


class Holds:
    def __init__(self, kv: KeyValue, lease_s: float) -> None:
        self.kv = kv
        self.lease_s = lease_s

    async def claim(self, job_id: str, attempt: int, executor: str) -> tuple[float, float]:
        """Write (or renew) the job's hold; returns when it was sent and when the server
        confirmed it (monotonic), from which ``Ownership`` knows how long it lasts."""
        sent = time.monotonic()
        await self.kv.put(job_id, jobstream.encode({"attempt": attempt, "executor": executor}))
        return sent, time.monotonic()

    async def lapsed(self, job_id: str, within_s: float) -> bool:
        """Whether the job's hold has lapsed, watching it for up to ``within_s``: True if
        it goes, or is absent all along; False as soon as it is written or renewed (a live
        executor runs the job), or if it is still there, unrenewed, at the end."""
        deadline = time.monotonic() + within_s
        first = await self._revision(job_id)
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(left, max(0.05, self.lease_s / 30)))
            now = await self._revision(job_id)
            if first is None and now is not None:
                return False  # written: its attempt's first heartbeat
            if first is not None and now != first:
                return now is None  # gone: lapsed; a new revision: renewed
        return first is None

    async def _revision(self, job_id: str) -> int | None:
        try:
            entry = await self.kv.get(job_id)
        except nats.js.errors.KeyNotFoundError:
            return None
        return entry.revision if entry.value is not None and entry.operation is None else None
