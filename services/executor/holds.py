"""Each running attempt's hold on its job: the key ``<job_id>`` in the KV bucket
``domed-holds``, whose entries expire one lease (the consumer's ``ack_wait``) after
their last write.

An executor claims the hold before it publishes the attempt's ``started`` and renews
it with every heartbeat. A job is declared ``lost`` only once its hold is gone: the
attempt's executor stopped renewing it for longer than the lease. A redelivery alone
proves nothing, because an executor that was paused while a job was delivered to it
hands back, when it resumes, a delivery that another executor has long been running.

The value says who holds it, for people reading the bucket; the decision only asks
whether the key is there. A claim by an executor whose ``started`` is then refused is
never renewed and lapses within a lease; until then it delays a real loss, never
causes a false one.
"""

from __future__ import annotations

import asyncio
import time

import nats.js.errors
from nats.js.kv import KeyValue

from services.runtime import bus


class Holds:
    def __init__(self, kv: KeyValue, lease_s: float) -> None:
        self.kv = kv
        self.lease_s = lease_s

    async def claim(self, job_id: str, attempt: int, executor: str) -> tuple[float, float]:
        """Write (or renew) the job's hold; returns when it was sent and when the server
        confirmed it (monotonic), from which ``Ownership`` knows how long it lasts."""
        sent = time.monotonic()
        await self.kv.put(job_id, bus.encode({"attempt": attempt, "executor": executor}))
        return sent, time.monotonic()

    async def lapsed(self, job_id: str, within_s: float) -> bool:
        """Whether the job's hold has lapsed: True once the key is gone, False as soon as
        it is renewed (a live executor runs the job). An expiring key goes within about
        a heartbeat of a redelivery, so this waits up to ``within_s`` for one or the other;
        False if neither happened by then."""
        deadline = time.monotonic() + within_s
        revision: int | None = None
        while True:
            try:
                entry = await self.kv.get(job_id)
            except nats.js.errors.KeyNotFoundError:
                return True
            if entry.value is None or entry.operation is not None:  # deleted or purged
                return True
            if revision is not None and entry.revision != revision:
                return False
            revision = entry.revision
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await asyncio.sleep(min(left, max(0.05, self.lease_s / 30)))
