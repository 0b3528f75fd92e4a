"""The Python client (``import domed``) against real NATS: a real ``domed up``, the
in-process services, and bare servers with responders of the test's own."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import nats
import nats.js.errors
import pytest

import domed
from contracts import subjects
from domed import artifacts
from services.runtime.natsserver import NatsServer, free_port
from tests.integration.test_up import Up, nothing_left
from tests.support import Domed


@pytest.fixture
def running(domed: Domed) -> Domed:
    """The session's in-process services (``domed`` here is the client package)."""
    return domed


@pytest.fixture
async def client(running: Domed) -> AsyncIterator[domed.Client]:
    async with domed.connect(running.url) as c:
        yield c


async def projected_state(client: domed.Client, job_id: str, state: str) -> domed.JobsGetReply:
    """The job's state once the projector has it in ``state`` (the projector reads the
    stream on its own time)."""
    async with asyncio.timeout(30):
        while True:
            try:
                got = await client.get(job_id)
                if got.state == state:
                    return got
            except domed.UnknownJob:
                pass
            await asyncio.sleep(0.05)


async def test_submit_events_wait_cancel_get_and_list_against_domed_up(
    tmp_path: Path, ssot: Path
) -> None:
    data = tmp_path / "data"
    port = free_port()
    up = await Up("--ssot", str(ssot), "--data-dir", str(data), "--nats-port", str(port)).start()
    try:
        await up.saw("are ready", timeout=60)
        async with domed.connect(f"nats://127.0.0.1:{port}") as client:
            job = await client.submit(
                "demo.countdown", {"n": 3, "interval": 0.01}, labels={"ci": "1"}
            )
            events = [event async for event in job.events()]
            assert isinstance(events[0], domed.Queued) and events[0].labels == {"ci": "1"}
            assert isinstance(events[-1], domed.Terminal) and events[-1].state == "succeeded"
            assert any(isinstance(e, domed.Started) for e in events)
            lines = [line for e in events if isinstance(e, domed.Log) for line in e.lines]
            assert lines[0] == "3" and lines[-1] == "liftoff"
            assert await job.wait() == events[-1]
            assert (await client.job(job.id).wait()).state == "succeeded"

            state = await projected_state(client, job.id, "succeeded")
            assert state.params == {"n": 3, "interval": 0.01} and state.labels == {"ci": "1"}
            page = await client.list(tool="demo.countdown", label="ci=1", limit=10)
            assert job.id in [j.job_id for j in page.jobs]

            sleeper = await client.submit("test.sleep", {"seconds": 60})
            async for event in sleeper.events():
                if isinstance(event, domed.Started):
                    break
            reply = await sleeper.cancel("enough")
            assert reply.job_id == sleeper.id
            final = await sleeper.wait(timeout=30)
            assert final.state == "canceled"
            with pytest.raises(domed.AlreadyTerminal) as info:
                await client.cancel(sleeper.id)
            assert info.value.code == "already_terminal"
        up.signal(signal.SIGINT)
        assert await up.exit_code(timeout=30) == 0
        await nothing_left(data)
    finally:
        if up.proc is not None and up.proc.returncode is None:
            up.kill()
            await up.exit_code()


async def test_errors_are_exceptions_carrying_the_error_code(client: domed.Client) -> None:
    with pytest.raises(domed.UnknownTool) as unknown:
        await client.submit("demo.ecko", {"text": "x"})
    assert unknown.value.code == "unknown_tool" and "demo.echo" in unknown.value.message
    with pytest.raises(domed.InvalidParams) as bad:
        await client.submit("demo.countdown", {"n": -5})
    assert bad.value.code == "invalid_params"
    assert [d["path"] for d in bad.value.details] == ["$.n"]
    with pytest.raises(domed.UnknownJob) as nojob:
        await client.get("01NOSUCHJOB0000000000000000")
    assert nojob.value.code == "unknown_job" and isinstance(nojob.value, domed.DomedError)
    with pytest.raises(domed.UnknownJob):
        await client.job("01NOSUCHJOB0000000000000000").wait()
    with pytest.raises(domed.UnknownTool):
        await client.tool("no.such.tool")


async def test_a_failed_job_is_a_terminal_not_an_exception(client: domed.Client) -> None:
    job = await client.submit("test.exit", {"code": 3})
    final = await job.wait(timeout=30)
    assert final.state == "failed" and final.exit_code == 3


async def test_history_stops_at_what_is_stored(client: domed.Client) -> None:
    job = await client.submit("demo.echo", {"text": "once"})
    await job.wait(timeout=30)
    kinds = [type(e).__name__ async for e in job.history()]
    assert kinds[0] == "Queued" and kinds[-1] == "Terminal" and "Log" in kinds


async def test_tools_and_explain(client: domed.Client) -> None:
    tools = await client.tools()
    assert "demo.echo" in [t.id for t in tools.tools]
    explained = await client.explain("demo.countdown", {"n": 3})
    assert "--from" in explained.argv and "3" in explained.argv
    assert (await client.tool("demo.echo"))["id"] == "demo.echo"


async def test_an_unreachable_server_is_unreachable() -> None:
    with pytest.raises(domed.Unreachable) as info:
        await domed.connect(f"nats://127.0.0.1:{free_port()}")
    assert info.value.code == "unreachable"


async def test_the_url_comes_from_the_environment(
    running: Domed, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DOMED_NATS_URL", raising=False)
    monkeypatch.setenv("NATS_URL", running.url)
    async with domed.connect() as client:
        assert (await client.tools()).tools
    monkeypatch.setenv("DOMED_NATS_URL", running.url)
    monkeypatch.setenv("NATS_URL", f"nats://127.0.0.1:{free_port()}")
    async with domed.connect() as client:
        assert (await client.tools()).tools


async def _answer(nc: nats.NATS, subject: str, job_id: str, seen: list[bytes]) -> None:
    async def reply(msg: nats.aio.msg.Msg) -> None:
        seen.append(msg.data)
        body = {"job_id": job_id, "state": "queued", "duplicate": False}
        await msg.respond(msgspec.json.encode(body))

    await nc.subscribe(subject, cb=reply)
    await nc.flush()


async def test_submit_uses_the_per_tool_subject_when_it_is_served(
    fresh_server: NatsServer,
) -> None:
    responder = await nats.connect(fresh_server.url)
    per_tool: list[bytes] = []
    general: list[bytes] = []
    try:
        await _answer(responder, "domed.jobs.submit.demo.echo", "PER-TOOL", per_tool)
        await _answer(responder, subjects.SUBMIT, "GENERAL", general)
        async with domed.connect(fresh_server.url) as client:
            job = await client.submit("demo.echo", {"text": "hi"})
        assert job.id == "PER-TOOL" and not general
        assert msgspec.json.decode(per_tool[0]) == {"params": {"text": "hi"}}
    finally:
        await responder.close()


async def test_submit_falls_back_to_the_general_subject(fresh_server: NatsServer) -> None:
    responder = await nats.connect(fresh_server.url)
    general: list[bytes] = []
    try:
        await _answer(responder, subjects.SUBMIT, "GENERAL", general)
        async with domed.connect(fresh_server.url) as client:
            job = await client.submit("demo.echo", {"text": "hi"}, labels={"a": "b"})
            assert job.id == "GENERAL"
            body = msgspec.json.decode(general[0])
            assert body == {"tool": "demo.echo", "params": {"text": "hi"}, "labels": {"a": "b"}}
            with pytest.raises(domed.NoResponders) as none:
                await client.cancel("01SOMEJOB00000000000000000")
            assert none.value.code == "unavailable"
    finally:
        await responder.close()


@dataclass(frozen=True)
class Entry:
    """An entry as a terminal's ``artifacts`` lists it."""

    name: str
    size: int
    sha256: str
    bucket: str
    object: str


async def test_an_artifact_is_read_only_when_its_digest_matches(
    running: Domed, client: domed.Client, tmp_path: Path
) -> None:
    size = 300_000  # three Object Store chunks
    files = json.dumps({"out/report.txt": size})
    job = await client.submit("test.leaves", {"result": '{"ok": true}', "files": files})
    assert (await job.wait(timeout=30)).state == "succeeded"
    data = bytes(i % 251 for i in range(size))
    assert await client.artifact(job.id, "out/report.txt") == data
    saved = await client.save_artifact(job.id, "out/report.txt", tmp_path / "report.txt")
    assert saved.read_bytes() == data
    [good] = await client.artifacts(job.id)
    assert (good.name, good.size, good.sha256) == (
        "out/report.txt",
        size,
        hashlib.sha256(data).hexdigest(),
    )

    wrong = Entry(
        good.name, good.size, hashlib.sha256(b"other").hexdigest(), good.bucket, good.object
    )
    with pytest.raises(domed.DigestMismatch) as mismatch:
        await client.read_artifact(wrong)
    assert mismatch.value.code == "digest_mismatch"
    with pytest.raises(domed.DigestMismatch):
        await artifacts.save(client.nc, wrong, tmp_path / "wrong.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.txt"]  # nothing half-kept

    # the object expired (or was removed) after the job listed it
    store = await running.nc.jetstream().object_store(domed.ARTIFACTS_BUCKET)
    await store.delete(good.object)
    with pytest.raises(domed.ArtifactMissing) as missing:
        await client.artifact(job.id, "out/report.txt")
    assert missing.value.code == "artifact_missing"

    # the job's terminal lists no artifact of that name
    with pytest.raises(domed.UnknownArtifact) as unknown:
        await client.artifact(job.id, "out/other.txt")
    assert unknown.value.code == "unknown_artifact"
    with pytest.raises(domed.UnknownArtifact):
        await job.artifact("out/other.txt")
