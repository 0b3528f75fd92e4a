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
        (looked_up(started=ON_A, started_known=True), "hold"),
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
    facts = looked_up(started=ON_A, started_known=True, hold_lapsed=False)
    action = d.decide(facts)
    assert isinstance(action, d.LeaveAlone) and "a" in action.why


def test_an_attempt_whose_hold_lapsed_ends_lost_when_the_tool_may_not_run_again() -> None:
    facts = looked_up(started=ON_A, started_known=True, hold_lapsed=True)
    assert d.decide(facts) == d.EndLost(ON_A, cas_seq=12)


def test_an_idempotent_tool_with_attempts_left_runs_the_next_attempt() -> None:
    facts = looked_up(started=ON_A, started_known=True, hold_lapsed=True, max_attempts=3)
    assert d.decide(facts) == d.LookUp("cancel")
    assert d.decide(replace(facts, canceled=False)) == d.Run(attempt=2, last_seq=12)


def test_the_last_allowed_attempt_ends_lost() -> None:
    third = replace(ON_A, attempt=3)
    facts = looked_up(started=third, started_known=True, hold_lapsed=True, max_attempts=3)
    assert d.decide(facts) == d.EndLost(third, 12)


def test_a_retry_with_a_backoff_waits_it_out_then_runs_unless_another_started_it() -> None:
    facts = looked_up(
        started=ON_A, started_known=True, hold_lapsed=True, max_attempts=3, backoff_s=4.5
    )
    assert d.decide(facts) == d.WaitBackoff(attempt=2, seconds=4.5)
    after = replace(facts, waited_from=1, canceled=False, newest_seq=12)
    assert d.decide(after) == d.Run(2, 12)
    taken = replace(after, started=replace(ON_A, seq=13, attempt=2, executor="c"))
    assert isinstance(d.decide(taken), d.LeaveAlone)


def test_a_job_canceled_before_its_attempt_started_ends_canceled() -> None:
    first = replace(BASE, needs_lookup=True, newest_seq=11, ended=False)
    assert d.decide(replace(first, started_known=True, canceled=True)) == d.EndCanceled(1, 11)
    retry = looked_up(
        started=ON_A, started_known=True, hold_lapsed=True, max_attempts=2, canceled=True
    )
    assert d.decide(retry) == d.EndCanceled(2, 12)


def test_a_tool_that_cannot_run_here_fails_the_job_with_the_reason() -> None:
    facts = replace(BASE, tool_problem="manifest of 'x' is not in this executor's catalogue")
    assert d.decide(facts) == d.SpawnFailed(1, facts.tool_problem, 10)  # type: ignore[arg-type]


def test_a_cancel_wins_over_a_tool_that_cannot_run() -> None:
    facts = replace(BASE, needs_lookup=True, newest_seq=11, ended=False, tool_problem="gone")
    facts = replace(facts, started_known=True, canceled=True)
    assert d.decide(facts) == d.EndCanceled(1, 11)


def test_a_stopping_executor_hands_the_delivery_back_instead_of_running_it() -> None:
    assert d.decide(replace(BASE, accepting=False)) == d.Redeliver(0.0)


def test_only_an_idempotent_tool_gets_more_than_one_attempt() -> None:
    assert d.default_max_attempts(False, 5) == 1
    assert d.default_max_attempts(True, None) == 3
    assert d.default_max_attempts(True, 5) == 5


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
