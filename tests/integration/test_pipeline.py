"""The vertical slice: submit -> queued -> executor -> started/log/terminal -> projector -> KV."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nats.js.errors
import pytest
from ulid import ULID

from contracts import subjects
from contracts.events import Cancel, Log, Started, decode_event, never_ran, now_iso
from services.executor.ownership import Ownership
from services.executor.publisher import EventPipeline, Superseded
from services.runtime import failures, jobstream
from services.runtime.natsserver import free_port
from tests.support import ROOT, Domed, log_lines, pid_alive, terminal_of


async def test_echo_job_flows_through_every_service(domed: Domed) -> None:
    job_id, events = await domed.run("demo.echo", {"text": "hello"})
    kinds = [e.kind for e in events]
    assert kinds[0] == "queued" and kinds[1] == "started" and kinds[-1] == "terminal"
    assert kinds.count("terminal") == 1
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    assert all(e.subject == f"job.{job_id}.{e.kind}" for e in events)
    assert log_lines(events) == ["hello"]
    term = terminal_of(events)
    assert term.state == "succeeded" and term.exit_code == 0 and term.lines.stdout == 1

    state = await domed.projected(job_id)
    assert state["state"] == "succeeded" and state["tool"] == "demo.echo"
    assert state["params"] == {"text": "hello"} and state["lines"] == {"stdout": 1, "stderr": 0}
    assert state["last_seq"] == events[-1].seq and state["projected_seq"] >= events[-1].seq
    kv = await domed.kv_value(job_id)
    assert kv["state"] == "succeeded" and kv["last_seq"] == events[-1].seq


async def test_plain_subscriber_sees_the_stored_events_once(domed: Domed) -> None:
    seen: list[str] = []
    sub = await domed.nc.subscribe("job.*.*", cb=None)
    job_id, events = await domed.run("demo.echo", {"text": "once"})
    deadline = time.monotonic() + 5
    while len(seen) < len(events) and time.monotonic() < deadline:
        msg = await sub.next_msg(timeout=5)
        if msg.subject.startswith(f"job.{job_id}."):
            seen.append(msg.subject.rsplit(".", 1)[1])
    await sub.unsubscribe()
    assert seen == [e.kind for e in events]


async def test_unknown_tool_and_invalid_params_are_typed_errors(domed: Domed) -> None:
    r = await domed.request(subjects.SUBMIT, {"tool": "demo.ecko", "params": {}})
    assert r.headers["Nats-Service-Error-Code"] == "404"
    assert r.error["code"] == "unknown_tool" and "demo.echo" in r.error["message"]
    r = await domed.request(
        subjects.SUBMIT, {"tool": "demo.countdown", "params": {"n": -1, "bogus": 1}}
    )
    assert r.headers["Nats-Service-Error-Code"] == "400" and "Nats-Service-Error" in r.headers
    assert r.error["code"] == "invalid_params"
    paths = sorted(d["path"] for d in r.error["details"])
    assert paths == ["$", "$.n"], r.error


def test_domed_up_runs_a_job_and_stops_cleanly_on_sigint(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "DOMED_NATS_URL": ""}
    env.pop("DOMED_NATS_URL")
    env.pop("NATS_URL", None)
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.cli.main",
            "up",
            "--data-dir",
            str(tmp_path / "d"),
            "--nats-port",
            str(port),
            "--ssot",
            str(ROOT / "ssot"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env=env,
    )
    try:
        assert up.stdout is not None
        banner = b""
        deadline = time.monotonic() + 20
        while b"Ctrl-C stops everything" not in banner and time.monotonic() < deadline:
            banner += up.stdout.readline()
        pids = [int(p) for p in banner.split(b"(pids ")[1].split(b")")[0].decode().split(", ")]
        for pid in pids:  # a URL may carry a password: it is in the environment, not on argv
            assert b"nats://" not in Path(f"/proc/{pid}/cmdline").read_bytes()
            assert b"DOMED_NATS_URL=nats://" in Path(f"/proc/{pid}/environ").read_bytes()
        url = f"nats://127.0.0.1:{port}"
        submit = subprocess.run(
            [
                sys.executable,
                "-m",
                "services.cli.main",
                "submit",
                "demo.echo",
                "-p",
                "text=hello",
                "--follow",
                "--nats-url",
                url,
            ],
            capture_output=True,
            cwd=ROOT,
            timeout=60,
        )
        assert submit.returncode == 0, submit.stderr
        assert submit.stdout.decode().splitlines() == ["hello"]
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=30) == 0
        assert not any(pid_alive(p) for p in pids)
        out = up.stdout.read().decode()
        assert "stopped" in out
        server_pids = [
            int(x)
            for x in os.listdir("/proc")
            if x.isdigit()
            and f"{tmp_path}/d/nats".encode() in Path(f"/proc/{x}/cmdline").read_bytes()
            if Path(f"/proc/{x}/cmdline").exists()
        ]
        assert server_pids == []
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    _ = json


async def test_the_server_refuses_a_log_event_after_the_jobs_terminal(domed: Domed) -> None:
    """What keeps a re-published log batch (its first try got no ack) from landing after
    the job's terminal: the executor re-publishes with 'no terminal yet'."""
    job_id, events = await domed.run("demo.echo", {"text": "done"})
    js = domed.nc.jetstream()
    before = (await js.stream_info(subjects.STREAM)).state.messages
    late = Log(job_id=job_id, attempt=1, stream="stdout", seq=99, lines=["late"], ts=now_iso())
    subject, payload, headers = jobstream.event_message(late, "late")
    with pytest.raises(nats.js.errors.APIError) as refused:
        await js.publish(subject, payload, headers={**headers, **jobstream.no_terminal_yet(job_id)})
    assert failures.is_wrong_last_sequence(refused.value)
    assert (await js.stream_info(subjects.STREAM)).state.messages == before
    last = await js.get_last_msg(subjects.STREAM, f"job.{job_id}.*")
    assert last.subject == f"job.{job_id}.terminal"


async def test_events_sent_while_the_hold_ran_short_are_checked_and_never_follow_a_terminal(
    domed: Domed, caplog: pytest.LogCaptureFixture
) -> None:
    """An executor whose hold on a delivery ran short (ownership.py: a pause, a partition,
    a cluster electing a leader) may already have been replaced. Its log events are then
    stored one at a time, in order, only while the job has no terminal; once another
    executor ended the job, nothing more of it is stored and the job is told it was lost."""
    js = domed.nc.jetstream()
    job_id = str(ULID())  # a job of our own: only `started`, so no executor takes it
    started = Started(job_id=job_id, executor="e-1", pid=1, attempt=1, started_at=now_iso())
    await jobstream.publish_event(js, started, 1)
    told: list[str] = []

    def pipeline() -> EventPipeline:
        expired = Ownership(
            js, job_id, 1, lease_s=30, started_at=time.monotonic() - 31, first_window_s=30
        )
        return EventPipeline(
            js, job_id, 1, now_iso, lambda: None, lambda: None, expired, lambda: told.append("lost")
        )

    first = pipeline()
    first.add_line("stdout", "one")
    first.flush()
    first.add_line("stderr", "two")
    await first.close()  # returns once every event is stored
    assert any("ran short" in r.getMessage() for r in caplog.records), "operators are told"
    ours = f"job.{job_id}.*"
    per_subject = (await js.stream_info(subjects.STREAM, subjects_filter=ours)).state.subjects
    assert per_subject == {f"job.{job_id}.started": 1, f"job.{job_id}.log": 2}
    sub = await js.subscribe(ours, stream=subjects.STREAM, ordered_consumer=True)
    stored = [decode_event((await sub.next_msg(timeout=5)).data) for _ in range(3)]
    await sub.unsubscribe()
    assert stored[0] == started
    assert [(e.stream, e.seq, e.lines) for e in stored[1:] if isinstance(e, Log)] == [
        ("stdout", 0, ["one"]),
        ("stderr", 1, ["two"]),
    ]

    lost = never_ran(job_id, "lost", now_iso(), 1)  # another executor declared it lost
    await jobstream.publish_event(js, lost, headers=jobstream.FIRST_TERMINAL)
    second = pipeline()
    second.add_line("stdout", "three")
    with pytest.raises(Superseded):
        await second.close()
    assert told == ["lost"]
    last = await js.get_last_msg(subjects.STREAM, ours)
    assert last.subject == f"job.{job_id}.terminal"


async def test_a_claim_whose_ack_was_lost_counts_as_stored_when_retried(domed: Domed) -> None:
    """`started` is published only while `queued` is the job's newest event. If its ack is
    lost, the retry is refused (the first try is stored): that must not read as a cancel
    that came first, which would end the running job `lost`."""
    js = domed.nc.jetstream()
    job_id = str(ULID())
    # The job's first event: not a `queued` one, which the running executor would take.
    before = await jobstream.publish_if_newest(js, Cancel(job_id, now_iso()), 0, last_seq=0)
    assert before is not None
    started = Started(job_id=job_id, executor="e-1", pid=1, attempt=1, started_at=now_iso())
    first = await jobstream.publish_if_newest(js, started, 1, before)
    assert first is not None
    assert await jobstream.publish_if_newest(js, started, 1, before) == first  # the retry
    other = Started(job_id=job_id, executor="e-2", pid=2, attempt=1, started_at=now_iso())
    assert await jobstream.publish_if_newest(js, other, 1, before) is None  # someone else's
    per_subject = (await js.stream_info(subjects.STREAM, subjects_filter=f"job.{job_id}.*")).state
    assert per_subject.subjects == {f"job.{job_id}.cancel": 1, f"job.{job_id}.started": 1}
