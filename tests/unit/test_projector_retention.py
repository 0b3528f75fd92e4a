"""services.projector.retention and the store's part of it: which finished jobs expire,
their KV TTL, and that commit and sweep remove them (and only them)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from msgspec.structs import replace

from contracts.api import JobState
from contracts.events import LineCounts, timestamp
from services.projector.retention import Retention, finished_ts
from services.projector.store import Store

T0 = timestamp("2025-01-01T00:00:00Z")


def job(
    n: int, state: str = "succeeded", finished_s: float | None = 0.0, **labels: str
) -> JobState:
    finished = None
    if finished_s is not None and state not in ("queued", "running"):
        finished = f"2025-01-01T00:{int(finished_s) // 60:02d}:{int(finished_s) % 60:02d}.000000Z"
    return JobState(
        job_id=f"01JOB{n:021d}",
        tool="demo.echo",
        params={},
        labels=labels,
        state=state,  # type: ignore[arg-type]
        submitted_at="2025-01-01T00:00:00Z",
        finished_at=finished,
        last_seq=n,
        lines=LineCounts(),
    )


@pytest.mark.parametrize(
    ("state", "finished_s", "expired"),
    [
        ("succeeded", 0, True),
        ("failed", 39, True),
        ("canceled", 40, False),  # exactly retain_s old: not yet
        ("timed_out", 100, False),
        ("lost", 0, True),
        ("queued", None, False),
        ("running", None, False),
    ],
)
def test_only_finished_jobs_older_than_retention_expire(
    state: str, finished_s: float | None, expired: bool
) -> None:
    retention = Retention(60)
    assert retention.expired(finished_ts(job(1, state, finished_s)), T0 + 100) is expired


def test_zero_keeps_everything() -> None:
    retention = Retention(0)
    assert retention.keeps_everything and retention.cutoff(T0) is None
    assert not retention.expired(T0 - 10**9, T0)
    assert retention.kv_ttl(T0, T0) is None


def test_kv_ttl_ends_when_the_job_expires_in_whole_seconds_at_least_one() -> None:
    retention = Retention(60)
    assert retention.kv_ttl(None, T0) is None  # live jobs get no TTL
    assert retention.kv_ttl(T0, T0) == 60
    assert retention.kv_ttl(T0, T0 + 10.5) == 50  # rounded up: never before it expires
    assert retention.kv_ttl(T0, T0 + 59.9) == 1
    assert retention.kv_ttl(T0, T0 + 600) == 1


def test_sweep_interval_is_a_tenth_within_bounds() -> None:
    assert Retention(5).sweep_every_s == 0.5
    assert Retention(100).sweep_every_s == 10
    assert Retention(7 * 86400).sweep_every_s == 60


def test_timestamps_with_offsets_and_unreadable_finished_at() -> None:
    assert timestamp("2025-01-01T01:00:00+01:00") == T0
    assert finished_ts(replace(job(1), finished_at="yesterday")) is None


def test_commit_leaves_out_expired_jobs_and_notes_them_forgotten() -> None:
    store = Store(":memory:")
    old, new, live = job(1, finished_s=0, k="v"), job(2, finished_s=50), job(3, "running")
    store.commit([old, new, live], seq=3, cutoff=T0 + 10)
    assert [j.job_id for j in store.all_jobs()] == [new.job_id, live.job_id]
    assert store.forgotten() == [old.job_id]
    assert store.list_jobs(state=None, tool=None, label="k=v", limit=10, before=None) == []
    store.drop_forgotten([old.job_id])
    assert store.forgotten() == []


def test_commit_removes_a_stored_job_that_expired_since() -> None:
    store = Store(":memory:")
    running = job(1, "running")
    store.commit([running], seq=1)
    store.commit([replace(job(1), last_seq=2)], seq=2, cutoff=T0 + 10)
    assert store.get(running.job_id) is None and store.position()[0] == 2


def test_sweep_removes_only_finished_jobs_before_the_cutoff_in_batches() -> None:
    store = Store(":memory:")
    jobs = [job(n, finished_s=n, batch="a") for n in range(1, 6)]
    live = [job(10, "queued"), job(11, "running")]
    store.commit([*jobs, *live], seq=11)
    assert store.sweep(T0 + 4, limit=2) == 2
    assert store.sweep(T0 + 4, limit=2) == 1
    assert store.sweep(T0 + 4, limit=2) == 0
    left = {j.job_id for j in store.all_jobs()}
    assert left == {jobs[3].job_id, jobs[4].job_id, *(j.job_id for j in live)}
    assert store.forgotten() == [j.job_id for j in jobs[:3]]
    by_label = store.list_jobs(state=None, tool=None, label="batch=a", limit=10, before=None)
    assert {j.job_id for j in by_label} == {jobs[3].job_id, jobs[4].job_id}
    assert store.sweep(T0 + 10**9) == 2  # queued and running jobs stay, however old
    assert {j.job_id for j in store.all_jobs()} == {j.job_id for j in live}


def test_a_store_made_before_retention_gets_finished_times(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    store = Store(path)
    store.commit([job(1, finished_s=5), job(2, "running")], seq=2)
    store.close()
    db = sqlite3.connect(path)  # as the store was before it had the column
    db.execute("DROP INDEX IF EXISTS jobs_finished")
    db.execute("ALTER TABLE jobs DROP COLUMN finished_ts")
    db.commit()
    db.close()
    reopened = Store(path)
    assert reopened.sweep(T0 + 6) == 1
    assert [j.state for j in reopened.all_jobs()] == ["running"]
    reopened.close()
