"""An attempt's claim on its job, and how long the last confirmation of it holds.

Another executor takes a job over only after the job's delivery went ``ack_wait``
without an in-progress ack from us (we died, paused, or were cut off). So a claim
confirmed at time *t* (no terminal, no other attempt started) holds for a lease
shorter than ``ack_wait``. The heartbeat renews it; the event pipeline checks it
before each publish and confirms again if it has run out. After a long pause (a
SIGSTOP, a swapped-out process) the lease has run out, so nothing this attempt
buffered is published until the job is found still ours.
"""

from __future__ import annotations

import asyncio
import time

from nats.js import JetStreamContext

from services.executor import core
from services.runtime import bus


class Ownership:
    def __init__(self, js: JetStreamContext, job_id: str, attempt: int, lease_s: float) -> None:
        self.js = js
        self.job_id = job_id
        self.attempt = attempt
        self.lease_s = lease_s
        self.valid_until = 0.0

    def confirmed(self, at: float) -> None:
        """The job was ours at monotonic time ``at`` (when the confirming request was sent)."""
        self.valid_until = max(self.valid_until, at + self.lease_s)

    @property
    def fresh(self) -> bool:
        return time.monotonic() < self.valid_until

    async def lost(self) -> bool:
        """Look the job up: True if another attempt or executor has it now; else renew the
        lease. Raises the bus's unavailable errors when NATS cannot answer."""
        at = time.monotonic()
        found = await asyncio.gather(
            bus.last_event(self.js, self.job_id, "terminal"),
            bus.last_event(self.js, self.job_id, "started"),
            return_exceptions=True,  # both finish; the first failure is raised below
        )
        newest = []
        for result in found:
            if isinstance(result, BaseException):
                raise result
            newest.append(result[1] if result else None)
        if core.superseded(newest[0], newest[1], self.attempt):
            return True
        self.confirmed(at)
        return False
