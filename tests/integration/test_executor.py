"""The executor with real processes: outcomes, output handling, stopping, and
process-table checks that nothing a job started outlives it."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

from ulid import ULID

from contracts import subjects
from contracts.events import Log, Progress, Started
from services.executor import slots
from tests.support import Domed, log_lines, pid_alive, processes_with_env, terminal_of, wait_until


def assert_seq_gap_free(events) -> None:
    logs = [e.event for e in events if isinstance(e.event, Log)]
    expected = 0
    for ev in logs:
        assert ev.seq == expected, f"seq {ev.seq} != {expected}"
        expected += len(ev.lines)


async def test_success_records_exit_duration_counts_and_rusage(domed: Domed) -> None:
    job_id, events = await domed.run("test.spew", {"lines": 5, "stderr_every": 2})
    kinds = [e.kind for e in events]
    assert kinds[:2] == ["queued", "started"] and kinds[-1] == "terminal"
    started = events[1].event
    assert (
        isinstance(started, Started)
        and started.attempt == 1
        and started.pid > 0
        and started.executor
    )
    term = terminal_of(events)
    assert term.state == "succeeded" and term.exit_code == 0 and term.signal is None
    assert term.lines.stdout == 2 and term.lines.stderr == 3
    assert log_lines(events, "stderr") == ["err 0", "err 2", "err 4"]
    assert log_lines(events, "stdout") == ["line 1", "line 3"]
    assert term.duration_s is not None and term.duration_s > 0
    assert term.rusage is not None and term.rusage.max_rss_kb > 1000
    assert term.signals_sent == [] and term.truncated is False
    assert_seq_gap_free(events)


async def test_non_zero_exit_fails_with_its_code(domed: Domed) -> None:
    job_id, events = await domed.run("test.exit", {"code": 3})
    term = terminal_of(events)
    assert term.state == "failed" and term.exit_code == 3 and term.error is None
    assert log_lines(events, "stderr") == ["exiting with 3"]
    assert (await domed.projected(job_id))["exit_code"] == 3


async def test_a_command_that_cannot_start_fails_with_spawn_failed(domed: Domed) -> None:
    for tool in ("test.missing", "test.not_executable"):
        _, events = await domed.run(tool)
        assert [e.kind for e in events] == ["queued", "terminal"]
        term = terminal_of(events)
        assert (
            term.state == "failed" and term.error is not None and term.error.code == "spawn_failed"
        )
    # the executor survived: it still runs jobs
    _, events = await domed.run("test.true")
    assert terminal_of(events).state == "succeeded"


async def test_timeout_terms_then_kills_the_group(domed: Domed, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    job_id, events = await domed.run("test.trap_term", {"pidfile": str(pidfile)}, timeout_s=1)
    term = terminal_of(events)
    assert (
        term.state == "timed_out"
        and term.signals_sent == ["TERM", "KILL"]
        and term.signal == "KILL"
    )
    assert not pid_alive(int(pidfile.read_text()))
    assert processes_with_env(f"DOMED_JOB_ID={job_id}") == []


async def test_cancel_kills_double_forked_grandchildren(domed: Domed, tmp_path: Path) -> None:
    pidfile = tmp_path / "group.json"
    job_id = await domed.submit("test.fork_tree", {"pidfile": str(pidfile)})
    await wait_until(
        lambda: pidfile.exists() and pidfile.read_text().endswith("]"), 20, "the process tree"
    )
    group = json.loads(pidfile.read_text())
    assert len(group) >= 3 and all(pid_alive(p) for p in group)
    r = await domed.request(subjects.CANCEL, {"job_id": job_id, "reason": "test"})
    assert r.data["state"] == "running"
    events = await domed.events(job_id)
    term = terminal_of(events)
    assert term.state == "canceled" and term.signals_sent == ["TERM", "KILL"]
    assert [e.kind for e in events].count("cancel") == 1
    assert not any(pid_alive(p) for p in group)
    assert processes_with_env(f"DOMED_JOB_ID={job_id}") == []
    assert (await domed.projected(job_id))["state"] == "canceled"


async def test_a_one_megabyte_line_is_split_never_dropped(domed: Domed) -> None:
    _, events = await domed.run("test.bigline", {"bytes": 1_000_000})
    lines = log_lines(events)
    assert "".join(lines) == "a" * 1_000_000
    assert max(len(x) for x in lines) <= 65536 and len(lines) == -(-1_000_000 // 65536)
    assert terminal_of(events).lines.stdout == len(lines)
    assert_seq_gap_free(events)


async def test_binary_output_is_replaced_not_fatal(domed: Domed) -> None:
    _, events = await domed.run("test.binary")
    assert log_lines(events) == ["ok \ufffd\ufffd bad \ufffd( utf8", "\x00nul"]
    assert terminal_of(events).state == "succeeded"


async def test_a_final_line_without_newline_is_kept(domed: Domed) -> None:
    _, events = await domed.run("test.no_newline")
    assert log_lines(events) == ["first", "last without newline"]


async def test_output_past_the_cap_is_dropped_and_marked_truncated(domed: Domed) -> None:
    _, events = await domed.run("test.capped", {"lines": 10_000, "width": 200})
    term = terminal_of(events)
    assert term.state == "succeeded" and term.truncated is True
    lines = log_lines(events)
    assert sum(len(x) + 1 for x in lines) <= 1000
    assert all(len(x.encode()) <= 100 for x in lines)
    assert term.lines.stdout == len(lines)


async def test_environment_is_only_the_allowlist(domed: Domed) -> None:
    os.environ["DOMED_TEST_SECRET"] = "leaked-if-you-see-this"
    try:
        _, events = await domed.run("test.env")
    finally:
        os.environ.pop("DOMED_TEST_SECRET")
    env = json.loads("\n".join(log_lines(events)))
    assert set(env) <= {"PATH", "LANG", "FIXED", "DOMED_JOB_ID", "DOMED_RESULT", "LC_CTYPE"}
    assert env["FIXED"] == "yes" and "DOMED_TEST_SECRET" not in env
    work_dir = os.path.dirname(env["DOMED_RESULT"])  # a file of the job's own, in its dir
    assert os.path.basename(env["DOMED_RESULT"]) == f".domed-result-{env['DOMED_JOB_ID']}.json"
    assert os.path.basename(work_dir).startswith(f"domed-{env['DOMED_JOB_ID']}-")


async def test_progress_lines_become_progress_events_and_stay_in_the_log(domed: Domed) -> None:
    job_id, events = await domed.run("demo.countdown", {"n": 3, "interval": 0.06})
    progress = [e.event for e in events if isinstance(e.event, Progress)]
    assert (
        progress
        and progress[-1].current == 3
        and progress[-1].total == 3
        and progress[-1].percent == 100.0
    )
    assert "progress 3/3" in log_lines(events) and log_lines(events)[-1] == "liftoff"
    state = await domed.projected(job_id)
    assert state["progress"]["percent"] == 100.0


async def test_large_output_keeps_every_line_in_order(domed: Domed) -> None:
    job_id, events = await domed.run("test.spew", {"lines": 50_000, "stderr_every": 1000})
    assert_seq_gap_free(events)
    out = log_lines(events, "stdout")
    assert len(out) == 50_000 - 50 and out[0] == "line 1" and out[-1] == "line 49999"
    assert log_lines(events, "stderr")[-1] == "err 49000"
    assert (await domed.projected(job_id))["lines"] == {"stdout": 49_950, "stderr": 50}


async def test_temp_working_dir_is_removed_afterwards(domed: Domed) -> None:
    _, events = await domed.run("test.argv", {"value": "x"})
    started = events[1].event
    assert isinstance(started, Started)
    leftovers = list(Path(tempfile.gettempdir()).glob(f"domed-{started.job_id}-*"))
    assert leftovers == []


async def test_a_temp_working_dir_full_of_files_is_removed_before_the_terminal(
    domed: Domed,
) -> None:
    _, events = await domed.run("test.scratch")
    assert terminal_of(events).state == "succeeded"
    [work_dir] = log_lines(events)
    assert Path(work_dir).name.startswith("domed-") and not Path(work_dir).exists()


async def test_secrets_are_deleted_when_the_job_ends(domed: Domed) -> None:
    job_id, events = await domed.run("test.secret", {"token": "s3cr3t-value"})
    assert terminal_of(events).state == "succeeded"
    kv = await domed.nc.jetstream().key_value(subjects.KV_SECRETS)
    try:
        entry = await kv.get(job_id)
        assert not entry.value
    except Exception as exc:  # KeyNotFound / KeyDeleted: both mean gone
        assert "NotFound" in type(exc).__name__ or "Deleted" in type(exc).__name__

    _ = time


async def _run_then_check_never_ran(d: Domed, canceled: str, counter: Path) -> None:
    # The executor takes jobs in stream order: once a later job has ended, it has dealt
    # with the canceled one too.
    _, events = await d.run("test.argv", {"value": "after"})
    assert terminal_of(events).state == "succeeded"
    kinds = [e.kind for e in await d.events(canceled)]
    assert kinds == ["queued", "cancel", "terminal"]
    assert not counter.exists(), "a canceled job's command ran"


async def test_a_job_canceled_while_it_waits_for_a_free_slot_never_runs(
    fresh_server, ssot: Path, tmp_path: Path
) -> None:
    async with Domed.running(fresh_server.url, ssot, tmp_path / "data", slots=1) as d:
        blocker = await d.submit("test.sleep", {"seconds": 30})
        await d.until_kind(blocker, "started")
        counter = tmp_path / "ran"
        waiting = await d.submit("test.counter", {"file": str(counter)})
        r = await d.request(subjects.CANCEL, {"job_id": waiting})
        assert r.data == {"job_id": waiting, "state": "canceled"}
        await d.request(subjects.CANCEL, {"job_id": blocker})
        await _run_then_check_never_ran(d, waiting, counter)


async def test_jobs_canceled_before_any_executor_started_never_run(
    fresh_server, ssot: Path, tmp_path: Path
) -> None:
    async with Domed.running(
        fresh_server.url, ssot, tmp_path / "data", services=("router", "projector")
    ) as d:
        counter = tmp_path / "ran"
        waiting = await d.submit("test.counter", {"file": str(counter)})
        r = await d.request(subjects.CANCEL, {"job_id": waiting})
        assert r.data == {"job_id": waiting, "state": "canceled"}
        await d.start_service("executor")
        await _run_then_check_never_ran(d, waiting, counter)


async def test_an_undecodable_queued_event_is_set_aside_not_redelivered_forever(
    domed: Domed,
) -> None:
    js = domed.nc.jetstream()
    job_id = str(ULID())
    ack = await js.publish(
        subjects.ingest_subject(job_id, "queued"),
        b'{"kind": "queued", "job_id": ',  # cut short
        headers={"Nats-Msg-Id": subjects.msg_id(job_id, "queued")},
    )
    deadline = time.monotonic() + 10
    while True:  # until the executors' consumer has settled it (acked as terminated)
        info = await js.consumer_info(subjects.STREAM, subjects.EXECUTORS_CONSUMER)
        if info.ack_floor.stream_seq >= ack.seq or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert info.ack_floor.stream_seq >= ack.seq, info
    assert info.num_redelivered == 0
    _, events = await domed.run("demo.echo", {"text": "after"})  # the next job runs
    assert terminal_of(events).state == "succeeded"


async def test_a_concurrency_slot_taken_over_by_another_job_is_left_to_it(
    fresh_server, ssot: Path, tmp_path: Path
) -> None:
    """An executor cut off for longer than the slot's TTL may find its slot given to
    another job (here the test writes that job's claim). Its heartbeat must not overwrite
    that claim, nor its end delete it: either would let a third job run beside it."""
    async with Domed.running(fresh_server.url, ssot, tmp_path / "data", ack_wait_s=1) as d:
        job_id = await d.submit("test.limited", {"seconds": 1.5})
        await d.until_kind(job_id, "started")
        slots = await d.nc.jetstream().key_value(subjects.KV_SLOTS)
        await slots.put("test.limited.0", b"another-job")  # as if ours had expired
        assert terminal_of(await d.events(job_id)).state == "succeeded"  # 4 heartbeats later
        entry = await slots.get("test.limited.0")
        assert entry.value == b"another-job"


async def test_a_slot_that_expired_is_taken_again_unless_another_job_holds_it(
    domed: Domed,
) -> None:
    kv = await domed.nc.jetstream().key_value(subjects.KV_SLOTS)
    tool = f"test.slots-{ULID()}".lower()
    slot = await slots.acquire(kv, tool, 1, "job-a")
    assert slot is not None and await slots.acquire(kv, tool, 1, "job-b") is None  # all held
    await kv.delete(slot.key)  # as the TTL would
    await slots.keep(kv, slot)
    assert not slot.lost and (await kv.get(slot.key)).value == slot.token
    await kv.purge(slot.key)
    taken = await slots.acquire(kv, tool, 1, "job-b")  # another job got it meanwhile
    assert taken is not None
    await slots.keep(kv, slot)
    await slots.release(kv, slot)
    assert slot.lost and (await kv.get(slot.key)).value == taken.token
    await slots.release(kv, taken)
    assert await slots.acquire(kv, tool, 1, "job-c") is not None


async def test_a_slot_whose_last_keep_went_unanswered_is_still_given_back(
    domed: Domed,
) -> None:
    """The job ended while a keep was on its way: the server stored it, the executor never
    learned its revision. The release still frees the slot at once (it used to wait for
    the bucket's TTL, 10 s, before another job of the tool could run)."""
    kv = await domed.nc.jetstream().key_value(subjects.KV_SLOTS)
    tool = f"test.slots-{ULID()}".lower()
    slot = await slots.acquire(kv, tool, 1, "job-a")
    assert slot is not None
    await kv.update(slot.key, slot.token, last=slot.revision)  # the keep, answer lost
    await slots.keep(kv, slot)  # a later keep is not fooled into giving it up either
    assert not slot.lost
    await kv.update(slot.key, slot.token, last=slot.revision)
    await slots.release(kv, slot)
    assert await slots.acquire(kv, tool, 1, "job-b") is not None
