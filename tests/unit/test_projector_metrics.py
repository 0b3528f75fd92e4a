"""services.projector.metrics: what the fold counts, once per event, and what it leaves out."""

from __future__ import annotations

from msgspec.structs import replace
from prometheus_client import generate_latest

from services.projector.metrics import ProjectorMetrics
from services.projector.projection import Projection
from tests.unit.test_projector_fold import log, queued, started, terminal
from tests.unit.test_projector_projection import OTHER, Stored, feed


def sample(m: ProjectorMetrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def watched(count_from: int = 0) -> tuple[Projection, ProjectorMetrics]:
    p = Projection(0, Stored().get)
    m = ProjectorMetrics(p, tools=["demo.echo"])
    m.count_from = count_from
    p.observe = m.observe
    return p, m


def test_the_fold_counts_finished_jobs_durations_queue_waits_and_lines() -> None:
    p, m = watched()
    submitted = queued(submitted_at="2025-01-01T00:00:00.000000Z")
    first = replace(started(), started_at="2025-01-01T00:00:01.500000Z")
    events = [submitted, first, log(n=3), log("stderr", n=2), terminal(duration_s=3.5)]
    for seq, event in enumerate(events, start=1):
        feed(p, seq, event)
    feed(p, 5, events[-1])  # a replayed delivery: not counted again
    feed(p, 6, terminal("failed"))  # a second terminal changes nothing: not counted
    assert sample(m, "domed_jobs_finished_total", tool="demo.echo", state="succeeded") == 1
    assert sample(m, "domed_jobs_finished_total", tool="demo.echo", state="failed") is None
    assert sample(m, "domed_job_duration_seconds_sum", tool="demo.echo", state="succeeded") == 3.5
    assert sample(m, "domed_job_queue_wait_seconds_sum", tool="demo.echo") == 1.5
    assert sample(m, "domed_job_queue_wait_seconds_count", tool="demo.echo") == 1
    assert sample(m, "domed_log_lines_total", stream="stdout") == 3
    assert sample(m, "domed_log_lines_total", stream="stderr") == 2


def test_a_retried_attempt_adds_no_queue_wait_and_a_never_started_job_no_duration() -> None:
    p, m = watched()
    for seq, event in enumerate([queued(), started(1), started(2), terminal(attempt=2)], start=1):
        feed(p, seq, event)
    feed(p, 5, queued(job=OTHER))
    feed(p, 6, terminal("canceled", job=OTHER))
    assert sample(m, "domed_job_queue_wait_seconds_count", tool="demo.echo") == 1
    assert sample(m, "domed_job_duration_seconds_count", tool="demo.echo", state="canceled") == 0
    assert sample(m, "domed_jobs_finished_total", tool="demo.echo", state="canceled") == 1


def test_events_up_to_count_from_are_not_counted() -> None:
    p, m = watched(count_from=4)
    for seq, event in enumerate([queued(), started(), log(n=5), terminal()], start=1):
        feed(p, seq, event)
    feed(p, 5, queued(job=OTHER))
    feed(p, 6, log(n=2, job=OTHER))
    assert sample(m, "domed_jobs_finished_total", tool="demo.echo", state="succeeded") is None
    assert sample(m, "domed_log_lines_total", stream="stdout") == 2


def test_gauges_read_at_the_scrape_are_left_out_when_unknown() -> None:
    p, m = watched()
    text = generate_latest(m.registry).decode()
    assert "domed_queue_pending" not in text and "domed_projector_lag_events" not in text
    m.queue_pending, m.stream_last_seq = 7, 10
    p.committed_seq = 4
    assert sample(m, "domed_queue_pending") == 7
    assert sample(m, "domed_projector_lag_events") == 6
    assert sample(m, "domed_job_queue_wait_seconds_count", tool="demo.echo") == 0
