"""The projection in memory: the stream's events folded into job states between commits.

Pure (no NATS, no asyncio): the follower hands each event here as it arrives
(``on_event``), and commits what ``take_commit`` returns to the store. Rules a caller
may rely on:

- an event at or below ``applied_seq`` is ignored, so a replayed delivery changes nothing;
- an event that cannot be decoded, or that no job's ``queued`` precedes, is counted in
  ``skipped`` and passed over: one bad message never stops the projection;
- ``hurry`` is called when a commit should not wait for the next tick: the catch-up
  reached the stream's end, or ``COMMIT_MAX_DIRTY`` jobs changed since the last commit;
- memory stays flat: at most ``CACHE_MAX`` live jobs are kept between commits, the rest
  are read back through ``load`` when their next event comes;
- ``observe``, when set, sees every event that changed a job, with the job's state
  before and after (the metrics count there: ``services.projector.metrics``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import msgspec

from contracts.api import JobState
from contracts.events import TERMINAL_STATES, Event, Queued, decode_event
from contracts.subjects import job_of_event_subject
from services.projector.fold import apply

log = logging.getLogger("domed.projector")

# Jobs changed since the last commit that make a commit come at once.
COMMIT_MAX_DIRTY = 20_000
# Live jobs kept in memory (the rest are read from the store when an event comes).
CACHE_MAX = 2_000

Load = Callable[[str], JobState | None]
"""How a job's committed state is read back (the store's ``get``)."""
Observe = Callable[[int, Event, JobState | None, JobState], None]
"""Told ``(seq, event, state before, state after)`` of each event that changed a job."""


def _not_hurried() -> None:
    """A projection nobody follows needs no early commits."""


class Projection:
    """Job states folded from the stream, and how far that went.

    ``applied_seq`` is the last event folded, ``committed_seq`` the last one the store
    holds; ``catch_up_to`` is the stream's end when the projector started (a catch-up is
    over once committed that far) and ``gap`` the events retention removed unread.
    """

    def __init__(self, applied_seq: int, load: Load) -> None:
        self.applied_seq = applied_seq
        self.committed_seq = applied_seq
        self.catch_up_to = 0
        self.gap: tuple[int, int] | None = None
        # An empty store knows no job: a job's first event needs no look-up then.
        self.fresh = applied_seq == 0
        self.load = load
        self.hurry: Callable[[], None] = _not_hurried
        self.observe: Observe | None = None
        self.cache: dict[str, JobState] = {}  # live jobs, oldest first, at most CACHE_MAX
        self.dirty: dict[str, JobState] = {}  # changed since the last commit (newer than cache)
        self.skipped = 0  # since the last commit
        self.events_applied = 0

    @property
    def caught_up(self) -> bool:
        """Whether the store holds everything the stream held when the projector started."""
        return self.committed_seq >= self.catch_up_to

    @property
    def uncommitted(self) -> bool:
        """Whether events were applied (or skipped) since the last commit."""
        return self.applied_seq != self.committed_seq

    def on_event(self, subject: bytes, seq: int, data: bytes) -> None:
        """Fold the event stored at ``seq`` on ``subject`` (the reader's handler: once per
        event, so it is kept lean)."""
        if seq <= self.applied_seq:
            return
        if seq == self.catch_up_to:  # caught up: the store says so now, not a tick later
            self.hurry()
        try:
            job_id = job_of_event_subject(subject)
            event = decode_event(data)
        except (ValueError, msgspec.ValidationError, msgspec.DecodeError):
            log.warning("skipping undecodable event at seq %d on %r", seq, subject)
            self.applied_seq = seq
            self.skipped += 1
            return
        before = self.dirty.get(job_id) or self.cache.get(job_id)
        if before is None and not (self.fresh and isinstance(event, Queued)):
            before = self.load(job_id)
        after = apply(before, seq, event)
        self.applied_seq = seq
        self.events_applied += 1
        if after is None:
            self.skipped += 1
        elif after is not before:
            self.dirty[job_id] = after
            if self.observe is not None:
                self.observe(seq, event, before, after)
            if len(self.dirty) >= COMMIT_MAX_DIRTY:
                self.hurry()

    def skip_removed(self, first_seq: int) -> tuple[int, int] | None:
        """Move past the events before ``first_seq`` (the stream's first) that retention
        removed before they were applied; returns that gap, or None when there is none.

        Those events cannot be replayed: the jobs already projected are kept, and a job
        whose ``queued`` is gone is skipped when its later events come."""
        if first_seq <= self.applied_seq + 1:
            return None
        self.gap = (self.applied_seq + 1, first_seq - 1)
        self.applied_seq = first_seq - 1
        return self.gap

    def take_commit(self) -> tuple[list[JobState], int, int]:
        """What the next commit writes: ``(changed jobs, seq, events skipped)``; the
        projection then counts afresh. Call :meth:`committed` once it is written."""
        states = list(self.dirty.values())
        self.dirty = {}
        skipped, self.skipped = self.skipped, 0
        return states, self.applied_seq, skipped

    def committed(self, states: list[JobState], seq: int) -> None:
        """The store holds ``states`` and everything up to ``seq``.

        The live jobs among them stay in memory (the next event of a job is most likely
        one of theirs); finished ones are read from the store if ever needed."""
        self.committed_seq = seq
        cache = self.cache
        for state in states:
            if state.state in TERMINAL_STATES:
                cache.pop(state.job_id, None)
            else:
                cache[state.job_id] = state
        while len(cache) > CACHE_MAX:  # a backlog of queued jobs must not fill memory
            cache.pop(next(iter(cache)))
