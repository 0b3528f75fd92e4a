"""How long a finished job is kept: the rule the store, the KV mirror and the sweep share.

Pure (no I/O, no asyncio). A job is *expired* once it is finished (a terminal state) and
its ``finished_at`` lies more than ``retain_s`` in the past; a queued or running job
never is, however old. ``retain_s`` 0 keeps every job.

Where the rule is applied, so that a live projector and a rebuild reach the same state:

- the store never writes an expired job (``Store.commit``): a replay from seq 1 passes
  over the jobs whose events the stream still holds but which are older than retention;
- the sweep (``services.projector.sweep``) removes the jobs that expired since;
- the KV mirror puts a finished job with a per-key TTL that ends when it expires, so
  the server removes it from ``domed-jobs`` on time, rebuild or not; a job the store
  removed whose key is still there (put before retention was on) is purged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from contracts.api import JobState
from contracts.events import TERMINAL_STATES, timestamp

SWEEP_MIN_S = 0.5
SWEEP_MAX_S = 60.0


def finished_ts(state: JobState) -> float | None:
    """When a finished job ended, as epoch seconds; None for a queued or running one (or a
    finished one whose ``finished_at`` cannot be read, which is then kept)."""
    if state.state not in TERMINAL_STATES or not state.finished_at:
        return None
    try:
        return timestamp(state.finished_at)
    except ValueError:
        return None


@dataclass(frozen=True)
class Retention:
    retain_s: float = 0.0  # 0: keep every job

    @property
    def keeps_everything(self) -> bool:
        return self.retain_s <= 0

    def cutoff(self, now: float) -> float | None:
        """Jobs that finished before this (epoch seconds) are expired; None: none is."""
        return None if self.keeps_everything else now - self.retain_s

    def expired(self, finished: float | None, now: float) -> bool:
        cutoff = self.cutoff(now)
        return finished is not None and cutoff is not None and finished < cutoff

    def kv_ttl(self, finished: float | None, now: float) -> int | None:
        """The TTL, in whole seconds (at least 1, as the server requires), that a job put
        into the KV now gets so it leaves when it expires; None: no TTL (kept)."""
        if finished is None or self.keeps_everything:
            return None
        return max(1, math.ceil(finished + self.retain_s - now))

    @property
    def sweep_every_s(self) -> float:
        """How often the sweep runs: a tenth of the retention, within 0.5 s and 60 s."""
        return min(SWEEP_MAX_S, max(SWEEP_MIN_S, self.retain_s / 10))
