"""The one place job state transitions are defined: ``apply(state, seq, event)``.

Pure. Rules a caller may rely on:
- an event at or below the state's ``last_seq`` is a replay or a duplicate: ignored;
- a job moves queued -> running -> one terminal state and never back;
- nothing changes a terminal job (a late log or a second terminal is ignored);
- an event of a superseded attempt (lower than the job's current one) is ignored.
"""

from __future__ import annotations

from msgspec.structs import replace

from contracts.api import JobState, ProgressState
from contracts.events import (
    TERMINAL_STATES,
    Cancel,
    Event,
    LineCounts,
    Log,
    Progress,
    Queued,
    Retry,
    Started,
    Terminal,
)


def apply(state: JobState | None, seq: int, event: Event) -> JobState | None:
    """The job's state after ``event`` (stored at stream sequence ``seq``)."""
    if state is None:
        if isinstance(event, Queued):
            return JobState(
                job_id=event.job_id,
                tool=event.tool,
                tool_version=event.tool_version,
                params=event.params,
                labels=event.labels,
                state="queued",
                submitted_at=event.submitted_at,
                timeout_s=event.timeout_s,
                lines=LineCounts(),
                last_seq=seq,
                submitted_by=event.submitted_by,
            )
        return None  # the job's queued event is gone (retention) or not yet seen
    if seq <= state.last_seq:
        return state
    if state.state in TERMINAL_STATES:
        return replace(state, last_seq=seq)
    # Most events are log batches: test for them first.
    if isinstance(event, Log):
        if event.attempt != state.attempt:
            return replace(state, last_seq=seq)
        n = len(event.lines)
        lines = (
            LineCounts(state.lines.stdout + n, state.lines.stderr)
            if event.stream == "stdout"
            else LineCounts(state.lines.stdout, state.lines.stderr + n)
        )
        return replace(state, lines=lines, last_seq=seq)
    if isinstance(event, Queued):
        return replace(state, last_seq=seq)
    if isinstance(event, Cancel):
        return replace(state, cancel_requested=True, last_seq=seq)
    if isinstance(event, Started):
        if event.attempt < state.attempt:
            return replace(state, last_seq=seq)
        return replace(
            state,
            state="running",
            attempt=event.attempt,
            executor=event.executor,
            pid=event.pid,
            started_at=event.started_at,
            lines=LineCounts(),
            progress=None,
            last_seq=seq,
        )
    if isinstance(event, Retry):  # the job waits for its next attempt; still running
        return replace(state, last_seq=seq)
    if isinstance(event, Progress):
        if event.attempt != state.attempt:
            return replace(state, last_seq=seq)
        progress = ProgressState(
            current=event.current, total=event.total, percent=event.percent, message=event.message
        )
        return replace(state, progress=progress, last_seq=seq)
    if isinstance(event, Terminal):
        return replace(
            state,
            state=event.state,
            finished_at=event.finished_at,
            exit_code=event.exit_code,
            signal=event.signal,
            duration_s=event.duration_s,
            error=event.error,
            lines=event.lines,
            truncated=event.truncated,
            signals_sent=list(event.signals_sent),
            rusage=event.rusage,
            result=event.result,
            artifacts=event.artifacts,
            attempt=max(state.attempt, event.attempt),
            started_at=event.started_at or state.started_at,
            last_seq=seq,
        )
    raise TypeError(f"unknown event {type(event).__name__}")  # pragma: no cover
