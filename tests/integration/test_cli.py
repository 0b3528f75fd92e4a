"""The real `domed` entry point in a subprocess, against real NATS and running services."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from services.runtime.natsserver import free_port
from tests.support import Domed, run_cli


async def domed_cli(
    domed: Domed | None, *args: str, url: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return await run_cli(*args, "--nats-url", url or (domed.url if domed else ""), timeout=timeout)


async def test_submit_types_params_by_the_schema_and_prints_json(domed: Domed) -> None:
    r = await domed_cli(
        domed,
        "submit",
        "demo.countdown",
        "-p",
        "n=2",
        "-p",
        "interval=0.01",
        "-l",
        "who=cli",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    reply = json.loads(r.stdout)
    assert reply["state"] == "queued" and reply["duplicate"] is False
    state = await domed.projected(reply["job_id"])
    assert state["params"] == {"n": 2, "interval": 0.01} and state["labels"] == {"who": "cli"}


async def test_follow_exit_codes_follow_the_job(domed: Domed) -> None:
    ok = await domed_cli(domed, "submit", "demo.echo", "-p", "text=hi there", "--follow")
    assert ok.returncode == 0 and ok.stdout == "hi there\n" and "succeeded" in ok.stderr
    failed = await domed_cli(domed, "submit", "test.exit", "-p", "code=3", "--follow")
    assert (
        failed.returncode == 3 and "exiting with 3" in failed.stderr and "failed" in failed.stderr
    )
    timed_out = await domed_cli(
        domed, "submit", "test.sleep", "-p", "seconds=30", "--timeout", "0.5", "--follow"
    )
    assert timed_out.returncode == 124 and "timed_out" in timed_out.stderr


async def test_follow_json_is_parseable(domed: Domed) -> None:
    r = await domed_cli(domed, "submit", "demo.echo", "-p", "text=j", "--follow", "--json")
    assert r.returncode == 0
    doc = json.loads(r.stdout)
    assert doc["terminal"]["state"] == "succeeded"
    assert [e["kind"] for e in doc["events"]][:2] == ["queued", "started"]


async def test_logs_of_a_finished_big_job_are_complete_and_in_order(domed: Domed) -> None:
    job_id, _ = await domed.run("test.spew", {"lines": 10_000})
    r = await domed_cli(domed, "logs", job_id)
    assert r.returncode == 0
    assert r.stdout.splitlines() == [f"line {i}" for i in range(10_000)]
    f = await domed_cli(domed, "logs", job_id, "-f")
    assert f.returncode == 0 and f.stdout.splitlines() == [f"line {i}" for i in range(10_000)]


async def test_jobs_ls_show_cancel_and_tools(domed: Domed) -> None:
    job_id, _ = await domed.run("demo.echo", {"text": "listed"})
    await domed.projected(job_id)
    ls = await domed_cli(domed, "jobs", "ls", "--tool", "demo.echo", "--json")
    jobs = json.loads(ls.stdout)["jobs"]
    assert job_id in [j["job_id"] for j in jobs]
    table = await domed_cli(domed, "jobs", "ls", "--tool", "demo.echo")
    assert "ID" in table.stdout and job_id in table.stdout
    show = await domed_cli(domed, "jobs", "show", job_id)
    assert "succeeded" in show.stdout and '"text": "listed"' in show.stdout
    cancel = await domed_cli(domed, "cancel", job_id)
    assert cancel.returncode == 1 and "already_terminal" in cancel.stderr
    tools = await domed_cli(domed, "tools", "ls", "--json")
    assert "demo.echo" in [t["id"] for t in json.loads(tools.stdout)["tools"]]
    explain = await domed_cli(domed, "tools", "explain", "demo.countdown", "-p", "n=3")
    assert '"--from", "3"' in explain.stdout


async def test_mistakes_get_clear_messages(domed: Domed) -> None:
    bad = await domed_cli(domed, "submit", "demo.countdown", "-p", "n=-5")
    assert bad.returncode == 2 and "$.n" in bad.stderr
    typo = await domed_cli(domed, "submit", "demo.ecko", "-p", "text=x")
    assert typo.returncode == 1 and "demo.echo" in typo.stderr
    unknown = await domed_cli(domed, "jobs", "show", "01NOSUCHJOB0000000000000000")
    assert unknown.returncode == 1 and "unknown_job" in unknown.stderr
    url = f"nats://127.0.0.1:{free_port()}"
    down = await domed_cli(None, "jobs", "ls", url=url)
    assert down.returncode == 3 and url in down.stderr and "domed up" in down.stderr


async def test_status_lists_the_three_services_and_the_stream(domed: Domed) -> None:
    r = await domed_cli(domed, "status", "--json")
    assert r.returncode == 0
    doc = json.loads(r.stdout)
    names = {s["name"] for s in doc["services"]}
    assert {"domed-router", "domed-executor", "domed-projector"} <= names
    assert doc["stream"]["state"]["messages"] > 0
    assert "executors" in [c["name"] for c in doc["consumers"]]


async def test_follow_prints_the_result_and_artifacts_and_json_ends_with_the_result(
    domed: Domed, tmp_path: Path
) -> None:
    files = '{"out/report.txt": 300}'
    args = ("submit", "test.leaves", "-p", 'result={"ok": true}', "-p", f"files={files}")
    plain = await domed_cli(domed, *args, "--follow")
    assert plain.returncode == 0, plain.stderr
    assert 'result: {"ok": true}' in plain.stderr
    assert "artifact: out/report.txt (300 bytes)" in plain.stderr
    r = await domed_cli(domed, *args, "--follow", "--json")
    doc = json.loads(r.stdout)
    assert doc["result"] == {"ok": True} == doc["terminal"]["result"]
    job_id = doc["job_id"]
    shown = await domed_cli(domed, "jobs", "show", job_id)
    assert 'result: {"ok": true}' in shown.stdout and "out/report.txt (300 bytes" in shown.stdout

    listed = json.loads((await domed_cli(domed, "artifacts", "ls", job_id, "--json")).stdout)
    assert [(a["name"], a["size"]) for a in listed] == [("out/report.txt", 300)]
    target = tmp_path / "report.txt"
    got = await domed_cli(domed, "artifacts", "get", job_id, "out/report.txt", "-o", str(target))
    assert got.returncode == 0, got.stderr
    assert target.read_bytes() == bytes(i % 251 for i in range(300))
    missing = await domed_cli(domed, "artifacts", "get", job_id, "nope.txt", "-o", "-")
    assert missing.returncode != 0 and "nope.txt" in missing.stderr


async def test_follow_shows_each_retry(domed: Domed, tmp_path: Path) -> None:
    r = await domed_cli(
        domed,
        "submit",
        "test.flaky",
        "-p",
        f"file={tmp_path / 'runs'}",
        "-p",
        "succeed_at=2",
        "--follow",
    )
    assert r.returncode == 0, r.stderr
    assert "attempt 1 failed (exit 3); attempt 2 in " in r.stderr
    assert "succeeded" in r.stderr and "attempt 2" in r.stderr.splitlines()[-1]
