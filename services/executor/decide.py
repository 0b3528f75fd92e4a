"""What one delivery of a queued job should do: a pure decision over what the executor
knows about the job so far. No NATS, no processes, no asyncio.

The shell (``delivery.py``) starts with what the delivery itself says, asks ``decide``,
and either does what it answers or, when the answer is a ``LookUp``, reads that fact
from the stream (or the job's hold) and asks again. So every path a delivery can take
is a row in ``tests/unit/test_executor_decide.py``:

- the job runs on this executor already: leave it (the delivery came back to us);
- it has ended: settle the delivery;
- an earlier attempt started and its hold is renewed: another executor runs it, leave
  the delivery alone (no ack, no nak: that executor holds the same message);
- its hold lapsed: end it ``lost``, or announce a retry (idempotent tools whose
  ``retry.when`` has ``lost``, attempts left) and run it after the backoff;
- an attempt ended and a retry was announced: run the next attempt once its backoff is
  over (waiting out what is left of it);
- a cancel came before it started: end it ``canceled``;
- it waited to start past its queue timeout: end it ``timed_out`` (``queue_timeout``);
- its tool cannot run here: end it ``failed`` (``spawn_failed``);
- the executor is stopping: hand the delivery back;
- otherwise run the attempt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Fact = Literal["newest", "started", "retry", "hold", "cancel", "after_backoff"]


@dataclass(frozen=True)
class Attempted:
    """The job's newest ``started``: which attempt, on which executor, stored where."""

    seq: int
    attempt: int
    executor: str
    started_at: str


@dataclass(frozen=True)
class Announced:
    """The job's newest ``retry``: the attempt it follows, and how long is left of its
    backoff."""

    seq: int
    attempt: int
    wait_s: float


@dataclass(frozen=True)
class Facts:
    """What is known about a delivered job. ``None`` on an optional fact means not looked
    up yet; ``started`` is known once ``started_known`` is set (then ``None``: none)."""

    job_id: str
    queued_seq: int
    running_here: bool
    needs_lookup: bool  # a cancel may be newer than `queued` (core.CancelWatch)
    accepting: bool
    tool_problem: str | None  # why the job's tool cannot run here, if it cannot
    max_attempts: int  # after executor losses (``attempts_after(..., "lost")``)
    backoff_s: float  # the first retry's wait (``backoff_delay``)
    backoff_max_s: float = 60.0
    jitter: float = 0.0  # in [0, 1): drawn once per delivery
    queue_expired: bool = False  # it waited to start longer than its queue timeout
    newest_seq: int | None = None
    ended: bool | None = None
    started: Attempted | None = None
    started_known: bool = False
    announced: Announced | None = None
    announced_known: bool = False
    hold_lapsed: bool | None = None
    canceled: bool | None = None
    waited_from: int | None = None  # the attempt whose retry backoff was waited out


@dataclass(frozen=True)
class LookUp:
    fact: Fact


@dataclass(frozen=True)
class LeaveAlone:
    why: str


@dataclass(frozen=True)
class Settle:
    """The job has ended: forget its secrets and ack the delivery."""


@dataclass(frozen=True)
class EndLost:
    started: Attempted
    cas_seq: int


@dataclass(frozen=True)
class AnnounceRetry:
    """Store a ``retry`` event for a lost attempt (only while ``cas_seq`` is the job's
    newest event), then wait its backoff."""

    started: Attempted
    delay_s: float
    cas_seq: int


@dataclass(frozen=True)
class EndQueueTimeout:
    cas_seq: int


@dataclass(frozen=True)
class WaitBackoff:
    attempt: int  # the attempt that will run after the wait
    seconds: float


@dataclass(frozen=True)
class EndCanceled:
    attempt: int  # the attempt that never started
    cas_seq: int


@dataclass(frozen=True)
class SpawnFailed:
    attempt: int
    message: str
    cas_seq: int


@dataclass(frozen=True)
class Redeliver:
    delay_s: float


@dataclass(frozen=True)
class Run:
    attempt: int
    last_seq: int  # the job's newest event: `started` is stored only if it still is


Action = (
    LookUp
    | LeaveAlone
    | Settle
    | EndLost
    | AnnounceRetry
    | WaitBackoff
    | EndCanceled
    | EndQueueTimeout
    | SpawnFailed
    | Redeliver
    | Run
)


def attempts_after(
    retried: tuple[str, ...], max_attempts: int, idempotent: bool, state: str
) -> int:
    """How many attempts a job may have in all when one ends ``state``: the manifest's
    ``retry.max_attempts`` if ``retry.when`` names it (``lost`` only for idempotent
    tools), else 1."""
    if state not in retried or (state == "lost" and not idempotent):
        return 1
    return max_attempts


def backoff_delay(backoff_s: float, backoff_max_s: float, attempt: int, jitter: float) -> float:
    """The wait before the attempt after ``attempt``: ``backoff_s`` doubled for each
    retry before, at most ``backoff_max_s``, less up to half of it (``jitter`` in [0, 1)),
    so executors that lost many jobs at once do not retry them all at the same moment."""
    base = min(backoff_max_s, backoff_s * 2.0 ** max(0, attempt - 1))
    return round(base * (1.0 - jitter / 2.0), 3)


def decide(f: Facts) -> Action:
    """The next step for a delivery, given what is known (see the module docstring)."""
    if f.running_here:
        return LeaveAlone("it runs on this executor")
    if f.needs_lookup and f.newest_seq is None:
        return LookUp("newest")
    if f.ended:
        return Settle()
    newest = f.newest_seq if f.newest_seq is not None else f.queued_seq
    fresh = newest == f.queued_seq  # nothing after `queued`: no attempt, no cancel
    attempt = 1
    if not fresh:
        if not f.started_known:
            return LookUp("started")
        if f.started is not None:
            prev = f.started
            if f.waited_from is not None and prev.attempt != f.waited_from:
                return LeaveAlone(f"attempt {prev.attempt} started elsewhere during the backoff")
            if f.waited_from is None:
                if not f.announced_known:
                    return LookUp("retry")
                if f.announced is None or f.announced.attempt != prev.attempt:
                    if f.hold_lapsed is None:
                        return LookUp("hold")
                    if not f.hold_lapsed:
                        return LeaveAlone(f"attempt {prev.attempt} runs on {prev.executor}")
                    if prev.attempt >= f.max_attempts:
                        return EndLost(prev, newest)
                    delay = backoff_delay(f.backoff_s, f.backoff_max_s, prev.attempt, f.jitter)
                    return AnnounceRetry(prev, delay, newest)
                if f.announced.wait_s > 0:
                    return WaitBackoff(prev.attempt + 1, f.announced.wait_s)
            attempt = prev.attempt + 1
        if f.canceled is None:
            return LookUp("cancel")
        if f.canceled:
            return EndCanceled(attempt, newest)
    if attempt == 1 and f.queue_expired:
        return EndQueueTimeout(newest)
    if f.tool_problem is not None:
        return SpawnFailed(attempt, f.tool_problem, newest)
    if not f.accepting:
        return Redeliver(0.0)
    return Run(attempt, newest)


@dataclass(frozen=True)
class AfterRefusal:
    """What a delivery finds once the server refused its write (another event came
    after the one it decided on, ``decided_seq``)."""

    decided_seq: int
    ended: bool
    started_seq: int | None  # the job's newest `started`, if any
    canceled: bool


def after_refusal(f: AfterRefusal) -> Settle | LeaveAlone | Redeliver | LookUp:
    """Settle an ended job; leave a job alone that another executor started since (it
    holds the same message: an ack or nak from us would settle or hand back its
    delivery); a cancel since: decide again (``LookUp("newest")``); anything else:
    hand the delivery back."""
    if f.ended:
        return Settle()
    if f.started_seq is not None and f.started_seq > f.decided_seq:
        return LeaveAlone("another executor started it meanwhile")
    if f.canceled:
        return LookUp("newest")
    return Redeliver(0.1)
