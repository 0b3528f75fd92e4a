"""services.executor.core: when a job's first delivery may skip its look-up (CancelWatch),
and when an attempt no longer owns its job (superseded); services.executor.ownership: how
long an attempt's hold on its job lasts, and when it no longer allows unchecked publishes."""

from __future__ import annotations

from contracts.events import Started, never_ran
from services.executor.core import CancelWatch, superseded
from services.executor.ownership import Ownership


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


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _hold(clock: Clock, lease_s: float = 30.0) -> Ownership:
    return Ownership(
        None,  # type: ignore[arg-type]
        "J",
        1,
        lease_s,
        started_at=clock.now,
        first_window_s=lease_s,
        clock=clock,
    )


def test_the_hold_allows_unchecked_publishes_for_half_of_the_lease_after_its_claim() -> None:
    clock = Clock()
    hold = _hold(clock)
    clock.now += 14.9
    assert hold.fresh
    clock.now += 0.2
    assert not hold.fresh and not hold.broken  # short, not yet lost: publishes are checked


def test_each_confirmed_renewal_extends_the_hold_from_when_it_was_sent() -> None:
    clock = Clock()
    hold = _hold(clock)
    hold.renewed(sent_at=110.0, answered_at=110.5)
    clock.now = 124.9
    assert hold.fresh
    clock.now = 125.1
    assert not hold.fresh
    hold.renewed(sent_at=125.1, answered_at=125.2)
    assert hold.fresh  # the hold could not have lapsed in between: fresh again


def test_an_answer_that_may_have_come_after_the_hold_lapsed_breaks_it_for_good() -> None:
    clock = Clock()
    hold = _hold(clock)
    hold.renewed(sent_at=129.0, answered_at=131.0)  # the hold could lapse at 130
    clock.now = 131.0
    assert hold.broken and not hold.fresh
    hold.renewed(sent_at=131.0, answered_at=131.1)
    assert not hold.fresh, "another executor may have ended the job meanwhile"


def test_a_pause_past_the_lease_breaks_the_hold() -> None:
    clock = Clock()
    hold = _hold(clock)
    clock.now += 30.0  # e.g. SIGSTOP: no renewals went out
    assert not hold.fresh and hold.broken
    hold.renewed(sent_at=clock.now, answered_at=clock.now + 0.1)
    assert not hold.fresh


def test_before_its_first_write_the_hold_lasts_the_first_window_with_half_of_it_to_spare() -> None:
    """Another executor waits ``first_window`` for a hold to be written before it declares
    the job lost, so until the first write only half of that window is unchecked."""
    clock = Clock()
    hold = Ownership(None, "J", 1, 30.0, started_at=100.0, first_window_s=11.0, clock=clock)  # type: ignore[arg-type]
    clock.now = 105.4
    assert hold.fresh
    clock.now = 105.6
    assert not hold.fresh and not hold.broken
    hold.renewed(sent_at=105.0, answered_at=105.6)  # the first write: a lease from its send
    clock.now = 119.9
    assert hold.fresh
    clock.now = 120.1
    assert not hold.fresh


def test_a_first_write_answered_after_the_first_window_breaks_the_hold() -> None:
    clock = Clock()
    hold = Ownership(None, "J", 1, 30.0, started_at=100.0, first_window_s=11.0, clock=clock)  # type: ignore[arg-type]
    hold.renewed(sent_at=110.0, answered_at=111.5)  # another executor may have ended it at 111
    clock.now = 111.6
    assert hold.broken and not hold.fresh
