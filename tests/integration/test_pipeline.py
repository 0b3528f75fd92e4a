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

from contracts import subjects
from contracts.events import Log, now_iso
from services.runtime import bus
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
    subject, payload, headers = bus.event_message(late, "late")
    with pytest.raises(nats.js.errors.APIError) as refused:
        await js.publish(subject, payload, headers={**headers, **bus.no_terminal_yet(job_id)})
    assert bus.is_wrong_last_sequence(refused.value)
    assert (await js.stream_info(subjects.STREAM)).state.messages == before
    last = await js.get_last_msg(subjects.STREAM, f"job.{job_id}.*")
    assert last.subject == f"job.{job_id}.terminal"
