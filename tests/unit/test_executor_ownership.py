"""services.executor.core: when a job's first delivery may skip its look-up (CancelWatch),
and when an attempt no longer owns its job (superseded)."""

from __future__ import annotations

from contracts.events import Started, never_ran
from services.executor.core import CancelWatch, superseded


def test_every_job_is_looked_up_until_the_watch_knows_where_it_starts() -> None:
    watch = CancelWatch()
    assert watch.needs_lookup("J", queued_seq=10, deliveries=1)


def test_a_job_queued_after_the_watch_began_skips_the_look_up_unless_canceled() -> None:
    watch = CancelWatch()
    watch.watching_from(100)
    assert not watch.needs_lookup("A", queued_seq=101, deliveries=1)
    watch.saw("A", 102)
    assert watch.needs_lookup("A", queued_seq=101, deliveries=1)
    assert not watch.needs_lookup("B", queued_seq=103, deliveries=1)


def test_jobs_queued_before_the_watch_began_and_redeliveries_are_looked_up() -> None:
    watch = CancelWatch()
    watch.watching_from(100)
    assert watch.needs_lookup("A", queued_seq=100, deliveries=1)  # its cancel may predate us
    assert watch.needs_lookup("B", queued_seq=150, deliveries=2)  # another executor had it


def test_a_lost_connection_means_looking_up_until_watching_again() -> None:
    watch = CancelWatch()
    watch.watching_from(100)
    watch.lost()
    assert watch.needs_lookup("A", queued_seq=500, deliveries=1)
    watch.watching_from(600)  # after the reconnect: cancels before 600 may have been missed
    assert watch.needs_lookup("A", queued_seq=500, deliveries=1)
    assert not watch.needs_lookup("B", queued_seq=601, deliveries=1)


def test_forgetting_an_old_cancel_moves_the_start_past_it() -> None:
    watch = CancelWatch(max_entries=2)
    watch.watching_from(100)
    watch.saw("A", 110)
    watch.saw("B", 120)
    watch.saw("C", 130)  # A is forgotten: jobs queued up to its cancel get looked up
    assert watch.needs_lookup("A", queued_seq=105, deliveries=1)
    assert watch.needs_lookup("X", queued_seq=109, deliveries=1)
    assert not watch.needs_lookup("Y", queued_seq=111, deliveries=1)
    assert watch.needs_lookup("B", queued_seq=111, deliveries=1)


def _started(attempt: int) -> Started:
    return Started(job_id="J", executor="e", pid=1, attempt=attempt, started_at="t")


def test_an_attempt_is_superseded_by_any_terminal_or_another_attempts_start() -> None:
    terminal = never_ran("J", "lost", "t", 1)
    assert not superseded(None, _started(1), attempt=1)
    assert superseded(terminal, _started(1), attempt=1)
    assert superseded(None, _started(2), attempt=1)
    assert not superseded(None, None, attempt=1)
