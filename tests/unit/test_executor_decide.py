"""services.executor.decide: every way a delivery of a queued job can go, without NATS."""

from __future__ import annotations

from dataclasses import replace

import pytest

from services.executor import decide as d

BASE = d.Facts(
    job_id="J",
    queued_seq=10,
    running_here=False,
    needs_lookup=False,
    accepting=True,
    tool_problem=None,
    max_attempts=1,
    backoff_s=0.0,
)
ON_A = d.Attempted(seq=11, attempt=1, executor="a", started_at="t")
NO_RETRY_YET = {"announced": None, "announced_known": True}


def looked_up(**facts: object) -> d.Facts:
    """A redelivered job whose newest event is after `queued` (an attempt started)."""
    return replace(BASE, needs_lookup=True, newest_seq=12, ended=False, **facts)  # type: ignore[arg-type]


def test_a_first_delivery_with_no_cancel_runs_attempt_one_without_a_look_up() -> None:
    assert d.decide(BASE) == d.Run(attempt=1, last_seq=10)


def test_a_delivery_of_a_job_running_here_leaves_it_alone() -> None:
    assert isinstance(d.decide(replace(BASE, running_here=True)), d.LeaveAlone)


@pytest.mark.parametrize(
    ("facts", "fact"),
    [
        (replace(BASE, needs_lookup=True), "newest"),
        (looked_up(), "started"),
        (looked_up(started=ON_A, started_known=True), "retry"),
        (looked_up(started=ON_A, started_known=True, **NO_RETRY_YET), "hold"),
        (looked_up(started=None, started_known=True), "cancel"),
    ],
)
def test_each_fact_is_looked_up_only_when_the_decision_needs_it(
    facts: d.Facts, fact: d.Fact
) -> None:
    assert d.decide(facts) == d.LookUp(fact)


def test_an_ended_job_is_settled() -> None:
    assert d.decide(replace(BASE, needs_lookup=True, newest_seq=13, ended=True)) == d.Settle()


def test_a_queued_job_that_is_its_own_newest_event_runs_after_the_look_up() -> None:
    facts = replace(BASE, needs_lookup=True, newest_seq=10, ended=False)
    assert d.decide(facts) == d.Run(1, 10)


def test_an_attempt_whose_hold_is_renewed_is_left_to_its_executor() -> None:
    facts = looked_up(started=ON_A, started_known=True, hold_lapsed=False, **NO_RETRY_YET)
    action = d.decide(facts)
    assert isinstance(action, d.LeaveAlone) and "a" in action.why


def test_an_attempt_whose_hold_lapsed_ends_lost_when_the_tool_may_not_run_again() -> None:
    facts = looked_up(started=ON_A, started_known=True, hold_lapsed=True, **NO_RETRY_YET)
    assert d.decide(facts) == d.EndLost(ON_A, cas_seq=12)


def test_a_lost_attempt_with_attempts_left_is_announced_then_retried_after_its_backoff() -> None:
    facts = looked_up(
        started=ON_A,
        started_known=True,
        hold_lapsed=True,
        max_attempts=3,
        backoff_s=4.0,
        jitter=0.5,
        **NO_RETRY_YET,
    )
    assert d.decide(facts) == d.AnnounceRetry(ON_A, delay_s=3.0, cas_seq=12)
    announced = replace(facts, announced=d.Announced(13, 1, 3.0), newest_seq=13)
    assert d.decide(announced) == d.WaitBackoff(attempt=2, seconds=3.0)
    after = replace(announced, waited_from=1, canceled=False)
    assert d.decide(after) == d.Run(2, 13)
    taken = replace(after, started=replace(ON_A, seq=14, attempt=2, executor="c"))
    assert isinstance(d.decide(taken), d.LeaveAlone)


def test_an_announced_retry_whose_backoff_is_over_runs_without_waiting() -> None:
    facts = looked_up(
        started=ON_A, started_known=True, announced=d.Announced(12, 1, 0.0), announced_known=True
    )
    assert d.decide(facts) == d.LookUp("cancel")
    assert d.decide(replace(facts, canceled=False)) == d.Run(2, 12)


def test_a_retry_announced_for_an_older_attempt_does_not_count() -> None:
    second = replace(ON_A, seq=14, attempt=2)
    facts = looked_up(
        started=second, started_known=True, announced=d.Announced(13, 1, 0.0), announced_known=True
    )
    assert d.decide(replace(facts, newest_seq=15)) == d.LookUp("hold")


def test_the_last_allowed_attempt_ends_lost() -> None:
    third = replace(ON_A, attempt=3)
    facts = looked_up(
        started=third, started_known=True, hold_lapsed=True, max_attempts=3, **NO_RETRY_YET
    )
    assert d.decide(facts) == d.EndLost(third, 12)


def test_a_job_canceled_before_its_attempt_started_ends_canceled() -> None:
    first = replace(BASE, needs_lookup=True, newest_seq=11, ended=False)
    assert d.decide(replace(first, started_known=True, canceled=True)) == d.EndCanceled(1, 11)
    during_backoff = looked_up(
        started=ON_A,
        started_known=True,
        announced=d.Announced(12, 1, 0.0),
        announced_known=True,
        canceled=True,
    )
    assert d.decide(during_backoff) == d.EndCanceled(2, 12)


def test_a_job_that_waited_past_its_queue_timeout_never_starts() -> None:
    assert d.decide(replace(BASE, queue_expired=True)) == d.EndQueueTimeout(10)
    canceled = replace(
        BASE, queue_expired=True, needs_lookup=True, newest_seq=11, ended=False, started_known=True
    )
    assert d.decide(replace(canceled, canceled=True)) == d.EndCanceled(1, 11)


def test_the_queue_timeout_is_only_about_the_first_start() -> None:
    facts = looked_up(
        started=ON_A,
        started_known=True,
        announced=d.Announced(12, 1, 0.0),
        announced_known=True,
        canceled=False,
        queue_expired=True,
    )
    assert d.decide(facts) == d.Run(2, 12)


def test_a_tool_that_cannot_run_here_fails_the_job_with_the_reason() -> None:
    facts = replace(BASE, tool_problem="manifest of 'x' is not in this executor's catalogue")
    assert d.decide(facts) == d.SpawnFailed(1, facts.tool_problem, 10)  # type: ignore[arg-type]


def test_a_cancel_wins_over_a_tool_that_cannot_run() -> None:
    facts = replace(BASE, needs_lookup=True, newest_seq=11, ended=False, tool_problem="gone")
    facts = replace(facts, started_known=True, canceled=True)
    assert d.decide(facts) == d.EndCanceled(1, 11)


def test_a_stopping_executor_hands_the_delivery_back_instead_of_running_it() -> None:
    assert d.decide(replace(BASE, accepting=False)) == d.Redeliver(0.0)


def test_attempts_after_each_outcome_follow_retry_when() -> None:
    assert d.attempts_after(("lost",), 5, idempotent=False, state="lost") == 1
    assert d.attempts_after(("lost",), 3, idempotent=True, state="lost") == 3
    assert d.attempts_after(("failed",), 4, idempotent=False, state="failed") == 4
    assert d.attempts_after(("failed",), 4, idempotent=False, state="timed_out") == 1
    assert d.attempts_after((), 4, idempotent=True, state="failed") == 1


@pytest.mark.parametrize(
    ("attempt", "jitter", "delay"),
    [(1, 0.0, 2.0), (2, 0.0, 4.0), (3, 0.0, 8.0), (6, 0.0, 60.0), (2, 0.5, 3.0), (9, 0.99, 30.3)],
)
def test_the_backoff_doubles_up_to_its_max_less_up_to_half_of_it(
    attempt: int, jitter: float, delay: float
) -> None:
    assert d.backoff_delay(2.0, 60.0, attempt, jitter) == delay


@pytest.mark.parametrize(
    ("found", "action"),
    [
        (d.AfterRefusal(12, ended=True, started_seq=11, canceled=False), d.Settle()),
        (d.AfterRefusal(12, ended=False, started_seq=13, canceled=False), d.LeaveAlone),
        (d.AfterRefusal(12, ended=False, started_seq=11, canceled=True), d.LookUp("newest")),
        (d.AfterRefusal(12, ended=False, started_seq=None, canceled=False), d.Redeliver(0.1)),
    ],
)
def test_after_a_refused_write_the_delivery_settles_leaves_alone_decides_again_or_hands_back(
    found: d.AfterRefusal, action: object
) -> None:
    got = d.after_refusal(found)
    assert isinstance(got, action) if isinstance(action, type) else got == action
