"""What operators rely on: a failed or timed-out attempt retried with growing backoff and
announced by a `retry` event; a cancel during the backoff ending the job at once; a queue
deadline that a job past it never outlives, even if an executor picks it up late; and the
manifest's stop signal sent first on cancel and timeout."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from contracts.events import Queued, Retry, Started, timestamp
from services.runtime.natsserver import NatsServer
from tests.support import Domed, log_lines, terminal_of


async def test_a_tool_that_fails_twice_then_succeeds_is_retried_with_growing_backoff(
    domed: Domed, tmp_path: Path
) -> None:
    job_id, events = await domed.run(
        "test.flaky", {"file": str(tmp_path / "runs"), "succeed_at": 3}
    )
    term = terminal_of(events)
    assert term.state == "succeeded" and term.attempt == 3, term
    assert [e.kind for e in events if e.kind != "log"] == [
        "queued",
        "started",
        "retry",
        "started",
        "retry",
        "started",
        "terminal",
    ]
    retries = [e.event for e in events if isinstance(e.event, Retry)]
    assert [(r.attempt, r.next_attempt) for r in retries] == [(1, 2), (2, 3)]
    assert all(r.outcome.state == "failed" and r.outcome.exit_code == 3 for r in retries)
    first, second = (r.delay_s for r in retries)
    assert 0.1 <= first <= 0.2 and 0.2 <= second <= 0.4 and second >= first
    starts = [e.event for e in events if isinstance(e.event, Started)]
    for retry, started in zip(retries, starts[1:], strict=True):  # none started early
        assert timestamp(started.started_at) >= timestamp(retry.ts) + retry.delay_s - 0.01
    assert (tmp_path / "runs").read_text() == "3"
    state = await domed.projected(job_id)
    assert state["state"] == "succeeded" and state["attempt"] == 3


async def test_the_last_allowed_attempt_gives_the_one_terminal(
    domed: Domed, tmp_path: Path
) -> None:
    _, events = await domed.run("test.flaky", {"file": str(tmp_path / "runs"), "succeed_at": 9})
    term = terminal_of(events)
    assert term.state == "failed" and term.exit_code == 3 and term.attempt == 3, term
    assert [e.kind for e in events].count("retry") == 2
    assert [e.kind for e in events].count("terminal") == 1


async def test_an_attempt_that_timed_out_is_retried(domed: Domed, tmp_path: Path) -> None:
    _, events = await domed.run(
        "test.flaky",
        {"file": str(tmp_path / "runs"), "succeed_at": 2, "how": "hang"},
        timeout_s=1,
    )
    term = terminal_of(events)
    assert term.state == "succeeded" and term.attempt == 2, term
    [retry] = [e.event for e in events if isinstance(e.event, Retry)]
    assert retry.outcome.state == "timed_out" and retry.outcome.signal == "TERM"


async def test_a_cancel_during_the_backoff_ends_the_job_at_once(
    domed: Domed, tmp_path: Path
) -> None:
    job_id = await domed.submit("test.flaky_slow", {"file": str(tmp_path / "runs")})
    [retry] = [e for e in await domed.until_kind(job_id, "retry") if e.kind == "retry"]
    assert retry.event.delay_s >= 30  # type: ignore[union-attr]
    asked = time.monotonic()
    reply = await domed.request("domed.jobs.cancel", {"job_id": job_id, "reason": "enough"})
    assert reply.error is None, reply.error
    term = terminal_of(await domed.events(job_id, timeout=20))
    assert term.state == "canceled" and term.attempt == 1, term
    assert time.monotonic() - asked < 10, "the backoff was waited out"
    assert (tmp_path / "runs").read_text() == "1"


async def test_a_job_past_its_queue_timeout_ends_timed_out_and_never_starts(
    fresh_server: NatsServer, ssot: Path, tmp_path: Path
) -> None:
    async with Domed.running(fresh_server.url, ssot, tmp_path / "data", slots=1) as d:
        busy = await d.submit("test.sleep", {"seconds": 60})
        await d.until_kind(busy, "started")  # the only slot is taken
        job_id = await d.submit("test.waits", {}, queue_timeout_s=0.5)
        events = await d.events(job_id, timeout=20)
        assert [e.kind for e in events] == ["queued", "terminal"]
        term = terminal_of(events)
        assert term.state == "timed_out" and term.attempt == 0, term
        assert term.error is not None and term.error.code == "queue_timeout"
        queued = events[0].event
        assert isinstance(queued, Queued) and queued.queue_timeout_s == 0.5
        await d.request("domed.jobs.cancel", {"job_id": busy})
        after = await d.submit("test.waits", {})
        assert terminal_of(await d.events(after)).state == "succeeded"
        assert [e.kind for e in await d.events(job_id)] == ["queued", "terminal"]


async def test_an_executor_that_picks_a_job_up_past_its_deadline_does_not_start_it(
    fresh_server: NatsServer, ssot: Path, tmp_path: Path
) -> None:
    async with Domed.running(
        fresh_server.url, ssot, tmp_path / "data", services=("router", "projector")
    ) as d:
        job_id = await d.submit("test.waits", {}, queue_timeout_s=1)
        await d.stop_service("router")  # its deadline timer goes with it, well before 1 s
        # reading it back takes the 1 s the reader waits for more; then the deadline has
        # passed, or is a few milliseconds away (the clock is what is tested)
        [stored] = await d.events(job_id, until_terminal=False)
        queued = stored.event
        assert isinstance(queued, Queued)
        await asyncio.sleep(max(0.0, timestamp(queued.submitted_at) + 1.0 - time.time()))
        await d.start_service("executor")
        events = await d.events(job_id, timeout=20)
        assert [e.kind for e in events] == ["queued", "terminal"]
        term = terminal_of(events)
        assert term.state == "timed_out" and term.error.code == "queue_timeout", term  # type: ignore[union-attr]


async def test_a_queue_timeout_longer_than_the_manifests_is_refused(domed: Domed) -> None:
    reply = await domed.request(
        "domed.jobs.submit", {"tool": "test.waits", "params": {}, "queue_timeout_s": 61}
    )
    assert reply.error is not None and reply.error["code"] == "invalid_request"
    assert "exceeds the tool's queue_timeout_s 60" in reply.error["message"]


async def test_a_tool_that_stops_cleanly_on_sigint_gets_sigint_first(domed: Domed) -> None:
    job_id = await domed.submit("test.graceful", {})
    await domed.until_kind(job_id, "log")
    await domed.request("domed.jobs.cancel", {"job_id": job_id})
    events = await domed.events(job_id)
    term = terminal_of(events)
    assert term.state == "canceled" and term.signals_sent == ["INT"], term
    assert term.exit_code == 0
    assert log_lines(events) == ["running", "got INT, stopping cleanly"]


async def test_a_timeout_sends_the_stop_signal_too(domed: Domed) -> None:
    _, events = await domed.run("test.graceful", {}, timeout_s=0.5)
    term = terminal_of(events)
    assert term.state == "timed_out" and term.signals_sent == ["INT"], term
    assert log_lines(events)[-1] == "got INT, stopping cleanly"
