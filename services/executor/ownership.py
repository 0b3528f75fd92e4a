"""An attempt's hold on its job's delivery, and when its events may go out unchecked.

Another executor is handed a job only after its delivery went ``ack_wait`` without
the consumer taking an ack or an in-progress ack from us. So the hold is measured
from what the server *confirmed*: the delivery itself, then each in-progress ack sent
as a request (the server answers once it has reset the delivery's timer). An
in-progress ack sent at ``s`` and answered before the delivery could have expired
keeps it until at least ``s + ack_wait``.

While the hold has more than ``margin`` (half of ``ack_wait``) left, no other executor
can have the job, and the event pipeline publishes without checks, pipelined. When
less is left, or the chain of confirmations broke (an answer came after the delivery
could already have expired: a pause, a partition, a cluster electing a leader), each
event is published with the server checking that the job has no terminal yet, so
nothing of ours is stored after another executor's terminal. A broken chain stays
broken for the attempt: a later confirmation does not prove that no other executor
was handed the job meanwhile.

Looking the job up (``lost``) is how an attempt learns it was superseded; a look-up
does not extend the hold (a follower may answer it, and the delivery can expire while
look-ups succeed).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from nats.js import JetStreamContext

from services.executor import core
from services.runtime import bus


class Ownership:
    def __init__(
        self,
        js: JetStreamContext,
        job_id: str,
        attempt: int,
        ack_wait_s: float,
        delivered_at: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.js = js
        self.job_id = job_id
        self.attempt = attempt
        self.ack_wait_s = ack_wait_s
        self.margin_s = ack_wait_s / 2
        self.clock = clock
        # The delivery cannot expire before this (monotonic time).
        self.held_until = delivered_at + ack_wait_s
        self.broken = False

    def progress_confirmed(self, sent_at: float, answered_at: float) -> None:
        """The consumer took an in-progress ack sent at ``sent_at``; the answer came at
        ``answered_at`` (it was processed somewhere in between)."""
        if answered_at >= self.held_until:
            self.broken = True  # it may have landed after the delivery expired
        else:
            self.held_until = max(self.held_until, sent_at + self.ack_wait_s)

    @property
    def fresh(self) -> bool:
        """No other executor can have been handed the job, with ``margin`` to spare:
        events may be published unchecked."""
        now = self.clock()
        if now >= self.held_until:
            self.broken = True
        return not self.broken and now < self.held_until - self.margin_s

    async def lost(self) -> bool:
        """Look the job up: True if it has a terminal or another attempt started. Raises
        the bus's unavailable errors when NATS cannot answer."""
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
        return core.superseded(newest[0], newest[1], self.attempt)
