"""services.projector.fold: job state transitions, duplicates, attempts and replays."""

from __future__ import annotations

import random
from collections.abc import Iterable

import pytest
from msgspec.structs import replace

from contracts.api import JobState, ProgressState
from contracts.events import (
    Cancel,
    Event,
    LineCounts,
    Log,
    Progress,
    Queued,
    Rusage,
    Started,
    SubmittedBy,
    Terminal,
    TerminalError,
)
from services.projector.fold import apply

JOB = "01JOBAAAAAAAAAAAAAAAAAAAAA"
TS = "2025-01-01T00:00:00.000000Z"


def queued(job: str = JOB, **kw: object) -> Queued:
    fields: dict[str, object] = {
        "tool": "demo.echo",
        "tool_version": 3,
        "manifest_sha256": "ab" * 32,
        "params": {"text": "hi"},
        "submitted_at": TS,
        "timeout_s": 30.0,
        "labels": {"team": "a"},
        **kw,
    }
    return Queued(job_id=job, **fields)  # type: ignore[arg-type]


def started(attempt: int = 1, job: str = JOB, executor: str = "ex-1") -> Started:
    return Started(job_id=job, executor=executor, pid=4242, attempt=attempt, started_at=TS)


def log(stream: str = "stdout", n: int = 1, attempt: int = 1, seq: int = 0, job: str = JOB) -> Log:
    lines = [f"line {i}" for i in range(n)]
    return Log(job_id=job, attempt=attempt, stream=stream, seq=seq, lines=lines, ts=TS)  # type: ignore[arg-type]


def progress(current: float, total: float, attempt: int = 1, job: str = JOB) -> Progress:
    return Progress(job_id=job, attempt=attempt, ts=TS, current=current, total=total, percent=None)


def terminal(state: str = "succeeded", attempt: int = 1, job: str = JOB, **kw: object) -> Terminal:
    fields: dict[str, object] = {
        "finished_at": "2025-01-01T00:00:05.000000Z",
        "exit_code": 0 if state == "succeeded" else None,
        "lines": LineCounts(),
        "truncated": False,
        "signals_sent": [],
        **kw,
    }
    return Terminal(job_id=job, state=state, attempt=attempt, **fields)  # type: ignore[arg-type]


def cancel(job: str = JOB) -> Cancel:
    return Cancel(job_id=job, requested_at=TS, reason="user")


def fold(events: Iterable[Event], start: JobState | None = None, first_seq: int = 1) -> JobState:
    state = start
    for seq, event in enumerate(events, start=first_seq):
        state = apply(state, seq, event)
    assert state is not None
    return state


def unchanged_but_seq(before: JobState, after: JobState | None, seq: int) -> None:
    """``after`` is ``before`` with only ``last_seq`` moved on to ``seq``."""
    assert after is not None
    assert after.last_seq == seq
    assert replace(after, last_seq=before.last_seq) == before


# --- transitions --------------------------------------------------------------------------


def test_queued_creates_the_job_from_its_event() -> None:
    state = apply(None, 7, queued())
    assert state == JobState(
        job_id=JOB,
        tool="demo.echo",
        tool_version=3,
        params={"text": "hi"},
        labels={"team": "a"},
        state="queued",
        submitted_at=TS,
        timeout_s=30.0,
        lines=LineCounts(),
        last_seq=7,
    )


@pytest.mark.parametrize(
    "event", [started(), log(), progress(1, 2), terminal(), cancel()], ids=type
)
def test_event_for_an_unknown_job_returns_none(event: Event) -> None:
    assert apply(None, 1, event) is None


def test_started_moves_a_queued_job_to_running() -> None:
    state = fold([queued(), started()])
    assert state.state == "running"
    assert (state.executor, state.pid, state.attempt, state.started_at) == ("ex-1", 4242, 1, TS)
    assert state.last_seq == 2


def test_log_lines_are_counted_per_stream() -> None:
    state = fold(
        [
            queued(),
            started(),
            log("stdout", 3, seq=0),
            log("stderr", 2, seq=3),
            log("stdout", 1, seq=5),
            log("stdout", 0, seq=6),
        ]
    )
    assert state.lines == LineCounts(stdout=4, stderr=2)


def test_progress_replaces_the_previous_reading() -> None:
    state = fold([queued(), started(), progress(1, 10), progress(4, 10)])
    assert state.progress == ProgressState(current=4, total=10)


def test_terminal_ends_the_job_with_its_details() -> None:
    end = terminal(
        "failed",
        exit_code=None,
        signal="KILL",
        duration_s=5.0,
        error=TerminalError("spawn_failed", "no such file"),
        lines=LineCounts(10, 3),
        truncated=True,
        signals_sent=["TERM", "KILL"],
        rusage=Rusage(max_rss_kb=1024, user_s=0.5, sys_s=0.1),
    )
    state = fold([queued(), started(), log("stdout", 2), end])
    assert state.state == "failed"
    assert state.finished_at == end.finished_at
    assert (state.exit_code, state.signal, state.duration_s) == (None, "KILL", 5.0)
    assert state.error == TerminalError("spawn_failed", "no such file")
    assert state.lines == LineCounts(10, 3)  # the terminal's count is authoritative
    assert state.truncated is True
    assert state.signals_sent == ["TERM", "KILL"]
    assert state.rusage == Rusage(1024, 0.5, 0.1)
    assert state.started_at == TS


@pytest.mark.parametrize("final", ["succeeded", "failed", "canceled", "timed_out", "lost"])
def test_every_terminal_state_is_reached_from_running(final: str) -> None:
    assert fold([queued(), started(), terminal(final)]).state == final


def test_cancel_before_start_ends_the_job_without_an_attempt() -> None:
    state = fold([queued(), cancel(), terminal("canceled", attempt=0)])
    assert state.state == "canceled"
    assert state.cancel_requested is True
    assert state.attempt == 0
    assert state.started_at is None


def test_cancel_request_marks_the_job_but_does_not_end_it() -> None:
    state = fold([queued(), started(), cancel()])
    assert state.state == "running"
    assert state.cancel_requested is True


def test_second_queued_for_a_known_job_changes_nothing() -> None:
    before = fold([queued(), started()])
    after = apply(before, 3, queued(params={"text": "other"}))
    unchanged_but_seq(before, after, 3)


# --- duplicates and terminal jobs ---------------------------------------------------------


@pytest.mark.parametrize("seq", [0, 1, 4, 5])
@pytest.mark.parametrize(
    "event",
    [queued(), started(2), log("stderr", 9), progress(9, 9), terminal("failed"), cancel()],
    ids=type,
)
def test_event_at_or_below_last_seq_changes_nothing(seq: int, event: Event) -> None:
    before = fold([queued(), started(), log(), progress(1, 2), cancel()])
    assert before.last_seq == 5
    assert apply(before, seq, event) is before


@pytest.mark.parametrize(
    "late",
    [
        log("stdout", 5),
        progress(9, 9),
        started(1),
        started(2),
        terminal("failed"),
        cancel(),
        queued(),
    ],
    ids=type,
)
def test_nothing_changes_a_terminal_job(late: Event) -> None:
    before = fold([queued(), started(), log("stdout", 2), terminal("succeeded")])
    after = apply(before, before.last_seq + 1, late)
    unchanged_but_seq(before, after, before.last_seq + 1)
    assert after is not None and after.state == "succeeded"


# --- attempts -----------------------------------------------------------------------------


def test_started_for_a_new_attempt_resets_line_counts_and_progress() -> None:
    state = fold(
        [queued(), started(1), log("stdout", 5), log("stderr", 2), progress(3, 4), started(2)]
    )
    assert state.attempt == 2
    assert state.state == "running"
    assert state.lines == LineCounts(0, 0)
    assert state.progress is None


@pytest.mark.parametrize(
    "stale", [started(1), log("stdout", 7, attempt=1), progress(9, 9, attempt=1)], ids=type
)
def test_events_of_a_superseded_attempt_are_ignored(stale: Event) -> None:
    before = fold(
        [queued(), started(1), log("stdout", 1), started(2, executor="ex-2"), log("stdout", 2, 2)]
    )
    after = apply(before, before.last_seq + 1, stale)
    unchanged_but_seq(before, after, before.last_seq + 1)
    assert after is not None and after.executor == "ex-2"


def test_logs_and_progress_of_the_current_attempt_count_after_a_retry() -> None:
    state = fold(
        [queued(), started(1), log("stdout", 5), started(2), log("stdout", 2, 2), progress(1, 4, 2)]
    )
    assert state.lines == LineCounts(2, 0)
    assert state.progress == ProgressState(current=1, total=4)


def test_terminal_of_a_retried_job_keeps_the_highest_attempt() -> None:
    state = fold([queued(), started(1), started(2), terminal("succeeded", attempt=2)])
    assert state.attempt == 2
    assert state.state == "succeeded"


# --- replay properties --------------------------------------------------------------------


def random_job_events(rng: random.Random, job: str) -> list[Event]:
    events: list[Event] = [queued(job, labels={"n": str(rng.randrange(5))})]
    if rng.random() < 0.2:
        events.append(cancel(job))
        if rng.random() < 0.5:
            return [*events, terminal("canceled", attempt=0, job=job)]
    attempts = rng.choice([1, 1, 1, 2, 3])
    for attempt in range(1, attempts + 1):
        events.append(started(attempt, job, executor=f"ex-{rng.randrange(3)}"))
        seq = 0
        for _ in range(rng.randrange(8)):
            if rng.random() < 0.7:
                n = rng.randint(1, 5)
                events.append(log(rng.choice(["stdout", "stderr"]), n, attempt, seq, job))
                seq += n
            else:
                events.append(progress(rng.randrange(10), 10, attempt, job))
            if rng.random() < 0.1:
                events.append(cancel(job))
    if rng.random() < 0.85:
        final = rng.choice(["succeeded", "failed", "canceled", "timed_out", "lost"])
        events.append(terminal(final, attempts, job, lines=LineCounts(rng.randrange(9), 0)))
        # Late events the stream may still hold after the terminal.
        for _ in range(rng.randrange(3)):
            late: list[Event] = [log("stdout", 1, attempts, 99, job), progress(1, 1, 1, job)]
            events.append(rng.choice(late))
    return events


def interleave(rng: random.Random, per_job: list[list[Event]]) -> list[tuple[int, Event]]:
    """One stream: each job's events in order, jobs interleaved; numbered from seq 1."""
    queues = [list(events) for events in per_job]
    stream: list[Event] = []
    while any(queues):
        q = rng.choice([q for q in queues if q])
        stream.append(q.pop(0))
    return list(enumerate(stream, start=1))


def fold_stream(stream: Iterable[tuple[int, Event]]) -> dict[str, JobState]:
    jobs: dict[str, JobState] = {}
    for seq, event in stream:
        state = apply(jobs.get(event.job_id), seq, event)
        if state is not None:
            jobs[event.job_id] = state
    return jobs


@pytest.mark.parametrize("seed", range(60))
def test_refolding_with_duplicates_yields_the_identical_state(seed: int) -> None:
    rng = random.Random(seed)
    per_job = [random_job_events(rng, f"01JOB{i:021d}") for i in range(rng.randint(1, 4))]
    stream = interleave(rng, per_job)
    expected = fold_stream(stream)
    assert sorted(expected) == sorted(events[0].job_id for events in per_job)

    twice = [delivery for delivery in stream for _ in range(2)]
    assert fold_stream(twice) == expected

    redelivered = list(stream)
    for _ in range(rng.randint(1, 3 * len(stream))):
        # A copy of something already delivered, re-delivered at any later point.
        delivered = rng.randrange(len(redelivered))
        position = rng.randint(delivered + 1, len(redelivered))
        redelivered.insert(position, redelivered[delivered])
    assert len(redelivered) > len(stream)
    assert fold_stream(redelivered) == expected


@pytest.mark.parametrize("seed", range(20))
def test_folding_resumes_from_any_checkpoint_to_the_same_state(seed: int) -> None:
    rng = random.Random(seed)
    stream = interleave(rng, [random_job_events(rng, f"01JOB{i:021d}") for i in range(3)])
    expected = fold_stream(stream)
    checkpoint = rng.randrange(len(stream) + 1)
    # A projector that crashed after `checkpoint` re-reads a few events it already applied.
    overlap = rng.randrange(checkpoint + 1)
    jobs = fold_stream(stream[:checkpoint])
    for seq, event in stream[checkpoint - overlap :]:
        state = apply(jobs.get(event.job_id), seq, event)
        if state is not None:
            jobs[event.job_id] = state
    assert jobs == expected


def test_queued_carries_its_submitter_into_the_job() -> None:
    by = SubmittedBy(account="CLIENTS", user="ci", name="runner", host="10.0.0.7")
    state = fold([queued(submitted_by=by), started(), terminal()])
    assert state.submitted_by == by and state.state == "succeeded"
    assert fold([queued()]).submitted_by is None
