"""services.projector.projection: events folded in memory between commits, without NATS."""

from __future__ import annotations

import pytest

from contracts.api import JobState
from contracts.events import Event, LineCounts, encode_event
from contracts.subjects import event_subject
from services.projector import projection as projection_module
from services.projector.projection import Projection
from tests.unit.test_projector_fold import cancel, log, queued, started, terminal

JOB = "01JOBAAAAAAAAAAAAAAAAAAAAA"
OTHER = "01JOBBBBBBBBBBBBBBBBBBBBBB"


class Stored:
    """A store stand-in: the committed states, and the look-ups made."""

    def __init__(self, states: dict[str, JobState] | None = None) -> None:
        self.states = dict(states or {})
        self.loads: list[str] = []

    def get(self, job_id: str) -> JobState | None:
        self.loads.append(job_id)
        return self.states.get(job_id)


def feed(p: Projection, seq: int, event: Event) -> None:
    kind = type(event).__struct_config__.tag
    assert isinstance(kind, str)
    p.on_event(event_subject(event.job_id, kind).encode(), seq, encode_event(event))


def commit(p: Projection, store: Stored) -> list[JobState]:
    states, seq, _ = p.take_commit()
    store.states.update((s.job_id, s) for s in states)
    p.committed(states, seq)
    return states


def test_a_fresh_projection_folds_a_jobs_events_without_reading_the_store() -> None:
    store = Stored()
    p = Projection(0, store.get)
    events: list[Event] = [queued(), started(), log(n=3), log("stderr")]
    for seq, event in enumerate(events, start=1):
        feed(p, seq, event)
    [state] = commit(p, store)
    assert (state.state, state.lines, state.last_seq) == ("running", LineCounts(3, 1), 4)
    assert store.loads == [] and p.committed_seq == 4 and p.events_applied == 4


def test_a_replayed_event_changes_nothing() -> None:
    p = Projection(0, Stored().get)
    feed(p, 1, queued())
    feed(p, 2, started())
    feed(p, 3, log(n=2))
    feed(p, 3, log(n=2))
    feed(p, 1, queued())
    assert p.dirty[JOB].lines.stdout == 2 and p.events_applied == 3 and p.applied_seq == 3


def test_a_restarted_projection_reads_a_job_it_does_not_hold_from_the_store() -> None:
    fresh = Projection(0, Stored().get)
    feed(fresh, 1, queued())
    feed(fresh, 2, started())
    store = Stored({JOB: fresh.dirty[JOB]})
    p = Projection(2, store.get)
    feed(p, 3, terminal())
    assert store.loads == [JOB] and p.dirty[JOB].state == "succeeded"


@pytest.mark.parametrize(
    "subject, data",
    [
        (b"job.not-a-job", b"{}"),
        (event_subject(JOB, "log").encode(), b"not json"),
        (event_subject(JOB, "log").encode(), b'{"kind": "no such kind"}'),
    ],
)
def test_an_undecodable_event_is_skipped_and_counted(subject: bytes, data: bytes) -> None:
    p = Projection(0, Stored().get)
    p.on_event(subject, 1, data)
    assert (p.applied_seq, p.skipped, p.events_applied, p.dirty) == (1, 1, 0, {})
    assert p.uncommitted and p.take_commit() == ([], 1, 1)


def test_an_event_of_a_job_whose_queued_is_gone_is_skipped() -> None:
    store = Stored()
    p = Projection(10, store.get)
    feed(p, 11, cancel())
    assert store.loads == [JOB] and p.skipped == 1 and p.dirty == {}


def test_a_commit_is_hurried_at_the_streams_end_and_when_many_jobs_changed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hurried: list[int] = []
    p = Projection(0, Stored().get)
    p.hurry = lambda: hurried.append(p.applied_seq)
    p.catch_up_to = 3
    feed(p, 1, queued())
    feed(p, 2, queued(job=OTHER))
    assert hurried == []
    feed(p, 3, started())
    assert hurried == [2]  # before the event at catch_up_to is applied
    monkeypatch.setattr(projection_module, "COMMIT_MAX_DIRTY", 2)
    commit(p, Stored())
    feed(p, 4, log())
    assert hurried == [2]
    feed(p, 5, started(job=OTHER))
    assert hurried == [2, 5]


def test_memory_keeps_at_most_cache_max_live_jobs_and_no_finished_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(projection_module, "CACHE_MAX", 2)
    store = Stored()
    p = Projection(0, store.get)
    jobs = [f"01JOB{c * 21}" for c in "CDEF"]
    for seq, job in enumerate(jobs, start=1):
        feed(p, seq, queued(job=job))
    commit(p, store)
    assert list(p.cache) == jobs[2:]  # the oldest left memory
    feed(p, 5, terminal(job=jobs[3]))
    commit(p, store)
    assert list(p.cache) == [jobs[2]]
    feed(p, 6, started(job=jobs[0]))  # it left memory: read back from the store
    assert store.loads == [jobs[0]] and p.dirty[jobs[0]].state == "running"


def test_events_removed_unread_move_the_position_past_them() -> None:
    p = Projection(4, Stored().get)
    assert p.skip_removed(5) is None and p.gap is None
    assert p.skip_removed(9) == (5, 8)
    assert (p.applied_seq, p.gap, p.uncommitted) == (8, (5, 8), True)
    p.catch_up_to = 8
    p.committed(*p.take_commit()[:2])
    assert p.caught_up
