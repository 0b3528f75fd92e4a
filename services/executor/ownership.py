"""An attempt's hold on its job (``holds.py``), and when its events may go out unchecked.

Another executor ends a job ``lost`` (or retries it) only once the job's hold key is
gone, which happens one lease after its last write, or has not been written within
``first_window`` of the executor seeing the attempt's ``started``. So the hold is
measured from what the server *confirmed*: it lasts ``first_window`` from when
``started`` was sent, then each write of the key is awaited, and a write sent at ``s``
and confirmed before the hold could have lapsed keeps it until at least ``s + lease``.

While the hold has more than ``margin`` (half of the lease; half of ``first_window``
before the first write) left, no other executor
can have ended the job, and the event pipeline publishes without checks, pipelined.
When less is left, or the chain of confirmations broke (an answer came after the hold
could already have lapsed: a pause, a partition, a cluster electing a leader), each
event is published with the server checking that the job has no terminal yet, so
nothing of ours is stored after another executor's terminal. A broken chain stays
broken for the attempt: a later confirmation does not prove that no other executor
ended the job meanwhile.

What is left: an unchecked publish that the checks let through while the hold was
fresh, and that then takes longer than ``margin`` to reach the server (the executor
paused between the check and the socket write). The margin is 15 s by default.

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
from services.runtime import jobstream


class Ownership:
    def __init__(
        self,
        js: JetStreamContext,
        job_id: str,
        attempt: int,
        lease_s: float,
        started_at: float,
        first_window_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.js = js
        self.job_id = job_id
        self.attempt = attempt
        self.lease_s = lease_s
        self.clock = clock
        # The hold cannot lapse before this (monotonic time); ``started_at`` is when the
        # attempt's `started` was sent.
        self.held_until = started_at + first_window_s
        self.margin_s = first_window_s / 2
        self.broken = False

    def renewed(self, sent_at: float, answered_at: float) -> None:
        """The server stored a write of the hold sent at ``sent_at``; the answer came at
        ``answered_at`` (it was stored somewhere in between)."""
        if answered_at >= self.held_until:
            self.broken = True  # it may have landed after the hold lapsed
        else:
            self.held_until = max(self.held_until, sent_at + self.lease_s)
            self.margin_s = self.lease_s / 2

    @property
    def fresh(self) -> bool:
        """No other executor can have ended the job, with ``margin`` to spare: events
        may be published unchecked."""
        now = self.clock()
        if now >= self.held_until:
            self.broken = True
        return not self.broken and now < self.held_until - self.margin_s

    async def lost(self) -> bool:
        """Look the job up: True if it has a terminal or another attempt started. Raises
        the bus's unavailable errors when NATS cannot answer."""
        found = await asyncio.gather(
            jobstream.last_event(self.js, self.job_id, "terminal"),
            jobstream.last_event(self.js, self.job_id, "started"),
            return_exceptions=True,  # both finish; the first failure is raised below
        )
        newest = []
        for result in found:
            if isinstance(result, BaseException):
                raise result
            newest.append(result[1] if result else None)
        return core.superseded(newest[0], newest[1], self.attempt)
