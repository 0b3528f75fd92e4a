"""``domed executor --job-user USER[:GROUP]``: jobs run as that user with only that group,
in a working dir of their own, out of reach of the executor's environment; stopped and
reaped like any job; and an executor that cannot switch users refuses to start."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from contracts import subjects
from services.runtime.natsserver import NatsServer
from tests.support import ROOT, Domed, ServiceProcess, log_lines, processes_with_env, terminal_of

SECRET = "executor-only-s3cret"


def nobody() -> tuple[int, int]:
    if os.geteuid() != 0:
        pytest.skip("needs root: jobs run as another user")
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' on this machine")
    return entry.pw_uid, entry.pw_gid


@pytest.fixture
async def job_user_executor(
    fresh_server: NatsServer, ssot: Path, tmp_path: Path
) -> AsyncIterator[tuple[Domed, ServiceProcess]]:
    nobody()
    async with Domed.running(
        fresh_server.url, ssot, tmp_path / "data", services=("router", "projector")
    ) as d:
        proc = ServiceProcess(
            "executor",
            d.url,
            d.ssot,
            tmp_path / "x",
            "--job-user",
            "nobody:nogroup",
            "--secrets-key",
            str(d.data_dir / "secrets.key"),  # the router's pair: it seals for this one
            env={"DOMED_TEST_SECRET": SECRET},
        ).start()
        try:
            await proc.wait_ready()
            yield d, proc
        finally:
            proc.kill()


async def test_jobs_run_as_the_job_user_with_only_its_group_in_a_dir_of_their_own(
    job_user_executor: tuple[Domed, ServiceProcess],
) -> None:
    d, _ = job_user_executor
    uid, gid = nobody()
    _, events = await d.run("test.whoami", {"seconds": 0})
    assert terminal_of(events).state == "succeeded"
    assert log_lines(events) == [str(uid), str(gid), str(gid), f"{uid} 700"]


async def test_a_job_of_the_job_user_has_no_capabilities(
    job_user_executor: tuple[Domed, ServiceProcess],
) -> None:
    d, _ = job_user_executor
    _, events = await d.run("test.cat", {"path": "/proc/self/status"})
    assert terminal_of(events).state == "succeeded"
    caps = dict(line.split(":\t") for line in log_lines(events) if line.startswith("Cap"))
    for kind in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert int(caps[kind], 16) == 0, caps


async def test_a_job_of_the_job_user_cannot_read_the_executors_environment(
    job_user_executor: tuple[Domed, ServiceProcess],
) -> None:
    d, proc = job_user_executor
    assert proc.proc is not None
    _, events = await d.run("test.cat", {"path": f"/proc/{proc.proc.pid}/environ"})
    term = terminal_of(events)
    lines = log_lines(events)
    assert term.state == "failed" and any("Permission denied" in line for line in lines), lines
    assert not any(SECRET in line for line in lines)


async def test_a_job_of_another_user_is_canceled_and_reaped_whole(
    job_user_executor: tuple[Domed, ServiceProcess],
) -> None:
    d, _ = job_user_executor
    job_id = await d.submit("test.whoami", {"seconds": 60})
    await d.until_kind(job_id, "log")
    reply = await d.request(subjects.CANCEL, {"job_id": job_id})
    assert reply.error is None, reply.data
    assert terminal_of(await d.events(job_id)).state == "canceled"
    assert processes_with_env(f"DOMED_JOB_ID={job_id}") == []


def executor_argv(*extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "services.cli.main",
        "executor",
        "--nats-url",
        "nats://127.0.0.1:1",
        *extra,
    ]


def test_an_executor_that_cannot_switch_users_refuses_to_start() -> None:
    nobody()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is missing: cannot drop this root's capabilities")
    # Root without capabilities: what an unprivileged executor amounts to.
    out = subprocess.run(
        [setpriv, "--bounding-set=-all", "--inh-caps=-all", *executor_argv("--job-user", "nobody")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2, out.stderr
    assert "cannot switch users" in out.stderr and "CAP_SETUID" in out.stderr


def test_an_executor_given_an_unknown_job_user_refuses_to_start() -> None:
    out = subprocess.run(
        executor_argv("--job-user", "no-such-user-domed"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and "no user 'no-such-user-domed'" in out.stderr, out.stderr


async def test_a_job_of_another_user_can_read_its_secret_file(
    job_user_executor: tuple[Domed, ServiceProcess],
) -> None:
    d, _ = job_user_executor
    _, events = await d.run("test.secret_file_sh", {"key": "k3y-for-nobody"})
    assert terminal_of(events).state == "succeeded", (terminal_of(events), log_lines(events))
    assert log_lines(events) == ["readable"]
